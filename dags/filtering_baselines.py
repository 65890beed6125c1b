"""Filtering baselines: DataComp's baselines (and any composed in the config) over a pool's metadata.

Runs when `commonpool_build` or `import_dataset` publishes a scale (its Asset events name the pool
version and scale), or from the form: a published pool version and scale (of the CommonPool or of an
imported dataset), or any folder of metadata in DataComp's format (parquet + npz), so the track runs
before or beside the pool build.

1. **prepare**: the pools to filter (from the triggering Asset events, or the form) and the
   baselines (the config's `filtering.baselines`, or those the form names; a form entry that is
   not a label is a new spec, e.g. `b32_10 = clip_score:arch=b32,fraction=0.1`).
2. **filter_baseline**: one mapped task per (pool, baseline): writes the DataComp subset file
   (`u8,u8`, sorted) and its stats record (kept count and fraction, thresholds, seconds) under
   `{pool's root}/subsets/{version}/{scale}/`, and an Asset event for training.
3. **summarize**: the table of baselines, kept counts and fractions.
"""

from __future__ import annotations

import datetime

from airflow.sdk import Param, dag, task

from datacomp_assets import POOL_ASSETS, SCALES, SUBSETS
from form_fields import optional
from stage_tasks import job_task, plan_task


@dag(
    schedule=POOL_ASSETS["tiny"] | POOL_ASSETS["small"] | POOL_ASSETS["medium"] | POOL_ASSETS["large"]
    | POOL_ASSETS["xlarge"],
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    tags=["datacomp", "filtering"],
    params={
        "dataset": optional("string", "Imported dataset", "The name given to import_dataset. Empty: the "
                            "CommonPool.", "Pool", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "pool_version": optional("string", "Pool version", "A published version (v0001...). Empty: the newest.",
                                 "Pool", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "scale": Param("tiny", type="string", enum=list(SCALES), title="Scale",
                       description="Filter this scale's pool of the version.", section="Pool"),
        "metadata_dir": optional("string", "Metadata folder", "Any folder of DataComp-format metadata "
                                 "(*.parquet with *.npz beside) instead of a pool version.", "Pool"),
        "baselines": optional("array", "Baselines", "Labels of filtering.baselines, or new specs "
                              "(label = name:key=value,...). Empty: every baseline of the config.",
                              "Baselines", items={"type": "string"}),
        "output_dir": optional("string", "Output folder", "Empty: {root}/subsets/{version}/{scale}, or "
                               "{root}/subsets/external/{folder name} for a metadata folder.", "Baselines"),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. '
                                     '{"filtering.seed": 1}; see config/example.yaml.', "Advanced"),
    },
)
def filtering_baselines():
    @task
    def summarize(jobs: list[dict]) -> str:
        from datacomp_ops.filtering.plan import job_records
        from datacomp_ops.filtering.run import format_table

        table = format_table(job_records(jobs))
        print(table)
        return table

    jobs = plan_task("filter_baseline")()
    job_task("filter_baseline", outlet=SUBSETS).expand(job=jobs) >> summarize(jobs)


filtering_baselines()
