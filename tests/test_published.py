"""Pools from DataComp's published metadata: a folder in the published layout imported as a pool of its own,
kept as published, filtered before any image is fetched; bad input named, nothing half-imported."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import ledger, storage, versions
from datacomp_ops.core.layout import CrawlLayout, PoolLayout, dataset_root
from datacomp_ops.core.schema import read_subset, uids_to_array, write_subset
from datacomp_ops.pool.byod import DatasetImportError
from datacomp_ops.pool.published import make_published_spec, run_publish_published, run_scan_published

DIMS = {"b32_img": 8, "b32_txt": 8, "l14_img": 12, "l14_txt": 12}


def published_rows(n: int, seed: int, start: int = 0) -> dict[str, list]:
    """Rows as DataComp publishes them: uid = md5 hex, the sizes, both scores, face boxes (fractions), sha256."""
    rng = np.random.default_rng(seed)
    urls = [f"http://img{i % 7}.example.com/{start + i}.jpg" for i in range(n)]
    texts = [f"a photo of thing {start + i}" for i in range(n)]
    boxes = [[[0.1, 0.2, 0.3, 0.5]] if i % 5 == 0 else [] for i in range(n)]
    return {
        "uid": [hashlib.md5((t + u).encode()).hexdigest() for t, u in zip(texts, urls)],
        "url": urls, "text": texts,
        "original_width": rng.integers(100, 2000, n).tolist(), "original_height": rng.integers(100, 2000, n).tolist(),
        "clip_b32_similarity_score": rng.random(n).tolist(), "clip_l14_similarity_score": rng.random(n).tolist(),
        "face_bboxes": boxes, "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in urls],
    }


def write_published(folder, files: int = 3, rows: int = 40, seed: int = 0, npz: bool = True) -> list[str]:
    """A folder in DataComp's published layout: {name}.parquet per metadata shard, {name}.npz beside (float16)."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    rng = np.random.default_rng(seed)
    paths = []
    for f in range(files):
        name = hashlib.md5(f"{seed}-{f}".encode()).hexdigest()[:12]  # DataComp names its files by a hash
        pq.write_table(pa.table(published_rows(rows, seed * 1000 + f, start=f * rows), schema=schema),
                       folder / f"{name}.parquet")
        if npz:
            np.savez(folder / f"{name}.npz", **{k: rng.standard_normal((rows, d)).astype(np.float16)
                                                  for k, d in DIMS.items()})
        paths.append(str(folder / f"{name}.parquet"))
    return sorted(paths)


def _import(tmp_path, metadata, run="run1", **kwargs):
    spec = make_published_spec(run, kwargs.pop("name", "dc_small"), str(metadata), kwargs.pop("scale", "tiny"),
                               overrides={"storage_root": str(tmp_path / "root")}, **kwargs)
    scanned = run_scan_published(spec)
    return spec, scanned, run_publish_published(spec)


def test_a_published_folder_becomes_a_pool_kept_as_published_and_filtered_before_any_download(tmp_path):
    files = write_published(tmp_path / "metadata")
    spec, scanned, published = _import(tmp_path, tmp_path / "metadata")
    root = dataset_root(str(tmp_path / "root"), "dc_small")
    assert spec.pool_version == "v0001" and spec.config["storage_root"] == root
    assert scanned["files_processed"] == 3 and scanned["urls_written"] == 120 and published["samples"] == 120
    manifest = storage.read_json(PoolLayout(root, "v0001").manifest)
    assert manifest["kind"] == "published" and manifest["shards"] == [] and len(manifest["metadata"]) == 3
    for source, copy in zip(files, manifest["metadata"]):  # copied byte for byte, npz beside
        assert storage.read_bytes(copy) == storage.read_bytes(source)
        assert storage.read_bytes(copy[:-8] + ".npz") == storage.read_bytes(source[:-8] + ".npz")
    published_uids = [u for f in files for u in pq.read_table(f)["uid"].to_pylist()]
    assert read_subset(manifest["scales"]["tiny"]["path"]).tolist() == uids_to_array(published_uids).tolist()
    # the URL parts the download reads carry the published boxes and hashes
    parts = storage.ls(CrawlLayout(root, "dc_small").urls, "part-*.parquet")
    urls = pa.concat_tables([pq.read_table(p) for p in parts])
    assert urls.num_rows == 120 and {"face_bboxes", "sha256"} <= set(urls.column_names)
    first = pq.read_table(files[0]).slice(0, 1).to_pylist()[0]  # a row with a face box (every fifth has one)
    row = urls.filter(pa.compute.equal(urls["uid"], first["uid"])).to_pylist()[0]
    assert row["face_bboxes"] == first["face_bboxes"] == [[0.1, 0.2, 0.3, 0.5]]
    assert (row["url"], row["text"], row["sha256"]) == (first["url"], first["text"], first["sha256"])

    # DataComp's baselines over the published metadata, as DataComp's code selects them (benchmarks/
    # datacomp_reference.py restates apply_filter.py's code paths: pandas, fastText per caption, numpy)
    import fasttext

    from benchmarks import datacomp_reference as reference
    from datacomp_ops.core.config import load_config
    from datacomp_ops.filtering.language import bundled_fasttext_model
    from datacomp_ops.filtering.run import PoolSource, run_baseline

    config = load_config(overrides={"storage_root": root, "filtering.baselines": [
        "no_filter", "basic_filter", "clip_score_l14_30 = clip_score:arch=l14,fraction=0.3",
        "clip_score_b32_30 = clip_score:arch=b32,fraction=0.3"]})
    model = fasttext.load_model(bundled_fasttext_model())
    theirs = {"no_filter": reference.no_filter(files), "basic_filter": reference.basic_filter(files, model),
              "clip_score_l14_30": reference.clip_score(files, "clip_l14_similarity_score", 0.3),
              "clip_score_b32_30": reference.clip_score(files, "clip_b32_similarity_score", 0.3)}
    source = PoolSource(manifest=PoolLayout(root, "v0001").manifest, scale="tiny")
    for label, expected in theirs.items():
        stats = run_baseline(label, source, config)
        assert read_subset(stats.outputs[0]).tolist() == np.sort(expected).tolist(), label
        assert 0 < stats["kept"] == len(expected) <= 120, label
    assert len(theirs["basic_filter"]) < 120  # the size and aspect rules remove some


