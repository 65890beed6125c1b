"""CommonPool build: Common Crawl WAT files to a published pool with DataComp's metadata.

1. **prepare**: resolve the run's config (Params override the YAML config) and its WAT inputs
   (default: the synthetic crawl that `datacomp synthetic` wrote under the storage root).
2. **extract_urls**: Spark job (`spark_default` connection) that reads only WAT files not yet
   in the crawl's manifest, keeps `IMG@/src` links with alt text, dedups on uid.
3. **plan_download** / **download**: one mapped img2dataset task per URL partition.
4. **prepare_models** (pool `gpu`): every model loads, the embedded CLIP stand-ins are trained,
   the evaluation sets are indexed for dedup; meanwhile extraction and download run.
5. **plan_metadata** / **metadata** (pool `gpu`, queue `gpu`): one mapped task per group of raw
   shards: NSFW captions and images, eval-set dedup, faces (blurred), CLIP B/32 and L/14 features,
   in one decode of each image; writes the published shards, metadata parquet + npz, the ledger.
6. **publish**: per-scale pools (nested subset files), the manifest, an Asset event per scale.
7. **summarize**: per-stage table; checks that every extracted URL has exactly one final status.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task
from datacomp_assets import POOL_ASSETS

SPARK_JOB = str(Path(__file__).resolve().parents[1] / "spark_jobs" / "extract_urls.py")
# GPU stages: Airflow pool `gpu` (its slots bound the GPU tasks at once) and the
# Celery queue that GPU workers listen on; LocalExecutor ignores queues.
GPU = {"pool": "gpu", "queue": os.environ.get("DATACOMP_GPU_QUEUE", "gpu")}


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

    @task(**GPU)
    def prepare_models(spec: dict) -> dict:
        from datacomp_ops.build import BuildSpec
        from datacomp_ops.prepare_models import run_prepare_models

        return run_prepare_models(BuildSpec(**spec).platform_config).to_dict()

    @task(trigger_rule="none_failed")  # also when no new WAT file gave partitions to download
    def plan_metadata(spec: dict) -> list[list[int]]:
        from datacomp_ops.build import BuildSpec, plan_metadata

        return plan_metadata(BuildSpec(**spec))

    @task(retries=2, **GPU)
    def metadata(shards: list[int], spec: dict) -> dict:
        from datacomp_ops.build import BuildSpec
        from datacomp_ops.metadata import run_metadata

        build = BuildSpec(**spec)
        return run_metadata(shards, build.pool, build.platform_config).to_dict()

    @task(trigger_rule="none_failed", outlets=list(POOL_ASSETS.values()))
    def publish(spec: dict, outlet_events=None) -> dict:
        from airflow.exceptions import AirflowSkipException

        from datacomp_ops import storage
        from datacomp_ops.build import BuildSpec
        from datacomp_ops.publish import asset_extras, run_publish

        build = BuildSpec(**spec)
        stats = run_publish(build.pool, build.platform_config)
        if stats["unchanged"]:
            raise AirflowSkipException(f"pool {build.pool_version} holds nothing new: no Asset events")
        for scale, extra in asset_extras(storage.read_json(build.pool.manifest)).items():
            outlet_events[POOL_ASSETS[scale]].extra = extra
        return stats.to_dict()

    @task(trigger_rule="none_failed")
    def summarize(spec: dict, dag_run=None) -> dict:
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
    groups = plan_metadata(spec)
    parts >> groups
    described = metadata.partial(spec=spec).expand(shards=groups)
    prepare_models(spec) >> described
    described >> publish(spec) >> summarize(spec)


commonpool_build()
