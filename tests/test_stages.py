"""The stage registry (datacomp_ops/stages.py): the pipeline defined once, and the DAGs built from it."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from datacomp_ops import stages
from datacomp_ops.core import layout
from datacomp_ops.core.stats import Counters, StageStats, UndeclaredCounter

DAGS = Path(__file__).resolve().parent.parent / "dags"


@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_every_stage_resolves_to_its_function_planner_counters_and_layout_entries(name):
    stage = stages.STAGES[name]
    assert callable(stage.function()) and (stage.plan == "" or callable(stage.planner()))
    declared = stage.declared()
    assert declared is None or isinstance(declared, Counters)
    for entry in stage.inputs + stage.outputs:
        owner, _, attribute = entry.partition(".")
        target = getattr(layout, owner)  # a layout class or function
        assert not attribute or hasattr(target, attribute), entry


def test_every_stage_runs_in_a_pipeline_and_every_stage_function_reports_stage_stats():
    assert {name for names in stages.PIPELINES.values() for name in names} == set(stages.STAGES)
    for name, stage in stages.STAGES.items():
        assert inspect.signature(stage.function()).return_annotation in ("StageStats", StageStats), name
        if stage.record:  # what its Asset event carries: a job's committed record, a dict
            assert inspect.signature(stage.record_of()).return_annotation in ("dict", dict), name


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # Airflow puts the DAG bundle's folder on sys.path (datacomp_assets.py lives there)
    if str(DAGS) not in sys.path:
        sys.path.append(str(DAGS))
    return DagBag(str(DAGS))


@pytest.mark.parametrize("dag_id", sorted(stages.PIPELINES))
def test_each_dag_has_a_task_per_stage_where_the_registry_places_it(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    for stage in stages.pipeline(dag_id):
        task = dag.get_task(stage.name)
        resources = stage.resources.airflow()
        assert (task.pool if "pool" in resources else None) == resources.get("pool"), stage.name
        if "queue" in resources:
            assert task.queue == resources["queue"], stage.name


def test_a_counter_renamed_on_one_side_fails_naming_it():
    """The run summary reads each counter through the stage's declared set: a stage that counts a name it
    does not declare, or a reader asking for one, fails loudly instead of printing zeros."""
    from datacomp_ops.pool.build import stage_table
    from datacomp_ops.pool.metadata import COUNTERS

    extraction = {"stage": "extract_urls", "counters": {"pairs": 10, "urls_written": 10}, "seconds": 1.0}
    download = StageStats("download", counters={"urls": 10, "downloaded": 8, "timeout": 2})
    metadata = StageStats("metadata", counters={"in": 8, "kept": 7, "removed:nsfw_text": 1, "faces.with_faces": 2})
    rows = {r["stage"]: r for r in stage_table(extraction, download, metadata)}
    assert rows["faces"]["note"].startswith("2 with faces") and rows["nsfw_text"]["removed"] == {"nsfw_text": 1}
    renamed = StageStats("metadata", counters=metadata.counters | {"faces.with_face": 2})
    with pytest.raises(UndeclaredCounter, match="stage metadata counted faces.with_face"):
        stage_table(extraction, download, renamed)
    with pytest.raises(UndeclaredCounter, match="has no counter faces.found"):
        COUNTERS.get(metadata, "faces.found")
