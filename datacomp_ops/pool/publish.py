"""Publish a pool version: its per-scale pools, its manifest, and the ledger's final accounts.

A version's manifest lists its parent's files and its own (versions.py).

Per-scale pools are nested and deterministic: every kept uid gets a key,
md5("datacomp-scale:" + uid), and a scale of size n holds the n uids with the
smallest keys (all of them when the pool is smaller). So tiny is within small
within medium within large within xlarge, and a rebuild picks the same samples
as long as the pool holds them. Each scale is a DataComp subset file
(``scales/{scale}.npy``, ``u8,u8``, sorted).
"""

from __future__ import annotations

import datetime
import logging
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage, versions
from ..core.config import SCALES, PlatformConfig, pool_sizes
from ..core.layout import PoolLayout
from ..core.schema import scale_key, uids_to_array, write_subset
from ..core.stats import StageStats
from .metadata import STAGE as METADATA
from .metadata import downloaded_shards

log = logging.getLogger(__name__)

STAGE = "publish"


def _metadata_uids(urls: list[str]) -> list[str]:
    uids: list[str] = []
    for url in urls:
        with storage.open_file(url) as f:
            uids.extend(pq.read_table(f, columns=["uid"])["uid"].to_pylist())
    return uids


def _scales(uids: list[str], current, config: PlatformConfig) -> dict[str, tuple[list[str], bool, str]]:
    """Per scale: (its uids, whether it is built, why not).

    A scale is built when every URL whose scale key lies below its last
    sample's key has been decided: no deferred URL can still displace one of
    its samples. Without deferred URLs every scale is built (smaller than its
    size when the pool is).
    """
    deferred = current.filter(pc.equal(current["status"], ledger.DEFERRED))["uid"].to_pylist() \
        if current.num_rows else []
    horizon = min((scale_key(u) for u in deferred), default=None)
    keyed = sorted((scale_key(u), u) for u in uids)
    out = {}
    for name, size in pool_sizes(config).items():
        members = keyed[:size]
        if horizon is None:
            out[name] = ([u for _, u in members], True, "")
        elif len(members) == size and members[-1][0] < horizon:
            out[name] = ([u for _, u in members], True, "")
        else:
            below = [u for k, u in members if k < horizon]
            out[name] = (below, False, f"{len(deferred)} URLs were deferred by a build for a smaller scale; "
                                       f"build with scale={name} to complete it")
    return out


