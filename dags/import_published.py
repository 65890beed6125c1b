"""A pool from DataComp's published metadata: download_upstream.py's job, under the platform's ledger.

The folder download_upstream.py fetches for a scale (one parquet per metadata shard: uid, url, text,
sizes, both CLIP scores, face boxes, sha256; an npz of features beside), or a part of it, becomes a
pool of its own under `{storage_root}/datasets/{name}`, kept as published: DataComp's uids, scores,
features and boxes, nothing recomputed, no metadata pass (no GPU). Its Asset events start
`filtering_baselines` on the published metadata before any image is fetched; the download then takes
all of the pool, nothing, or only the union of chosen baselines' subsets.

1. **prepare**: the run's config, the pool's root, the metadata files it takes (positions or names),
   the pool version (the open one, or the next).
2. **scan_published**: each new file checked (columns and types, 32-hex uids, no uid twice, npz rows
   aligned) and copied as it is; a row that cannot be downloaded safely (no http(s) URL, a face box no
   blur covers) is a counted skip with ledger status `invalid_metadata`.
3. **limit_download**: download=subsets: the union of the `download_only` baselines' subsets of the
   pool's newest published version (drawn where missing), and what it saves.
4. **plan_download** / **download_published**: img2dataset with download_upstream.py's settings (512 px,
   keep_ratio_largest, jpg, 10,000 per shard, retries 2), faces blurred from the published boxes, each
   image's sha256 checked against the published one (`hash_mismatch`, kept and flagged, or dropped);
   the address guard, transient retries across runs and mapped partitions as in `commonpool_build`.
5. **publish_published** / **announce_{scale}**: the version (metadata, shards so far, the scale's pool),
   its decay report, and an Asset event for its scale.
6. **summarize**: what the run imported and downloaded, what the limit saved, the pool's decay.
"""

from __future__ import annotations

import datetime

from airflow.sdk import Param, dag, task

from datacomp_ops.core.config import SCALES
from datacomp_ops.stages import STAGES
from form_fields import NAME, optional
from pool_tasks import DOWNLOAD_RETRIES, DOWNLOAD_RETRY_DELAY, announce, pool_lease, run_seconds


