"""Published pools imported again, weekly, each as its newest version recorded.

A published pool decays: links die, hosts fail for a while and come back. Every week this DAG starts an
`import_published` run for each published pool under the storage root (or the pools the form names)
with the settings its newest version recorded (metadata folder, scale, files, npz, subset file,
download mode and subsets, sha256 rule; datacomp_ops/pool/published_refresh.py): new metadata files in
the folder are imported, URLs that failed transiently and have attempts left are fetched again (a pool
downloaded by subsets keeps to the same baselines' union), and the new version's decay report adds a
point to the pool's decay over time (the platform page shows it).

1. **pools**: the import_published conf of each pool to refresh.
2. **import_again**: one `import_published` run per pool (they queue: import_published runs one at a
   time), with run ids that name this run and the pool.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from form_fields import NAME, optional


@dag(
    # weekly, as the CommonPool build: a dead link stays dead, a failing host is given a week to recover
    schedule="@weekly",
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["datacomp", "import", "published"],
    params={
        "names": optional("array", "Pools", "Published pools to refresh, one per line. Empty: every published "
                          "pool under the storage root.", "Pools", items={"type": "string", "pattern": NAME}),
    },
)
def refresh_published():
    @task
    def pools(params=None, run_id=None) -> list[dict]:
        from datacomp_ops.core.config import load_config
        from datacomp_ops.pool.published_refresh import refreshes

        confs = refreshes(load_config().storage_root, params.get("names") or [])
        print(f"{len(confs)} published pools to refresh: {', '.join(c['name'] for c in confs) or 'none'}")
        return [{"conf": conf, "trigger_run_id": f"{run_id}__{conf['name']}"} for conf in confs]

    TriggerDagRunOperator.partial(task_id="import_again", trigger_dag_id="import_published").expand_kwargs(pools())


refresh_published()
