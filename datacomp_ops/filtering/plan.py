"""The filtering DAG's glue: which pools and baselines a run filters, and one job of it.

A run filters the pools named by the Asset events that triggered it (one per
published scale), or the pool its form names (a published version and scale
of the CommonPool or of an imported dataset, or a metadata folder). Its
baselines are the config's `filtering.baselines`, or those the form lists: a config label, or a new spec added for the run.
"""

from __future__ import annotations

import os
from typing import Any

from ..core import storage, versions
from ..core.config import SCALES, config_from_dict, load_config
from ..core.layout import PoolLayout, dataset_root
from ..core.stats import StageStats
from .baselines import BaselineSpec, parse_all, uses_fasttext
from .pool import UidIndex
from .run import PoolSource, make_context, output_dir, read_record, run_baseline


def plan_filtering(params: dict[str, Any], events: list[dict]) -> list[dict]:
    overrides = dict(params.get("config_overrides") or {})
    if params.get("output_dir"):
        overrides["filtering.output_dir"] = params["output_dir"]
    config = load_config(overrides=overrides)
    entries = list(config.filtering.baselines)
    labels = list(parse_all(entries))
    chosen = params.get("baselines") or []
    if chosen:
        known = set(labels)
        for text in chosen:
            if text.strip() not in known:  # a spec of its own for this run
                entries.append(text)
        config = load_config(overrides=overrides | {"filtering.baselines": entries})
        labels = [t.strip() if t.strip() in known else BaselineSpec.parse(t).label for t in chosen]
    parse_all(config.filtering.baselines)  # every spec and reference checked before any task starts

    sources: list[tuple[str, PoolSource]] = []
    if params.get("metadata_dir"):
        folder = params["metadata_dir"]
        sources.append((os.path.basename(folder.rstrip("/")), PoolSource(metadata_dir=folder)))
    elif events:
        for extra in smallest_scale_first(events):
            sources.append((f"{extra['pool_version']}/{extra['scale']}",
                            PoolSource(manifest=extra["manifest"], scale=extra["scale"])))
    else:
        dataset = params.get("dataset") or ""
        root = dataset_root(config.storage_root, dataset) if dataset else config.storage_root
        version = params.get("pool_version") or versions.latest(root)
        if not version:
            how = "import it with import_dataset" if dataset else "build one with commonpool_build"
            raise versions.VersionError(f"no published pool version under {root}: {how}, or name a metadata folder")
        if not versions.is_published(root, version):
            raise versions.VersionError(f"pool version {version!r} under {root} is not published")
        scale = params.get("scale") or "tiny"
        name = f"{dataset}/{version}/{scale}" if dataset else f"{version}/{scale}"
        sources.append((name, PoolSource(manifest=PoolLayout(root, version).manifest, scale=scale)))
    jobs = []
    specs = parse_all(config.filtering.baselines)
    for name, source in sources:
        out = output_dir(config, source)
        # the pool's indexes, once, before the baselines' tasks start (each reads them): its uids sorted,
        # and fastText's English flags when some baseline asks for them
        pool = source.open()
        UidIndex.load_or_build(pool, storage.join(out, "_index"))
        if uses_fasttext(labels, specs):
            make_context(pool, config, storage.join(out, "_index")).build_language_index()
        for label in labels:
            jobs.append({"label": label, "pool_name": name, "name": f"{label} ({name})",
                         "source": source.describe(), "out": out, "config": config.to_dict()})
    return jobs


def smallest_scale_first(events: list[dict]) -> list[dict]:
    """A build's events, the smallest scale's pool first: its subsets are written first, and training
    (which trains one scale, usually the smallest) starts on them while the larger scales are filtered."""
    order = list(SCALES)
    return sorted(events, key=lambda e: order.index(e["scale"]) if e.get("scale") in order else len(order))


def run_filter_job(job: dict) -> StageStats:
    return run_baseline(job["label"], PoolSource(**job["source"]), config_from_dict(job["config"]), job["out"])


def job_record(job: dict) -> dict:
    """The job's committed stats record (what its Asset event tells training), with its pool's name."""
    return read_record(job["out"], job["label"]) | {"pool_name": job["pool_name"]}


def job_records(jobs: list[dict]) -> list[dict]:
    return [job_record(j) for j in jobs]
