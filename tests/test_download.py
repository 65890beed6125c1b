"""A real img2dataset download from the local server, checked against the crawl's truth."""

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp_ops.core import ledger
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.crawl.wat import parse_wat_file
from datacomp_ops.download.partition import (
    Partition,
    TransientDownloadError,
    classify_failure,
    key_fraction,
    next_free_shard,
    plan_partitions,
    run_download,
)


def test_classify_failure_messages():
    assert classify_failure("HTTP Error 404: Not Found", "failed_to_download") == "http_error"
    assert classify_failure("timed out", "failed_to_download") == "timeout"
    assert classify_failure("<urlopen error timed out>", "failed_to_download") == "timeout"
    assert classify_failure("IncompleteRead(10 bytes read, 20 more expected)", "failed_to_download") == "truncated"
    assert classify_failure("Use of image disallowed by X-Robots-Tag directive", "failed_to_download") == "opted_out"
    assert classify_failure("Image decoding error", "failed_to_resize") == "not_image"
    assert classify_failure("image area too large", "failed_to_resize") == "image_too_large"
    assert classify_failure("<urlopen error [Errno 111] Connection refused>", "failed_to_download") == "network_error"
    assert classify_failure("aspect ratio too large", "failed_to_resize") == "resize_error"
    # transient HTTP answers get their own statuses, which later rebuilds retry
    assert classify_failure("HTTP Error 429: Too Many Requests", "failed_to_download") == "rate_limited"
    assert classify_failure("HTTP Error 503: Service Unavailable", "failed_to_download") == "server_error"
    assert classify_failure("HTTP Error 410: Gone", "failed_to_download") == "http_error"
    assert {"rate_limited", "server_error", "timeout", "network_error"} <= set(ledger.TRANSIENT_FAILURES)
    assert {"http_error", "not_image", "opted_out"} <= set(ledger.PERMANENT_FAILURES)


def test_partition_names_are_unique_across_crawls():
    assert Partition("/r/crawls/CC-A/urls/part-0000-00001.parquet", 1, 0).name == "CC-A-part-0000-00001"
    assert Partition("s3://b/crawls/CC-B/urls/part-0000-00001.parquet", 1, 0).name == "CC-B-part-0000-00001"
    assert Partition("/tmp/some.parquet", 1, 0).name == "some"
    assert Partition("/r/pool/v0002/requeue/part-00003.parquet", 1, 0).name == "requeue-part-00003"


def test_plan_gives_dense_shard_ranges():
    plan = plan_partitions([{"path": "p0.parquet", "rows": 250}, {"path": "p1.parquet", "rows": 100},
                            {"path": "p2.parquet", "rows": 0}], first_shard=3, samples_per_shard=100)
    assert [p.first_shard for p in plan] == [3, 6, 7]


@pytest.mark.slow
def test_download_statuses_match_the_truth(tmp_path, small_crawl, fast_download_config):
    rows = {}
    for path in small_crawl["wat_files"]:
        for row in parse_wat_file(path)[0].to_pylist():
            rows[row["uid"]] = row
    part_path = str(tmp_path / "part-0000-00000.parquet")
    pq.write_table(pa.Table.from_pylist(sorted(rows.values(), key=lambda r: r["uid"])), part_path)
    pool = PoolLayout(str(tmp_path / "root"), "v1")
    partition = Partition(part_path, len(rows), first_shard=4)

    stats = run_download(partition, pool, fast_download_config)

    truth = pq.read_table(small_crawl["truth"]).to_pydict()
    expected = dict(zip(truth["uid"], truth["expected_status"]))
    table = ledger.read(pool.ledger)
    ledger.check_accounts_for(table, rows, "test")
    got = dict(zip(table["uid"].to_pylist(), table["status"].to_pylist()))
    wrong = {u: (expected[u], got[u]) for u in got if got[u] != expected[u]}
    assert not wrong, wrong
    assert set(got.values()) >= {"downloaded", "http_error", "timeout", "truncated", "not_image",
                                 "image_too_large", "opted_out"}
    assert stats["urls"] == len(rows) and stats["downloaded"] == sum(s == "downloaded" for s in expected.values())
    failed_messages = [m for m, s in zip(table["message"].to_pylist(), table["status"].to_pylist()) if s != "downloaded"]
    assert all(failed_messages)

    # shards numbered from the partition's first shard, DataComp's sample layout
    assert [o.rsplit("/", 1)[-1] for o in stats.outputs] == ["00000004.tar", "00000005.tar", "00000006.tar"]
    with tarfile.open(stats.outputs[0]) as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        assert {f"{key}.jpg", f"{key}.txt", f"{key}.json"} <= set(names)
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        img = Image.open(tar.extractfile(f"{key}.jpg"))
    assert meta["uid"] in rows and len(meta["sha256"]) == 64
    assert max(img.size) <= 512
    oversized = [u for u, r in rows.items() if "/img/oversized/" in r["url"]]
    shard_meta = pq.read_table(pool.download(4, "parquet")).to_pylist()
    shard_meta += pq.read_table(pool.download(5, "parquet")).to_pylist() + pq.read_table(pool.download(6, "parquet")).to_pylist()
    big = [m for m in shard_meta if m["uid"] in oversized]
    assert big and all(m["original_width"] == 4000 and max(m["width"], m["height"]) == 512 for m in big)

    # a rerun is a no-op that returns the committed stats; the next free shard is after ours
    again = run_download(partition, pool, fast_download_config)
    assert again.counters == stats.counters
    assert next_free_shard(pool) == 7


