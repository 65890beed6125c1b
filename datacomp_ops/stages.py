"""The pipeline, defined once: every stage's function, planner, data on storage, resources and counters.

The DAGs (dags/) and the command line (cli.py) both take their stages from
here: which functions run in which order, which of them map over a plan,
where they run (a GPU stage goes to Airflow's pool ``gpu`` and the Celery
queue the GPU workers listen on), and which counters each one reports (the
run summary reads them through the declared set, see core/stats.Counters).
Every stage function returns core.stats.StageStats (its counters, seconds and
outputs); what a stage commits for others to read (a batch report, a subset's
record, a training record) is on storage, and `record` reads it back for a
job. Nothing heavy is imported: functions are named ``module:attribute`` and
imported when a stage runs, so DAG files import this module at parse time.

Inputs and outputs name core/layout.py's entries (``PoolLayout.downloads``),
so the registry says what each stage reads and writes on storage; a test
checks that each one exists.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

# the Celery queue that GPU workers listen on (LocalExecutor ignores queues)
GPU_QUEUE = os.environ.get("DATACOMP_GPU_QUEUE", "gpu")


@dataclass(frozen=True)
class Resources:
    """Where a stage runs: on a CPU worker, or on a GPU one; its Airflow pool bounds how many run at once."""

    device: str = "cpu"
    pool: str = ""
    queue: str = ""

    def airflow(self) -> dict[str, str]:
        """The task arguments that place a stage's tasks: its pool and queue, when it has them."""
        return {k: v for k, v in (("pool", self.pool), ("queue", self.queue)) if v}


CPU = Resources()
GPU = Resources("gpu", pool="gpu", queue=GPU_QUEUE)


