"""The metadata pass on hand-made raw shards: every status, the outputs, DataComp's formats, retries."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from skimage import data

from datacomp_ops.core import ledger, storage
from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.core.schema import compute_uid, read_subset, uids_to_array, write_subset
from datacomp_ops.embedded.images import encode, eval_image, near_duplicate, render_shape, seed_of
from datacomp_ops.pool.metadata import PassModels, plan_metadata, run_metadata
from datacomp_ops.pool.prepare_models import run_prepare_models
from datacomp_ops.pool.publish import run_publish

CRAWL = "CC-UNIT"


def jpeg_bytes(img, quality=95):
    return encode(img, quality=quality)


def make_samples():
    """(kind, caption, image bytes) of every case the pass must handle."""
    samples = [("shape", f"a photo of a red circle {i}.", jpeg_bytes(render_shape("red", "circle", seed_of("u", i))))
               for i in range(6)]
    samples += [("unsafe", "hot milf fucked hard blue square", jpeg_bytes(render_shape("blue", "square", 3))),
                ("eval_dup", "a photo of a green square.", jpeg_bytes(near_duplicate(eval_image(4)[0], "cropped"))),
                ("face", "portrait of an astronaut", jpeg_bytes(Image.fromarray(data.astronaut()))),
                ("corrupt", "a broken image", b"\xff\xd8\xff\xe0 this is not a jpeg"),
                ("pixel", "a single pixel", jpeg_bytes(Image.new("RGB", (1, 1), (200, 10, 10)))),
                ("missing", "in the parquet, not in the tar", jpeg_bytes(render_shape("red", "square", 9)))]
    return samples


def write_raw_shard(pool: PoolLayout, shard_id: int, samples, truncate: bool = False) -> dict:
    """A raw shard as img2dataset writes it, its download marker and ledger part."""
    rows, kinds = [], {}
    with storage.atomic_write(pool.download(shard_id)) as f, wds.TarWriter(f) as tar:
        for i, (kind, caption, jpg) in enumerate(samples):
            key = f"{shard_id:05d}{i:05d}"
            url = f"http://example.com/{kind}/{shard_id}/{i}.jpg"
            uid = compute_uid(caption, url)
            kinds[uid] = kind
            row = {"uid": uid, "caption": caption, "url": url, "key": key, "status": "success", "error_message": None,
                   "width": 64, "height": 64, "original_width": 64, "original_height": 64, "exif": "{}",
                   "sha256": f"{i:064x}"}
            rows.append(row)
            if kind != "missing":
                tar.write({"__key__": key, "jpg": jpg, "txt": caption, "json": json.dumps(row).encode()})
    if truncate:
        raw = storage.read_bytes(pool.download(shard_id))
        storage.write_bytes(pool.download(shard_id), raw[: len(raw) // 2])
    with storage.atomic_write(pool.download(shard_id, "parquet")) as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    name = f"{CRAWL}-part-0000-{shard_id:05d}"
    storage.write_json(pool.marker("download", name), {"shards": [shard_id],
                       "partition": f"{pool.root}/crawls/{CRAWL}/urls/part-0000-{shard_id:05d}.parquet"})
    ledger.write_part(pool.ledger_part("download", name), ledger.make_part(
        "download", [r["uid"] for r in rows], [r["url"] for r in rows], ["downloaded"] * len(rows), [None] * len(rows)))
    return kinds


@pytest.fixture(scope="module")
def built(tmp_path_factory, eval_suite, embedded_models):
    root = tmp_path_factory.mktemp("root")
    config = load_config(overrides={"storage_root": str(root), "evaluation.sets_dir": eval_suite,
                                    "models.embedded_dir": embedded_models, "metadata.batch_size": 4,
                                    "publish.tiny_pool_size": 3})
    run_prepare_models(config)
    pool = PoolLayout(config.storage_root, "v1")
    intact = write_raw_shard(pool, 0, make_samples())
    kinds = intact | write_raw_shard(pool, 1, make_samples()[:5] + [("tail", "the tail that breaks off", b"\xff" * 9000)] * 30,
                             truncate=True)
    assert plan_metadata(pool, config) == [[0], [1]]
    models = PassModels.load(config)
    stats = run_metadata([0, 1], pool, config, models)
    return config, pool, kinds, stats, models, intact


def test_every_sample_gets_one_status(built):
    config, pool, kinds, stats, _, intact = built
    final = ledger.final_statuses(pool.ledger)
    got = dict(zip(final["uid"].to_pylist(), final["status"].to_pylist()))
    assert len(got) == len(kinds)
    expected = {"shape": "kept", "unsafe": "nsfw_text", "eval_dup": "eval_duplicate", "face": "kept", "pixel": "kept",
                "corrupt": "corrupt_image", "missing": "missing_from_shard"}
    assert set(got.values()) <= {"kept", *ledger.METADATA_REMOVALS}
    for uid, kind in intact.items():  # shard 0 is whole: each case exactly
        assert got[uid] == expected[kind], kind
    for uid in kinds.keys() - intact.keys():  # shard 1 breaks off half-way: the rest is missing, not lost
        assert got[uid] in (expected.get(kinds[uid]), "corrupt_image", "missing_from_shard")
    messages = dict(zip(final["uid"].to_pylist(), final["message"].to_pylist()))
    dup = next(u for u, k in kinds.items() if k == "eval_dup")
    assert "wds_synthetic_shapes/s000004" in messages[dup]  # the matched set and image
    broken = [m for u, m in messages.items() if got[u] == "missing_from_shard" and "unreadable" in (m or "")]
    assert broken  # the truncated shard: its tail is accounted for, with the tar error
    assert stats["in"] == len(kinds) and stats["kept"] + sum(v for k, v in stats.counters.items()
                                                           if k.startswith("removed:")) == len(kinds)


def test_outputs_follow_datacomp_s_formats(built):
    config, pool, kinds, _, models, _ = built
    for shard in (0, 1):
        table = pq.read_table(pool.metadata_file(shard))
        feats = np.load(pool.metadata_file(shard, "npz"))
        assert sorted(feats.files) == ["b32_img", "b32_txt", "dedup", "l14_img", "l14_txt"]
        for key in feats.files:
            assert feats[key].dtype == np.float32 and len(feats[key]) == table.num_rows
            assert np.allclose(np.linalg.norm(feats[key], axis=1), 1, atol=1e-4)
        for tag in ("b32", "l14"):
            dots = (feats[f"{tag}_img"] * feats[f"{tag}_txt"]).sum(1)
            assert np.allclose(table[f"clip_{tag}_similarity_score"].to_numpy(), dots, atol=1e-6)
        assert set(table["crawl_id"].to_pylist()) <= {CRAWL}
        assert json.loads(table.schema.metadata[b"datacomp.models"])["clip_b32"].startswith("embedded-clip-b32")
    assert feats["dedup"].shape[1] == 769 and feats["b32_img"].shape[1] == 64 and feats["l14_img"].shape[1] == 96


def test_faces_are_blurred_in_the_published_shard_and_only_there(built):
    _, pool, kinds, _, _, _ = built
    table = pq.read_table(pool.metadata_file(0)).to_pylist()
    face_row = next(r for r in table if kinds[r["uid"]] == "face")
    assert len(face_row["face_bboxes"]) == 1
    with tarfile.open(pool.shard(0)) as tar:
        published = {n: tar.extractfile(n).read() for n in tar.getnames()}
    with tarfile.open(pool.download(0)) as tar:
        raw = {n: tar.extractfile(n).read() for n in tar.getnames()}
    assert {n.split(".")[0] for n in published} == {r["key"] for r in table}  # kept samples only
    for row in table:
        name = f"{row['key']}.jpg"
        if row["face_bboxes"]:
            before = np.asarray(Image.open(io.BytesIO(raw[name])).convert("RGB"), int)
            after = np.asarray(Image.open(io.BytesIO(published[name])).convert("RGB"), int)
            x1, y1, x2, y2 = (np.array(row["face_bboxes"][0]) * 512).astype(int)
            assert np.abs(after - before)[y1:y2, x1:x2].mean() > 8  # the face is blurred
            assert np.abs(after - before)[:, :100].mean() < 2  # far from it, only re-encoding noise
            assert json.loads(published[f"{row['key']}.json"])["face_bboxes"] == row["face_bboxes"]
        else:
            assert published[name] == raw[name]  # no face: the downloaded bytes, untouched


def test_datacomp_baseline_code_reads_our_metadata(built):
    """As DataComp's baselines read metadata: every *.parquet, its npz by stem, rows aligned."""
    _, pool, _, _, _, _ = built
    fs, root = storage.get_fs(pool.metadata)
    stems = [p.split(".parquet")[0] for p in fs.ls(root) if ".parquet" in p]
    frames = [pq.read_table(f"{s}.parquet", columns=["uid", "text", "clip_l14_similarity_score"]) for s in stems]
    embeddings = np.concatenate([np.load(f"{s}.npz")["l14_img"] for s in stems])
    scores = np.concatenate([f["clip_l14_similarity_score"].to_numpy() for f in frames])
    uids = sum((f["uid"].to_pylist() for f in frames), [])
    assert len(embeddings) == len(uids)
    threshold = -np.sort(-scores)[int(len(scores) * 0.3)]  # DataComp's clip_score top fraction
    keep = [u for u, s in zip(uids, scores) if s >= threshold]
    subset = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in keep], np.dtype("u8,u8"))
    subset.sort()
    path = f"{pool.base}/subsets/clip_l14_30.npy"
    storage.makedirs(f"{pool.base}/subsets")
    np.save(path, subset)
    assert (read_subset(path) == uids_to_array(keep)).all()
    write_subset(path, keep)
    assert (np.load(path) == subset).all()