def test_a_later_import_reads_only_new_files_and_a_subset_file_limits_the_pool(tmp_path):
    files = write_published(tmp_path / "metadata", files=4)
    _import(tmp_path, tmp_path / "metadata", shards="0,2")
    spec, scanned, published = _import(tmp_path, tmp_path / "metadata", run="run2")
    assert spec.pool_version == "v0002" and scanned["files_already_imported"] == 2 and scanned["files_processed"] == 2
    manifest = storage.read_json(spec.pool.manifest)
    assert manifest["parent"] == "v0001" and len(manifest["metadata"]) == 4 and manifest["samples"] == 160
    # nothing new: not published again
    again = make_published_spec("run3", "dc_small", str(tmp_path / "metadata"), "tiny",
                                overrides={"storage_root": str(tmp_path / "root")})
    assert run_scan_published(again)["files_already_imported"] == 4
    assert run_publish_published(again)["unchanged"] == 1
    # the same file under another name: its uids are the pool's already
    import shutil

    shutil.copy(files[0], tmp_path / "metadata" / "zz-copy.parquet")
    shutil.copy(files[0][:-8] + ".npz", tmp_path / "metadata" / "zz-copy.npz")
    copy = make_published_spec("run4", "dc_small", str(tmp_path / "metadata"), "tiny",
                               overrides={"storage_root": str(tmp_path / "root")})
    with pytest.raises(DatasetImportError, match=r"zz-copy.parquet was imported into pool dc_small before"):
        run_scan_published(copy)
    (tmp_path / "metadata" / "zz-copy.parquet").unlink()
    (tmp_path / "metadata" / "zz-copy.npz").unlink()

    # a DataComp subset file limits a pool to its uids
    chosen = [u for u in pq.read_table(files[1])["uid"].to_pylist()[:10]]
    write_subset(str(tmp_path / "subset.npy"), uids_to_array(chosen))
    spec, scanned, _ = _import(tmp_path, tmp_path / "metadata", name="dc_subset", subset=str(tmp_path / "subset.npy"))
    assert scanned["urls_written"] == 10 and scanned["skipped:not_in_subset"] == 150
    scale = storage.read_json(spec.pool.manifest)["scales"]["tiny"]
    assert scale["samples"] == 10 and read_subset(scale["path"]).tolist() == uids_to_array(chosen).tolist()


