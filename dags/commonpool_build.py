"""CommonPool build: Common Crawl WAT files to a published pool with DataComp's metadata.

Runs weekly: each run builds the newest crawl of the crawl source taken in the week of its logical
date, reads only the WAT files no earlier run read, and publishes a new pool version holding the
previous version's samples plus the new ones (the manifest lists the old files, nothing is copied).
`airflow backfill create --dag-id commonpool_build --from-date ... --to-date ...` builds past crawls;
`--dag-run-conf '{"scale": "small"}'` builds only what that scale needs.

1. **prepare**: resolve the run's config (Params override the YAML config), its crawl and WAT
   inputs, and its pool version (the open one, or the next).
2. **extract_urls**: Spark job (`spark_default` connection) that reads only WAT files not yet
   in the crawl's manifest, keeps `IMG@/src` links with alt text, dedups on uid within the crawl
   and against every crawl before. A WAT file not read to its end (unreadable, empty, cut short,
   not WARC) stays pending for the next run, up to extract.max_read_attempts reads.
3. **plan_download** / **download**: one mapped img2dataset task per URL partition: this run's,
   any an earlier run left, and requeued URLs (transient failures below the attempt limit, URLs a
   smaller scale's build deferred). A partition whose URLs mostly failed transiently fails its
   try, and Airflow retries it.
4. **prepare_models** (pool `gpu`): every model loads, the embedded CLIP stand-ins are trained,
   the evaluation sets are indexed for dedup; meanwhile extraction and download run.
5. **plan_metadata** / **metadata** (pool `gpu`, queue `gpu`): one mapped task per group of raw
   shards: NSFW captions and images, eval-set dedup, faces (blurred), CLIP B/32 and L/14 features,
   in one decode of each image; writes the published shards, metadata parquet + npz, the ledger.
6. **publish** / **announce_{scale}**: per-scale pools (nested subset files), the manifest, and an
   Asset event for each scale this version built.
7. **summarize**: what the run added and what the pool holds, the per-stage table; checks that
   every URL ever extracted has exactly one current status.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task

from datacomp_ops.core.config import SCALES
from datacomp_ops.stages import STAGES
from form_fields import NAME, config_default, limits, optional
from pool_tasks import DOWNLOAD_RETRIES, DOWNLOAD_RETRY_DELAY, finish_pool_build, pool_lease

SPARK_JOB = str(Path(__file__).resolve().parents[1] / "spark_jobs" / "extract_urls.py")


# Form fields -> the config keys they set (datacomp_ops.core.config); empty fields set nothing.
CONFIG_PARAMS = {
    "scale": "scale",
    "crawl_source": "crawl.source",
    "max_wat_files": "extract.max_wat_files",
    "download_timeout": "download.timeout",
    "max_attempts": "download.max_attempts",
    "model_detoxify": "models.detoxify",
    "model_scrfd": "models.scrfd",
    "model_clip_b32": "models.clip_b32",
    "model_clip_l14": "models.clip_l14",
    "model_dedup_descriptor": "models.dedup_descriptor",
    "model_nsfw_image_mlp": "models.nsfw_image_mlp",
}
# Threshold fields -> the role whose running model's threshold they set: DataComp's model's key when its
# path is given, the embedded default's own key otherwise (datacomp_ops.pool.models.THRESHOLDS).
THRESHOLD_PARAMS = {
    "threshold_nsfw_text": "nsfw_text",
    "threshold_nsfw_image": "nsfw_image",
    "threshold_eval_dedup": "dedup",
    "threshold_face_detection": "faces",
}
_MODEL = "Local path; empty: the config's path, or the embedded default when the config has none."


@dag(
    # weekly: each run builds the newest crawl of the source in its week, so new
    # crawls are picked up as they appear; `airflow backfill create` builds past ones
    schedule="@weekly",
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["datacomp", "commonpool"],
    params={
        "crawl_id": optional("string", "Crawl id", "Empty: the newest crawl of the crawl source taken in the week "
                             "of the run's logical date (or today), e.g. CC-MAIN-2024-33.", "Crawl",
                             pattern=NAME),
        "wat_inputs": optional("array", "WAT files or wat.paths.gz listings",
                               "One per line. Empty: the crawl's wat.paths.gz in the crawl source.", "Crawl",
                               items={"type": "string"}),
        "crawl_source": optional("string", "Crawl source", "A folder holding crawl-data/{crawl_id}/wat.paths.gz "
                                 "(s3://commoncrawl for Common Crawl). Empty: the config's.", "Crawl"),
        "scale": Param("xlarge", type="string", enum=list(SCALES), title="Scale",
                       description="Build what this DataComp scale needs: a smaller scale downloads only the URLs "
                                   "its pool can hold; xlarge builds the whole pool.", section="Pool"),
        "pool_version": optional("string", "Pool version", "Empty: the open version, or the next one (v0001, "
                                 "v0002...). A published version cannot be built again.", "Pool",
                                 pattern=NAME),
        "max_wat_files": optional("integer", "WAT files per run at most", "Empty: every new WAT file.",
                                  "Limits", minimum=1),
        "download_timeout": optional("number", "Download timeout (s)", "Per request. Empty: the config's "
                                     f"(default {config_default('download.timeout')}).", "Limits",
                                     **limits("download.timeout")),
        "max_attempts": optional("integer", "Download attempts per URL", "Across scheduled rebuilds, for "
                                 "transient failures. Empty: the config's "
                                 f"(default {config_default('download.max_attempts')}).", "Limits",
                                 **limits("download.max_attempts")),
        "threshold_nsfw_text": optional(
            "number", "NSFW caption threshold", "Sets the threshold of the model that runs: Detoxify's "
            "thresholds.nsfw_text with models.detoxify, else alt-profanity-check's "
            "thresholds.nsfw_text_profanity_check. Empty: the config's (DataComp's Detoxify "
            f"{config_default('thresholds.nsfw_text')}, alt-profanity-check "
            f"{config_default('thresholds.nsfw_text_profanity_check')}).", "Thresholds",
            **limits("thresholds.nsfw_text")),
        "threshold_nsfw_image": optional(
            "number", "NSFW image threshold", "Sets the threshold of the model that runs: DataComp's NSFW MLP's "
            "thresholds.nsfw_image with models.nsfw_image_mlp, else nudenet's thresholds.nsfw_image_nudenet. "
            f"Empty: the config's (DataComp's MLP {config_default('thresholds.nsfw_image')}, nudenet "
            f"{config_default('thresholds.nsfw_image_nudenet')}).", "Thresholds", **limits("thresholds.nsfw_image")),
        "threshold_eval_dedup": optional(
            "number", "Eval dedup similarity", "Cosine similarity of the descriptor that runs: ISC21's "
            "thresholds.eval_dedup_similarity with models.dedup_descriptor, else the thumbnail descriptor's "
            "thresholds.eval_dedup_similarity_thumbnail. Empty: the config's (DataComp's ISC21 "
            f"{config_default('thresholds.eval_dedup_similarity')}, thumbnail "
            f"{config_default('thresholds.eval_dedup_similarity_thumbnail')}).", "Thresholds",
            **limits("thresholds.eval_dedup_similarity")),
        "threshold_face_detection": optional(
            "number", "SCRFD score threshold", "thresholds.face_detection, with models.scrfd (OpenCV's cascade, "
            "the embedded default, takes none: a value without models.scrfd is refused). Empty: the config's "
            f"(DataComp's {config_default('thresholds.face_detection')}).", "Thresholds",
            **limits("thresholds.face_detection")),
        "model_detoxify": optional("string", "Detoxify checkpoint", _MODEL, "Models"),
        "model_scrfd": optional("string", "SCRFD onnx", _MODEL, "Models"),
        "model_clip_b32": optional("string", "CLIP ViT-B/32", _MODEL, "Models"),
        "model_clip_l14": optional("string", "CLIP ViT-L/14", _MODEL, "Models"),
        "model_dedup_descriptor": optional("string", "ISC21 descriptor", _MODEL, "Models"),
        "model_nsfw_image_mlp": optional("string", "NSFW image MLP", _MODEL, "Models"),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. {"download.timeout": 5}; '
                                     "see config/example.yaml.", "Advanced"),
    },
)
def commonpool_build():
    @task
    def prepare(params=None, run_id=None, dag_run=None) -> dict:
        from datacomp_ops.pool.build import form_overrides, make_spec

        fields = {name: (key, params[name]) for name, key in CONFIG_PARAMS.items() if params.get(name) is not None}
        thresholds = {name: (role, params[name]) for name, role in THRESHOLD_PARAMS.items()
                      if params.get(name) is not None}
        overrides = form_overrides(fields, thresholds, params.get("config_overrides"))
        when = dag_run.logical_date or dag_run.run_after
        spec = make_spec(run_id, params.get("crawl_id"), params.get("pool_version"), params.get("wat_inputs"),
                         overrides, logical_date=when).to_dict()
        with pool_lease(spec, run_id):  # make_spec took the version's lease for this process: now the run's
            return spec

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
    def plan_download(spec: dict, run_id=None) -> list[dict]:
        from datacomp_ops.pool.build import BuildSpec

        with pool_lease(spec, run_id):
            return STAGES["download"].planner()(BuildSpec(**spec))

    # A partition whose URLs mostly failed transiently (hosts or network down) fails
    # its try and is retried later; the last try commits what it got.
    @task(max_active_tis_per_dag=2, retries=DOWNLOAD_RETRIES, retry_delay=DOWNLOAD_RETRY_DELAY,
          retry_exponential_backoff=True)
    def download(partition: dict, spec: dict, ti=None, run_id=None) -> dict:
        from datacomp_ops.download.partition import Partition
        from datacomp_ops.pool.build import BuildSpec

        build = BuildSpec(**spec)
        last_try = ti is None or ti.try_number > ti.max_tries
        with pool_lease(spec, run_id):
            return STAGES["download"].function()(Partition(**partition), build.pool, build.platform_config,
                                                 last_try).to_dict()

    plan = plan_download(spec)
    spec >> extract_urls >> plan
    finish_pool_build(spec, download.partial(spec=spec).expand(partition=plan))


commonpool_build()
