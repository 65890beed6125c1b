"""Where each artefact lives under the storage root (DESIGN.md, "Data on storage")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ConfigError
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


def dataset_root(storage_root: str, name: str) -> str:
    """The storage root of an imported dataset (byod.py): a pool of its own, laid out as the CommonPool."""
    return join(storage_root, "datasets", check_name("dataset name", name))


# The embedded default's example of "your own" dataset (synthetic/own_data.py writes it beside the
# synthetic crawl): what the import DAG's empty form imports, under this name.
EXAMPLE_DATASET = "example"


def example_dataset(crawl_source: str) -> str:
    return join(crawl_source, "own_data")


@dataclass(frozen=True)
class CrawlLayout:
    root: str
    crawl_id: str

    def __post_init__(self) -> None:
        check_name("crawl id", self.crawl_id)

    @property
    def base(self) -> str:
        return join(self.root, "crawls", self.crawl_id)

    @property
    def wat_manifest(self) -> str:
        return join(self.base, "wat_manifest.parquet")

    @property
    def urls(self) -> str:
        return join(self.base, "urls")


@dataclass(frozen=True)
class PoolLayout:
    root: str
    version: str

    def __post_init__(self) -> None:
        check_name("pool version", self.version)

    @property
    def base(self) -> str:
        return join(self.root, "pool", self.version)

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
    def scales(self) -> str:
        return join(self.base, "scales")

    def scale(self, name: str) -> str:
        return join(self.scales, f"{name}.npy")
