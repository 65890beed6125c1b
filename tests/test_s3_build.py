"""The CommonPool build with everything on S3: the crawl in Common Crawl's bucket layout, the storage
root, every stage's output. The S3 endpoint is a moto server on loopback, reached through the real
boto3/s3fs clients; the credentials come only from the `aws_default` Airflow connection (the task
processes have no AWS_* variables of their own). A second run with the same inputs writes no data:
only the records of the run itself (its reports, its claim of the next, still empty, pool version)."""

import gzip
import json
import os
import subprocess

import boto3
import pyarrow.parquet as pq
import pytest
from test_dags import airflow_env, run_dags_test

pytestmark = pytest.mark.slow

CRAWL = "CC-MAIN-2026-40"  # Common Crawl's naming: crawl-data/CC-MAIN-YYYY-WW/wat.paths.gz


def _objects(s3, bucket: str) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object of the bucket."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return out


def test_build_on_s3_then_the_same_run_again_writes_nothing(tmp_path, s3_bucket, small_crawl, embedded_models):
    from datacomp_ops.core import ledger, storage, versions

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3")
    # the crawl as Common Crawl lays it out: the listing names WAT paths relative to the bucket
    listing = []
    for i, wat in enumerate(small_crawl["wat_files"]):
        key = f"crawl-data/{CRAWL}/segments/0/wat/CC-MAIN-{i:05d}.warc.wat.gz"
        s3.upload_file(wat, bucket, f"cc/{key}")
        listing.append(key)
    s3.put_object(Bucket=bucket, Key=f"cc/crawl-data/{CRAWL}/wat.paths.gz",
                  Body=gzip.compress(("\n".join(listing) + "\n").encode()))
    root = f"{s3_bucket}/pool"

    home = tmp_path / "airflow"
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    env = airflow_env(home, AIRFLOW_CONN_AWS_DEFAULT=json.dumps({
        "conn_type": "aws", "login": "test", "password": "test",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        env.pop(name, None)  # only the connection knows where S3 is and who we are
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    conf = {
        "crawl_id": CRAWL,
        "config_overrides": {"storage_root": root, "crawl.source": f"{s3_bucket}/cc",
                             "download.timeout": 5, "download.max_attempts": 1, "download.processes_count": 1, "download.retries": 0,
                             "download.number_sample_per_shard": 100, "extract.urls_per_partition": 150,
                             "evaluation.sets_dir": small_crawl["eval_dir"], "models.embedded_dir": embedded_models,
                             "metadata.batch_size": 32, "publish.tiny_pool_size": 50},
    }
    logical_date = "2026-10-04T00:00:00+00:00"
    out = run_dags_test(env, conf, logical_date)
    assert "storage credentials from connection aws_default" in out

    # every stage wrote to the bucket: URL parts, shards, metadata, ledger, manifest, per-scale pools
    written = _objects(s3, bucket)
    keys = sorted(k for k in written if k.startswith("pool/"))
    for pattern in (f"pool/crawls/{CRAWL}/urls/part-", f"pool/crawls/{CRAWL}/wat_manifest.parquet",
                    "pool/pool/v0001/shards/00000000.tar", "pool/pool/v0001/metadata/00000000.parquet",
                    "pool/pool/v0001/metadata/00000000.npz", "pool/pool/v0001/ledger/", "pool/pool/v0001/manifest.json",
                    "pool/pool/v0001/scales/tiny.npy"):
        assert any(k.startswith(pattern) for k in keys), (pattern, keys[:40])
    assert not any("/_tmp" in k or "/.tmp-" in k for k in keys)  # no temporary object left behind
    truth = pq.read_table(small_crawl["truth"]).to_pylist()
    final = ledger.final_statuses(*versions.ledger_dirs(root, "v0001"))
    assert dict(zip(final["uid"].to_pylist(), final["status"].to_pylist())) == {
        r["uid"]: r["expected_final"] for r in truth}
    manifest = storage.read_json(f"{root}/pool/v0001/manifest.json")
    assert manifest["shards"][0].startswith(f"{root}/pool/v0001/shards/")

    # a second run with the same inputs (every WAT file processed; with max_attempts 1 no URL is left to
    # retry): no URL part, shard, metadata, ledger part or manifest is added or rewritten
    out = run_dags_test(env, conf, logical_date)
    assert "nothing new to publish" in out
    again = _objects(s3, bucket)
    assert set(written) <= set(again)
    added = sorted(set(again) - set(written))
    records = [k for k in added if "/reports/" in k or k.startswith("pool/pool/_runs/")
               or k == "pool/pool/v0002/version.json"]
    assert added == records, [k for k in added if k not in records]
    assert [k for k in written if again[k] != written[k]] == []