def _resolve(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Stage:
    name: str
    run: str  # "module:function", the stage's entry point
    plan: str = ""  # "module:function" giving the work items it maps over; "" = one task per run
    inputs: tuple[str, ...] = ()  # core/layout.py entries it reads
    outputs: tuple[str, ...] = ()  # and writes
    resources: Resources = CPU
    counters: str = ""  # "module:COUNTERS", the core.stats.Counters it reports
    # "module:function" giving a job's committed record (what its Asset event tells the next DAG)
    record: str = ""
    about: str = ""

    def function(self) -> Callable:
        return _resolve(self.run)

    def planner(self) -> Callable | None:
        return _resolve(self.plan) if self.plan else None

    def record_of(self) -> Callable | None:
        return _resolve(self.record) if self.record else None

    def declared(self):
        """The stage's core.stats.Counters, or None for a stage whose record is not a counter table."""
        return _resolve(self.counters) if self.counters else None


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("extract_urls", "datacomp_ops.crawl.extract:run_extract_urls",
          inputs=("CrawlLayout.wat_manifest",), outputs=("CrawlLayout.urls", "CrawlLayout.wat_manifest",
                                                         "CrawlLayout.report"),
          counters="datacomp_ops.crawl.extract:COUNTERS",
          about="Spark over WAT files into uid-deduplicated URL partitions"),
    Stage("scan", "datacomp_ops.pool.byod:run_scan",
          inputs=("CrawlLayout.wat_manifest",), outputs=("CrawlLayout.urls", "CrawlLayout.staging",
                                                         "CrawlLayout.report"),
          counters="datacomp_ops.crawl.extract:COUNTERS",
          about="an import's source files into URL partitions (and staged samples of webdataset shards)"),
    Stage("download", "datacomp_ops.download.partition:run_download", plan="datacomp_ops.pool.build:plan_download",
          inputs=("CrawlLayout.urls", "PoolLayout.requeue", "PoolLayout.ledger"),
          outputs=("PoolLayout.downloads", "PoolLayout.ledger", "PoolLayout.markers"),
          counters="datacomp_ops.download.partition:COUNTERS",
          about="img2dataset over one URL partition into raw webdataset shards, and its ledger part"),
    Stage("ingest", "datacomp_ops.pool.byod:run_ingest", plan="datacomp_ops.pool.byod:plan_ingest",
          inputs=("CrawlLayout.urls", "CrawlLayout.staging"),
          outputs=("PoolLayout.downloads", "PoolLayout.ledger", "PoolLayout.markers"),
          counters="datacomp_ops.download.partition:COUNTERS",
          about="an imported partition's samples into raw shards: downloaded by URL, or copied from shards"),
    Stage("scan_published", "datacomp_ops.pool.published:run_scan_published",
          inputs=("CrawlLayout.wat_manifest",), outputs=("CrawlLayout.urls", "PoolLayout.metadata", "PoolLayout.ledger",
                                                         "CrawlLayout.report"),
          counters="datacomp_ops.pool.published:COUNTERS",
          about="DataComp's published metadata files, checked and copied as they are, into URL parts"),
    Stage("limit_download", "datacomp_ops.filtering.download_limit:run_download_limit",
          inputs=("SubsetsLayout.subset", "PoolLayout.manifest"),
          outputs=("PoolLayout.download_limit", "PoolLayout.download_limit_record"),
          counters="datacomp_ops.filtering.download_limit:COUNTERS",
          about="the union of the chosen baselines' subsets (drawn on the published metadata where missing)"),
    Stage("download_published", "datacomp_ops.download.partition:run_download",
          plan="datacomp_ops.pool.published:plan_published_download",
          inputs=("CrawlLayout.urls", "PoolLayout.requeue", "PoolLayout.ledger", "PoolLayout.download_limit"),
          outputs=("PoolLayout.downloads", "PoolLayout.ledger", "PoolLayout.markers"),
          counters="datacomp_ops.download.partition:COUNTERS",
          about="img2dataset with download_upstream.py's settings, faces blurred from the published boxes, "
                "each image's sha256 checked against the published one"),
    Stage("publish_published", "datacomp_ops.pool.published:run_publish_published",
          inputs=("PoolLayout.metadata", "PoolLayout.ledger", "PoolLayout.markers"),
          outputs=("PoolLayout.manifest", "PoolLayout.scales", "PoolLayout.decay_report"),
          about="the version: published metadata, shards so far, the scale's pool, the decay report"),
    Stage("prepare_models", "datacomp_ops.pool.prepare_models:run_prepare_models",
          outputs=("eval_index_dir",), resources=GPU,
          about="every model of the metadata pass loaded once, the stand-ins trained, the eval index built"),
    Stage("metadata", "datacomp_ops.pool.metadata:run_metadata", plan="datacomp_ops.pool.build:plan_metadata",
          inputs=("PoolLayout.downloads", "eval_index_dir"),
          outputs=("PoolLayout.shards", "PoolLayout.metadata", "PoolLayout.ledger", "PoolLayout.markers"),
          resources=GPU, counters="datacomp_ops.pool.metadata:COUNTERS",
          about="NSFW captions and images, eval-set dedup, faces and CLIP features in one read of each shard"),
    Stage("publish", "datacomp_ops.pool.publish:run_publish",
          inputs=("PoolLayout.metadata", "PoolLayout.ledger"), outputs=("PoolLayout.manifest", "PoolLayout.scales"),
          about="the version's per-scale pools and manifest, and the ledger's final accounts"),
    Stage("filter_baseline", "datacomp_ops.filtering.plan:run_filter_job",
          plan="datacomp_ops.filtering.plan:plan_filtering", record="datacomp_ops.filtering.plan:job_record",
          inputs=("PoolLayout.manifest", "PoolLayout.metadata", "PoolLayout.scales"),
          outputs=("SubsetsLayout.subset", "SubsetsLayout.record"), counters="datacomp_ops.filtering.run:COUNTERS",
          about="one baseline over one pool's metadata: a DataComp subset file and its stats record"),
    Stage("reshard", "datacomp_ops.training.plan:run_reshard_job", plan="datacomp_ops.training.plan:plan_training",
          inputs=("SubsetsLayout.subset", "PoolLayout.shards"), outputs=("run_dir",),
          about="a subset's samples of the pool's shards, resharded into its seed-0 run folder"),
    Stage("train", "datacomp_ops.training.plan:run_train_job", plan="datacomp_ops.training.plan:plan_training",
          record="datacomp_ops.training.plan:training_record", inputs=("run_dir",), outputs=("run_dir",), resources=GPU,
          about="CLIP with DataComp's recipe for the scale, once per seed"),
    Stage("evaluate", "datacomp_ops.evaluation.plan:run_evaluation_job",
          plan="datacomp_ops.evaluation.plan:plan_evaluation", record="datacomp_ops.evaluation.plan:evaluation_record",
          inputs=("run_dir",), outputs=("run_dir",),
          resources=GPU, about="zero-shot evaluation on DataComp's tasks"),
    Stage("leaderboard", "datacomp_ops.evaluation.leaderboard:run_leaderboard",
          inputs=("runs_dir", "datasets_dir"), outputs=("leaderboard_dir",),
          about="the table and HTML report over every evaluated run"),
)}

# Each DAG's stages in order. The build's end (prepare_models onwards) is the same for both sources.
POOL_END = ("prepare_models", "metadata", "publish")
PIPELINES: dict[str, tuple[str, ...]] = {
    "commonpool_build": ("extract_urls", "download", *POOL_END),
    "import_dataset": ("scan", "ingest", *POOL_END),
    "import_published": ("scan_published", "limit_download", "download_published", "publish_published"),
    "filtering_baselines": ("filter_baseline",),
    "train_clip": ("reshard", "train"),
    "evaluate_clip": ("evaluate", "leaderboard"),
}


def pipeline(dag_id: str) -> list[Stage]:
    return [STAGES[name] for name in PIPELINES[dag_id]]