def run_publish(pool: PoolLayout, config: PlatformConfig) -> StageStats:
    """Publish `pool`: its parent's samples plus its own, per-scale pools, and the manifest.

    The manifest lists the parent's shard and metadata files followed by this
    version's own: nothing is copied, and the parent stays as it was. A version
    that adds no sample (to its parent, or a first one with none) is not published (counter ``unchanged``):
    it stays open, and the next run carries on in it.
    """
    start = time.monotonic()
    stats = StageStats(STAGE)
    if storage.exists(pool.manifest):
        manifest = storage.read_json(pool.manifest)
        log.info("pool %s was published at %s", pool.version, manifest["published_at"])
        return StageStats.from_dict(manifest["stats"])
    own = sorted(downloaded_shards(pool))
    markers = {s: pool.marker(METADATA, f"{s:08d}") for s in own}
    missing = [s for s, m in markers.items() if not storage.exists(m)]
    if missing:
        raise storage.StorageError(f"pool {pool.version}: {len(missing)} downloaded shards have no metadata yet "
                                   f"(e.g. {missing[0]:08d}); run the metadata stage on them first")
    records = {s: storage.read_json(m) for s, m in markers.items()}
    parent_name = versions.info(pool.root, pool.version).get("parent")
    parent = storage.read_json(PoolLayout(pool.root, parent_name).manifest) if parent_name else {}
    own_metadata = [pool.metadata_file(s) for s in own]
    own_uids = _metadata_uids(own_metadata)
    uids = _metadata_uids(parent.get("metadata", [])) + own_uids

    dirs, names = versions.ledger_dirs(pool.root, pool.version)
    history = ledger.history(dirs, names)
    current = ledger.latest(history)
    statuses = ledger.counts(current) if current.num_rows else {}
    if statuses.get("kept", 0) != len(uids) or statuses.get("downloaded", 0):
        raise ledger.LedgerError(f"pool {pool.version}: ledger says {statuses.get('kept', 0)} kept and "
                                 f"{statuses.get('downloaded', 0)} downloaded without a later status, "
                                 f"but the metadata holds {len(uids)} samples")
    if not own_uids:  # the first version too: an empty pool is nothing to announce
        stats.add("unchanged")
        log.info("pool %s adds no sample to %s: not published", pool.version, parent_name or "an empty pool")
        return stats

    scales = {}
    for name, (members, built, why) in _scales(uids, current, config).items():
        size = pool_sizes(config)[name]
        info = {"samples": len(members), "pool_size": size, "built": built}
        if built:
            _write_subset(pool.scale(name), members)
            info |= {"path": pool.scale(name), "complete": len(members) >= size}
        else:
            info |= {"complete": False, "why": why}
        scales[name] = info
        stats.add(f"scale:{name}", len(members))
    stats.add("samples", len(uids))
    stats.add("added_samples", len(own_uids))
    stats.add("shards", len(parent.get("shards", [])) + len(own))
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.manifest] + [s["path"] for s in scales.values() if s["built"]]

    models = sorted({_frozen(r.get("models", {})) for r in records.values()} |
                    {_frozen(m) for m in parent.get("models", [])})
    crawls = sorted({c for c in downloaded_shards(pool).values() if c} | set(parent.get("crawls", [])))
    manifest = {
        "pool_version": pool.version,
        "parent": parent_name,
        "chain": names,
        "storage_root": pool.root,
        "published_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": len(uids),
        "added": {"samples": len(own_uids), "shards": len(own),
                  "statuses": ledger.counts(ledger.latest(history.filter(pc.equal(history["version"], pool.version))))
                  if own else {}},
        "crawls": crawls,
        "shards": parent.get("shards", []) + [pool.shard(s) for s in own],
        "metadata": parent.get("metadata", []) + own_metadata,
        "scales": scales,
        "ledger": {"urls": current.num_rows, "statuses": statuses, "chain": dirs},
        "models": [dict(m) for m in models],
        "thresholds": records[own[0]].get("thresholds", {}) if own else parent.get("thresholds", {}),
        "stats": stats.to_dict(),
    }
    storage.write_json(pool.manifest, manifest)
    log.info("published pool %s: %d samples (%d new); scales %s", pool.version, len(uids), len(own_uids),
             {k: v["samples"] for k, v in scales.items()})
    return stats


def _frozen(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def _write_subset(url: str, uids: list[str]) -> int:
    return write_subset(url, uids_to_array(uids, where=url) if uids else np.zeros(0, dtype="u8,u8"))


def asset_extras(manifest: dict) -> dict[str, dict]:
    """What each built scale's Asset event carries for the downstream DAGs.

    The metadata of a version is the list of files in its manifest (its own
    and its ancestors'), not one folder. Every complete scale is announced,
    and of the incomplete ones only the smallest: each holds the whole pool,
    so the larger ones would be filtered again to the same subsets (the
    filtering form still filters any of them on request).
    """
    # the manifest's keys are sorted by name (large before small): take them smallest scale first
    built = [(name, manifest["scales"][name]) for name in SCALES
             if name in manifest["scales"] and manifest["scales"][name]["built"]]
    incomplete = [name for name, info in built if not info["complete"]]
    return {
        name: {"pool_version": manifest["pool_version"], "scale": name, "samples": info["samples"],
               "complete": info["complete"], "subset": info["path"], "pool_samples": manifest["samples"],
               "manifest": PoolLayout(manifest["storage_root"], manifest["pool_version"]).manifest}
        for name, info in built if info["complete"] or name == incomplete[0]
    }

