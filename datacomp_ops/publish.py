"""Publish a pool version: its per-scale pools, its manifest, and the ledger's final accounts.

Per-scale pools are nested and deterministic: every kept uid gets a key,
md5("datacomp-scale:" + uid), and a scale of size n holds the n uids with the
smallest keys (all of them when the pool is smaller). So tiny is within small
within medium within large within xlarge, and a rebuild picks the same samples
as long as the pool holds them. Each scale is a DataComp subset file
(``scales/{scale}.npy``, ``u8,u8``, sorted).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time

import numpy as np
import pyarrow.parquet as pq

from . import ledger, storage
from .config import SCALES, PlatformConfig
from .layout import PoolLayout
from .metadata import STAGE as METADATA, downloaded_shards
from .schema import uids_to_array, write_subset
from .stats import StageStats

log = logging.getLogger(__name__)

STAGE = "publish"
SCALE_ORDER = ("tiny", "small", "medium", "large", "xlarge")


def pool_sizes(config: PlatformConfig) -> dict[str, int]:
    sizes = {name: SCALES[name].pool_size for name in SCALE_ORDER}
    sizes["tiny"] = config.publish.tiny_pool_size
    return sizes


def scale_key(uid: str) -> int:
    return int(hashlib.md5(b"datacomp-scale:" + uid.encode()).hexdigest()[:16], 16)


def select_scales(uids: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """The uids of each scale: the `size` smallest scale keys, so smaller scales nest in larger ones."""
    ranked = sorted(uids, key=scale_key)
    return {name: ranked[:size] for name, size in sizes.items()}


def run_publish(pool: PoolLayout, config: PlatformConfig) -> StageStats:
    """Write the per-scale subset files and the manifest of `pool` from its committed metadata."""
    start = time.monotonic()
    shards = sorted(downloaded_shards(pool))
    markers = {s: pool.marker(METADATA, f"{s:08d}") for s in shards}
    missing = [s for s, m in markers.items() if not storage.exists(m)]
    if missing:
        raise storage.StorageError(f"pool {pool.version}: {len(missing)} downloaded shards have no metadata yet "
                                   f"(e.g. {missing[0]:08d}); run the metadata stage on them first")
    records = {s: storage.read_json(m) for s, m in markers.items()}
    uids: list[str] = []
    for s in shards:
        with storage.open_file(pool.metadata_file(s)) as f:
            uids.extend(pq.read_table(f, columns=["uid"])["uid"].to_pylist())

    final = ledger.final_statuses(pool.ledger)
    statuses = ledger.counts(final)
    if statuses.get("kept", 0) != len(uids) or statuses.get("downloaded", 0):
        raise ledger.LedgerError(f"pool {pool.version}: ledger says {statuses.get('kept', 0)} kept and "
                                 f"{statuses.get('downloaded', 0)} downloaded without a later status, "
                                 f"but the metadata holds {len(uids)} samples")

    stats = StageStats(STAGE)
    scales = {}
    for name, members in select_scales(uids, pool_sizes(config)).items():
        n = _write_subset(pool.scale(name), members)
        size = pool_sizes(config)[name]
        scales[name] = {"path": pool.scale(name), "samples": n, "pool_size": size, "complete": n >= size}
        stats.add(f"scale:{name}", n)
    stats.add("samples", len(uids))
    stats.add("shards", len(shards))
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.manifest] + [s["path"] for s in scales.values()]

    models = sorted({_frozen(r.get("models", {})) for r in records.values()})
    manifest = {
        "pool_version": pool.version,
        "storage_root": pool.root,
        "published_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": len(uids),
        "shards": [pool.shard(s) for s in shards],
        "metadata": [pool.metadata_file(s) for s in shards],
        "scales": scales,
        "ledger": {"urls": final.num_rows, "statuses": statuses},
        "models": [dict(m) for m in models],
        "thresholds": records[shards[0]].get("thresholds", {}) if shards else {},
        "stats": stats.to_dict(),
    }
    previous = storage.read_json(pool.manifest) if storage.exists(pool.manifest) else {}
    if previous.get("shards") == manifest["shards"] and previous.get("samples") == manifest["samples"]:
        stats.add("unchanged")  # a rerun, or a rebuild that found nothing new: keep the published manifest
        log.info("pool %s unchanged since %s", pool.version, previous.get("published_at"))
        return stats
    storage.write_json(pool.manifest, manifest)
    log.info("published pool %s: %d samples; scales %s", pool.version, len(uids),
             {k: v["samples"] for k, v in scales.items()})
    return stats


def _frozen(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def _write_subset(url: str, uids: list[str]) -> int:
    return write_subset(url, uids_to_array(uids, where=url) if uids else np.zeros(0, dtype="u8,u8"))


def asset_extras(manifest: dict) -> dict[str, dict]:
    """What each scale's Asset event carries for the downstream DAGs."""
    return {
        name: {"pool_version": manifest["pool_version"], "scale": name, "samples": info["samples"],
               "complete": info["complete"], "subset": info["path"], "pool_samples": manifest["samples"],
               "metadata_dir": storage.join(manifest["storage_root"], "pool", manifest["pool_version"], "metadata"),
               "manifest": storage.join(manifest["storage_root"], "pool", manifest["pool_version"], "manifest.json")}
        for name, info in manifest["scales"].items()
    }

