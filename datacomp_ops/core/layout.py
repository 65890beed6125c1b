"""Where each artefact lives under the storage root (DESIGN.md, "Data on storage")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError
from .storage import join

# Crawl ids, dataset names and pool versions are folder names under the storage root: one rule for
# all, so that none reaches outside it (no slash, backslash, '..' or leading dot). DAG forms use it as is.
NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
NAME_RULE = "use letters, digits, '.', '_' and '-' (at most 128 characters, the first a letter or digit, no '..')"


def is_name(name: object) -> bool:
    """Whether `name` follows NAME_PATTERN (a listing of crawls/ or datasets/ skips what does not: .DS_Store)."""
    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None


def check_name(kind: str, name: object, error: type[Exception] = ConfigError) -> str:
    """`name` if it follows NAME_PATTERN, else `error` naming `kind`, the name and the rule."""
    if not is_name(name):
        raise error(f"{kind} {name!r}: {NAME_RULE}")
    return name


# The storage root's folders (DESIGN.md, "Data on storage"); only this module joins their names.
CRAWLS, POOL, SUBSETS, RUNS, DATASETS, HOSTS = "crawls", "pool", "subsets", "runs", "datasets", "hosts"
LEADERBOARD, EVAL_INDEX, SYNTHETIC = "leaderboard", "eval_index", "synthetic"
EXTERNAL = "external"  # subsets of a metadata folder that is no pool version: {root}/subsets/external/{name}


def dataset_root(storage_root: str, name: str) -> str:
    """The storage root of an imported dataset (byod.py): a pool of its own, laid out as the CommonPool."""
    return join(storage_root, DATASETS, check_name("dataset name", name))


def parse_dataset_root(root: str) -> tuple[str, str]:
    """`dataset_root`'s inverse: (the platform's storage root, the dataset's name) of an imported dataset's
    root; (root, "") for any other root."""
    base, sep, name = root.rstrip("/").rpartition(f"/{DATASETS}/")
    return (base, name) if sep and base and is_name(name) else (root.rstrip("/"), "")


def crawls_dir(storage_root: str) -> str:
    return join(storage_root, CRAWLS)


def pools_dir(storage_root: str) -> str:
    """Every pool version's folder, and the versions' leases and run claims (core/versions.py)."""
    return join(storage_root, POOL)


def version_lease(storage_root: str, version: str) -> str:
    return join(storage_root, POOL, "_leases", f"{version}.json")


def run_claims_dir(storage_root: str) -> str:
    return join(storage_root, POOL, "_runs")


def datasets_dir(storage_root: str) -> str:
    return join(storage_root, DATASETS)


def host_rules_dir(root: str) -> str:
    """The hosts' robots.txt and TDMRep answers (download/host_rules.py), one cache for the platform's
    storage root: an imported dataset's downloads share it."""
    return join(parse_dataset_root(root)[0], HOSTS, "rules")


def host_claims_dir(root: str) -> str:
    """Which download is asking a host for its rules now (download/host_claims.py), beside the cache."""
    return join(parse_dataset_root(root)[0], HOSTS, "claims")


def leaderboard_dir(storage_root: str) -> str:
    return join(storage_root, LEADERBOARD)


def eval_index_dir(storage_root: str, slug: str) -> str:
    """The evaluation sets' copy-detection descriptors, one folder per descriptor and set listing."""
    return join(storage_root, EVAL_INDEX, slug)


def subsets_dir(storage_root: str) -> str:
    return join(storage_root, SUBSETS)


def external_subsets(storage_root: str, name: str) -> str:
    return join(storage_root, SUBSETS, EXTERNAL, name)


@dataclass(frozen=True)
class SubsetsLayout:
    """The subset files of a pool version at a scale: {root}/subsets/{version}/{scale}/{label}.npy, each
    with its stats record {label}.json."""

    root: str
    version: str
    scale: str

    @property
    def base(self) -> str:
        return join(self.root, SUBSETS, self.version, self.scale)

    def subset(self, label: str) -> str:
        return join(self.base, f"{label}.npy")

    def record(self, label: str) -> str:
        return join(self.base, f"{label}.json")


def parse_subset(url: str) -> tuple[str, str, str]:
    """(pool version, scale, label) of a subset file {root}/subsets/{version}/{scale}/{label}.npy."""
    parts = url.rstrip("/").rsplit("/", 4)
    if len(parts) != 5 or parts[1] != SUBSETS or not parts[4].endswith(".npy"):
        raise ConfigError(f"{url}: not a subset file ({{root}}/{SUBSETS}/{{version}}/{{scale}}/{{label}}.npy)")
    return parts[2], parts[3], parts[4][: -len(".npy")]


