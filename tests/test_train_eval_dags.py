"""`train_clip` then `evaluate_clip` through `airflow dags test`: a subset of a published pool version
resharded once and trained with the tiny recipe with two seeds, both evaluated on the synthetic suite, the
leaderboard written with the subset's mean ± spread."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_dags import airflow_env
from test_training import make_run


def _dags_test(env: dict, dag_id: str, conf: dict) -> str:
    run = subprocess.run(["airflow", "dags", "test", dag_id, "-c", json.dumps(conf)], env=env,
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert "state=success" in out or "DagRunState.SUCCESS" in out, out[-6000:]
    return out


@pytest.mark.slow
def test_train_then_evaluate_from_the_forms(tmp_path):
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    spec = make_run(tmp_path, n=256, baseline="no_filter")
    root = tmp_path / "root"
    # the pool version the subset was drawn from: its manifest lists the shards the run reshards from
    manifest = root / "pool" / "v0001" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"storage_root": str(root), "pool_version": "v0001",
                                    "shards": [str(tmp_path / "pool" / "00000000.tar")]}))
    import shutil

    shutil.rmtree(spec.shards_dir)  # the DAG reshards it
    suite = tmp_path / "suite"
    generate_eval_suite(suite, n_classification=24, n_retrieval=12, n_variant=8)
    home = tmp_path / "airflow"
    env = airflow_env(home)
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    overrides = {"storage_root": str(root), "training.samples_seen": 512, "training.num_checkpoints": 2,
                 "training.workers": 1, "evaluation.sets_dir": str(suite)}
    _dags_test(env, "train_clip", {"pool_version": "v0001", "scale": "tiny", "baselines": ["no_filter"],
                                   "seeds": [0, 1], "config_overrides": overrides})
    run, other = root / "runs" / "v0001" / "tiny" / "no_filter", root / "runs" / "v0001" / "tiny" / "no_filter+seed1"
    record, record1 = (json.loads((r / "training.json").read_text()) for r in (run, other))
    assert record["samples_seen"] == 512 and (run / "shards" / "meta.json").exists()
    assert (record["seed"], record1["seed"]) == (0, 1) and record["final_loss"] != record1["final_loss"]
    lineage, lineage1 = (json.loads((r / "lineage.json").read_text()) for r in (run, other))
    assert lineage["pool_version"] == "v0001" and lineage1["seed"] == 1
    args = lineage1["open_clip_args"]
    assert args[args.index("--seed") + 1] == "1"
    assert not (other / "shards").exists() and lineage1["shards"] == lineage["shards"] == str(run / "shards")
    _dags_test(env, "evaluate_clip", {"run_dirs": [str(run), str(other)], "config_overrides": overrides})
    suite_tasks = json.loads((suite / "eval_suite.json").read_text())["tasks"]
    for r in (run, other):
        lines = [json.loads(line) for line in (r / "eval_results.jsonl").read_text().splitlines()]
        assert [line["key"] for line in lines] == [t["key"] for t in suite_tasks]
        assert all(line["metrics"]["main_metric"] is not None for line in lines)
    board = (root / "leaderboard" / "index.html").read_text()
    assert "no_filter" in board and "v0001" in board and " ± " in board and "1 subset, 2 evaluated runs" in board
    import pyarrow.parquet as pq

    assert pq.read_table(root / "leaderboard" / "leaderboard.parquet").column("seeds").to_pylist() == [2]
    assert pq.read_table(root / "leaderboard" / "runs.parquet").column("seed").to_pylist() == [0, 1]
