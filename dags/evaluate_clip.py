"""Zero-shot evaluation of trained CLIP models on DataComp's tasks, and the leaderboard.

Runs when `train_clip` finishes a model (its Asset event names the run), or from the form: run
folders, or every trained run of a pool version and scale.

1. **prepare**: the runs to evaluate.
2. **evaluate**: each run's final checkpoint on every task of the registry whose dataset is present
   (DataComp's 38 from `evaluation.sets_dir`, or the synthetic suite on the embedded default):
   `eval_results.jsonl` in DataComp's format and `eval_summary.json` (aggregates, tasks not scored).
3. **leaderboard**: the table (parquet, csv) and HTML report over every evaluated run: one row per
   subset, each score the mean over its seeds ± their spread; `runs.parquet` holds each run's row.
"""

from __future__ import annotations

import datetime

from airflow.sdk import Param, dag, task

from datacomp_assets import SCALES, TRAINED
from datacomp_ops.stages import STAGES
from form_fields import optional
from pool_tasks import MODEL_CHAIN
from stage_tasks import job_task, plan_task


@dag(
    schedule=TRAINED,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    default_args=MODEL_CHAIN,
    tags=["datacomp", "evaluation"],
    params={
        "run_dirs": optional("array", "Run folders", "Training runs to evaluate ({root}/runs/{version}/"
                             "{scale}/{baseline}, or {baseline}+seed{k} for seed k > 0). Empty: every trained "
                             "run of the version and scale below.",
                             "Runs", items={"type": "string"}),
        "dataset": optional("string", "Imported dataset", "The name given to import_dataset. Empty: the "
                            "CommonPool.", "Runs", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "pool_version": optional("string", "Pool version", "A published version (v0001...). Empty: the newest.",
                                 "Runs", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "scale": Param("tiny", type="string", enum=list(SCALES), title="Scale", section="Runs",
                       description="The scale whose trained runs are evaluated."),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. '
                                     '{"evaluation.sets_dir": "/data/datacomp/eval"}.', "Advanced"),
    },
)
def evaluate_clip():
    @task
    def leaderboard(jobs: list[dict], results: list[dict]) -> list[dict]:
        from datacomp_ops.evaluation.plan import storage_roots

        return [STAGES["leaderboard"].function()(root).to_dict() for root in storage_roots(jobs)]

    jobs = plan_task("evaluate")()
    leaderboard(jobs, job_task("evaluate", retries=1).expand(job=jobs))


evaluate_clip()