def runs_dir(storage_root: str) -> str:
    return join(storage_root, RUNS)


LABEL = r"[A-Za-z0-9_.-]+"  # a subset's label (filtering/baselines.py)
SEED_MARK = "+seed"  # '+' is in no label: the folder name parses back


def run_name(baseline: str, seed: int = 0) -> str:
    """A run's folder name under ``{root}/runs/{version}/{scale}/``: the baseline's label for seed 0 (the
    folders of runs from before seeds), ``{baseline}+seed{k}`` for seed k > 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"run of {baseline!r}: seed {seed!r} is not an integer >= 0")
    if not re.fullmatch(LABEL, baseline):
        raise ConfigError(f"run of {baseline!r}: a subset label has letters, digits, '.', '_' and '-' only")
    return baseline if seed == 0 else f"{baseline}{SEED_MARK}{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
    """(baseline, seed) of a run's folder name: `run_name`'s inverse."""
    baseline, mark, seed = name.partition(SEED_MARK)
    if not mark:
        return name, 0
    if not re.fullmatch(LABEL, baseline) or not re.fullmatch(r"[1-9][0-9]*", seed):
        raise ConfigError(f"run folder {name!r}: expected {{baseline}} or {{baseline}}{SEED_MARK}{{k}} with k > 0")
    return baseline, int(seed)


def run_dir(root: str, version: str, scale: str, baseline: str, seed: int = 0) -> str:
    return join(runs_dir(root), version, scale, run_name(baseline, seed))


@dataclass(frozen=True)
class RunPlace:
    """Where a run folder sits: its storage root, pool version, scale, baseline and seed."""

    root: str
    pool_version: str
    scale: str
    baseline: str
    seed: int


def parse_run_dir(url: str) -> RunPlace:
    """`run_dir`'s inverse: {root}/runs/{version}/{scale}/{run name}."""
    parts = url.rstrip("/").rsplit("/", 4)
    if len(parts) != 5 or parts[1] != RUNS:
        raise ConfigError(f"{url}: not a run folder ({{root}}/runs/{{version}}/{{scale}}/{{run name}})")
    return RunPlace(parts[0], parts[2], parts[3], *parse_run_name(parts[4]))


# The embedded default's example of "your own" dataset (synthetic/own_data.py writes it in the synthetic
# world): what the import DAG's empty form imports, under this name.
EXAMPLE_DATASET = "example"
# and what the published-pool import's empty form imports (the world's pool in DataComp's published layout)
EXAMPLE_PUBLISHED = "published_example"


@dataclass(frozen=True)
class SyntheticWorld:
    """The demo world's files (synthetic/ writes them; `datacomp synthetic`): its crawls, evaluation suite,
    miniature WordNet and example dataset, which the config's defaults point at when it names no real ones."""

    base: str

    @classmethod
    def under(cls, storage_root: str) -> "SyntheticWorld":
        """The world `datacomp synthetic` writes by default, and the config's defaults read."""
        return cls(join(storage_root, SYNTHETIC))

    @property
    def eval_sets(self) -> str:
        return join(self.base, "eval")

    @property
    def wordnet(self) -> str:
        return join(self.base, "wordnet")

    @property
    def wordnet_db(self) -> str:
        return join(self.wordnet, "wordnet")

    @property
    def imagenet21k_ids(self) -> str:
        return join(self.wordnet, "imagenet21k_wordnet_ids.txt")

    @property
    def metaclip_entries(self) -> str:
        return join(self.wordnet, "metaclip_entries.txt")

    @property
    def example_dataset(self) -> str:
        return join(self.base, "own_data")

    @property
    def published_pool(self) -> str:
        """A pool in DataComp's published layout whose URLs are the world's image server's."""
        return join(self.base, "published")

    @property
    def published_metadata(self) -> str:
        return join(self.published_pool, "metadata")

    @property
    def published_truth(self) -> str:
        return join(self.published_pool, "truth.parquet")


