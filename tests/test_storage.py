import os

import pytest

from datacomp_ops.core import storage


def test_atomic_write_commits_on_success(tmp_path):
    target = str(tmp_path / "a" / "b.bin")
    with storage.atomic_write(target) as f:
        f.write(b"hello")
        assert not os.path.exists(target)  # invisible until committed
    assert storage.read_bytes(target) == b"hello"
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = str(tmp_path / "out.bin")
    storage.write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("task killed")
    assert storage.read_bytes(target) == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_commit_marker_holds_stats(tmp_path):
    d = str(tmp_path / "stage")
    assert not storage.is_committed(d)
    storage.commit(d, {"kept": 3})
    assert storage.is_committed(d)
    assert storage.committed_stats(d) == {"kept": 3}


def test_unwritable_path_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(storage.StorageError, match=f"storage path {blocker}/sub is not writable"):
        storage.check_writable(str(blocker / "sub"))
    with pytest.raises(storage.StorageError, match="cannot write"):
        storage.write_bytes(str(blocker / "x.bin"), b"")


def test_ls_and_move(tmp_path):
    for name in ("b.parquet", "a.parquet", "c.txt"):
        storage.write_bytes(str(tmp_path / "src" / name), b"1")
    assert [os.path.basename(p) for p in storage.ls(str(tmp_path / "src"), "*.parquet")] == ["a.parquet", "b.parquet"]
    assert storage.ls(str(tmp_path / "missing")) == []
    storage.move(str(tmp_path / "src" / "a.parquet"), str(tmp_path / "dst" / "a.parquet"))
    assert storage.exists(str(tmp_path / "dst" / "a.parquet"))


def test_s3_round_trip(s3_bucket):
    import fsspec

    fsspec.config.conf.pop("s3", None)
    url = storage.join(s3_bucket, "crawls", "x", "data.bin")
    with storage.atomic_write(url) as f:
        f.write(b"payload")
    assert storage.read_bytes(url) == b"payload"
    assert storage.ls(storage.join(s3_bucket, "crawls", "x")) == [url]
    storage.commit(storage.join(s3_bucket, "crawls", "x"), {"n": 1})
    assert storage.is_committed(storage.join(s3_bucket, "crawls", "x"))


def test_s3_clients_retry_with_backoff_and_upload_in_parts(s3_bucket):
    """botocore's adaptive retries (throttling, dropped connections) and 64 MiB multipart parts for shards."""
    fs, _ = storage.get_fs(f"{s3_bucket}/x")
    assert fs.config_kwargs["retries"] == {"total_max_attempts": 10, "mode": "adaptive"}
    assert fs.default_block_size == 64 * 2**20
    # a file over one part goes up as a multipart upload (atomic_write's temporary object is written so,
    # then copied into place); it reads back whole
    url = storage.join(s3_bucket, "shards", "00000000.tar")
    data = os.urandom(1024) * (70 * 1024)  # 70 MiB
    with storage.open_file(url, "wb") as f:
        for i in range(0, len(data), 2**20):  # as a shard writer writes: sample by sample
            f.write(data[i:i + 2**20])
    assert storage.read_bytes(url) == data
    import boto3

    etag = boto3.client("s3").head_object(Bucket=s3_bucket.removeprefix("s3://"), Key="shards/00000000.tar")["ETag"]
    assert etag.strip('"').endswith("-2")  # S3's ETag of a multipart object: md5 of the parts' md5s, "-" parts