def _rewrite(path, **changes):
    table = pq.read_table(path)
    for name, value in changes.items():
        if value is None:
            table = table.drop_columns([name])
        elif callable(value):
            table = value(table)
        else:
            table = table.set_column(table.column_names.index(name), name, value)
    pq.write_table(table, path)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"no column sha256 \(DataComp's published metadata has uid, url, .*; this file has"),
    ("misnamed", r"no column uid .*misnamed\? 'UID' for 'uid'"),
    ("type", r"column original_width is string, DataComp's is integer"),
    ("uid", r"row 3: uid 'not-a-uid' is not 32 lowercase hex digits"),
    ("duplicate", r"uid [0-9a-f]{32} is on 2 rows"),
    ("across", r"uid [0-9a-f]{32} is in .*\.parquet and in .*\.parquet"),
    ("npz_rows", r"\.npz: b32_img has shape \(39, 8\), but .*\.parquet has 40 rows"),
    ("npz_key", r"\.npz: no l14_txt"),
    ("npz_missing", r"no npz beside it"),
    ("unreadable", r"\.parquet: unreadable parquet"),
])
def test_bad_published_metadata_is_named_and_nothing_is_half_imported(tmp_path, damage, message):
    files = write_published(tmp_path / "metadata")
    target = files[1]
    npz = target[:-8] + ".npz"
    if damage == "missing":
        _rewrite(target, sha256=None)
    elif damage == "misnamed":
        _rewrite(target, uid=lambda t: t.rename_columns(["UID"] + t.column_names[1:]))
    elif damage == "type":
        _rewrite(target, original_width=pa.array([str(i) for i in range(40)]))
    elif damage == "uid":
        uids = pq.read_table(target)["uid"].to_pylist()
        _rewrite(target, uid=pa.array(uids[:3] + ["not-a-uid"] + uids[4:]))
    elif damage == "duplicate":
        uids = pq.read_table(target)["uid"].to_pylist()
        _rewrite(target, uid=pa.array(uids[:5] + [uids[0]] + uids[6:]))
    elif damage == "across":
        uids = pq.read_table(target)["uid"].to_pylist()
        _rewrite(target, uid=pa.array([pq.read_table(files[0])["uid"][7].as_py()] + uids[1:]))
    elif damage == "npz_rows":
        arrays = dict(np.load(npz))
        np.savez(npz, **{k: v[:-1] for k, v in arrays.items()})
    elif damage == "npz_key":
        arrays = dict(np.load(npz))
        np.savez(npz, **{k: v for k, v in arrays.items() if k != "l14_txt"})
    elif damage == "npz_missing":
        storage.remove(npz)
    elif damage == "unreadable":
        with open(target, "r+b") as f:
            f.seek(100)
            f.write(b"\x00" * 200)
    with pytest.raises(DatasetImportError, match=message):
        _import(tmp_path, tmp_path / "metadata")
    root = dataset_root(str(tmp_path / "root"), "dc_small")
    crawl = CrawlLayout(root, "dc_small")
    assert storage.ls(crawl.urls, "*.parquet") == [] and not storage.exists(crawl.wat_manifest)
    assert storage.ls(PoolLayout(root, "v0001").metadata, "*") == [] and versions.latest(root) is None


