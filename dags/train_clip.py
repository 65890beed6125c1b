"""CLIP training on filtering subsets with DataComp's recipe for the scale (open_clip's trainer).

Runs when `filtering_baselines` writes subsets (its Asset events name each subset, pool version and
scale; subsets of the config's `scale` are trained, `training.baselines` narrows which), or from the form: a published pool version and
scale of the CommonPool or of an imported dataset, and the baselines to train (empty: every subset
written there). Each subset is trained once per seed (`training.seeds`, or the form's Seeds).

1. **prepare**: one job per subset and seed.
2. **reshard**: the subset's samples into `{root}/runs/{version}/{scale}/{baseline}/shards`
   (DataComp's layout, meta.json), once per subset: its other seeds train on the same shards.
3. **train**: open_clip with DataComp's arguments for the scale (`datacomp_ops/training/train.py`) and the
   job's seed, into `{root}/runs/{version}/{scale}/{baseline}` (seed 0) or `.../{baseline}+seed{k}`, in
   the Airflow pool `gpu` on the `gpu` queue, one process per GPU of the worker; a retry resumes from
   the last checkpoint. Emits an Asset event for evaluation.
"""

from __future__ import annotations

import datetime

from airflow.sdk import Param, dag, task

from datacomp_assets import SCALES, SUBSETS, TRAINED, event_extras
from datacomp_ops.stages import STAGES
from form_fields import item_limits, optional
from pool_tasks import MODEL_CHAIN


@dag(
    schedule=SUBSETS,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=MODEL_CHAIN,
    tags=["datacomp", "training"],
    params={
        "dataset": optional("string", "Imported dataset", "The name given to import_dataset. Empty: the "
                            "CommonPool.", "Subsets", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "pool_version": optional("string", "Pool version", "A published version (v0001...). Empty: the newest.",
                                 "Subsets", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "scale": Param("tiny", type="string", enum=list(SCALES), title="Scale",
                       description="The scale whose subsets are trained, with its DataComp recipe.",
                       section="Subsets"),
        "baselines": optional("array", "Baselines", "Labels of the subsets to train. Empty: every subset of "
                              "the version and scale.", "Subsets", items={"type": "string"}),
        "seeds": optional("array", "Seeds", "Each subset is trained once per seed, e.g. [0, 1, 2]; the "
                          "leaderboard shows the mean ± spread. Empty: the config's training.seeds.", "Subsets",
                          **item_limits("training.seeds", "integer")),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. '
                                     '{"training.samples_seen": 51200}; see config/example.yaml.', "Advanced"),
    },
)
def train_clip():
    @task
    def prepare(params=None, triggering_asset_events=None) -> list[dict]:
        return STAGES["train"].planner()(dict(params or {}), event_extras(triggering_asset_events))

    @task(map_index_template="{{ job_name }}")
    def reshard(job: dict) -> dict:
        from airflow.sdk import get_current_context

        get_current_context()["job_name"] = job["name"]
        STAGES["reshard"].function()(job)
        return job

    @task(retries=2, retry_delay=datetime.timedelta(seconds=30), outlets=[TRAINED],
          map_index_template="{{ job_name }}", **STAGES["train"].resources.airflow())
    def train(job: dict, outlet_events=None) -> dict:
        from airflow.sdk import get_current_context

        get_current_context()["job_name"] = job["name"]
        record = STAGES["train"].function()(job)
        outlet_events[TRAINED].extra = record
        return record

    train.expand(job=reshard.expand(job=prepare()))


train_clip()
