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
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",  # as scripts/env.sh
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DATACOMP_DOWNLOAD_RETRY_DELAY_S": "2",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # Airflow puts the DAG bundle's folder on sys.path (datacomp_assets.py lives there)
    if str(DAGS) not in sys.path:
        sys.path.append(str(DAGS))
    return DagBag(str(DAGS))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "commonpool_build" in dagbag.dag_ids


def test_commonpool_build_structure(dagbag):
    dag = dagbag.dags["commonpool_build"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "prepare": ["announce_large", "announce_medium", "announce_small", "announce_tiny", "announce_xlarge",
                    "download", "extract_urls", "metadata", "plan_download", "plan_metadata", "prepare_models",
                    "publish", "summarize"],
        "extract_urls": ["plan_download"],
        "plan_download": ["download"],
        "download": ["plan_metadata"],
        "prepare_models": ["metadata"],
        "plan_metadata": ["metadata"],
        "metadata": ["publish"],
        "publish": [f"announce_{s}" for s in ("large", "medium", "small", "tiny", "xlarge")],
        **{f"announce_{s}": ["summarize"] for s in ("tiny", "small", "medium", "large", "xlarge")},
        "summarize": [],
    }
    assert dag.max_active_runs == 1
    # GPU stages in the gpu pool and on the gpu queue; one announcing task (and Asset) per scale
    assert {t.task_id for t in dag.tasks if t.pool == "gpu"} == {"prepare_models", "metadata"}
    assert dag.get_task("metadata").queue == "gpu"
    for scale in ("tiny", "small", "medium", "large", "xlarge"):
        assert [a.name for a in dag.get_task(f"announce_{scale}").outlets] == [f"commonpool_{scale}"]
    assert dag.get_task("download").retries >= 1
    # a worker that dies under them (test_production kills one) costs a try, not the run
    assert dag.get_task("prepare_models").retries >= 1 and dag.get_task("metadata").retries >= 1
    # weekly, one run at a time; every form field may stay empty except the scale
    assert "0 0 * * 0" in repr(dag.timetable) and not dag.catchup
    required = [k for k, p in dag.params.items() if "null" not in p.schema.get("type", [])]
    assert required == ["scale"] and dag.params["scale"] == "xlarge"
    assert dag.params.validate()["crawl_id"] is None  # the defaults validate
    assert dag.doc_md and "extract_urls" in dag.doc_md


