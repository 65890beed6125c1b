"""Bring your own data: webdataset shards and URL tables imported as pools of their own."""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.cli import main
from datacomp_ops.core import ledger, storage, versions
from datacomp_ops.core.layout import dataset_root
from datacomp_ops.pool.byod import DatasetImportError, make_import_spec, plan_ingest, resolve_sources, run_scan


def _image(w: int, h: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _shard(path, samples: list[dict]) -> str:
    import webdataset as wds

    with wds.TarWriter(str(path)) as tar:
        for sample in samples:
            tar.write(sample)
    return str(path)


def _uid(text: str, url: str) -> str:
    return hashlib.md5((text + url).encode()).hexdigest()


@pytest.fixture
def shards(tmp_path):
    """Two shards with every case: formats, sizes, a URL in the json, a duplicate across shards, skips, a bad image."""
    src = tmp_path / "src"
    src.mkdir()
    a = _shard(src / "a.tar", [
        {"__key__": "s0", "jpg": _image(800, 600), "txt": "a photo of a red square"},
        {"__key__": "s1", "png": _image(300, 200, "PNG", 1), "txt": "a blue circle",
         "json": json.dumps({"url": "http://example.com/c.png"}).encode()},
        {"__key__": "s2", "jpg": _image(64, 64, seed=2)},  # no caption: a counted skip
        {"__key__": "s3", "txt": "a caption without an image"},  # no image: a counted skip
        {"__key__": "s4", "jpg": b"these bytes are not a jpeg", "txt": "a broken image"},
    ])
    b = _shard(src / "b.tar", [
        {"__key__": "x0", "jpg": _image(640, 480, seed=3), "txt": "a blue circle",  # same caption + URL as s1
         "json": json.dumps({"url": "http://example.com/c.png"}).encode()},
        {"__key__": "x1", "webp": _image(256, 1024, "WEBP", 4), "json": json.dumps({"caption": "a green triangle"}).encode()},
    ])
    return {"src": str(src), "a": a, "b": b}


@pytest.fixture
def platform(tmp_path, eval_suite, embedded_models):
    root = tmp_path / "root"
    return ["--storage-root", str(root), "--set", f"evaluation.sets_dir={eval_suite}",
            "--set", f"models.embedded_dir={embedded_models}", "--set", "metadata.batch_size=8"], root


@pytest.mark.slow
def test_webdataset_shards_import_as_a_pool_that_filters_and_reshards(tmp_path, shards, platform, capsys):
    args, root = platform
    main(["import", "--name", "mine", "--source", shards["src"], *args])
    out = capsys.readouterr().out
    assert "Import of dataset mine (webdataset) into its pool version v0001" in out
    assert "7 read; skipped" in out  # the scan's counted skips, in the table
    data = dataset_root(str(root), "mine")
    (report,) = [json.loads(p.read_text()) for p in (root / "datasets" / "mine" / "pool" / "v0001" / "reports").glob("*")]
    scan = report["extraction"]
    assert (scan["records"], scan["skipped:no_caption"], scan["skipped:no_image"], scan["duplicates_in_batch"]) == \
        (7, 1, 1, 1)
    manifest = json.loads(open(f"{data}/pool/v0001/manifest.json").read())
    assert manifest["samples"] == 3 and manifest["crawls"] == ["mine"]

    # every sample that entered has exactly one status; the duplicate entered once
    final = ledger.final_statuses(*versions.ledger_dirs(data, "v0001"))
    got = dict(zip(final["uid"].to_pylist(), final["status"].to_pylist()))
    expected = {_uid("a photo of a red square", f"{shards['a']}#s0"): "kept",
                _uid("a blue circle", "http://example.com/c.png"): "kept",
                _uid("a broken image", f"{shards['a']}#s4"): "not_image",
                _uid("a green triangle", f"{shards['b']}#x1"): "kept"}
    assert got == expected

    # DataComp's metadata: uid md5(caption + url), original sizes, images resized as downloads are
    rows = []
    for path in sorted((root / "datasets" / "mine" / "pool" / "v0001" / "metadata").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
        assert np.load(path.with_suffix(".npz"))["l14_img"].shape[0] == pq.read_metadata(path).num_rows
    by_uid = {r["uid"]: r for r in rows}
    assert set(by_uid) == {u for u, s in expected.items() if s == "kept"}
    s0 = by_uid[_uid("a photo of a red square", f"{shards['a']}#s0")]
    assert (s0["original_width"], s0["original_height"], s0["text"]) == (800, 600, "a photo of a red square")
    assert by_uid[_uid("a green triangle", f"{shards['b']}#x1")]["original_height"] == 1024
    import webdataset as wds

    for sample in wds.WebDataset(manifest["shards"], shardshuffle=False):
        from PIL import Image

        assert max(Image.open(io.BytesIO(sample["jpg"])).size) <= 512  # download.image_size, keep_ratio_largest

    # filtering and resharding take the dataset by name; subsets stay under its root
    main(["filter", "--dataset", "mine", "--baseline", "no_filter", "--baseline", "clip_score_l14_30", *args])
    subsets = root / "datasets" / "mine" / "subsets" / "v0001" / "tiny"
    assert len(np.load(subsets / "no_filter.npy")) == 3
    main(["reshard", "--dataset", "mine", "--baseline", "no_filter", *args])
    resharded = root / "datasets" / "mine" / "runs" / "v0001" / "tiny" / "no_filter" / "shards"
    meta = json.loads((resharded / "meta.json").read_text())  # in the scale's shards, as training writes them
    assert meta["output_count"] == 3 and meta["shard_size"] == 10
    assert not (root / "subsets").exists()

    # importing the folder again reads nothing; a new shard makes the next version with only its samples
    main(["import", "--name", "mine", "--source", shards["src"], *args])
    assert "0 new source files" in capsys.readouterr().out
    assert versions.latest(data) == "v0001"
    _shard(tmp_path / "src" / "c.tar", [
        {"__key__": "n0", "jpg": _image(320, 240, seed=5), "txt": "a blue circle",  # known from v0001
         "json": json.dumps({"url": "http://example.com/c.png"}).encode()},
        {"__key__": "n1", "jpg": _image(320, 240, seed=6), "txt": "a yellow star"},
    ])
    main(["import", "--name", "mine", "--source", shards["src"], *args])
    out = capsys.readouterr().out
    assert "1 new source files, 1 new samples" in out and "already_known 1" in out
    manifest = json.loads(open(f"{data}/pool/v0002/manifest.json").read())
    assert manifest["samples"] == 4 and manifest["added"]["samples"] == 1


def test_url_table_import_downloads_through_the_build(tmp_path, image_server, platform, capsys):
    """LAION-style columns (URL, TEXT), found without being named; bad rows are counted skips."""
    args, root = platform
    base = image_server.base_url
    urls = [f"{base}/img/shape/red/circle/{i}.jpg" for i in range(4)]
    table = pa.table({
        "URL": urls + [f"{base}/missing/a.jpg", None, f"{base}/img/shape/blue/square/1.jpg", "ftp://host/a.jpg",
                       urls[0]],
        "TEXT": [f"a red circle {i}" for i in range(4)] + ["gone", "no url", "", "not http", "a red circle 0"],
        "similarity": list(range(9)),
    })
    pq.write_table(table, tmp_path / "laion.parquet")
    main(["import", "--name", "laion-like", "--source", str(tmp_path / "laion.parquet"), *args,
          "--set", "download.timeout=5", "--set", "download.processes_count=1", "--set", "download.retries=0"])
    out = capsys.readouterr().out
    assert "Import of dataset laion-like (urls)" in out
    data = dataset_root(str(root), "laion-like")
    (report,) = [json.loads(p.read_text()) for p in (root / "datasets" / "laion-like" / "pool" / "v0001" / "reports").glob("*")]
    scan = report["extraction"]
    assert {k: v for k, v in scan.items() if k.startswith("skipped:") or k == "duplicates_in_batch"} == {
        "skipped:no_caption": 1, "skipped:no_url": 1, "skipped:not_http_url": 1, "duplicates_in_batch": 1}
    final = ledger.final_statuses(*versions.ledger_dirs(data, "v0001"))
    got = dict(zip(final["url"].to_pylist(), final["status"].to_pylist()))
    assert got == {**{u: "kept" for u in urls}, f"{base}/missing/a.jpg": "http_error"}
    uids = set(final["uid"].to_pylist())
    assert uids == {_uid(f"a red circle {i}", u) for i, u in enumerate(urls)} | {_uid("gone", f"{base}/missing/a.jpg")}


def _scan(spec) -> dict:
    """The scan, and the batch report it committed (its stats are the report's)."""
    stats = run_scan(spec)
    report = storage.read_json(spec.report)
    assert stats.to_dict() == report["stats"]
    return report


def test_url_table_without_known_columns_names_the_file_and_its_columns(tmp_path):
    pq.write_table(pa.table({"link": ["http://a/b.jpg"], "alt_text": ["x"]}), tmp_path / "t.parquet")
    spec = make_import_spec("run", "d", [str(tmp_path / "t.parquet")],
                            overrides={"storage_root": str(tmp_path / "root")})
    with pytest.raises(DatasetImportError, match=r"t.parquet: no url column \(tried url, URL; columns: link, alt_text\)"):
        run_scan(spec)
    spec = make_import_spec("run2", "d", [str(tmp_path / "t.parquet")], url_column="link", caption_column="alt",
                            overrides={"storage_root": str(tmp_path / "root")})
    with pytest.raises(DatasetImportError, match=r"no caption column 'alt' \(columns: link, alt_text\)"):
        run_scan(spec)
    spec = make_import_spec("run3", "d", [str(tmp_path / "t.parquet")], url_column="link", caption_column="alt_text",
                            overrides={"storage_root": str(tmp_path / "root")})
    assert run_scan(spec)["urls_written"] == 1


def test_sources_are_checked_before_anything_runs(tmp_path, shards):
    pq.write_table(pa.table({"url": ["http://a/b.jpg"], "caption": ["x"]}), tmp_path / "src" / "t.parquet")
    with pytest.raises(DatasetImportError, match="mix webdataset shards and URL parquet files"):
        resolve_sources([shards["src"]])
    with pytest.raises(DatasetImportError, match="does not exist"):
        resolve_sources([str(tmp_path / "nope.tar")])
    with pytest.raises(DatasetImportError, match="no .tar"):
        resolve_sources([str(tmp_path / "root")])
    with pytest.raises(DatasetImportError, match="sources are webdataset files but the import says kind=urls"):
        resolve_sources([shards["a"]], "urls")
    assert resolve_sources([f"{shards['src']}/*.tar"]) == ([shards["a"], shards["b"]], "webdataset")
    with pytest.raises(DatasetImportError, match="dataset name 'a b'"):
        make_import_spec("run", "a b", [shards["a"]], overrides={"storage_root": str(tmp_path / "root")})
    with pytest.raises(DatasetImportError, match="name the dataset"):
        make_import_spec("run", "", [shards["a"]], overrides={"storage_root": str(tmp_path / "root")})
    with pytest.raises(DatasetImportError, match="name the files or folders"):
        make_import_spec("run", "d", [], overrides={"storage_root": str(tmp_path / "root")})


def test_broken_sources_are_reported_and_an_unreadable_one_is_read_again_next_time(tmp_path, shards):
    """A shard that breaks off gives the samples before the break; a file that is no tar stays unimported."""
    whole = open(shards["a"], "rb").read()
    (tmp_path / "cut").mkdir()
    open(tmp_path / "cut" / "a.tar", "wb").write(whole[: len(whole) * 2 // 3])
    open(tmp_path / "cut" / "z.tar", "wb").write(b"\x00garbage" * 100)
    spec = make_import_spec("run", "d", [str(tmp_path / "cut")], overrides={"storage_root": str(tmp_path / "root")})
    report = _scan(spec)
    errors = {e["wat_path"]: e["error"] for e in report["unreadable"]}
    assert "broke off after" in errors[str(tmp_path / "cut" / "a.tar")]
    assert 0 < report["stats"]["counters"]["urls_written"] < 3
    assert "ReadError" in errors[str(tmp_path / "cut" / "z.tar")]
    manifest = pq.read_table(spec.crawl.wat_manifest).to_pylist()
    assert {r["wat_path"].rsplit("/", 1)[-1]: r["processed"] for r in manifest} == {"a.tar": True, "z.tar": False}
    # the next import tries the unreadable file again, not the one that broke off
    again = make_import_spec("run2", "d", [str(tmp_path / "cut")], overrides={"storage_root": str(tmp_path / "root")})
    report = _scan(again)
    assert report["stats"]["counters"]["files_already_imported"] == 1
    assert [e["wat_path"] for e in report["unreadable"]] == [str(tmp_path / "cut" / "z.tar")]


def test_a_staged_shard_is_imported_never_downloaded(tmp_path, shards):
    """Even when its URL part is already in urls/ (a task that died before its marker), a shard's part is no
    download partition: only the import writes it."""
    from datacomp_ops.download.plan import plan_download

    spec = make_import_spec("run", "d", [shards["src"]], overrides={"storage_root": str(tmp_path / "root")})
    report = _scan(spec)
    staged = [p["path"] for p in report["partitions"]]
    assert len(staged) == 2 and all("/staging/" in p for p in staged)
    # the crash: one part's URL part written, its marker not
    url_part = staged[0].replace("/staging/", "/urls/")
    os.makedirs(os.path.dirname(url_part))
    pq.write_table(pq.read_table(staged[0]).drop_columns(["source_key"]), url_part)
    assert plan_download(spec.pool, spec.platform_config) == []
    plan = plan_ingest(spec)
    assert [p["path"] for p in plan] == staged
    assert [p["first_shard"] for p in plan] == [0, 1]


def test_the_embedded_defaults_empty_form_imports_the_example_dataset(tmp_path):
    from datacomp_ops.synthetic.own_data import write_own_data

    root = tmp_path / "root"
    paths = write_own_data(root / "synthetic" / "own_data", n_shards=1, per_shard=5)
    spec = make_import_spec("run", "", [], overrides={"storage_root": str(root)})
    assert (spec.crawl_id, spec.inputs, spec.source["kind"]) == ("example", paths, "webdataset")
    report = _scan(spec)
    assert report["stats"]["counters"]["skipped:no_caption"] == 1 and report["stats"]["counters"]["pairs"] == 4
    # with a crawl source of its own (a real setup), nothing is guessed
    with pytest.raises(DatasetImportError, match="name the dataset"):
        make_import_spec("run", "", [], overrides={"storage_root": str(root), "crawl.source": str(root / "synthetic")})
