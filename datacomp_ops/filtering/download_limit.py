"""A published pool's download limit: the union of chosen baselines' subsets, drawn on the published metadata.

DataComp's baselines select on the metadata alone, so a published pool can be filtered before any of
its images is fetched, and only what the chosen subsets hold downloaded (``download=subsets``,
``download_only: [clip_score_l14_30, basic_filter]``). The subsets are those of the pool's newest
published version at its scale: the ones the filtering DAG wrote, or, where one is missing, drawn
here by the same baseline (filtering.baselines names it), into the same place.
"""

from __future__ import annotations

import logging
from collections import Counter

from ..core import storage, versions
from ..core.layout import PoolLayout, SubsetsLayout
from ..core.stats import Counters, StageStats
from ..pool.build import BuildSpec
from ..pool.byod import DatasetImportError
from ..pool.published import clear_download_limit, write_download_limit
from .run import PoolSource, run_baseline

log = logging.getLogger(__name__)

STAGE = "limit_download"
COUNTERS = Counters.of(STAGE, ("urls", "pool_urls", "saved_urls", "saved_bytes", "subsets_drawn"))


def chosen_subsets(spec: BuildSpec) -> tuple[dict[str, str], int]:
    """(label -> subset file of the pool's newest published version, how many were drawn here, missing)."""
    root, scale = spec.pool.root, spec.source["scale"]
    version = versions.latest(root)
    if not version:
        raise DatasetImportError(f"pool {spec.crawl_id} has no published version to filter yet: import its metadata "
                                 f"first (download=none), then download the subsets")
    layout = SubsetsLayout(root, version, scale)
    config = spec.platform_config
    out, drawn = {}, 0
    for label in spec.source["download_only"]:
        path = layout.subset(label)
        if not storage.exists(path):
            log.info("subset %s of %s %s is not drawn yet: drawing it", label, version, scale)
            run_baseline(label, PoolSource(manifest=PoolLayout(root, version).manifest, scale=scale), config)
            drawn += 1
        out[label] = path
    return out, drawn


def run_download_limit(spec: BuildSpec) -> StageStats:
    """Stage entry point: the run's download limit (download=subsets), or none (all, or the metadata alone)."""
    stats = StageStats(STAGE)
    if spec.source.get("download") != "subsets":
        clear_download_limit(spec)
        return stats
    subsets, drawn = chosen_subsets(spec)
    info = write_download_limit(spec, subsets)
    stats.counters.update(Counter({k: int(info[k]) for k in ("urls", "pool_urls", "saved_urls", "saved_bytes")}))
    stats.add("subsets_drawn", drawn)
    stats.outputs = [spec.pool.download_limit]
    return stats
