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

from airflow.sdk import Param, dag

from datacomp_assets import SCALES, SUBSETS, TRAINED
from form_fields import item_limits, optional
from pool_tasks import MODEL_CHAIN
from stage_tasks import job_task, plan_task


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
    jobs = plan_task("train")()
    # every reshard before any training: a subset's other seeds train on the shards its first job writes
    resharded = job_task("reshard").expand(job=jobs)
    resharded >> job_task("train", outlet=TRAINED, retries=2,
                          retry_delay=datetime.timedelta(seconds=30)).expand(job=jobs)


train_clip()
