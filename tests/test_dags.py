"""DAG integrity: imports, structure, light parsing; and a full run with `airflow dags test`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
HEAVY = ("torch", "pyspark", "cv2", "open_clip", "img2dataset", "insightface", "detoxify")


def airflow_env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "commonpool_build" in dagbag.dag_ids


def test_commonpool_build_structure(dagbag):
    dag = dagbag.dags["commonpool_build"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "prepare": ["download", "extract_urls", "plan_download", "summarize"],
        "extract_urls": ["plan_download"],
        "plan_download": ["download"],
        "download": ["summarize"],
        "summarize": [],
    }
    assert dag.max_active_runs == 1
    assert set(dag.params.keys()) == {"crawl_id", "wat_inputs", "pool_version", "config_overrides"}
    assert dag.doc_md and "extract_urls" in dag.doc_md


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_files_import_nothing_heavy_and_parse_fast(dag_file):
    code = (
        "import runpy, sys, time\n"
        "import airflow.sdk\n"  # Airflow's own import cost is not the DAG file's
        "from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator\n"
        "t = time.perf_counter()\n"
        f"runpy.run_path({str(DAGS / dag_file)!r})\n"
        "elapsed = time.perf_counter() - t\n"
        f"print(elapsed, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed, heavy = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]"
    assert float(elapsed) < 1.0


@pytest.mark.slow
def test_commonpool_build_runs_end_to_end(tmp_path, small_crawl):
    home = tmp_path / "airflow"
    root = tmp_path / "root"
    env = airflow_env(home, DATACOMP_STORAGE_ROOT=str(root))
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    conf = {
        "crawl_id": "CC-TEST",
        "wat_inputs": [small_crawl["wat_listing"]],
        "config_overrides": {"download.timeout": 5, "download.processes_count": 1,
                             "download.number_sample_per_shard": 100, "extract.urls_per_partition": 150},
    }
    run = subprocess.run(["airflow", "dags", "test", "commonpool_build", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert "state=success" in run.stdout + run.stderr, (run.stdout + run.stderr)[-5000:]

    reports = list((root / "pool" / "CC-TEST" / "reports").glob("*.json"))
    assert len(reports) == 1
    summary = json.loads(reports[0].read_text())
    truth = pq.read_table(f"{small_crawl['dir']}/truth.parquet").to_pydict()
    expected = {}
    for status in set(truth["expected_status"]):
        expected[status] = len({u for u, s in zip(truth["uid"], truth["expected_status"]) if s == status})
    assert summary["urls_extracted"] == len(set(truth["uid"]))
    assert {"downloaded": summary["downloaded"], **summary["failed"]} == expected
    (extraction,) = [json.loads(p.read_text()) for p in (root / "crawls" / "CC-TEST" / "reports").glob("*.json")]
    expected_shards = sum(-(-p["rows"] // 100) for p in extraction["partitions"])  # 100 samples per shard
    assert len(extraction["partitions"]) >= 2
    assert len(list((root / "pool" / "CC-TEST" / "shards").glob("*.tar"))) == expected_shards

    # an incremental rebuild with no new WAT file: nothing to download, the run still succeeds
    run = subprocess.run(["airflow", "dags", "test", "commonpool_build", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert "state=success" in run.stdout + run.stderr, (run.stdout + run.stderr)[-5000:]
    summaries = [json.loads(p.read_text()) for p in (root / "pool" / "CC-TEST" / "reports").glob("*.json")]
    assert sorted(s["urls_extracted"] for s in summaries) == [0, len(set(truth["uid"]))]
