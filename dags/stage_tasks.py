"""Tasks made from the stage registry (datacomp_ops/stages.py) for the DAGs that map one stage over jobs.

`filtering_baselines`, `train_clip` and `evaluate_clip` each plan jobs (dicts) from their form or the
Asset events that triggered them, then run a stage once per job: `plan_task` and `job_task` build those
tasks from the stage's planner, function, resources and record, so the three DAGs are their wiring
alone. The pool builds' tasks (pool_tasks.py) take a build spec and a lease instead, and stay written out.
No DAG is declared here.
"""

from __future__ import annotations

from airflow.sdk import Asset, task

from datacomp_assets import event_extras
from datacomp_ops.stages import STAGES


def plan_task(stage: str):
    """The run's `prepare` task: the stage's planner over the form's params and the triggering events."""

    @task(task_id="prepare")
    def prepare(params=None, triggering_asset_events=None) -> list[dict]:
        return STAGES[stage].planner()(dict(params or {}), event_extras(triggering_asset_events))

    return prepare


def job_task(stage: str, outlet: Asset | None = None, **task_args):
    """The stage's task, to map over planned jobs (`.expand(job=...)`): labelled by the job's name, placed
    in the stage's Airflow pool and queue, returning its StageStats; with `outlet`, an Asset event whose
    extra is the job's committed record."""
    declared = STAGES[stage]

    @task(task_id=stage, map_index_template="{{ job_name }}", outlets=[outlet] if outlet else [],
          **declared.resources.airflow(), **task_args)
    def run_job(job: dict, outlet_events=None) -> dict:
        from airflow.sdk import get_current_context

        get_current_context()["job_name"] = job["name"]
        stats = declared.function()(job)
        if outlet is not None:
            outlet_events[outlet].extra = declared.record_of()(job)
        return stats.to_dict()

    return run_job
