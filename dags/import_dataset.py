"""Import a dataset of your own as a pool: webdataset shards, or parquet tables of URLs and captions.

The dataset becomes a pool of its own under `{storage_root}/datasets/{name}`, with the CommonPool's
metadata (NSFW, eval-set dedup, faces blurred, CLIP B/32 and L/14 features), ledger, pool versions
and per-scale pools; its Asset events start `filtering_baselines` as a CommonPool build's do, and
every baseline, the resharder and training take it. Importing the same folder again reads only
the files no earlier import read, and publishes the next version with the new samples.

1. **prepare**: the run's config, the dataset's root, its source files and their kind.
2. **scan**: the new source files: uid = md5(caption + url) (a shard's sample without a URL gets
   `{shard}#{key}`), deduplicated within the import and against earlier ones; samples without a
   caption or an image are counted skips.
3. **plan_ingest** / **ingest**: one mapped task per URL partition (img2dataset downloads, as
   in the CommonPool build) or per source shard (its samples resized by img2dataset's resizer
   into raw shards); every sample gets a download-stage ledger status.
4. **plan_metadata** / **metadata**, **prepare_models**, **publish**, **announce_{scale}**,
   **summarize**: exactly as in `commonpool_build`.
"""

from __future__ import annotations

import datetime

from airflow.sdk import Param, dag, task

from datacomp_ops.core.config import SCALES
from datacomp_ops.stages import STAGES
from form_fields import NAME, optional
from pool_tasks import DOWNLOAD_RETRIES, DOWNLOAD_RETRY_DELAY, finish_pool_build, pool_lease


@dag(
    schedule=None,  # triggered from the UI, the CLI or the REST API
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["datacomp", "import"],
    params={
        # Both empty: on the embedded default, the synthetic world's example dataset; elsewhere prepare
        # says which is missing.
        "name": optional("string", "Dataset name", "Its pool lives under {storage_root}/datasets/{name}; filter "
                         "it with this name. Empty with empty sources on the embedded default: example.",
                         "Dataset", pattern=NAME),
        "sources": optional("array", "Source files or folders", "One per line: webdataset .tar shards, .parquet "
                            "tables of URLs and captions, folders or globs of either (local or s3://...). Empty on "
                            "the embedded default: the synthetic world's example shards.",
                            "Dataset", items={"type": "string"}),
        "kind": Param("auto", type="string", enum=["auto", "webdataset", "urls"], title="Kind",
                      description="auto: from the files' extensions.", section="Dataset"),
        "url_column": optional("string", "URL column", "URL tables. Empty: url or URL.", "Columns"),
        "caption_column": optional("string", "Caption column", "URL tables. Empty: caption, text, TEXT or alt.",
                                   "Columns"),
        "scale": Param("xlarge", type="string", enum=list(SCALES), title="Scale",
                       description="URL tables: download what this scale's pool needs; xlarge: everything.",
                       section="Pool"),
        "pool_version": optional("string", "Pool version", "Empty: the dataset's open version, or its next one.",
                                 "Pool", pattern=NAME),
        "config_overrides": optional("object", "Other config keys", 'Dotted keys, e.g. {"download.image_size": '
                                     "256}; see config/example.yaml.", "Advanced"),
    },
)
def import_dataset():
    @task
    def prepare(params=None, run_id=None) -> dict:
        from datacomp_ops.pool.build import form_overrides
        from datacomp_ops.pool.byod import make_import_spec

        overrides = form_overrides({"scale": ("scale", params["scale"])}, {}, params.get("config_overrides"))
        spec = make_import_spec(run_id, params.get("name") or "", params.get("sources") or [], params["kind"],
                                params.get("url_column") or "", params.get("caption_column") or "",
                                params.get("pool_version") or "", overrides).to_dict()
        with pool_lease(spec, run_id):  # make_import_spec took the version's lease for this process: now the run's
            return spec

    @task
    def scan(spec: dict, run_id=None) -> dict:
        from datacomp_ops.pool.build import BuildSpec

        with pool_lease(spec, run_id):
            return STAGES["scan"].function()(BuildSpec(**spec)).to_dict()

    @task
    def plan_ingest(spec: dict, run_id=None) -> list[dict]:
        from datacomp_ops.pool.build import BuildSpec

        with pool_lease(spec, run_id):
            return STAGES["ingest"].planner()(BuildSpec(**spec))

    @task(max_active_tis_per_dag=2, retries=DOWNLOAD_RETRIES, retry_delay=DOWNLOAD_RETRY_DELAY,
          retry_exponential_backoff=True, map_index_template="{{ part_name }}")
    def ingest(partition: dict, spec: dict, ti=None, run_id=None) -> dict:
        from airflow.sdk import get_current_context

        from datacomp_ops.download.partition import Partition
        from datacomp_ops.pool.build import BuildSpec

        get_current_context()["part_name"] = partition["path"].rsplit("/", 1)[-1]
        last_try = ti is None or ti.try_number > ti.max_tries
        with pool_lease(spec, run_id):
            return STAGES["ingest"].function()(Partition(**partition), BuildSpec(**spec), last_try).to_dict()

    spec = prepare()
    plan = plan_ingest(spec)
    scan(spec) >> plan
    finish_pool_build(spec, ingest.partial(spec=spec).expand(partition=plan))


import_dataset()