@dataclass(frozen=True)
class CrawlLayout:
    root: str
    crawl_id: str

    def __post_init__(self) -> None:
        check_name("crawl id", self.crawl_id)

    @property
    def base(self) -> str:
        return join(self.root, CRAWLS, self.crawl_id)

    @property
    def wat_manifest(self) -> str:
        return join(self.base, "wat_manifest.parquet")

    @property
    def urls(self) -> str:
        return join(self.base, "urls")

    def report(self, name: str) -> str:
        """A build run's summary, kept with the crawl it read until the run publishes a version."""
        return join(self.base, "reports", name)

    @property
    def staging(self) -> str:
        """An import's URL parts staged from its source files (pool/byod.py)."""
        return join(self.base, "staging")


def committed_part(staged_part: str) -> str:
    """The URL part that an import's staged part {crawl}/staging/{name} becomes once its samples are in:
    {crawl}/urls/{name}."""
    base, sep, name = staged_part.rpartition("/staging/")
    if not sep or "/" in name:
        raise ConfigError(f"{staged_part}: not a staged part ({{root}}/{CRAWLS}/{{crawl}}/staging/{{name}})")
    return join(base, "urls", name)


def crawl_of_url_part(path: str) -> str:
    """The crawl id of a URL part {root}/crawls/{crawl_id}/urls/part-*.parquet, "" for any other path."""
    parts = path.rstrip("/").split("/")
    return parts[-3] if len(parts) >= 4 and parts[-2] == "urls" and parts[-4] == CRAWLS else ""


@dataclass(frozen=True)
class PoolLayout:
    root: str
    version: str

    def __post_init__(self) -> None:
        check_name("pool version", self.version)

    @property
    def base(self) -> str:
        return join(self.root, POOL, self.version)

    @property
    def downloads(self) -> str:
        """img2dataset's raw shards: unfiltered, faces unblurred; the metadata pass reads them."""
        return join(self.base, "downloads")

    def download(self, shard_id: int, ext: str = "tar") -> str:
        return join(self.downloads, f"{shard_id:08d}.{ext}")

    @property
    def shards(self) -> str:
        """The published shards: kept samples only, faces blurred."""
        return join(self.base, "shards")

    def shard(self, shard_id: int, ext: str = "tar") -> str:
        return join(self.shards, f"{shard_id:08d}.{ext}")

    @property
    def metadata(self) -> str:
        return join(self.base, "metadata")

    def metadata_file(self, shard_id: int, ext: str = "parquet") -> str:
        return join(self.metadata, f"{shard_id:08d}.{ext}")

    @property
    def manifest(self) -> str:
        return join(self.base, "manifest.json")

    def report(self, name: str) -> str:
        """A build run's summary, kept beside the version it built."""
        return join(self.base, "reports", name)

    @property
    def requeue(self) -> str:
        """URL parts of the transient failures that a later run downloads again."""
        return join(self.base, "requeue")

    @property
    def ledger(self) -> str:
        return join(self.base, "ledger")

    def ledger_part(self, stage: str, part: str) -> str:
        return join(self.ledger, stage, f"{part}.parquet")

    @property
    def markers(self) -> str:
        """Per-task completion markers; each holds that task's stats."""
        return join(self.base, "_markers")

    def marker(self, stage: str, part: str) -> str:
        return join(self.markers, stage, part)

    @property
    def download_limit(self) -> str:
        """A published pool's download limit: the union of the subsets a run downloads (pool/published.py)."""
        return join(self.base, "download_limit.npy")

    @property
    def download_limit_record(self) -> str:
        """Which subsets the limit unites, and what it saves (pool/published.py)."""
        return join(self.base, "download_limit.json")

    @property
    def decay_report(self) -> str:
        """What the pool holds of the URLs it was given, by reason, domain and version (pool/decay.py)."""
        return join(self.base, "reports", "decay.json")

    @property
    def scales(self) -> str:
        return join(self.base, "scales")

    def scale(self, name: str) -> str:
        return join(self.scales, f"{name}.npy")


def partition_name(path: str) -> str:
    """A download partition's name from its URL part's path, unique within a pool: URL parts of several
    crawls may feed one pool version. {crawl}-part-N for a crawl's (or an import's staged) part,
    requeue-part-N for a pool's requeued one."""
    parts = path.rstrip("/").split("/")
    stem = parts[-1].removesuffix(".parquet")
    if len(parts) >= 3 and parts[-2] in ("urls", "staging"):
        return f"{parts[-3]}-{stem}"
    if len(parts) >= 2 and parts[-2] == "requeue":
        return f"requeue-{stem}"
    return stem