@dag(
    schedule=None,  # triggered from the UI, the CLI or the REST API; a schedule of its own re-downloads
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["datacomp", "import", "published"],
    params={
        "name": optional("string", "Pool name", "Its pool lives under {storage_root}/datasets/{name}; filter it "
                         "with this name. Empty with an empty metadata folder on the embedded default: "
                         "published_example.", "Pool", pattern=NAME),
        "metadata": optional("string", "Published metadata folder", "What download_upstream.py fetches into "
                             "{data_dir}/metadata (local or s3://...): *.parquet, *.npz beside. Empty on the "
                             "embedded default: the synthetic world's published pool.", "Pool"),
        "scale": Param("small", type="string", enum=list(SCALES), title="Scale", section="Pool",
                       description="The DataComp scale the metadata was published for."),
        "shards": optional("string", "Metadata files", "Positions in name order (0-9,12) or file names; "
                           "empty: all.", "Pool"),
        "npz": Param(True, type="boolean", title="Features (npz)", section="Pool",
                     description="Copy each file's npz (the image-based, SemDeDup and DBP baselines need it)."),
        "subset": optional("string", "Subset file", "A DataComp subset file (.npy): only its uids enter the "
                           "pool. Empty: every row.", "Pool"),
        "download": Param("all", type="string", enum=["all", "none", "subsets"], title="Download",
                          section="Download", description="all: as download_upstream.py; none: the metadata "
                          "alone (--skip_shards); subsets: only the union of the baselines below."),
        "download_only": optional("array", "Subsets to download", "download=subsets: labels of "
                                  "filtering.baselines, e.g. clip_score_l14_30 and basic_filter; drawn on the "
                                  "pool's newest version where missing.", "Download", items={"type": "string"}),
        "hash_mismatch": optional("string", "sha256 mismatch", "keep (flagged hash_mismatch) or drop an image "
                                  "whose bytes differ from the published sha256. Empty: the config's "
                                  "download.hash_mismatch (keep).", "Download", pattern="^(keep|drop)$"),
        "pool_version": optional("string", "Pool version", "Empty: the pool's open version, or its next one.",
                                 "Pool", pattern=NAME),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. {"download.timeout": 5}; '
                                     "see config/example.yaml.", "Advanced"),
    },
)
def import_published():
    @task
    def prepare(params=None, run_id=None) -> dict:
        from datacomp_ops.pool.build import form_overrides
        from datacomp_ops.pool.published import make_published_spec

        fields = {"hash_mismatch": ("download.hash_mismatch", params["hash_mismatch"])} \
            if params.get("hash_mismatch") else {}
        overrides = form_overrides(fields, {}, params.get("config_overrides"))
        spec = make_published_spec(run_id, params.get("name") or "", params.get("metadata") or "", params["scale"],
                                   params.get("shards") or "", params["npz"], params.get("subset") or "",
                                   params.get("pool_version") or "", overrides, download=params["download"],
                                   download_only=params.get("download_only") or []).to_dict()
        with pool_lease(spec, run_id):  # make_published_spec took the version's lease for this process: now the run's
            return spec

    def stage_task(name: str, **task_args):
        """A task running one stage of the registry on the run's spec."""

        @task(task_id=name, **STAGES[name].resources.airflow(), **task_args)
        def run(spec: dict, run_id=None) -> dict:
            from datacomp_ops.pool.build import BuildSpec

            with pool_lease(spec, run_id):
                return STAGES[name].function()(BuildSpec(**spec)).to_dict()

        return run

    @task
    def plan_download(spec: dict, run_id=None) -> list[dict]:
        from datacomp_ops.pool.build import BuildSpec

        with pool_lease(spec, run_id):
            return STAGES["download_published"].planner()(BuildSpec(**spec))

    @task(max_active_tis_per_dag=2, retries=DOWNLOAD_RETRIES, retry_delay=DOWNLOAD_RETRY_DELAY,
          retry_exponential_backoff=True)
    def download_published(partition: dict, spec: dict, ti=None, run_id=None) -> dict:
        from datacomp_ops.download.partition import Partition
        from datacomp_ops.pool.build import BuildSpec

        build = BuildSpec(**spec)
        last_try = ti is None or ti.try_number > ti.max_tries
        with pool_lease(spec, run_id):
            return STAGES["download_published"].function()(Partition(**partition), build.pool,
                                                           build.platform_config, last_try).to_dict()

    @task(task_id="publish_published", trigger_rule="none_failed")
    def publish(spec: dict, run_id=None) -> dict:
        from airflow.exceptions import AirflowSkipException

        from datacomp_ops.pool.build import BuildSpec

        with pool_lease(spec, run_id):
            stats = STAGES["publish_published"].function()(BuildSpec(**spec))
        if stats["unchanged"]:
            raise AirflowSkipException(f"pool version {spec['pool_version']} imports and downloads nothing new: "
                                       f"not published, no Asset events")
        return stats.to_dict()

    @task(trigger_rule="none_failed")
    def summarize(spec: dict, dag_run=None, run_id=None) -> dict:
        from datacomp_ops.pool.build import BuildSpec
        from datacomp_ops.pool.published import format_published_summary, summarize_published

        with pool_lease(spec, run_id, release=True):  # the run ends here, whatever the summary finds
            summary = summarize_published(BuildSpec(**spec), run_seconds(dag_run))
        print(format_published_summary(summary))
        return {k: v for k, v in summary.items() if k != "decay"} | {"held": summary["decay"]["now"]["held"]}

    spec = prepare()
    scanned = stage_task("scan_published")(spec)
    limited = stage_task("limit_download")(spec)
    plan = plan_download(spec)
    scanned >> limited >> plan
    published = publish(spec)
    download_published.partial(spec=spec).expand(partition=plan) >> published
    published >> [announce(scale)(spec) for scale in SCALES] >> summarize(spec)


import_published()
