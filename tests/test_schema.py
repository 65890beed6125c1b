import hashlib

import numpy as np
import pytest

from datacomp_ops.core.schema import (
    UID_DTYPE,
    SchemaError,
    array_to_uids,
    compute_uid,
    read_subset,
    uids_to_array,
    write_subset,
)


def test_uid_is_md5_of_caption_then_url():
    uid = compute_uid("a red circle", "http://x/y.jpg")
    assert uid == hashlib.md5(b"a red circlehttp://x/y.jpg").hexdigest()
    assert len(uid) == 32


def test_subset_round_trip(tmp_path):
    uids = [compute_uid(str(i), "u") for i in range(100)]
    path = str(tmp_path / "s.npy")
    assert write_subset(path, uids) == 100
    arr = read_subset(path)
    assert arr.dtype == UID_DTYPE
    assert array_to_uids(arr) == sorted(uids)


def test_reads_subset_written_like_datacomp_baselines(tmp_path):
    # DataComp's baselines/utils.py: np.array([(int(u[:16], 16), int(u[16:], 16)) ...], np.dtype("u8,u8")), sort, np.save
    uids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(50)]
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], np.dtype("u8,u8"))
    arr.sort()
    path = tmp_path / "datacomp.npy"
    np.save(path, arr)
    assert set(array_to_uids(read_subset(str(path)))) == set(uids)
    # and DataComp reads ours the same way
    ours = tmp_path / "ours.npy"
    write_subset(str(ours), uids)
    assert np.array_equal(np.load(ours), arr)


def test_bad_subsets_are_rejected(tmp_path):
    uids = sorted(compute_uid(str(i), "u") for i in range(5))
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], UID_DTYPE)
    unsorted = tmp_path / "unsorted.npy"
    np.save(unsorted, arr[::-1])
    with pytest.raises(SchemaError, match="unsorted uids at index 1"):
        read_subset(str(unsorted))
    dup = tmp_path / "dup.npy"
    np.save(dup, np.concatenate([arr[:2], arr[1:]]))
    with pytest.raises(SchemaError, match="duplicated uid at index 2"):
        read_subset(str(dup))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.arange(4))
    with pytest.raises(SchemaError, match="dtype int64, expected"):
        read_subset(str(wrong))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(SchemaError, match="not a numpy array file"):
        read_subset(str(junk))


def test_malformed_uids_are_named():
    with pytest.raises(SchemaError, match=r"uid #1 'xyz' is not 32 lowercase hex"):
        uids_to_array([compute_uid("a", "b"), "xyz"])
    with pytest.raises(SchemaError, match="not 32 lowercase hex"):
        uids_to_array(["g" * 32])
    with pytest.raises(SchemaError, match="duplicated uid"):
        uids_to_array([compute_uid("a", "b")] * 2)
