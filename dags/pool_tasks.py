"""The tasks a pool build shares, whatever fed it: the metadata pass, publish, Asset events, summary.

`commonpool_build` (Common Crawl) and `import_dataset` (a dataset of your own) both end in these;
each task takes the run's spec (datacomp_ops.pool.build.BuildSpec as a dict). No DAG is declared here.
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import task

from datacomp_assets import POOL_ASSETS
from datacomp_ops.stages import STAGES

# Training and evaluation go first when tasks wait for a worker slot: the model chain is a pipeline's
# critical path, and the other scales' filtering is not (in the demo, training queued ~20 s behind
# small's filtering tasks). Weights add up downstream, so a run's first task leads.
MODEL_CHAIN = {"priority_weight": 10}
DOWNLOAD_RETRIES = int(os.environ.get("DATACOMP_DOWNLOAD_RETRIES", "3"))
DOWNLOAD_RETRY_DELAY = datetime.timedelta(seconds=float(os.environ.get("DATACOMP_DOWNLOAD_RETRY_DELAY_S", "120")))


def pool_lease(spec: dict, run_id: str, release: bool = False):
    """The run's lease on its pool version while a task works in it (datacomp_ops.core.versions.holding).

    Another build's lease fails the task, naming that build; summarize, the run's last task, releases it.
    """
    from datacomp_ops.core.versions import holding

    return holding(spec["config"]["storage_root"], spec["pool_version"], run_id, for_run=True, release=release)


# retried as the metadata tasks are: a GPU worker that dies (preempted, OOM-killed) takes it along, and a
# second try finds what the first committed (trained stand-ins, the eval index)
@task(retries=2, **STAGES["prepare_models"].resources.airflow())
def prepare_models(spec: dict) -> dict:
    from datacomp_ops.pool.build import BuildSpec

    return STAGES["prepare_models"].function()(BuildSpec(**spec).platform_config).to_dict()


@task(trigger_rule="none_failed")  # also when nothing new gave partitions to download
def plan_metadata(spec: dict) -> list[list[int]]:
    from datacomp_ops.pool.build import BuildSpec

    return STAGES["metadata"].planner()(BuildSpec(**spec))


@task(retries=2, **STAGES["metadata"].resources.airflow())
def metadata(shards: list[int], spec: dict, run_id=None) -> dict:
    from datacomp_ops.pool.build import BuildSpec

    build = BuildSpec(**spec)
    with pool_lease(spec, run_id):
        return STAGES["metadata"].function()(shards, build.pool, build.platform_config).to_dict()


@task(trigger_rule="none_failed")
def publish(spec: dict, run_id=None) -> dict:
    from airflow.exceptions import AirflowSkipException

    from datacomp_ops.pool.build import BuildSpec

    build = BuildSpec(**spec)
    with pool_lease(spec, run_id):
        stats = STAGES["publish"].function()(build.pool, build.platform_config)
    if stats["unchanged"]:
        raise AirflowSkipException(f"pool version {build.pool_version} adds no sample: not "
                                   f"published, no Asset events")
    return stats.to_dict()


def announce(scale: str):
    """One task per scale, so that a scale this run did not build emits no Asset event."""

    @task(task_id=f"announce_{scale}", outlets=[POOL_ASSETS[scale]])
    def announce_scale(spec: dict, outlet_events=None) -> dict:
        from airflow.exceptions import AirflowSkipException

        from datacomp_ops.core import storage
        from datacomp_ops.pool.build import BuildSpec
        from datacomp_ops.pool.publish import asset_extras

        extras = asset_extras(storage.read_json(BuildSpec(**spec).pool.manifest))
        if scale not in extras:
            raise AirflowSkipException(f"scale {scale} is not built in this pool version")
        outlet_events[POOL_ASSETS[scale]].extra = extras[scale]
        return extras[scale]

    return announce_scale


def run_seconds(dag_run) -> float | None:
    """How long the DAG run has taken so far (its summary prints it)."""
    if dag_run is None or dag_run.start_date is None:
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - dag_run.start_date).total_seconds()


@task(trigger_rule="none_failed")
def summarize(spec: dict, dag_run=None, run_id=None) -> dict:
    from datacomp_ops.pool.build import BuildSpec, format_summary, summarize

    seconds = run_seconds(dag_run)
    with pool_lease(spec, run_id, release=True):  # the run ends here, whatever the summary finds
        summary = summarize(BuildSpec(**spec), seconds)
    print(format_summary(summary))
    return summary


def finish_pool_build(spec, downloaded) -> None:
    """Wire the shared end of a pool build after `downloaded` (the raw shards' tasks)."""
    groups = plan_metadata(spec)
    downloaded >> groups
    described = metadata.partial(spec=spec).expand(shards=groups)
    prepare_models(spec) >> described
    published = publish(spec)
    announced = [announce(scale)(spec) for scale in POOL_ASSETS]
    described >> published >> announced >> summarize(spec)
