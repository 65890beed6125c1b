"""The evaluation DAG's glue: which trained runs a run evaluates, one job of it, and the leaderboards
the runs touch."""

from __future__ import annotations

from typing import Any

from ..core import storage, versions
from ..core.config import ConfigError, config_from_dict, load_config
from ..core.layout import dataset_root, parse_dataset_root, parse_run_dir, run_name, runs_dir
from ..core.stats import StageStats
from .zero_shot import SUMMARY, run_evaluation


def plan_evaluation(params: dict[str, Any], events: list[dict], config_path: str | None = None) -> list[dict]:
    """The runs to evaluate: those the triggering events name (trained models), or the form's run folders
    (every trained run of a pool version and scale when it names none)."""
    config = load_config(config_path, dict(params.get("config_overrides") or {}))
    runs = [e["run_dir"] for e in events if e.get("run_dir")] or list(params.get("run_dirs") or [])
    if not runs:
        dataset = params.get("dataset") or ""
        root = dataset_root(config.storage_root, dataset) if dataset else config.storage_root
        version = params.get("pool_version") or versions.latest(root)
        scale = params.get("scale") or "tiny"
        runs = [t.rsplit("/", 1)[0] for t in storage.ls(storage.join(runs_dir(root), version or "-", scale),
                                                         "*/training.json")]
        if not runs:
            raise ConfigError(f"no trained runs under {storage.join(runs_dir(root), version or '-', scale)}: "
                              "run train_clip first")
    places = [parse_run_dir(r) for r in runs]  # a folder that is no run is refused here
    return [{"run_dir": r, "config": config.to_dict(),
             "name": f"{p.pool_version}/{p.scale}/{run_name(p.baseline, p.seed)}"} for r, p in zip(runs, places)]


def run_evaluation_job(job: dict) -> StageStats:
    return run_evaluation(job["run_dir"], config_from_dict(job["config"]))


def evaluation_record(job: dict) -> dict:
    """The job's committed aggregates (ImageNet, VTAB, retrieval, the average...) with its run folder."""
    summary = storage.read_json(storage.join(job["run_dir"], SUMMARY))
    return {"run_dir": job["run_dir"], "aggregates": summary["aggregates"]}


def storage_roots(jobs: list[dict]) -> list[str]:
    """The storage roots whose leaderboards a set of runs touches."""
    roots = set()
    for job in jobs:
        # an imported dataset's runs are on its base's board
        roots.add(parse_dataset_root(parse_run_dir(job["run_dir"]).root)[0])
    return sorted(roots)
