"""A real Spark run (local[2]) of URL extraction, incremental reruns included."""

import re
import shutil

import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import storage
from datacomp_ops.core.layout import CrawlLayout
from datacomp_ops.crawl.extract import read_manifest, resolve_inputs, run_extract_urls
from datacomp_ops.crawl.wat import parse_wat_file

pytestmark = pytest.mark.slow


def _uids(paths):
    return [u for p in paths for u in pq.read_table(p)["uid"].to_pylist()]


def _extract(inputs, crawl, config, report, spark) -> dict:
    """The stage, and the batch report it committed (its stats are the report's)."""
    stats = run_extract_urls(inputs, crawl, config, report, spark)
    committed = storage.read_json(report)
    assert stats.to_dict() == committed["stats"] and stats.outputs == [p["path"] for p in committed["partitions"]]
    return committed


def test_extraction_matches_truth_and_is_incremental(tmp_path, small_crawl, spark, fast_download_config):
    cfg = fast_download_config
    crawl = CrawlLayout(str(tmp_path / "root"), "CC-TEST")
    first_wat, second_wat = small_crawl["wat_files"]
    truth = pq.read_table(small_crawl["truth"]).to_pydict()
    truth_uids = set(truth["uid"])

    report = _extract([first_wat], crawl, cfg, str(tmp_path / "r1.json"), spark)
    parts = [p["path"] for p in report["partitions"]]
    first_uids = _uids(parts)
    assert len(first_uids) == len(set(first_uids)) == report["stats"]["counters"]["urls_written"]
    assert set(first_uids) <= truth_uids
    assert all(p.rsplit("/", 1)[-1].startswith("part-0000-") for p in parts)
    # parts of at most urls_per_partition rows: one download task each
    assert all(0 < p["rows"] <= cfg.extract.urls_per_partition for p in report["partitions"])
    assert sum(p["rows"] for p in report["partitions"]) == report["stats"]["counters"]["urls_written"]
    for p in parts:  # sorted by uid inside a partition, the URL schema's columns
        table = pq.read_table(p)
        assert table.column_names == ["uid", "url", "text", "page_url", "wat_path"]
        assert table["uid"].to_pylist() == sorted(table["uid"].to_pylist())
    counters = report["stats"]["counters"]
    assert counters["skipped:bad_json"] == 1 and counters["skipped:broken_gzip_member"] == 1
    assert counters["duplicates_in_batch"] > 0
    assert counters["pairs"] == counters["urls_written"] + counters["duplicates_in_batch"] + counters["already_known"]

    # the same report path again: a retried task after success does nothing
    assert run_extract_urls([first_wat], crawl, cfg, str(tmp_path / "r1.json"), spark).to_dict() == report["stats"]

    # a new run over the listing: only the second WAT file is read; nothing seen before is repeated
    listing = small_crawl["wat_listing"]
    report2 = _extract([listing], crawl, cfg, str(tmp_path / "r2.json"), spark)
    assert report2["batch"] == 1
    assert report2["stats"]["counters"]["wat_files_processed"] == 1
    assert report2["stats"]["counters"]["wat_files_already_processed"] == 1
    second_uids = _uids(p["path"] for p in report2["partitions"])
    assert not set(second_uids) & set(first_uids)
    assert set(first_uids) | set(second_uids) == truth_uids
    manifest = read_manifest(crawl).to_pydict()
    assert sorted(manifest["wat_path"]) == sorted([first_wat, second_wat])
    assert manifest["processed"] == [True, True]

    # nothing new: no batch at all
    report3 = _extract([listing], crawl, cfg, str(tmp_path / "r3.json"), spark)
    assert report3["batch"] is None and report3["partitions"] == []


