"""The resharder: only the subset's samples, byte for byte, in densely numbered shards DataComp's train.py reads."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core.schema import uids_to_array, write_subset
from datacomp_ops.filtering.pool import PoolError
from datacomp_ops.training.reshard import plan_reshard, run_reshard, run_reshard_task


def make_shards(folder, n_shards=3, per_shard=7, failed_every=5):
    """img2dataset-style shards: {key}.jpg/.txt/.json in the tar, key/uid/status in the parquet beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    tars, samples = [], {}
    for s in range(n_shards):
        rows, path = [], folder / f"{s:08d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                uid = hashlib.md5(key.encode()).hexdigest()
                ok = i % failed_every != 4
                rows.append({"key": key, "uid": uid, "status": "success" if ok else "failed_to_download"})
                if not ok:
                    continue
                files = {"jpg": f"image {key}".encode() * 50, "txt": f"caption {key}".encode(),
                         "json": json.dumps({"uid": uid, "key": key}).encode()}
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                samples[uid] = files
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:08d}.parquet")
        tars.append(str(path))
    return tars, samples


def test_reshard_keeps_exactly_the_subset_in_dense_shards(tmp_path):
    import webdataset as wds

    tars, samples = make_shards(tmp_path / "pool")
    chosen = sorted(samples)[::2]  # every other downloaded sample
    subset = tmp_path / "subset.npy"
    write_subset(str(subset), uids_to_array(chosen + ["f" * 32]))  # one uid is in no shard
    out = tmp_path / "out"
    stats = run_reshard(str(subset), tars, str(out), shard_size=4, workers=2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["output_count"] == len(chosen) and meta["missing_from_shards"] == 1
    n = meta["output_shard_count"]
    assert sorted(p.name for p in out.glob("*.tar")) == [f"{i:08d}.tar" for i in range(n)]
    counts = [json.loads((out / f"{i:08d}_stats.json").read_text())["successes"] for i in range(n)]
    assert sum(counts) == len(chosen) and max(counts) <= 4
    assert np.load(out / "sample_ids.npy").tolist() == np.load(subset).tolist()
    # as DataComp's train.py names the folder's shards from meta.json, and reads them with webdataset
    pattern = f"{out}/{{{meta['output_shard_format'].format(0)[:-4]}..{meta['output_shard_format'].format(n - 1)[:-4]}}}.tar"
    got = {json.loads(s["json"])["uid"]: s for s in wds.WebDataset(pattern, shardshuffle=False)}
    assert sorted(got) == chosen
    for uid, sample in got.items():  # byte for byte
        assert {k: sample[k] for k in ("jpg", "txt", "json")} == samples[uid]
    assert stats["samples"] == len(chosen)
    # committed: a rerun does nothing
    mtime = (out / "00000000.tar").stat().st_mtime_ns
    run_reshard(str(subset), tars, str(out), shard_size=4, workers=2)
    assert (out / "00000000.tar").stat().st_mtime_ns == mtime


def test_reshard_plans_output_numbers_up_front_and_a_task_reruns_alone(tmp_path):
    tars, samples = make_shards(tmp_path / "pool", n_shards=4)
    subset = tmp_path / "subset.npy"
    write_subset(str(subset), uids_to_array(sorted(samples)))
    plan = plan_reshard(str(subset), tars, shard_size=3, tasks=2)
    assert [t.inputs for t in plan] == [tars[:2], tars[2:]]
    assert plan[1].first_output == plan[0].outputs
    out = tmp_path / "out"
    second = run_reshard_task(plan[1], str(subset), str(out), 3)  # tasks run in any order, on any worker
    assert second["samples"] == plan[1].selected
    assert sorted(p.name for p in out.glob("*.tar"))[0] == f"{plan[0].outputs:08d}.tar"


def test_reshard_names_a_shard_without_its_parquet(tmp_path):
    tars, samples = make_shards(tmp_path / "pool", n_shards=2)
    (tmp_path / "pool" / "00000001.parquet").unlink()
    subset = tmp_path / "subset.npy"
    write_subset(str(subset), uids_to_array(sorted(samples)[:2]))
    with pytest.raises(PoolError, match="00000001.parquet: missing"):
        run_reshard(str(subset), tars, str(tmp_path / "out"))


def _pool_of(tmp_path, write_member):
    """One shard written member by member with `write_member(tar, key, ext, data)`, its parquet beside."""
    folder = tmp_path / "pool"
    folder.mkdir()
    keys = ["000000000001", "k" * 120, "000000000003"]  # a long name needs a pax or GNU header
    rows, samples = [], {}
    with open(folder / "00000000.tar", "wb") as f:
        write_member(f, keys, samples, rows)
    pq.write_table(pa.Table.from_pylist(rows), folder / "00000000.parquet")
    return [str(folder / "00000000.tar")], samples


def _files(key, uid):
    return {"jpg": f"image {key}".encode() * 30, "txt": f"caption {key}".encode(), "json": json.dumps({"uid": uid}).encode()}


@pytest.mark.parametrize("writer", ["webdataset", "gnu", "pax"])
def test_reshard_copies_members_with_extended_headers(tmp_path, writer):
    """webdataset's TarWriter (img2dataset's and our shards) gives every member a pax header (its mtime is a
    float); long names come with pax or GNU headers: each travels with its member, byte for byte."""
    import webdataset as wds

    def write(f, keys, samples, rows):
        if writer == "webdataset":
            with wds.TarWriter(f) as tar:
                for key in keys:
                    uid = hashlib.md5(key.encode()).hexdigest()
                    samples[uid] = _files(key, uid)
                    rows.append({"key": key, "uid": uid, "status": "success"})
                    tar.write({"__key__": key, **samples[uid]})
            return
        fmt = tarfile.GNU_FORMAT if writer == "gnu" else tarfile.PAX_FORMAT
        with tarfile.open(fileobj=f, mode="w", format=fmt) as tar:
            for key in keys:
                uid = hashlib.md5(key.encode()).hexdigest()
                samples[uid] = _files(key, uid)
                rows.append({"key": key, "uid": uid, "status": "success"})
                for ext, data in samples[uid].items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    tars, samples = _pool_of(tmp_path, write)
    chosen = sorted(samples)[1:]
    subset = tmp_path / "subset.npy"
    write_subset(str(subset), uids_to_array(chosen))
    run_reshard(str(subset), tars, str(tmp_path / "out"), shard_size=10, workers=1)
    with tarfile.open(tmp_path / "out" / "00000000.tar") as tar:
        names = tar.getnames()
    got = {json.loads(s["json"])["uid"]: s for s in wds.WebDataset(str(tmp_path / "out" / "00000000.tar"),
                                                                  shardshuffle=False)}
    assert sorted(got) == chosen and len(names) == 3 * len(chosen)
    for uid in chosen:
        assert {k: got[uid][k] for k in ("jpg", "txt", "json")} == samples[uid]


def test_reshard_refuses_a_global_pax_header(tmp_path):
    """A global header applies to every member after it; copying members without it would change them."""
    def write(f, keys, samples, rows):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
            for key in keys[:1]:
                uid = hashlib.md5(key.encode()).hexdigest()
                samples[uid] = _files(key, uid)
                rows.append({"key": key, "uid": uid, "status": "success"})
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))

    tars, samples = _pool_of(tmp_path, write)
    subset = tmp_path / "subset.npy"
    write_subset(str(subset), uids_to_array(sorted(samples)))
    with pytest.raises(PoolError, match=r"00000000.tar: tar member type b'g'"):
        run_reshard(str(subset), tars, str(tmp_path / "out"))