@pytest.mark.slow
def test_download_to_s3(s3_bucket, small_crawl, fast_download_config):
    from datacomp_ops.core import storage
    from datacomp_ops.core.config import load_config

    # a partition as the extraction writes it: one row per uid (a WAT file repeats some pairs)
    shapes = [r for r in parse_wat_file(small_crawl["wat_files"][1])[0].to_pylist() if "/img/shape/" in r["url"]]
    rows = list({r["uid"]: r for r in shapes}.values())[:40]
    part = storage.join(s3_bucket, "crawls", "CC-S3DL", "urls", "part-0000-00000.parquet")
    with storage.atomic_write(part) as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    config = load_config(overrides={"storage_root": s3_bucket, "download.timeout": 5,
                                    "download.processes_count": 1, "download.thread_count": 8})
    pool = PoolLayout(config.storage_root, "s3pool")
    stats = run_download(Partition(part, len(rows), 0), pool, config)
    assert stats["downloaded"] == len(rows)
    assert storage.ls(pool.downloads, "*.tar") == [f"{s3_bucket}/pool/s3pool/downloads/00000000.tar"]
    assert ledger.read(pool.ledger).num_rows == len(rows)
    assert storage.ls(storage.join(pool.base, "_tmp"), "*") == []


def _shape_rows(base_url: str, n: int, tag: str) -> list[dict]:
    from datacomp_ops.core.schema import compute_uid

    rows = []
    for i in range(n):
        url, text = f"{base_url}/img/shape/red/circle/{tag}{i}.jpg", f"a red circle {tag}{i}"
        rows.append({"uid": compute_uid(text, url), "url": url, "text": text, "page_url": None, "wat_path": None})
    return sorted(rows, key=lambda r: r["uid"])


@pytest.mark.slow
def test_host_down_fails_the_task_and_its_retry_succeeds(tmp_path, fast_download_config):
    """With the image host down nothing is committed, so the retry downloads every URL once the host is back."""
    from conftest import _free_port
    from datacomp_ops.core import storage
    from datacomp_ops.synthetic.server import serving

    port = _free_port()
    rows = _shape_rows(f"http://127.0.0.1:{port}", 30, "down")
    part = str(tmp_path / "crawls" / "CC-DOWN" / "urls" / "part-0000-00000.parquet")
    (tmp_path / "crawls" / "CC-DOWN" / "urls").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), part)
    pool = PoolLayout(fast_download_config.storage_root, "v1")
    partition = Partition(part, len(rows), 0)

    with pytest.raises(TransientDownloadError, match=r"30 of 30 URLs failed transiently \(network_error 30\)"):
        run_download(partition, pool, fast_download_config, last_try=False)
    assert not storage.exists(pool.marker("download", partition.name))
    assert ledger.read(pool.ledger).num_rows == 0 and storage.ls(pool.downloads, "*") == []

    with serving(port):
        stats = run_download(partition, pool, fast_download_config, last_try=False)
    assert stats["downloaded"] == 30
    assert ledger.counts(ledger.read(pool.ledger)) == {"downloaded": 30}


@pytest.mark.slow
def test_last_try_commits_transient_failures(tmp_path, fast_download_config):
    from conftest import _free_port

    port = _free_port()  # nothing listens there
    rows = _shape_rows(f"http://127.0.0.1:{port}", 5, "gone")
    part = str(tmp_path / "part-0000-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), part)
    pool = PoolLayout(fast_download_config.storage_root, "v1")
    stats = run_download(Partition(part, len(rows), 0), pool, fast_download_config, last_try=True)
    assert stats["network_error"] == 5
    table = ledger.read(pool.ledger)
    assert table["attempt"].to_pylist() == [1] * 5 and table["source"].to_pylist() == [part] * 5


@pytest.mark.slow
def test_key_limit_defers_what_the_scale_does_not_need(tmp_path, image_server, fast_download_config):
    rows = _shape_rows(image_server.base_url, 40, "key")
    part = str(tmp_path / "part-0000-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), part)
    pool = PoolLayout(fast_download_config.storage_root, "v1")
    stats = run_download(Partition(part, len(rows), 0, key_limit=0.5), pool, fast_download_config)
    below = {r["uid"] for r, k in zip(rows, key_fraction([r["uid"] for r in rows])) if k < 0.5}
    assert 0 < len(below) < 40
    table = ledger.read(pool.ledger)
    got = dict(zip(table["uid"].to_pylist(), table["status"].to_pylist()))
    assert {u for u, s in got.items() if s == "downloaded"} == below
    assert {u for u, s in got.items() if s == "deferred"} == {r["uid"] for r in rows} - below
    assert stats["deferred"] == 40 - len(below) and stats["attempted"] == len(below)
    attempts = dict(zip(table["uid"].to_pylist(), table["attempt"].to_pylist()))
    assert {attempts[u] for u in below} == {1} and {attempts[u] for u in got if u not in below} == {0}
