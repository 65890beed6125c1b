"""Scheduled incremental rebuilds over two weekly synthetic crawls, run with `airflow dags test`.

Each run takes the crawl of its logical date's week, reads only new WAT files,
downloads only URLs no earlier run holds (plus transient failures to retry),
and publishes a new pool version over the previous one.
"""

import contextlib
import datetime
import gzip
import json
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest
from test_dags import airflow_env

from datacomp_ops.core import ledger, versions
from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl, generate_world
from datacomp_ops.synthetic.evalsuite import generate_eval_suite

pytestmark = pytest.mark.slow

# Sundays 00:00 UTC, when the weekly schedule fires: ISO weeks 45 and 46 of 2026
DATES = ["2026-11-08", "2026-11-15"]
CRAWLS = ["CC-SYNTH-2026-45", "CC-SYNTH-2026-46"]
SLOW_SECONDS, WEEK45_TIMEOUT = 3.0, 1.0


def dags_test(env: dict, date: str, conf: dict) -> str:
    run = subprocess.run(["airflow", "dags", "test", "commonpool_build", date, "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert "state=success" in out or "DagRunState.SUCCESS" in out, out[-6000:]
    return out


def report(root, version: str) -> dict:
    (path,) = (root / "pool" / version / "reports").glob("*.json")
    return json.loads(path.read_text())


def manifest(root, version: str) -> dict:
    return json.loads((root / "pool" / version / "manifest.json").read_text())


@pytest.fixture
def image_server():
    """A server whose /slow/ delay lies far above week 45's client timeout, and that timeout far above a
    404's answer, so that only the slow URLs time out even on a loaded two-core CI machine."""
    from conftest import HANG_SECONDS
    from datacomp_ops.synthetic.server import serving

    with serving(hang_seconds=HANG_SECONDS, slow_seconds=SLOW_SECONDS) as server:
        yield server


def test_weekly_crawls_build_incremental_pool_versions(tmp_path, image_server, embedded_models):
    world = tmp_path / "source"
    crawls = generate_world(world, CrawlSpec(n_urls=120, base_url=image_server.base_url, urls_per_file=80,
                                             crawl_id=CRAWLS[-1], seed=11), 2, repeat_fraction=0.25)
    generate_eval_suite(world / "eval")
    assert [c["crawl_id"] for c in crawls] == CRAWLS and all(c["repeated_from_previous"] for c in crawls[1:])
    truths = [pq.read_table(c["truth"]).to_pylist() for c in crawls]

    home, root = tmp_path / "airflow", tmp_path / "root"
    env = airflow_env(home, DATACOMP_STORAGE_ROOT=str(root))
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    base = {"crawl.source": str(world), "download.processes_count": 1, "download.retries": 0,
            "download.number_sample_per_shard": 100, "extract.urls_per_partition": 100,
            "evaluation.sets_dir": str(world / "eval"), "models.embedded_dir": embedded_models,
            "metadata.batch_size": 32, "publish.tiny_pool_size": 50}

    # week 45, with a client timeout below the /slow/ URLs' delay: those time out (a transient failure)
    dags_test(env, DATES[0], {"config_overrides": base | {"download.timeout": WEEK45_TIMEOUT}})
    # week 46, with a normal timeout: the timed-out URLs are retried and arrive
    for date in DATES[1:]:
        dags_test(env, date, {"config_overrides": base | {"download.timeout": 5}})

    seen: set[str] = set()
    samples = 0
    for k, (name, truth) in enumerate(zip(CRAWLS, truths)):
        version = f"v{k + 1:04d}"
        summary, man = report(root, version), manifest(root, version)
        uids = {r["uid"] for r in truth}
        new = uids - seen
        # only this crawl's new URLs were extracted; the repeats of last week's crawl were known already
        assert summary["crawl_id"] == name and summary["urls_extracted"] == len(new)
        if k:
            assert summary["extraction"]["already_known"] >= len(uids & seen) > 0
        # a new version over the previous one: its files listed, not copied
        assert man["parent"] == (f"v{k:04d}" if k else None)
        if k:
            old = manifest(root, f"v{k:04d}")
            assert man["shards"][: len(old["shards"])] == old["shards"]
            assert man["metadata"][: len(old["metadata"])] == old["metadata"]
            # nothing copied: this version's own folder holds only shards its own run made
            own = {p.name for p in (root / "pool" / version / "shards").glob("*.tar")}
            assert not own & {p.rsplit("/", 1)[1] for p in old["shards"]}
            assert all(int(p.split("/pool/v")[1][:4]) <= k + 1 for p in man["shards"])
            assert man["samples"] == old["samples"] + summary["kept"]
        assert man["samples"] == samples + summary["kept"]
        samples = man["samples"]
        seen |= uids

    # the old versions stay readable as they were
    first = manifest(root, "v0001")
    assert all((root / p.split(str(root) + "/", 1)[1]).exists() for p in first["shards"] + first["metadata"])
    assert sum(pq.read_metadata(p).num_rows for p in first["metadata"]) == first["samples"]

    # the ledger: every URL ever extracted has exactly one current status, the one the truth expects
    # (transient failures that stayed failed keep their transient status)
    expected = {r["uid"]: r for t in truths for r in t}
    current = ledger.final_statuses(*versions.ledger_dirs(str(root), "v0002"))
    got = dict(zip(current["uid"].to_pylist(), current["status"].to_pylist()))
    assert set(got) == set(expected) and current.num_rows == len(expected)
    wrong = {u: (expected[u]["kind"], s) for u, s in got.items()
             if s != expected[u]["expected_final"] and expected[u]["expected_final"] not in ledger.TRANSIENT_FAILURES}
    assert not wrong, wrong
    # cross-crawl repeats were downloaded once
    history = ledger.history(*versions.ledger_dirs(str(root), "v0002"))
    rows = history.to_pylist()
    downloads = {}
    for r in rows:
        if r["stage"] == "download":
            downloads.setdefault(r["uid"], []).append(r)
    repeats = {r["uid"] for t in truths[1:] for r in t if r["first_crawl"] != t[0]["first_crawl"]}
    assert repeats and all(len(downloads[u]) == 1 or downloads[u][0]["status"] in ledger.TRANSIENT_FAILURES
                           for u in repeats)
    # the slow URLs timed out in week 45 and were downloaded by week 46's run: two attempts in the history
    slow = [u for u, r in expected.items() if r["kind"] == "slow" and r["first_crawl"] == CRAWLS[0]]
    assert slow
    for u in slow:
        tries = downloads[u]
        assert [(t["version"], t["status"], t["attempt"]) for t in tries] == [
            ("v0001", "timeout", 1), ("v0002", "downloaded", 2)], tries
        assert got[u] == "kept"
    # a 404 is never tried again
    for u, r in expected.items():
        if r["kind"] == "http_404":
            assert [(t["status"], t["attempt"]) for t in downloads[u]] == [("http_error", 1)]

    # a new WAT file appears in week 46's crawl: the next run (later that week) reads only it and adds only
    # its samples
    extra = generate_crawl(tmp_path / "extra", CrawlSpec(n_urls=30, base_url=image_server.base_url, seed=99,
                                                         crawl_id=CRAWLS[-1], first_image=9_000_000, faults=False))
    (wat,) = extra["wat_files"]
    rel = f"crawl-data/{CRAWLS[-1]}/segments/1/wat/extra-00000.warc.wat.gz"
    (world / rel).parent.mkdir(parents=True)
    shutil.copy(wat, world / rel)
    listing = world / "crawl-data" / CRAWLS[-1] / "wat.paths.gz"
    lines = gzip.open(listing, "rt").read().split()
    with gzip.open(listing, "wt") as f:
        f.write("\n".join(lines + [rel]) + "\n")
    before = manifest(root, "v0002")
    dags_test(env, "2026-11-16", {"config_overrides": base | {"download.timeout": 5}})
    summary, man = report(root, "v0003"), manifest(root, "v0003")
    extra_truth = pq.read_table(extra["truth"]).to_pylist()
    assert summary["crawl_id"] == CRAWLS[-1] and summary["wat_files"] == 1
    assert summary["urls_extracted"] == len(extra_truth)
    added = {r["uid"] for r in pq.read_table(man["metadata"][-1]).to_pylist()}
    extra_kept = {r["uid"] for r in extra_truth if r["expected_final"] == "kept"}
    own = [p for p in man["metadata"] if "/pool/v0003/" in p]
    own_uids = {u for p in own for u in pq.read_table(p)["uid"].to_pylist()}
    assert own_uids == extra_kept and added <= extra_kept
    assert man["samples"] == before["samples"] + len(extra_kept)
    assert man["shards"][: len(before["shards"])] == before["shards"]


def test_image_host_down_fails_the_download_task_and_airflow_retries_it(tmp_path, embedded_models):
    """The host refuses every connection on the download task's first try: the task fails, commits nothing, and
    Airflow's retry (after its delay, with the host back up) downloads every URL once, as the truth says."""
    import queue
    import threading

    from conftest import _free_port
    from datacomp_ops.synthetic.server import serving

    port = _free_port()  # nothing listens here yet
    crawl = generate_crawl(tmp_path / "crawl", CrawlSpec(n_urls=80, base_url=f"http://127.0.0.1:{port}",
                                                          urls_per_file=80, crawl_id="CC-DOWN", seed=3))
    generate_eval_suite(tmp_path / "crawl" / "eval")
    home, root = tmp_path / "airflow", tmp_path / "root"
    env = airflow_env(home, DATACOMP_STORAGE_ROOT=str(root), DATACOMP_DOWNLOAD_RETRY_DELAY_S="8")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    conf = {"crawl_id": "CC-DOWN", "wat_inputs": [crawl["wat_listing"]], "config_overrides": {
        "download.timeout": 5, "download.processes_count": 1, "download.retries": 0,
        "download.number_sample_per_shard": 100, "evaluation.sets_dir": str(tmp_path / "crawl" / "eval"),
        "models.embedded_dir": embedded_models, "metadata.batch_size": 32, "publish.tiny_pool_size": 20}}
    proc = subprocess.Popen(["airflow", "dags", "test", "commonpool_build", "-c", json.dumps(conf)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    out: list[str] = []
    host_up = False
    with contextlib.ExitStack() as stack:
        try:
            deadline = datetime.datetime.now() + datetime.timedelta(minutes=15)
            while proc.poll() is None or not lines.empty():
                try:
                    line = lines.get(timeout=1)
                except queue.Empty:
                    assert datetime.datetime.now() < deadline, "".join(out)[-6000:]
                    continue
                out.append(line)
                if "TransientDownloadError" in line and not host_up:  # the host comes back during the retry delay
                    stack.enter_context(serving(port=port, hang_seconds=10, slow_seconds=0.2))
                    host_up = True
        finally:
            if proc.poll() is None:
                proc.kill()
    text = "".join(out)
    assert "state=success" in text or "DagRunState.SUCCESS" in text, text[-6000:]
    assert "TransientDownloadError" in text and "network_error" in text

    # the failed try committed nothing: each URL has one download row, from the retry, as the truth says
    history = ledger.history(*versions.ledger_dirs(str(root), "v0001"))
    downloads = [r for r in history.to_pylist() if r["stage"] == "download"]
    truth = {r["uid"]: r["expected_final"] for r in pq.read_table(crawl["truth"]).to_pylist()}
    assert sorted(r["uid"] for r in downloads) == sorted(truth)
    assert {r["attempt"] for r in downloads} == {1} and not any(r["status"] == "network_error" for r in downloads)
    current = ledger.latest(history)
    assert dict(zip(current["uid"].to_pylist(), current["status"].to_pylist())) == truth