def test_filtering_baselines_structure(dagbag):
    dag = dagbag.dags["filtering_baselines"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {"prepare": ["filter_baseline", "summarize"], "filter_baseline": ["summarize"],
                          "summarize": []}
    # runs on every scale's pool Asset, and announces each subset it writes
    assert sorted(a.name for a in dag.timetable.asset_condition.objects) == [
        f"commonpool_{s}" for s in sorted(("tiny", "small", "medium", "large", "xlarge"))]
    assert [a.name for a in dag.get_task("filter_baseline").outlets] == ["filtering_subsets"]
    required = [k for k, p in dag.params.items() if "null" not in p.schema.get("type", [])]
    assert required == ["scale"] and dag.params.validate()["metadata_dir"] is None
    assert all(p.schema.get("section") for p in (dag.params.get_param(k) for k in dag.params.keys()))


def test_import_dataset_structure(dagbag):
    """The CommonPool build's end (metadata pass, publish, one Asset per scale), fed by the import's own tasks."""
    dag = dagbag.dags["import_dataset"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    scales = ("large", "medium", "small", "tiny", "xlarge")
    assert downstream == {
        "prepare": sorted([f"announce_{s}" for s in scales] + ["ingest", "metadata", "plan_ingest", "plan_metadata",
                                                               "prepare_models", "publish", "scan", "summarize"]),
        "scan": ["plan_ingest"],
        "plan_ingest": ["ingest"],
        "ingest": ["plan_metadata"],
        "prepare_models": ["metadata"],
        "plan_metadata": ["metadata"],
        "metadata": ["publish"],
        "publish": [f"announce_{s}" for s in scales],
        **{f"announce_{s}": ["summarize"] for s in scales},
        "summarize": [],
    }
    assert {t.task_id for t in dag.tasks if t.pool == "gpu"} == {"prepare_models", "metadata"}
    assert dag.get_task("ingest").retries >= 1 and dag.timetable.__class__.__name__ == "NullTimetable"
    for scale in scales:
        assert [a.name for a in dag.get_task(f"announce_{scale}").outlets] == [f"commonpool_{scale}"]
    assert dag.params.validate()["sources"] is None  # the empty form validates
    assert all(p.schema.get("section") for p in (dag.params.get_param(k) for k in dag.params.keys()))


def test_refresh_published_starts_one_import_per_published_pool_as_recorded(dagbag):
    dag = dagbag.dags["refresh_published"]
    assert "0 0 * * 0" in repr(dag.timetable) and not dag.catchup
    again = dag.get_task("import_again")
    assert again.partial_kwargs["trigger_dag_id"] == "import_published" and again.upstream_task_ids == {"pools"}
    assert dagbag.dags["import_published"].params.keys() >= {"name", "metadata", "scale", "shards", "npz", "subset",
                                                             "download", "download_only", "hash_mismatch"}
    from datacomp_ops.pool.published_refresh import FIELDS

    assert set(FIELDS) <= set(dagbag.dags["import_published"].params.keys())  # a recorded field is a form field


def test_train_and_evaluate_structure(dagbag):
    """Training follows the filtering DAG's subsets, evaluation the trained models; GPU work in the gpu pool."""
    train = dagbag.dags["train_clip"]
    # train maps over prepare's jobs after every reshard (a subset's other seeds read its first job's shards)
    assert {t.task_id: sorted(t.downstream_task_ids) for t in train.tasks} == {
        "prepare": ["reshard", "train"], "reshard": ["train"], "train": []}
    assert "filtering_subsets" in str(train.timetable.asset_condition)
    step = train.get_task("train")
    assert step.pool == "gpu" and step.queue == "gpu" and step.retries >= 1
    assert [a.name for a in step.outlets] == ["trained_models"]
    evaluate = dagbag.dags["evaluate_clip"]
    assert {t.task_id: sorted(t.downstream_task_ids) for t in evaluate.tasks} == {
        "prepare": ["evaluate", "leaderboard"], "evaluate": ["leaderboard"], "leaderboard": []}
    assert "trained_models" in str(evaluate.timetable.asset_condition)
    assert evaluate.get_task("evaluate").pool == "gpu"
    from airflow.sdk.exceptions import ParamValidationError

    seeds = train.params.get_param("seeds")  # training.seeds' rule, an empty field meaning the config's
    assert seeds.resolve([0, 1, 2]) == [0, 1, 2] and seeds.resolve(None) is None and seeds.resolve([]) == []
    for bad in ([1, 1], [-1], [2**32], ["a"]):
        with pytest.raises(ParamValidationError):
            seeds.resolve(bad)
    for dag in (train, evaluate):
        assert dag.params.validate()["scale"] == "tiny"  # the empty form validates
        assert all(p.schema.get("section") for p in (dag.params.get_param(k) for k in dag.params.keys()))


def test_form_fields_set_config_keys():
    """Every form field that sets a config key names a key the config has."""
    import runpy

    from datacomp_ops.core.config import load_config

    if str(DAGS) not in sys.path:
        sys.path.append(str(DAGS))
    mapping = runpy.run_path(str(DAGS / "commonpool_build.py"))["CONFIG_PARAMS"]
    config = load_config().to_dict()
    for name, key in mapping.items():
        node = config
        for part in key.split("."):
            assert part in node, (name, key)
            node = node[part]


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_files_import_nothing_heavy_and_parse_fast(dag_file):
    code = (
        "import runpy, sys, time\n"
        f"sys.path.append({str(DAGS)!r})\n"
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


def run_dags_test(env: dict, conf: dict, logical_date: str | None = None) -> str:
    date = [logical_date] if logical_date else []
    run = subprocess.run(["airflow", "dags", "test", "commonpool_build", *date, "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert "state=success" in out or "DagRunState.SUCCESS" in out, out[-6000:]
    return out


@pytest.mark.slow
def test_commonpool_build_runs_end_to_end(tmp_path, small_crawl, embedded_models):
    import numpy as np
    from PIL import Image

    from datacomp_ops.core import ledger
    from datacomp_ops.core.schema import read_subset
    from datacomp_ops.synthetic.evalsuite import dedup_key

    home = tmp_path / "airflow"
    root = tmp_path / "root"
    env = airflow_env(home, DATACOMP_STORAGE_ROOT=str(root))
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    conf = {
        "crawl_id": "CC-TEST",
        "wat_inputs": [small_crawl["wat_listing"]],
        "config_overrides": {"download.timeout": 5, "download.processes_count": 1, "download.retries": 0,
                             "download.number_sample_per_shard": 100, "extract.urls_per_partition": 150,
                             "evaluation.sets_dir": small_crawl["eval_dir"], "models.embedded_dir": embedded_models,
                             "metadata.batch_size": 32, "publish.tiny_pool_size": 50},
    }
    out = run_dags_test(env, conf)
    pool = root / "pool" / "v0001"

    # the summary's per-stage table, and a final status for every URL that matches the crawl's truth
    (report,) = [json.loads(p.read_text()) for p in (pool / "reports").glob("*.json")]
    truth = pq.read_table(small_crawl["truth"]).to_pylist()
    expected = {r["uid"]: r["expected_final"] for r in truth}
    assert report["urls_extracted"] == len(expected)
    assert sum(report["final_statuses"].values()) == len(expected)
    assert [row["stage"] for row in report["stages"]] == [
        "extract_urls", "download", "decode", "nsfw_text", "nsfw_image", "eval_dedup", "faces", "clip_features", "write"]
    assert "nsfw_text" in out and "throughput" in out  # the table is printed in the task log
    from datacomp_ops.core import versions

    final = ledger.final_statuses(*versions.ledger_dirs(str(root), "v0001"))
    got = dict(zip(final["uid"].to_pylist(), final["status"].to_pylist()))
    assert got == expected
    kinds = {r["uid"]: r["kind"] for r in truth}
    assert {kinds[u] for u, s in got.items() if s == "nsfw_text"} == {"unsafe_caption"}
    assert {kinds[u] for u, s in got.items() if s == "eval_duplicate"} == {"eval_duplicate"}
    messages = dict(zip(final["uid"].to_pylist(), final["message"].to_pylist()))
    for r in truth:  # each planted duplicate is matched to the evaluation image it copies
        if r["kind"] == "eval_duplicate" and got[r["uid"]] == "eval_duplicate":
            assert f"{dedup_key(int(r['url'].split('/evaldup/')[1].split('/')[0]))} " in messages[r["uid"]]

    # metadata: unit-norm features, scores that are their dot products, faces found and blurred
    rows, feats = [], {k: [] for k in ("b32_img", "b32_txt", "l14_img", "l14_txt", "dedup")}
    for path in sorted((pool / "metadata").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
        npz = np.load(path.with_suffix(".npz"))
        for k in feats:
            feats[k].append(npz[k])
    feats = {k: np.concatenate(v) for k, v in feats.items()}
    assert len(rows) == report["kept"] == sum(s == "kept" for s in expected.values())
    for k, v in feats.items():
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4), k
    for tag in ("b32", "l14"):
        dots = (feats[f"{tag}_img"] * feats[f"{tag}_txt"]).sum(1)
        assert np.allclose([r[f"clip_{tag}_similarity_score"] for r in rows], dots, atol=1e-6)
    faces = [r for r in rows if kinds[r["uid"]] == "photo" and "/astronaut/" in r["url"]]
    assert faces and all(r["face_bboxes"] for r in faces)
    assert not any(r["face_bboxes"] for r in rows if kinds[r["uid"]] in ("described", "wrong_label"))
    import tarfile

    r = faces[0]
    with tarfile.open(pool / "shards" / f"{r['shard']:08d}.tar") as tar:
        published = np.asarray(Image.open(tar.extractfile(f"{r['key']}.jpg")).convert("RGB"), int)
    with tarfile.open(pool / "downloads" / f"{r['shard']:08d}.tar") as tar:
        raw = np.asarray(Image.open(tar.extractfile(f"{r['key']}.jpg")).convert("RGB"), int)
    h, w = raw.shape[:2]
    x1, y1, x2, y2 = (np.array(r["face_bboxes"][0]) * [w, h, w, h]).astype(int)
    assert np.abs(published - raw)[y1:y2, x1:x2].mean() > 8

    # nested per-scale pools, and the manifest
    manifest = json.loads((pool / "manifest.json").read_text())
    scales = {s: set(map(tuple, read_subset(str(pool / "scales" / f"{s}.npy")).tolist())) for s in manifest["scales"]}
    assert len(scales["tiny"]) == 50 and scales["tiny"] < scales["small"] <= scales["medium"] <= scales["large"] <= scales["xlarge"]
    assert len(scales["xlarge"]) == len(rows)
    assert "alt-profanity-check" in manifest["models"][0]["nsfw_text"]

    # one Asset event per scale, with the pool version in its extra
    import sqlite3

    with sqlite3.connect(home / "airflow.db") as db:
        events = db.execute("SELECT asset.name, asset_event.extra FROM asset_event JOIN asset "
                            "ON asset.id = asset_event.asset_id").fetchall()
    extras = {name: json.loads(extra) for name, extra in events}
    # the complete scales and, of the incomplete ones built, only the smallest: the others hold the same samples
    built = [s for s in ("tiny", "small", "medium", "large", "xlarge") if manifest["scales"][s]["built"]]
    announced = {s for s in built if manifest["scales"][s]["complete"]}
    announced |= set([s for s in built if not manifest["scales"][s]["complete"]][:1])
    assert "tiny" in announced and set(extras) == {f"commonpool_{s}" for s in announced}
    assert extras["commonpool_tiny"]["pool_version"] == "v0001" and extras["commonpool_tiny"]["samples"] == 50

    # a rebuild with no new WAT file retries the transient failures (they fail again here), adds no
    # sample, publishes nothing and emits no Asset event; the run succeeds and says so
    out = run_dags_test(env, conf)
    assert "nothing new to publish: v0002 stays open" in out and "the latest pool is v0001" in out
    (summary,) = [json.loads(p.read_text()) for p in (root / "pool" / "v0002" / "reports").glob("*.json")]
    transient = sum(s in ledger.TRANSIENT_FAILURES for s in expected.values())
    assert summary["urls_extracted"] == 0 and summary["urls_downloaded_again"] == transient > 0
    assert summary["pool"]["samples"] == len(rows) and not summary["published"]
    assert summary["ledger"]["urls"] == len(expected) and sum(summary["ledger"]["statuses"].values()) == len(expected)
    assert not (root / "pool" / "v0002" / "manifest.json").exists()
    with sqlite3.connect(home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM asset_event").fetchone()[0] == len(announced)


def test_task_glue_imports_nothing_heavy():
    """Tasks import the glue first; torch and friends load only inside the task bodies that use them."""
    code = ("import sys, datacomp_ops.pool.build, datacomp_ops.pool.metadata, datacomp_ops.pool.publish, datacomp_ops.pool.prepare_models\n"
            "import datacomp_ops.training.plan, datacomp_ops.training.train, datacomp_ops.evaluation.zero_shot, datacomp_ops.evaluation.leaderboard\n"
            f"print([m for m in {HEAVY + ('webdataset', 'faiss', 'nudenet', 'profanity_check')!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_and_evaluation_go_first_when_tasks_wait_for_a_slot(dagbag):
    """The model chain is the pipeline's critical path: its tasks outrank filtering's in the queue."""
    chain = [t for d in ("train_clip", "evaluate_clip") for t in dagbag.dags[d].tasks]
    assert all(t.priority_weight == 10 for t in chain)
    assert all(t.priority_weight == 1 for t in dagbag.dags["filtering_baselines"].tasks)


def test_the_build_forms_help_names_the_configs_defaults(dagbag):
    """An empty field means the config's value; the help says which, from the config, so the two cannot drift."""
    from datacomp_ops.core.config import config_from_dict

    config = config_from_dict({})
    params = dagbag.dags["commonpool_build"].params
    t = config.thresholds
    # each threshold field names the default of every model that may run its role
    expected = {"download_timeout": [config.download.timeout], "max_attempts": [config.download.max_attempts],
                "threshold_nsfw_text": [t.nsfw_text, t.nsfw_text_profanity_check],
                "threshold_nsfw_image": [t.nsfw_image, t.nsfw_image_nudenet],
                "threshold_eval_dedup": [t.eval_dedup_similarity, t.eval_dedup_similarity_thumbnail],
                "threshold_face_detection": [t.face_detection]}
    for name, values in expected.items():
        description = params.get_param(name).description
        assert description.endswith(f" {values[-1]:g}).") and "Empty: the config's (" in description, (name, description)
        assert all(f" {v:g}" in description.split("Empty: the config's (")[1] for v in values), (name, description)
