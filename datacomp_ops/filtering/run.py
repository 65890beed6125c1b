"""One baseline over one pool: a DataComp subset file and its stats record.

``{out}/{label}.npy`` holds the kept uids (``u8,u8``, sorted); ``{out}/{label}.json``
is written after it and commits the pair: kept count and fraction, what the
baseline decided with (thresholds, models, cluster counts), the spec, the
pool and the seconds. A rerun with a committed record for the same spec and
pool does nothing.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..core import storage
from ..core.config import ConfigError, PlatformConfig
from ..core.layout import SubsetsLayout, SyntheticWorld, external_subsets
from ..core.schema import write_subset
from ..core.stats import Counters, StageStats
from .baselines import BaselineSpec, FilterContext, parse_all
from .pool import MetadataPool

log = logging.getLogger(__name__)

STAGE = "filter_baseline"
# committed_before: a rerun found the baseline's record committed, and did nothing
COUNTERS = Counters.of(STAGE, ["pool_samples", "kept", "committed_before"])


@dataclass(frozen=True)
class PoolSource:
    """Where a pool's metadata comes from: a published version's manifest (and a scale), or a folder."""

    manifest: str = ""
    scale: str = ""
    metadata_dir: str = ""

    def open(self) -> MetadataPool:
        if self.metadata_dir:
            return MetadataPool.from_dir(self.metadata_dir)
        if self.manifest:
            return MetadataPool.from_manifest(self.manifest, self.scale or None)
        raise ConfigError("give a pool version's manifest or a metadata folder to filter")

    def describe(self) -> dict:
        return {k: v for k, v in (("manifest", self.manifest), ("scale", self.scale),
                                  ("metadata_dir", self.metadata_dir)) if v}


def output_dir(config: PlatformConfig, source: PoolSource) -> str:
    """config's filtering.output_dir, or {pool's root}/subsets/{version}/{scale} for a published pool
    ({root}/subsets/external/{folder name} for a metadata folder)."""
    if config.filtering.output_dir:
        return config.filtering.output_dir
    if source.manifest:  # beside the pool: an imported dataset's subsets stay under its own root
        manifest = storage.read_json(source.manifest)
        return SubsetsLayout(manifest.get("storage_root", config.storage_root), manifest["pool_version"],
                             source.scale or "all").base
    return external_subsets(config.storage_root, posixpath.basename(source.metadata_dir.rstrip("/")))


def make_context(pool: MetadataPool, config: PlatformConfig, index_dir: str | None = None) -> FilterContext:
    from . import image_based

    f = config.filtering
    world = SyntheticWorld.under(config.storage_root)

    def entities():
        from .text_entities import EntityMatcher

        return EntityMatcher(f.wordnet_dir or world.wordnet_db, f.imagenet21k_ids or world.imagenet21k_ids)

    def targets(dim: int) -> np.ndarray:
        if f.imagenet1k_embeddings:
            return image_based.load_embeddings(f.imagenet1k_embeddings)
        from ..embedded.filtering_targets import target_images

        return image_based.embed_images(target_images(config), config)

    def metaclip_entries() -> str:
        return f.metaclip_entries or world.metaclip_entries

    return FilterContext(pool, f.fasttext_model, entities, targets, metaclip_entries, f.seed, index_dir)


def record_path(out: str, label: str) -> str:
    return storage.join(out, f"{label}.json")


def read_record(out: str, label: str) -> dict:
    """A baseline's committed stats record: kept count and fraction, what it decided with, spec, pool, seconds."""
    return storage.read_json(record_path(out, label))


def run_baseline(label: str, source: PoolSource, config: PlatformConfig, out: str | None = None,
                 context: FilterContext | None = None) -> StageStats:
    """Run the baseline `label` of filtering.baselines: its subset file and stats record are the stats'
    outputs (read_record reads the record back)."""
    specs = parse_all(config.filtering.baselines)
    if label not in specs:
        raise ConfigError(f"no baseline labelled {label!r} in filtering.baselines ({', '.join(specs)})")
    spec = specs[label]
    out = out or output_dir(config, source)
    record_url, subset_path = record_path(out, label), storage.join(out, f"{label}.npy")
    outputs = [subset_path, record_url]
    if storage.exists(record_url):
        record = storage.read_json(record_url)
        if record.get("spec") == _spec_text(config, label) and record.get("pool") == source.describe() \
                and storage.exists(subset_path):
            log.info("%s: committed already (%d kept)", label, record["kept"])
            return StageStats(STAGE, Counter(pool_samples=record["pool_samples"], kept=record["kept"],
                                             committed_before=1), outputs=outputs)
    start = time.perf_counter()
    ctx = context or make_context(source.open(), config, storage.join(out, "_index"))
    selection = spec.run(ctx, specs)
    kept = write_subset(subset_path, ctx.uid_index().sorted_subset(selection.mask))
    total = len(ctx)
    record = {
        "label": label, "spec": _spec_text(config, label), "pool": source.describe(), "pool_samples": total,
        "kept": kept, "fraction": kept / total if total else 0.0, "subset": subset_path,
        "decided_with": selection.info, "seconds": round(time.perf_counter() - start, 3),
    }
    storage.write_json(record_url, record)
    log.info("%s: kept %d of %d (%.1f%%) in %.1f s", label, kept, total, 100 * record["fraction"], record["seconds"])
    return StageStats(STAGE, Counter(pool_samples=total, kept=kept), time.perf_counter() - start, outputs)


def _spec_text(config: PlatformConfig, label: str) -> str:
    for text in config.filtering.baselines:
        if BaselineSpec.parse(text).label == label:
            return text.strip()
    return label


def format_table(records: list[dict]) -> str:
    pools = sorted({r.get("pool_name", "") for r in records})
    lines = []
    for pool in pools:
        rows = [r for r in records if r.get("pool_name", "") == pool]
        if pool:
            lines.append(f"  pool {pool} ({rows[0]['pool_samples']} samples):")
        lines.append(f"  {'baseline':<44}{'kept':>9}{'fraction':>10}{'seconds':>9}")
        lines += [f"  {r['label']:<44}{r['kept']:>9}{r['fraction']:>10.3f}{r['seconds']:>9.2f}" for r in rows]
    return "\n".join(lines)