def test_the_header_scan_finds_what_the_member_walk_finds(tmp_path):
    """Plain shards are read with numpy (every ustar magic a candidate, the chain of sizes checked); a
    member whose bytes hold a header-like block, or a pax header naming a path, sends the shard through
    the member-by-member walk. Both give the same samples."""
    import webdataset as wds

    from datacomp_ops.training.reshard import _plain_sample_spans, _samples, _walk_samples

    fake = bytes(tarfile.TarInfo("ghost.jpg").tobuf(tarfile.USTAR_FORMAT))  # a valid header, inside data
    cases = {"plain": [], "magic inside a member": [fake * 3], "pax path": []}
    for name, extra in cases.items():
        path = tmp_path / f"{len(list(tmp_path.iterdir())):02d}.tar"
        with wds.TarWriter(str(path)) as tar:
            for i in range(12):
                data = b"x" * (512 * (i % 3) + 100 * i)
                tar.write({"__key__": f"{i:06d}", "jpg": b"".join([bytes(512 - len(data) % 512 or 512)] + extra + [data])
                           if extra else data, "txt": b"caption %d" % i})
            if name == "pax path":
                tar.write({"__key__": "k" * 150, "txt": b"long"})
        raw = path.read_bytes()
        wanted = {f"{i:06d}".encode() for i in (0, 3, 4, 11)} | {b"k" * 150}
        walked = [b"".join(bytes(b) for b in blocks) for blocks in _walk_samples(memoryview(raw), raw, wanted, "x")]
        spans = _plain_sample_spans(raw, wanted)
        assert (spans is None) == (name != "plain")
        assert [b"".join(bytes(b) for b in s) for s in _samples(memoryview(raw), wanted, "x")] == walked
        assert len(walked) == 4 + (name == "pax path")
        if spans is not None:
            assert [raw[a:b] for a, b in spans] == walked


def test_a_build_announces_its_complete_scales_and_the_smallest_incomplete_one():
    from datacomp_ops.pool.publish import asset_extras

    scales = {name: {"built": True, "complete": name == "tiny", "samples": 60 if name != "tiny" else 50,
                     "path": f"/r/pool/v0001/scales/{name}.npy"} for name in sorted(["tiny", "small", "medium",
                                                                                        "large", "xlarge"])}
    manifest = {"pool_version": "v0001", "samples": 60, "scales": scales, "storage_root": "/r"}
    assert list(manifest["scales"])[0] == "large"  # as the manifest's JSON has them: sorted by name
    assert set(asset_extras(manifest)) == {"tiny", "small"}
    scales["tiny"]["complete"] = False  # a pool smaller than tiny: tiny holds it all, the rest the same
    assert set(asset_extras(manifest)) == {"tiny"}
