import os

import pytest

from datacomp_ops import storage


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