def test_dedup_against_other_crawls_and_leftover_cleanup(tmp_path, small_crawl, spark, fast_download_config):
    root = str(tmp_path / "root")
    a = CrawlLayout(root, "CC-A")
    b = CrawlLayout(root, "CC-B")
    first_wat = small_crawl["wat_files"][0]
    run_extract_urls([first_wat], a, fast_download_config, None, spark)
    # a crashed attempt left a part of batch 0 behind in crawl B, with no manifest
    storage.makedirs(b.urls)
    shutil.copy(storage.ls(a.urls, "part-*.parquet")[0], storage.join(b.urls, "part-0000-00099.parquet"))
    # the same WAT file under another crawl id: every pair is known already
    counters = run_extract_urls([first_wat], b, fast_download_config, None, spark).counters
    assert counters["urls_written"] == 0
    assert counters["already_known"] + counters["duplicates_in_batch"] == counters["pairs"] > 0
    assert storage.ls(b.urls, "part-*.parquet") == []


def test_resolve_inputs_reads_listings(small_crawl):
    paths = resolve_inputs([small_crawl["wat_listing"], small_crawl["wat_files"][0]])
    assert paths == small_crawl["wat_files"]


def test_no_inputs_is_an_error(tmp_path, fast_download_config):
    with pytest.raises(ValueError, match="no WAT files"):
        run_extract_urls([], CrawlLayout(str(tmp_path), "X"), fast_download_config)


def test_extraction_reads_and_writes_s3(s3_bucket, small_crawl, spark, fast_download_config):
    from datacomp_ops.core.config import load_config

    wat = small_crawl["wat_files"][1]
    remote_wat = storage.join(s3_bucket, "crawl-data", "CC-S3", "0.warc.wat.gz")
    storage.write_bytes(remote_wat, storage.read_bytes(wat))
    config = load_config(overrides={"storage_root": s3_bucket, "extract.urls_per_partition": 150})
    crawl = CrawlLayout(config.storage_root, "CC-S3")
    report = _extract([remote_wat], crawl, config, storage.join(crawl.base, "reports", "r.json"), spark)
    parts = [p["path"] for p in report["partitions"]]
    assert parts and all(p.startswith(f"{s3_bucket}/crawls/CC-S3/urls/part-0000-") for p in parts)
    local_rows = parse_wat_file(wat)[0].to_pylist()
    remote_uids = [u for p in parts for u in pq.read_table(storage.open_file(p))["uid"].to_pylist()]
    assert sorted(remote_uids) == sorted({r["uid"] for r in local_rows})
    assert read_manifest(crawl)["wat_path"].to_pylist() == [remote_wat]
    assert storage.exists(storage.join(crawl.base, "reports", "r.json"))


def test_listing_outside_crawl_data_resolves_against_its_folder(tmp_path):
    import gzip

    listing = tmp_path / "wat.paths.gz"
    with gzip.open(listing, "wt") as f:
        f.write("a/0.warc.wat.gz\nb/./1.warc.wat.gz\n")
    assert resolve_inputs([str(listing)]) == [str(tmp_path / "a" / "0.warc.wat.gz"), str(tmp_path / "b" / "1.warc.wat.gz")]


@pytest.mark.parametrize("line", ["/etc/passwd", "../../outside.warc.wat.gz", "a/../../x.warc.wat.gz",
                                  "s3://other-bucket/x.warc.wat.gz"])
def test_a_listing_line_that_leaves_its_source_is_refused(tmp_path, line):
    import gzip

    listing = tmp_path / "crawl-data" / "CC-X" / "wat.paths.gz"
    listing.parent.mkdir(parents=True)
    with gzip.open(listing, "wt") as f:
        f.write(f"segments/0.warc.wat.gz\n{line}\n")
    with pytest.raises(ValueError, match=rf"wat.paths.gz, line 2: '{re.escape(line)}' leaves the listing's source"):
        resolve_inputs([str(listing)])


