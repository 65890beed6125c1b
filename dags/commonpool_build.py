"""CommonPool build: Common Crawl WAT files to a pool of image-text webdataset shards.

1. **prepare**: resolve the run's config (Params override the YAML config) and its WAT inputs
   (default: the synthetic crawl that `datacomp synthetic` wrote under the storage root).
2. **extract_urls**: Spark job (`spark_default` connection) that reads only WAT files not yet
   in the crawl's manifest, keeps `IMG@/src` links with alt text, dedups on uid.
3. **plan_download** / **download**: one mapped img2dataset task per URL partition.
4. **summarize**: checks that the ledger accounts for every extracted URL and reports totals.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task

SPARK_JOB = str(Path(__file__).resolve().parents[1] / "spark_jobs" / "extract_urls.py")


@dag(
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["datacomp", "commonpool"],
    params={
        "crawl_id": Param("CC-SYNTH-2026-47", type="string", title="Crawl id"),
        "wat_inputs": Param([], type="array", title="WAT files or wat.paths.gz listings",
                            description="Empty: the synthetic crawl under the storage root."),
        "pool_version": Param("", type="string", title="Pool version", description="Empty: the crawl id."),
        "config_overrides": Param({}, type="object", title="Config overrides",
                                  description='Dotted keys, e.g. {"download.timeout": 5}.'),
    },
)
def commonpool_build():
    @task
    def prepare(params=None, run_id=None) -> dict:
        from datacomp_ops.build import make_spec

        return make_spec(run_id, params["crawl_id"], params["pool_version"],
                         params["wat_inputs"], params["config_overrides"]).to_dict()

    spec = prepare()

    extract_urls = SparkSubmitOperator(
        task_id="extract_urls",
        conn_id="spark_default",
        application=SPARK_JOB,
        name="extract_urls",
        application_args=[
            "--crawl-id", "{{ ti.xcom_pull(task_ids='prepare')['crawl_id'] }}",
            "--report", "{{ ti.xcom_pull(task_ids='prepare')['report'] }}",
            "--config-json", "{{ ti.xcom_pull(task_ids='prepare')['config'] | tojson }}",
            "--inputs-json", "{{ ti.xcom_pull(task_ids='prepare')['inputs'] | tojson }}",
        ],
        conf={"spark.ui.enabled": "false"},
    )

    @task
    def plan_download(spec: dict) -> list[dict]:
        from datacomp_ops.build import BuildSpec, plan_download

        return plan_download(BuildSpec(**spec))

    @task(max_active_tis_per_dag=2, retries=1)
    def download(partition: dict, spec: dict) -> dict:
        from datacomp_ops.build import BuildSpec
        from datacomp_ops.download import Partition, run_download

        build = BuildSpec(**spec)
        return run_download(Partition(**partition), build.pool, build.platform_config).to_dict()

    @task(trigger_rule="none_failed")  # also when no new WAT file gave partitions to download
    def summarize(spec: dict, parts: list[dict], dag_run=None) -> dict:
        from datacomp_ops.build import BuildSpec, format_summary, summarize

        seconds = None
        if dag_run is not None and dag_run.start_date is not None:
            seconds = (datetime.datetime.now(datetime.timezone.utc) - dag_run.start_date).total_seconds()
        summary = summarize(BuildSpec(**spec), seconds)
        print(format_summary(summary))
        return summary

    plan = plan_download(spec)
    spec >> extract_urls >> plan
    parts = download.partial(spec=spec).expand(partition=plan)
    summarize(spec, parts)


commonpool_build()
