"""The training DAG's glue: which subsets a run trains, and one job of it.

A training run trains the subsets named by the Asset events that triggered it
(one per baseline the filtering DAG wrote, of the config's ``scale``;
``training.baselines`` narrows them), or the subsets its form names (a published pool version and scale of
the CommonPool or of an imported dataset; every baseline written there, or
those listed). A run started by events also trains the untrained subsets written
beside them since (Airflow gives a deferred run only the events up to its
trigger), and skips the runs committed already. Each subset is trained once per seed of ``training.seeds`` (or
of the form's): one job per (subset, seed). A subset's first job reshards it
into the seed-0 run folder (`training.TrainSpec`); its other seeds' jobs train
on those shards (the DAG's train tasks start once every reshard task is done).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..core import storage, versions
from ..core.config import ConfigError, config_from_dict, get_scale, load_config
from ..core.layout import PoolLayout, SubsetsLayout, dataset_root, parse_dataset_root, run_name
from ..core.stats import StageStats
from .reshard import STAGE as RESHARD_STAGE
from .reshard import run_reshard
from .train import TrainSpec, run_training

log = logging.getLogger(__name__)


def _jobs(manifest_url: str, scale: str, baseline: str, seeds: list[int], config_dict: dict) -> list[dict]:
    """One job per seed of a subset; the first reshards it (into the folder every seed's spec reads)."""
    manifest = storage.read_json(manifest_url)
    root, version = manifest["storage_root"], manifest["pool_version"]
    specs = [TrainSpec.for_subset(root, version, scale, baseline, parse_dataset_root(root)[1], seed) for seed in seeds]
    if not storage.exists(specs[0].subset):
        raise ConfigError(f"no subset {specs[0].subset}: run filtering_baselines for {version}/{scale} first")
    return [{"manifest": manifest_url, "spec": spec.__dict__, "config": config_dict, "reshards": i == 0,
             "name": f"{spec.dataset + '/' if spec.dataset else ''}{version}/{scale}/{run_name(baseline, spec.seed)}"}
            for i, spec in enumerate(specs)]


def _trained(job: dict) -> bool:
    """A run committed already (by an earlier run of the DAG that trained it unannounced): training it
    again would be a no-op that announces the model a second time."""
    done = storage.exists(storage.join(job["spec"]["run_dir"], "training.json"))
    if done:
        log.info("%s: trained already", job["name"])
    return done


def _announced_meanwhile(manifest_url: str, scale: str, labels: set[str]) -> set[str]:
    """The untrained subsets of the events' pool version and scale that no event of this run names.

    The DAG runs one at a time (max_active_runs=1); Airflow makes a deferred run when the previous one
    ends, gives it the events up to the first one queued and then drops its queue entry, so the subsets
    announced in between would wait for an event that may never come (apache/airflow#56050, open in the
    3.x we pin). With one run at a time, a subset
    whose seed-0 run is not committed is one that no run has trained, or one whose training failed."""
    manifest = storage.read_json(manifest_url)
    root, version = manifest["storage_root"], manifest["pool_version"]
    folder = SubsetsLayout(root, version, scale).base
    present = {os.path.basename(r)[: -len(".json")] for r in storage.ls(folder, "*.json")}
    meanwhile = {label for label in present - labels
                 if not storage.exists(storage.join(TrainSpec.for_subset(root, version, scale, label,
                                                                         parse_dataset_root(root)[1]).run_dir,
                                                    "training.json"))}
    if meanwhile:
        log.info("also training %s: written under %s since this run's events", ", ".join(sorted(meanwhile)), folder)
    return meanwhile


def plan_training(params: dict[str, Any], events: list[dict], config_path: str | None = None) -> list[dict]:
    """The run's jobs; the config is `config_path`'s (else $DATACOMP_CONFIG's) with the form's overrides."""
    overrides = dict(params.get("config_overrides") or {})
    if params.get("seeds"):  # the form's seeds are the config's, checked as the config checks them
        if "training.seeds" in overrides:
            raise ConfigError("config_overrides sets training.seeds (the form field seeds sets it too): keep one")
        overrides["training.seeds"] = list(params["seeds"])
    config = load_config(config_path, overrides)
    config_dict = config.to_dict()
    seeds = list(config.training.seeds)
    wanted = list(params.get("baselines") or []) or list(config.training.baselines)
    jobs = []
    if events:
        announced: dict[str, set[str]] = {}  # pool manifest -> labels its events name
        for extra in events:
            pool = extra.get("pool") or {}
            if "manifest" not in pool:
                log.info("subset %s is of a metadata folder: no shards to train on", extra.get("subset"))
                continue
            # filtering runs on every published scale; training follows the config's scale only
            # (each scale's recipe is another model and budget)
            if (pool.get("scale") or "tiny") != config.scale:
                log.info("subset %s is of scale %s; this config trains scale %s", extra.get("subset"),
                         pool.get("scale"), config.scale)
                continue
            announced.setdefault(pool["manifest"], set()).add(extra["label"])
        for manifest_url, labels in announced.items():
            labels |= _announced_meanwhile(manifest_url, config.scale, labels)
            for label in sorted(labels):
                if wanted and label not in wanted:
                    continue
                try:
                    jobs += _jobs(manifest_url, config.scale, label, seeds, config_dict)
                except ConfigError as exc:  # removed since its event: the others still train
                    log.warning("not training %s: %s", label, exc)
        return [job for job in jobs if not _trained(job)]
    dataset = params.get("dataset") or ""
    root = dataset_root(config.storage_root, dataset) if dataset else config.storage_root
    version = params.get("pool_version") or versions.latest(root)
    if not version:
        raise versions.VersionError(f"no published pool version under {root}")
    scale = params.get("scale") or "tiny"
    if not wanted:
        records = storage.ls(SubsetsLayout(root, version, scale).base, "*.json")
        wanted = sorted(os.path.basename(r)[: -len(".json")] for r in records)
        if not wanted:
            raise ConfigError(f"no subsets under {SubsetsLayout(root, version, scale).base}: run filtering_baselines first")
    return [job for b in wanted for job in _jobs(PoolLayout(root, version).manifest, scale, b, seeds, config_dict)]


def run_reshard_job(job: dict) -> StageStats:
    """The job's subset of its pool's shards, resharded where its spec reads them (a no-op when done, and
    for the other seeds of a subset, whose first job reshards it)."""
    spec = TrainSpec(**job["spec"])
    if not job.get("reshards", True):
        log.info("%s: trains on the shards its subset's first job writes, %s", job["name"], spec.shards_dir)
        return StageStats(RESHARD_STAGE)
    shards = storage.read_json(job["manifest"])["shards"]
    return run_reshard(spec.subset, shards, spec.shards_dir, shard_size=get_scale(spec.scale).shard_size,
                       workers=min(os.cpu_count() or 1, 8))


def run_train_job(job: dict) -> StageStats:
    return run_training(TrainSpec(**job["spec"]), config_from_dict(job["config"]))


def training_record(job: dict) -> dict:
    """The job's committed training record (what its Asset event tells evaluation), with its run folder."""
    spec = TrainSpec(**job["spec"])
    return storage.read_json(storage.join(spec.run_dir, "training.json")) | {"run_dir": spec.run_dir}
