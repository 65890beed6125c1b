"""Real inputs through the Spark extraction: one bad file never stops a batch, a repaired file is read again."""

import gzip
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import storage
from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import CrawlLayout
from datacomp_ops.crawl import source_files
from datacomp_ops.crawl.extract import run_extract_urls
from datacomp_ops.crawl.wat import parse_wat_file
from datacomp_ops.synthetic.crawl import _envelope, _record

pytestmark = pytest.mark.slow


def _uids_written(crawl: CrawlLayout) -> set[str]:
    return {u for p in storage.ls(crawl.urls, "part-*.parquet") for u in pq.read_table(p)["uid"].to_pylist()}


def _uids_of(path: str) -> set[str]:
    return set(parse_wat_file(path)[0]["uid"].to_pylist())


def _fresh_wat(tag: str, n: int = 5) -> bytes:
    return b"".join(_record(f"http://{tag}.example/{i}", _envelope(f"http://{tag}.example/{i}", [
        {"path": "IMG@/src", "url": f"/{tag}/{i}.jpg", "alt": f"{tag} picture {i}"}])) for i in range(n))


def _state(crawl: CrawlLayout) -> dict[str, tuple[str, int]]:
    return {os.path.basename(p): (r["status"], r["attempt"])
            for p, r in source_files.current(source_files.read_manifest(crawl)).items()}


def test_bad_files_and_records_never_stop_a_batch_and_repaired_files_are_read_again(tmp_path, small_crawl, spark):
    good0, good1 = small_crawl["wat_files"]
    wat_dir = tmp_path / "src" / "crawl-data" / "CC-FAULTS" / "segments" / "0" / "wat"
    wat_dir.mkdir(parents=True)
    names = ["a-whole", "b-empty", "c-cut", "d-proxy-page", "e-random", "f-odd-records"]
    files = {n: str(wat_dir / f"{n}.warc.wat.gz") for n in names}
    shutil.copy(good0, files["a-whole"])
    open(files["b-empty"], "wb").close()
    whole1 = open(good1, "rb").read()
    open(files["c-cut"], "wb").write(whole1[: len(whole1) // 2])
    open(files["d-proxy-page"], "wb").write(b"<html><head><title>502 Bad Gateway</title></head></html>\n")
    open(files["e-random"], "wb").write(os.urandom(4096).replace(b"\x1f\x8b", b"\x00\x00"))
    surrogate = json.dumps(_envelope("http://odd.example/p", [{"path": "IMG@/src", "url": "/s.jpg", "alt": "PLACE"}]))
    open(files["f-odd-records"], "wb").write(
        _record("http://odd.example/p", surrogate.replace("PLACE", "\\ud800").encode())
        + _record("http://odd.example/q", b'{"Envelope": ' + b"[" * 4000 + b"]" * 4000 + b"}")
        + _fresh_wat("odd", 3))
    listing = tmp_path / "src" / "crawl-data" / "CC-FAULTS" / "wat.paths.gz"
    with gzip.open(listing, "wt") as f:
        f.write("\n".join(os.path.relpath(p, tmp_path / "src") for p in files.values()) + "\n")

    config = load_config(overrides={"storage_root": str(tmp_path / "root"), "extract.spark_master": "local[2]",
                                    "extract.max_read_attempts": 2})
    crawl = CrawlLayout(config.storage_root, "CC-FAULTS")

    def run(n: int) -> dict:  # the batch report the stage committed, whose stats it returns
        stats = run_extract_urls([str(listing)], crawl, config, str(tmp_path / f"report{n}.json"), spark)
        report = storage.read_json(str(tmp_path / f"report{n}.json"))
        assert stats.to_dict() == report["stats"]
        return report

    # 1: the batch goes on past every bad file; each bad one is named with its reason
    report = run(1)
    counters = report["stats"]["counters"]
    assert _state(crawl) == {"a-whole.warc.wat.gz": ("processed", 1), "b-empty.warc.wat.gz": ("empty", 1),
                             "c-cut.warc.wat.gz": ("truncated", 1), "d-proxy-page.warc.wat.gz": ("not_warc", 1),
                             "e-random.warc.wat.gz": ("not_warc", 1), "f-odd-records.warc.wat.gz": ("processed", 1)}
    named = {os.path.basename(u["wat_path"]): u for u in report["unreadable"]}
    assert set(named) == {"b-empty.warc.wat.gz", "c-cut.warc.wat.gz", "d-proxy-page.warc.wat.gz",
                          "e-random.warc.wat.gz"}
    assert all(u["wat_path"] in u["error"] and not u["final"] for u in named.values())
    assert "is empty (0 bytes)" in named["b-empty.warc.wat.gz"]["error"]
    assert "neither gzip nor WARC" in named["d-proxy-page.warc.wat.gz"]["error"]
    assert counters["skipped:invalid_unicode"] == 1 and counters["skipped:json_too_deep"] == 1
    assert counters["wat_files_processed"] == 2
    cut_pairs = _uids_of(files["c-cut"])
    assert cut_pairs and _uids_written(crawl) == _uids_of(files["a-whole"]) | _uids_of(files["f-odd-records"]) | cut_pairs

    # 2: the empty and the cut file are re-downloaded whole: read again, all their URLs arrive; the two
    # files that still are not WARC have had their reads (extract.max_read_attempts=2): given up, final
    open(files["b-empty"], "wb").write(_fresh_wat("late"))
    open(files["c-cut"], "wb").write(whole1)
    report = run(2)
    assert _uids_written(crawl) >= _uids_of(good1) | _uids_of(files["b-empty"]) | _uids_of(good0)
    state = _state(crawl)
    assert state["b-empty.warc.wat.gz"] == ("processed", 2) and state["c-cut.warc.wat.gz"] == ("processed", 2)
    assert state["d-proxy-page.warc.wat.gz"] == ("gave_up", 2) and state["e-random.warc.wat.gz"] == ("gave_up", 2)
    assert {os.path.basename(u["wat_path"]) for u in report["unreadable"] if u["final"]} == {
        "d-proxy-page.warc.wat.gz", "e-random.warc.wat.gz"}
    assert report["stats"]["counters"]["wat_files_given_up"] == 2
    assert source_files.state_counts(crawl) == {"gave_up": 2, "processed": 4}
    # every pair found is accounted for, the re-read file's early half included (known from run 1)
    c = report["stats"]["counters"]
    assert c["pairs"] == c["urls_written"] + c["duplicates_in_batch"] + c["already_known"]
    assert c["already_known"] >= len(cut_pairs)

    # 3: nothing changed: nothing is read
    report = run(3)
    assert report["batch"] is None and report["stats"]["counters"]["wat_files_given_up_before"] == 2

    # 4: a given-up file replaced by a real one, and a processed file that grew, are read again
    open(files["d-proxy-page"], "wb").write(_fresh_wat("fixed"))
    with open(files["a-whole"], "ab") as f:
        f.write(_fresh_wat("appended", 2))
    report = run(4)
    assert report["stats"]["counters"]["wat_files_changed_read_again"] == 2
    assert _uids_of(files["d-proxy-page"]) | _uids_of(files["a-whole"]) <= _uids_written(crawl)
    assert source_files.state_counts(crawl) == {"gave_up": 1, "processed": 5}
