"""Where each artefact lives under the storage root (DESIGN.md, "Data on storage")."""

from __future__ import annotations

from dataclasses import dataclass

from .storage import join


def dataset_root(storage_root: str, name: str) -> str:
    """The storage root of an imported dataset (byod.py): a pool of its own, laid out as the CommonPool."""
    return join(storage_root, "datasets", name)


@dataclass(frozen=True)
class CrawlLayout:
    root: str
    crawl_id: str

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