def test_retry_is_a_no_op_and_publish_nests_the_scales(built):
    config, pool, kinds, stats, models, _ = built
    shard0 = storage.read_bytes(pool.metadata_file(0))
    again = run_metadata([0, 1], pool, config, models)
    assert again.counters == stats.counters and storage.read_bytes(pool.metadata_file(0)) == shard0
    assert plan_metadata(pool, config) == []
    published = run_publish(pool, config)
    manifest = storage.read_json(pool.manifest)
    kept = manifest["samples"]
    assert kept == stats["kept"] and manifest["scales"]["tiny"]["samples"] == 3
    assert manifest["ledger"]["urls"] == len(kinds)
    scales = {s: set(map(tuple, read_subset(pool.scale(s)).tolist())) for s in manifest["scales"]}
    assert scales["tiny"] < scales["small"] == scales["xlarge"] and len(scales["small"]) == kept
    assert not manifest["scales"]["small"]["complete"]
    # a published version stays as it is: publishing it again changes nothing
    assert published["unchanged"] == 0
    assert run_publish(pool, config).counters == published.counters
    assert storage.read_json(pool.manifest) == manifest


def test_production_loaders_run_in_the_pass(tmp_path, eval_suite, embedded_models):
    """Detoxify and SCRFD from local files (fixtures of their formats) through the same pass."""
    from fixture_models import detoxify_checkpoint, scrfd_onnx

    ckpt, hf_dir = detoxify_checkpoint(tmp_path / "detoxify")
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"), "evaluation.sets_dir": eval_suite, "models.embedded_dir": embedded_models,
        "models.detoxify": ckpt, "models.detoxify_hf_dir": hf_dir, "models.scrfd": scrfd_onnx(tmp_path / "det.onnx")})
    run_prepare_models(config)
    pool = PoolLayout(config.storage_root, "prod")
    white = Image.new("RGB", (320, 320))
    white.paste((255, 255, 255), (96, 96, 224, 224))  # what the SCRFD fixture "detects"
    kinds = write_raw_shard(pool, 0, make_samples()[:9] + [("bright", "a white square on black", jpeg_bytes(white))])
    run_metadata([0], pool, config)
    final = ledger.final_statuses(pool.ledger)
    got = {kinds[u]: (s, m) for u, s, m in zip(final["uid"].to_pylist(), final["status"].to_pylist(),
                                                final["message"].to_pylist())}
    assert got["unsafe"][0] == "nsfw_text" and "multilingual_fixture.ckpt" in got["unsafe"][1]
    assert got["shape"][0] == "kept" and got["eval_dup"][0] == "eval_duplicate"
    table = pq.read_table(pool.metadata_file(0))
    names = json.loads(table.schema.metadata[b"datacomp.models"])
    assert names["nsfw_text"].startswith("detoxify") and names["faces"].startswith("scrfd det.onnx")
    bright = next(r for r in table.to_pylist() if kinds[r["uid"]] == "bright")
    assert bright["face_bboxes"] and all(0.2 < (b[0] + b[2]) / 2 < 0.8 for b in bright["face_bboxes"])


@pytest.mark.slow
def test_pass_and_publish_on_s3(s3_bucket, eval_suite, embedded_models):
    config = load_config(overrides={"storage_root": s3_bucket, "evaluation.sets_dir": eval_suite,
                                    "models.embedded_dir": embedded_models})
    run_prepare_models(config)
    pool = PoolLayout(config.storage_root, "s3pool")
    kinds = write_raw_shard(pool, 0, make_samples())
    stats = run_metadata([0], pool, config)
    run_publish(pool, config)
    assert stats["in"] == len(kinds) and stats["kept"] == 8  # 6 shapes, the astronaut, the pixel
    manifest = storage.read_json(pool.manifest)
    assert manifest["shards"] == [f"{s3_bucket}/pool/s3pool/shards/00000000.tar"]
    assert read_subset(pool.scale("tiny")).shape == (8,)
    with storage.open_file(pool.metadata_file(0, "npz")) as f:
        assert np.load(io.BytesIO(f.read()))["l14_img"].shape == (8, 96)
    assert storage.ls(pool.base, "**/.tmp-*") == []