def test_unreadable_wat_file_stays_unprocessed_and_is_read_once_readable(tmp_path, s3_bucket, small_crawl, spark,
                                                                         fast_download_config):
    """A missing local file and a failed S3 read: recorded with their errors, retried, their pairs arrive."""
    first_wat, second_wat = small_crawl["wat_files"]
    late_local = str(tmp_path / "late" / "0.warc.wat.gz")
    late_s3 = storage.join(s3_bucket, "crawl-data", "CC-LATE", "1.warc.wat.gz")
    crawl = CrawlLayout(str(tmp_path / "root"), "CC-LATE")
    inputs = [late_local, late_s3]

    report = _extract(inputs, crawl, fast_download_config, str(tmp_path / "r1.json"), spark)
    assert report["partitions"] == [] and report["stats"]["counters"]["wat_files_pending:unreadable"] == 2
    assert report["stats"]["counters"]["wat_files_processed"] == 0
    errors = {u["wat_path"]: u["error"] for u in report["unreadable"]}
    assert set(errors) == set(inputs) and all("cannot read WAT file" in e for e in errors.values())
    manifest = read_manifest(crawl).to_pydict()
    assert manifest["processed"] == [False, False] and all(manifest["error"])

    # both become readable: the next run reads exactly them, and their pairs arrive
    (tmp_path / "late").mkdir()
    shutil.copy(first_wat, late_local)
    storage.write_bytes(late_s3, storage.read_bytes(second_wat))
    report2 = _extract(inputs, crawl, fast_download_config, str(tmp_path / "r2.json"), spark)
    assert report2["stats"]["counters"]["wat_files_processed"] == 2 and report2["unreadable"] == []
    got = set(_uids(p["path"] for p in report2["partitions"]))
    assert got == set(pq.read_table(small_crawl["truth"])["uid"].to_pylist())
    # and a third run reads nothing
    report3 = _extract(inputs, crawl, fast_download_config, str(tmp_path / "r3.json"), spark)
    assert report3["batch"] is None


def test_the_job_runs_unchanged_on_a_standalone_cluster(tmp_path, small_crawl, fast_download_config):
    """spark_jobs/extract_urls.py submitted to a Spark standalone master (spark://, what the spark_default
    connection names in production) with a worker of its own gives the pairs of the local run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from conftest import _free_port

    spark_class = Path(sys.executable).parent / "spark-class"
    master_port, ui_port, worker_ui = _free_port(), _free_port(), _free_port()
    master = f"spark://127.0.0.1:{master_port}"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"))
    logs = [open(tmp_path / name, "w") for name in ("master.log", "worker.log")]
    procs = [subprocess.Popen([str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(master_port), "--webui-port", str(ui_port)],
                              env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        time.sleep(3)
        procs.append(subprocess.Popen([str(spark_class), "org.apache.spark.deploy.worker.Worker", master,
                                       "--cores", "2", "--memory", "1g", "--webui-port", str(worker_ui)],
                                      env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while "Registering worker" not in (tmp_path / "master.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "master.log").read_text()[-3000:]
            time.sleep(1)
        root = tmp_path / "root"
        config = fast_download_config.to_dict() | {"storage_root": str(root)}
        report = tmp_path / "report.json"
        job = Path(__file__).resolve().parents[1] / "spark_jobs" / "extract_urls.py"
        done = subprocess.run(
            [str(Path(sys.executable).parent / "spark-submit"), "--master", master, "--conf", "spark.ui.enabled=false",
             str(job), "--crawl-id", "CC-CLUSTER", "--report", str(report), "--config-json", json.dumps(config),
             "--inputs-json", json.dumps([small_crawl["wat_listing"]])],
            env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert f"Connecting to master {master}" in done.stderr or "StandaloneSchedulerBackend" in done.stderr
        result = json.loads(report.read_text())
        uids = _uids(p["path"] for p in result["partitions"])
        truth = set(pq.read_table(small_crawl["truth"])["uid"].to_pylist())
        assert len(uids) == len(set(uids)) and set(uids) == truth
        assert result["stats"]["counters"]["wat_files_processed"] == 2
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        for log in logs:
            log.close()