def test_the_uid_check_spills_by_prefix_beyond_its_memory_and_finds_what_the_in_memory_check_finds():
    from datacomp_ops.pool.unique_uids import BYTES_IN_MEMORY, UidCheck

    files = [uids_to_array([hashlib.md5(f"{i}-{j}".encode()).hexdigest() for j in range(5000)]) for i in range(4)]
    repeated = files[1][1234]
    files[3] = np.concatenate([files[3], [repeated]]).astype(files[3].dtype)
    n = sum(len(f) for f in files)
    uid = f"{int(repeated['f0']):016x}{int(repeated['f1']):016x}"
    for memory, buckets in ((n * BYTES_IN_MEMORY, 1), (n * BYTES_IN_MEMORY // 16, 16)):
        with UidCheck(n, memory) as check:
            for i, uids in enumerate(files):
                check.add(f"file{i}", uids)
            assert check.buckets == buckets
            if buckets > 1:  # each bucket on disk holds about its share, 20 bytes an entry
                import os

                sizes = [os.path.getsize(check._path(b)) // 20 for b in range(buckets)]
                assert sum(sizes) == n and max(sizes) < 1.3 * n / buckets
            repeat = check.first_repeat()
            assert (repeat.uid, repeat.first, repeat.second) == (uid, "file1", "file3")
        with UidCheck(n, memory) as check:
            for i, uids in enumerate(files[:3]):
                check.add(f"file{i}", uids)
            assert check.first_repeat() is None


def test_a_scan_whose_uids_spill_to_disk_imports_and_refuses_as_one_in_memory(tmp_path, monkeypatch):
    from datacomp_ops.pool import published, unique_uids

    monkeypatch.setattr(unique_uids, "BYTES_IN_MEMORY", 1 << 27)  # the default 2 GB holds 16 uids
    buckets = []

    class Recorded(unique_uids.UidCheck):
        def first_repeat(self):
            buckets.append(self.buckets)
            return super().first_repeat()

    monkeypatch.setattr(published, "UidCheck", Recorded)
    files = write_published(tmp_path / "metadata", files=4)
    spec, scanned, _ = _import(tmp_path, tmp_path / "metadata", shards="0,1")
    assert scanned["urls_written"] == 80
    spec, scanned, _ = _import(tmp_path, tmp_path / "metadata", run="run2")
    assert scanned["urls_written"] == 80 and storage.read_json(spec.pool.manifest)["samples"] == 160
    uids = pq.read_table(files[1])["uid"].to_pylist()
    (new,) = write_published(tmp_path / "other", files=1, seed=9)
    fresh = [hashlib.md5(f"fresh-{i}".encode()).hexdigest() for i in range(1, 40)]
    _rewrite(new, uid=pa.array(uids[5:6] + fresh))  # one uid of files[1], the others new
    import shutil

    shutil.copy(new, tmp_path / "metadata" / "zz-new.parquet")
    shutil.copy(new[:-8] + ".npz", tmp_path / "metadata" / "zz-new.npz")
    with pytest.raises(DatasetImportError, match=rf"uid {uids[5]} of .*zz-new.parquet was imported into pool "
                                                 r"dc_small before"):
        _import(tmp_path, tmp_path / "metadata", run="run3")
    assert buckets == [8, 16, 16]  # 80, 160 and 200 uids spilled by prefix
    assert len(storage.ls(spec.crawl.urls, "*.parquet")) == 2  # nothing of the refused batch stays


def test_rows_that_cannot_be_downloaded_safely_are_counted_skips_with_a_ledger_status(tmp_path):
    files = write_published(tmp_path / "metadata", files=1)
    boxes = pq.read_table(files[0])["face_bboxes"].to_pylist()
    boxes[1] = [[1.2, 0.1, 1.5, 0.4]]           # right of the image: no blur could cover it
    boxes[2] = [[0.1, 0.1, float("nan"), 0.4]]  # not a number
    boxes[3] = [[0.5, 0.5, 0.4, 0.6]]           # empty
    boxes[4] = [[-0.05, 0.1, 0.3, 1.02]]        # partly outside: blurred where it overlaps, as img2dataset clips
    urls = pq.read_table(files[0])["url"].to_pylist()
    urls[6] = "ftp://img.example.com/6.jpg"
    _rewrite(files[0], face_bboxes=pa.array(boxes, pa.list_(pa.list_(pa.float64()))), url=pa.array(urls))
    spec, scanned, published = _import(tmp_path, tmp_path / "metadata")
    assert scanned["skipped:bad_face_box"] == 3 and scanned["skipped:no_http_url"] == 1 and published["samples"] == 36
    rows = ledger.read(spec.pool.ledger).to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"invalid_metadata"}
    uids = pq.read_table(files[0])["uid"].to_pylist()
    why = {r["uid"]: r["message"] for r in rows}
    assert "lies outside the image" in why[uids[1]] and "not four finite numbers" in why[uids[2]]
    assert "is empty" in why[uids[3]] and why[uids[6]].startswith("no http(s) URL")
    held = {tuple(x) for x in read_subset(spec.pool.scale("tiny")).tolist()}
    assert tuple(uids_to_array([uids[4]])[0].tolist()) in held
    assert not held & {tuple(x) for x in uids_to_array([uids[i] for i in (1, 2, 3, 6)]).tolist()}


def test_files_are_chosen_by_position_or_name_and_bad_choices_are_named(tmp_path):
    from datacomp_ops.pool.published import select_files

    files = write_published(tmp_path / "metadata", files=5, npz=False)
    assert select_files(str(tmp_path / "metadata"), "1-3") == files[1:4]
    name = files[4].rsplit("/", 1)[-1]
    assert select_files(str(tmp_path / "metadata"), f"0,{name}") == [files[0], files[4]]
    with pytest.raises(DatasetImportError, match=r"holds 5 metadata files, numbered 0-4"):
        select_files(str(tmp_path / "metadata"), "3-7")
    with pytest.raises(DatasetImportError, match=r"no metadata .parquet files"):
        select_files(str(tmp_path / "empty"), "")
    # without features: the metadata alone (the CLIP-score baselines need no npz)
    spec, scanned, _ = _import(tmp_path, tmp_path / "metadata", npz=False)
    assert scanned["files_processed"] == 5 and "npz_copied" not in scanned.counters
    assert json.loads(json.dumps(spec.source))["npz"] is False


def _images(server, seen: int) -> list[str]:
    """The paths the server was asked for since `seen`, the host's robots.txt and tdmrep.json left out."""
    return [p for _, p in server.request_log[seen:] if p not in ("/robots.txt", "/.well-known/tdmrep.json")]


def _served_pool(folder, base_url: str, failing: frozenset[int] = frozenset()) -> tuple[str, list[dict]]:
    """A published pool whose URLs are the synthetic server's: real images (sha256 of the bytes served, one with
    a face box), dead links, images changed since publication (another sha256), and the rows `failing` on a
    server that answers 500 (a transient failure)."""
    from datacomp_ops.synthetic.server import render

    folder.mkdir(parents=True)
    rows = []
    for i in range(30):
        path = f"/img/shape/{['red', 'blue', 'green'][i % 3]}/{['circle', 'square'][i % 2]}/{500 + i}.jpg" if i \
            else "/img/photo/astronaut/1.jpg"  # a photograph of a face, its published box over it
        dead = 20 <= i < 23
        body = render(path)[0]
        digest = hashlib.sha256(body).hexdigest()
        if 23 <= i < 26:  # the image changed since DataComp hashed it
            digest = hashlib.sha256(b"as published " + body).hexdigest()
        url = f"{base_url}{'/missing' + path if dead else '/error' + path if i in failing else path}"
        text = f"a picture number {i}"
        rows.append({"uid": hashlib.md5((text + url).encode()).hexdigest(), "url": url, "text": text,
                     "original_width": 300, "original_height": 300, "clip_b32_similarity_score": 0.3,
                     "clip_l14_similarity_score": 0.01 * i, "sha256": digest, "path": path,
                     "face_bboxes": [[0.25, 0.25, 0.75, 0.75]] if i == 0 else []})
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("clip_b32_similarity_score", pa.float64()), ("clip_l14_similarity_score", pa.float64()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema),
                   folder / "0001.parquet")
    return str(folder), rows


@pytest.mark.slow
def test_a_download_limited_to_subsets_fetches_only_them_blurs_the_published_boxes_and_checks_hashes(
        tmp_path, image_server):
    import io

    from PIL import Image

    from datacomp_ops.download.partition import Partition, run_download
    from datacomp_ops.pool.published import plan_published_download, write_download_limit
    from datacomp_ops.synthetic.server import render

    metadata, rows = _served_pool(tmp_path / "metadata", image_server.base_url)
    overrides = {"storage_root": str(tmp_path / "root"), "download.timeout": 5, "download.processes_count": 1,
                 "download.thread_count": 8, "download.number_sample_per_shard": 100}

    def spec_of(run: str, download: str = "all", labels=None, **config):
        return make_published_spec(run, "served", metadata, "tiny", npz=False, overrides=overrides | config,
                                   download=download, download_only=labels)

    first = spec_of("import", "none")
    run_scan_published(first)
    run_publish_published(first)  # v0001: the metadata alone

    chosen = [rows[i]["uid"] for i in list(range(10)) + [20, 23]]
    write_subset(str(tmp_path / "chosen.npy"), uids_to_array(chosen))
    spec = spec_of("download", "subsets", ["chosen"])
    info = write_download_limit(spec, {"chosen": str(tmp_path / "chosen.npy")})
    assert (info["urls"], info["pool_urls"], info["saved_urls"]) == (12, 30, 18)
    assert info["saved_bytes"] == pytest.approx(18 * 450e9 / 12.8e6) and "DataComp's disk table" in info["basis"]
    assert run_scan_published(spec)["files_already_imported"] == 1
    seen = len(image_server.request_log)
    for part in plan_published_download(spec):
        run_download(Partition(**part), spec.pool, spec.platform_config)
    requested = set(_images(image_server, seen))  # a dead link is asked again (download.retries)
    assert requested == {r["url"][len(image_server.base_url):] for r in rows if r["uid"] in chosen}
    published = run_publish_published(spec)
    assert spec.pool_version == "v0002" and published["shards"] == 1

    status = {r["uid"]: r for r in ledger.latest(ledger.history(*versions.ledger_dirs(spec.pool.root, "v0002")))
              .to_pylist()}
    by_row = [status[r["uid"]]["status"] for r in rows]
    assert by_row[:10] == ["downloaded"] * 10 and by_row[20] == "http_error" and by_row[23] == "hash_mismatch"
    assert set(by_row[10:20] + by_row[21:23] + by_row[24:]) == {"deferred"}
    assert "kept, flagged" in status[rows[23]["uid"]]["message"]
    assert "not in the subsets this download is limited to" in status[rows[12]["uid"]]["message"]

    # the face of row 0 is blurred inside its published box, the rest of the picture is as served
    shard = storage.read_json(spec.pool.manifest)["shards"][0]
    meta = pq.read_table(shard[:-4] + ".parquet").to_pylist()
    key = next(m["key"] for m in meta if m["uid"] == rows[0]["uid"])
    import tarfile

    with tarfile.open(shard) as tar:
        got = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read())).convert("RGB"), np.float32)
        names = tar.getnames()
    served = np.asarray(Image.open(io.BytesIO(render(rows[0]["path"])[0])).convert("RGB"), np.float32)
    assert got.shape == served.shape
    h, w = served.shape[:2]

    def detail(image, rows, cols):  # mean absolute difference between neighbouring pixels
        part = image[rows, cols]
        return np.abs(np.diff(part, axis=0)).mean() + np.abs(np.diff(part, axis=1)).mean()

    box, top = (slice(int(h * 0.3), int(h * 0.7)), slice(int(w * 0.3), int(w * 0.7))), (slice(0, h // 10), slice(None))
    assert detail(got, *box) < 0.4 * detail(served, *box)  # blurred inside the box
    assert abs(detail(got, *top) - detail(served, *top)) < 0.1 * detail(served, *top)  # as served outside it
    assert np.abs(got - served)[top].mean() < 3
    assert sum(n.endswith(".jpg") for n in names) == 11  # 10 downloaded, 1 changed (kept with its flag)

    # the next run downloads the rest; with download.hash_mismatch=drop a changed image leaves its shard
    rest = spec_of("rest", **{"download.hash_mismatch": "drop"})
    seen = len(image_server.request_log)
    for part in plan_published_download(rest):
        run_download(Partition(**part), rest.pool, rest.platform_config)
    assert set(_images(image_server, seen)) == {  # only what the first download deferred
        r["url"][len(image_server.base_url):] for r in rows if r["uid"] not in chosen}
    run_publish_published(rest)
    status = {r["uid"]: r["status"] for r in ledger.latest(ledger.history(*versions.ledger_dirs(rest.pool.root,
                                                                                                 "v0003"))).to_pylist()}
    assert [status[rows[i]["uid"]] for i in (23, 24, 25)] == ["hash_mismatch", "hash_mismatch_dropped",
                                                              "hash_mismatch_dropped"]
    assert sum(status[r["uid"]] == "downloaded" for r in rows) == 24  # 30, less 3 dead links and 3 changed
    new_shard = [s for s in storage.read_json(rest.pool.manifest)["shards"] if s != shard][0]
    kept = {m["uid"] for m in pq.read_table(new_shard[:-4] + ".parquet").to_pylist() if m["status"] == "success"}
    assert rows[24]["uid"] not in kept and rows[11]["uid"] in kept
    with tarfile.open(new_shard) as tar:
        assert sum(n.endswith(".jpg") for n in tar.getnames()) == len(kept) == 14  # rows 10-19, 26-29


def test_the_decay_report_counts_held_lost_and_pending_by_status_domain_and_version(tmp_path):
    """Hand-made ledgers over three versions: what the report says is counted from them directly."""
    from datacomp_ops.pool.decay import decay_report, hosts

    assert hosts(pa.array(["http://A.example.com:8080/x", "https://u:p@b.org/", "no url", None])).to_pylist() == [
        "a.example.com", "b.org", "", ""]
    files = write_published(tmp_path / "metadata", files=1, rows=10, npz=False)
    _import(tmp_path, tmp_path / "metadata", npz=False)
    rows = pq.read_table(files[0]).to_pylist()
    uid = [r["uid"] for r in rows]
    url = [r["url"] for r in rows]

    def version(run: str, statuses: dict[int, tuple[str, int]]):
        later = make_published_spec(run, "dc_small", str(tmp_path / "metadata"), "tiny", npz=False,
                                    overrides={"storage_root": str(tmp_path / "root")})
        run_scan_published(later)
        part = ledger.make_part("download", [uid[i] for i in statuses], [url[i] for i in statuses],
                                [s for s, _ in statuses.values()], [None] * len(statuses),
                                [a for _, a in statuses.values()], None)
        ledger.write_part(later.pool.ledger_part("download", f"hand-{run}"), part)
        storage.write_json(later.pool.marker("download", f"hand-{run}"), {"shards": []})
        run_publish_published(later)
        return later

    version("second", {0: ("downloaded", 1), 1: ("http_error", 1), 2: ("timeout", 1), 3: ("deferred", 0),
                       4: ("hash_mismatch", 1)})
    last = version("third", {2: ("timeout", 3), 3: ("downloaded", 1), 5: ("hash_mismatch_dropped", 1)})
    report = decay_report(last.pool, storage.ls(CrawlLayout(last.pool.root, "dc_small").urls, "*.parquet"),
                          ("downloaded", "hash_mismatch"), max_attempts=3)
    now = report["now"]
    # held: 0, 3 downloaded, 4 changed but kept; lost: 1 (404), 2 (timed out 3 times: no attempts left), 5
    # (changed, dropped); pending: 6-9 never downloaded
    assert (now["given"], now["held"], now["lost"], now["pending"]) == (10, 3, 3, 4)
    assert now["lost_by_status"] == {"hash_mismatch_dropped": 1, "http_error": 1, "timeout": 1}
    assert now["held_by_status"] == {"downloaded": 2, "hash_mismatch": 1}
    assert report["held_fraction"] == pytest.approx(0.3)
    assert [(v["version"], v["held"], v["lost"], v["pending"]) for v in report["over_time"]] == [
        ("v0001", 0, 0, 10), ("v0002", 2, 1, 7), ("v0003", 3, 3, 4)]
    lost_hosts = {d["host"]: d for d in report["top_domains_lost"]}
    for i in (1, 2, 5):
        assert lost_hosts[f"img{i % 7}.example.com"]["lost"] == 1
    assert storage.read_json(last.pool.decay_report)["now"] == now  # written when the version is published
    # the platform page shows it beside the pool's versions
    from datacomp_ops.ui.platform_page import render

    page = render(str(tmp_path / "root"))
    assert "Published pool dc_small" in page and "Decay of the published uids" in page
    assert "held <b>3</b> of 10 (30.0%), pending 4, lost 3: " in page and "held <b>0</b> of 10 (0.0%)" in page


@pytest.mark.slow
def test_the_command_imports_the_metadata_then_downloads_only_a_baselines_subset(tmp_path, image_server, capsys):
    """`datacomp import-published`: the metadata alone first (v0001), then --download-only a DataComp baseline,
    drawn on the published metadata by the run itself: only its URLs are requested, the summary says what the
    limit saved and what the pool holds."""
    from datacomp_ops.cli import main

    metadata, rows = _served_pool(tmp_path / "metadata", image_server.base_url, failing=frozenset({29}))
    settings = ["--storage-root", str(tmp_path / "root"), "--set", "download.timeout=5",
                "--set", "download.processes_count=1", "--set", "download.thread_count=8"]
    base = ["import-published", "--name", "served", "--metadata", metadata, "--scale", "tiny", "--no-npz"] + settings
    seen = len(image_server.request_log)
    main(base + ["--download", "none"])
    out = capsys.readouterr().out
    assert "into its pool version v0001" in out and "download: none this run" in out
    assert "decay: 0 of 30 given URLs held (0.0%), 0 lost, 30 pending" in out
    assert _images(image_server, seen) == []  # nothing fetched

    main(base + ["--download-only", "clip_score_l14_30"])
    out = capsys.readouterr().out
    # DataComp's rule over the 30 published rows (L/14 scores 0.00-0.29): the threshold is the score at
    # int(30 * 0.3) = 9 in descending order, 0.20, and every row at or above it is kept: rows 20-29. Of
    # those, 20-22 are dead links, 23-25 changed images (kept, flagged), 26-28 download as published, 29's
    # server answers 500.
    top = {r["url"][len(image_server.base_url):] for r in rows[20:]}
    assert set(_images(image_server, seen)) == top
    assert "download limited to the union of clip_score_l14_30: 10 of 30 URLs; 20 URLs" in out
    assert "downloaded 10 of 30 URLs: deferred 20, downloaded 3, hash_mismatch 3, http_error 3, server_error 1" in out
    assert "decay: 6 of 30 given URLs held (20.0%), 3 lost, 21 pending" in out
    root = dataset_root(str(tmp_path / "root"), "served")
    assert storage.exists(f"{root}/subsets/v0001/tiny/clip_score_l14_30.npy")  # drawn by the run, where filter writes
    manifest = storage.read_json(PoolLayout(root, "v0002").manifest)
    assert manifest["kind"] == "published" and len(manifest["shards"]) == 1 and manifest["samples"] == 30
    assert manifest["import"] == {"metadata": metadata, "scale": "tiny", "shards": "", "npz": False, "subset": "",
                                  "download": "subsets", "download_only": ["clip_score_l14_30"],
                                  "hash_mismatch": "keep"}

    # the scheduled refresh: the same import as recorded, limited to the same subset; the transient failure
    # alone is tried again, the deferred URLs stay deferred, and the decay gains a point
    seen = len(image_server.request_log)
    main(["refresh-published"] + settings)
    out = capsys.readouterr().out
    # (three requests: img2dataset's retries=2, as download_upstream.py sets)
    assert _images(image_server, seen) == ["/error" + rows[29]["path"]] * 3
    assert "into its pool version v0003" in out and "decay: 6 of 30 given URLs held (20.0%), 3 lost, 21 pending" in out
    decay = storage.read_json(PoolLayout(root, "v0003").decay_report)
    assert [(p["version"], p["held"]) for p in decay["over_time"]] == [("v0001", 0), ("v0002", 6), ("v0003", 6)]
    current = ledger.latest(ledger.history(*versions.ledger_dirs(root, "v0003"))).to_pylist()
    assert {r["uid"]: r["attempt"] for r in current if r["status"] == "server_error"} == {rows[29]["uid"]: 2}
    assert storage.read_json(PoolLayout(root, "v0003").manifest)["import"] == manifest["import"]
    with pytest.raises(SystemExit, match="2"):
        main(["refresh-published", "--name", "nothing_here"] + settings)
    assert "pool nothing_here: no published version" in capsys.readouterr().err


@pytest.mark.slow
def test_the_synthetic_published_pool_imports_downloads_and_decays_as_its_truth_says(tmp_path, image_server,
                                                                                     embedded_models, capsys):
    """The embedded default: the world's pool in DataComp's published layout (features from the embedded
    stand-ins, faces found by the embedded detector, sha256 of the bytes served), imported from the empty
    form's defaults and downloaded whole: every uid's status is the one its truth names."""
    from datacomp_ops.cli import main
    from datacomp_ops.core.config import load_config
    from datacomp_ops.core.layout import SyntheticWorld
    from datacomp_ops.synthetic.published import write_published_pool

    root = tmp_path / "root"
    world = SyntheticWorld.under(str(root))
    config = load_config(overrides={"storage_root": str(root), "models.embedded_dir": embedded_models})
    made = write_published_pool(world, image_server.base_url, config, rows=120)
    assert made["fates"]["dead"] > 0 and made["fates"]["changed"] > 0 and made["fates"]["failing_host"] > 0
    truth = pq.read_table(world.published_truth).to_pylist()
    files = sorted(storage.ls(world.published_metadata, "*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.num_rows == 120 and any(table["face_bboxes"].to_pylist())  # the photographs' faces were found
    npz = np.load(files[0][:-8] + ".npz")
    assert npz["l14_img"].dtype == np.float16 and len(npz["l14_img"]) == pq.read_metadata(files[0]).num_rows

    args = ["import-published", "--storage-root", str(root), "--scale", "tiny", "--set",
            f"models.embedded_dir={embedded_models}", "--set", "download.timeout=5", "--set", "download.retries=0",
            "--set", "download.processes_count=1"]
    main(args)  # name and metadata empty: the world's published pool
    out = capsys.readouterr().out
    assert "Import of DataComp's published pool published_example (scale tiny)" in out
    proot = dataset_root(str(root), "published_example")
    current = ledger.latest(ledger.history(*versions.ledger_dirs(proot, versions.latest(proot)))).to_pylist()
    got = {r["uid"]: r["status"] for r in current}
    assert got == {r["uid"]: r["expected_status"] for r in truth}
    held = sum(r["expected_status"] in ("downloaded", "hash_mismatch") for r in truth)
    assert f"decay: {held} of 120 given URLs held" in out


@pytest.mark.slow
def test_the_dag_imports_the_embedded_defaults_published_pool_and_its_ledger_is_the_truth(tmp_path, image_server,
                                                                                         embedded_models):
    """`airflow dags test import_published` with the empty form on the embedded default: the world's published
    pool is imported and downloaded by the DAG's tasks, every uid's status is its truth's, the faces are
    blurred inside the published boxes, and the version is announced for filtering."""
    import subprocess

    from test_dags import airflow_env

    from datacomp_ops.core.config import load_config
    from datacomp_ops.core.layout import SyntheticWorld
    from datacomp_ops.synthetic.published import write_published_pool

    root = tmp_path / "root"
    world = SyntheticWorld.under(str(root))
    write_published_pool(world, image_server.base_url,
                         load_config(overrides={"storage_root": str(root), "models.embedded_dir": embedded_models}),
                         rows=80)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"storage_root": str(root), "models": {"embedded_dir": embedded_models},
                                  "download": {"allowed_private_addresses": ["127.0.0.1/32"], "timeout": 5,
                                               "retries": 0, "processes_count": 1}}))
    home = tmp_path / "airflow"
    env = airflow_env(home, DATACOMP_CONFIG=str(config))
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    run = subprocess.run(["airflow", "dags", "test", "import_published", "-c", json.dumps({"scale": "tiny"})],
                         env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert "state=success" in out or "DagRunState.SUCCESS" in out, out[-6000:]
    assert "Import of DataComp's published pool published_example (scale tiny)" in out
    proot = dataset_root(str(root), "published_example")
    manifest = storage.read_json(PoolLayout(proot, "v0001").manifest)
    assert manifest["kind"] == "published" and manifest["shards"]
    truth = {r["uid"]: r["expected_status"] for r in pq.read_table(world.published_truth).to_pylist()}
    current = ledger.latest(ledger.history(*versions.ledger_dirs(proot, "v0001"))).to_pylist()
    assert {r["uid"]: r["status"] for r in current} == truth
    assert "announce_tiny" in out and storage.exists(PoolLayout(proot, "v0001").decay_report)
