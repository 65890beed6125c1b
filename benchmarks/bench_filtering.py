"""Filtering baselines against reading the columns they need, and against DataComp's code; the resharder
against a plain copy.

    python benchmarks/bench_filtering.py [--rows 1280000] [--metadata-rows 12800000] [--reference-rows 400000]
                                         [--clusters 256] [--skip semdedup,dbp] [--work DIR]

A generated pool in DataComp's format: parquet files of 100,000 rows (uid, English and non-English
captions of 1-15 words, sizes with some missing, float32 scores with some NaN) and, for --rows, npz
files of float16 features of DataComp's shapes (b32 512-d, l14 768-d). Each baseline runs from a fresh
context (its own reads included, the subset file written) and is compared with the time to read just
the columns and features it needs, in the same process. On --reference-rows of the same files,
DataComp's code path (benchmarks/datacomp_reference.py: pandas, a Python call per row) runs beside
ours. The resharder copies a 30% subset of generated shards; a plain copy of the same shards is the
reference. k-means baselines run with --clusters centroids (DataComp's 100,000 per 12.8M needs GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datacomp_ops.core.config import load_config
from datacomp_ops.core.schema import read_subset, write_subset
from datacomp_ops.filtering import metaclip
from datacomp_ops.filtering.baselines import FilterContext, parse_all
from datacomp_ops.filtering.pool import MetadataPool

ROWS_PER_FILE = 100_000
EN = ("a photo of the red car parked near an old house on the street at night with people walking "
      "beautiful sunset over ocean beach dog cat running in green park small wooden table kitchen "
      "modern living room design vintage poster woman man child playing football stadium circle square "
      "triangle icon logo vector illustration isolated white background stock image for sale new").split()
OTHER = ("une photo du chat noir sur la table avec des fleurs rouges dans le jardin ein Foto von einem "
         "roten Auto vor dem Haus una foto de un perro en la playa con el sol").split()
DIMS = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}


def hex_uids(rng, n: int) -> pa.Array:
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8).tobytes().hex().encode()
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(raw))


def captions(rng, n: int) -> pa.Array:
    words = pa.array(EN + OTHER)
    lengths = rng.integers(1, 16, n)
    foreign = rng.random(n) < 0.2
    idx = np.where(np.repeat(foreign, lengths), len(EN) + rng.integers(0, len(OTHER), lengths.sum()),
                   rng.integers(0, len(EN), lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(idx)))
    return pc.binary_join(lists, " ")


def make_pool(folder: str, rows: int, features: bool, seed: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for f, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        w = rng.integers(50, 2000, n)
        h = rng.integers(50, 2000, n)
        missing = rng.random(n) < 0.01
        b32 = rng.normal(0.25, 0.06, n).astype(np.float32)
        b32[rng.random(n) < 0.005] = np.nan
        table = pa.table({
            "uid": hex_uids(rng, n), "text": captions(rng, n),
            "original_width": pa.array(w, mask=missing), "original_height": pa.array(h, mask=missing),
            "clip_b32_similarity_score": b32,
            "clip_l14_similarity_score": (b32 * 0.9 + rng.normal(0, 0.02, n)).astype(np.float32),
        })
        path = os.path.join(folder, f"{f:08d}.parquet")
        pq.write_table(table, path)
        if features:
            arrays = {}
            for key, d in DIMS.items():
                x = rng.standard_normal((n, d), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                arrays[key] = x.astype(np.float16)
            np.savez(path[:-8] + ".npz", **arrays)
        files.append(path)
        print(f"  generated {start + n:,} of {rows:,} rows", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    return files


def read_inputs(files: list[str], columns: list[str], keys: list[str]) -> float:
    start = time.perf_counter()
    pool = MetadataPool(files)
    pool.columns(columns)
    for key in keys:
        pool.features(key, dtype=np.float16)
    return time.perf_counter() - start


def run_ours(files: list[str], text: str, config, out: str, **ctx) -> tuple[float, int]:
    """One baseline from a fresh context, as a mapped task runs it: its reads, the pool's uid index (built
    once per pool beforehand, see build_index), the subset file written."""
    start = time.perf_counter()
    specs = parse_all([text])
    (spec,) = specs.values()
    context = FilterContext(MetadataPool(files), seed=0, index_dir=index_dir(files), **ctx)
    mask = spec.run(context, specs).mask
    kept = write_subset(os.path.join(out, "subset.npy"), context.uid_index().sorted_subset(mask))
    return time.perf_counter() - start, kept


def index_dir(files: list[str]) -> str:
    return os.path.join(os.path.dirname(files[0]), f"_index-{len(files)}")


def build_index(files: list[str], rows: int) -> None:
    from datacomp_ops.filtering.pool import UidIndex

    read = read_inputs(files, ["uid"], [])
    t0 = time.perf_counter()
    UidIndex.load_or_build(MetadataPool(files), index_dir(files))
    row("(pool uid index, once per pool)", rows, time.perf_counter() - t0, read)


def build_language_index(files: list[str], rows: int) -> None:
    """fastText's English flags of every row, once per pool (the DAG's prepare task builds them)."""
    read = read_inputs(files, ["text"], [])
    t0 = time.perf_counter()
    FilterContext(MetadataPool(files), index_dir=index_dir(files)).build_language_index()
    row("(fastText index, once per pool)", rows, time.perf_counter() - t0, read)


def row(name: str, rows: int, ours: float, read: float | None = None, reference: float | None = None,
        kept: int | None = None) -> None:
    cells = [f"{name:<34}", f"{rows:>11,}", f"{ours:>8.2f}"]
    cells.append(f"{read:>8.2f}  {ours / read:>6.2f}x" if read else f"{'':>8}  {'':>7}")
    cells.append(f"{reference:>9.2f}  {reference / ours:>6.1f}x" if reference else f"{'':>9}  {'':>7}")
    cells.append(f"{kept:>11,}" if kept is not None else "")
    print("  ".join(cells), flush=True)


HEADER = (f"{'baseline':<34}  {'rows':>11}  {'ours s':>8}  {'read s':>8}  {'/read':>7}  {'DataComp s':>9}  "
          f"{'speedup':>7}  {'kept':>11}")

# baseline spec -> (columns read, npz keys read)
NEEDS = {
    "no_filter": (["uid"], []),
    "random:fraction=0.3": (["uid"], []),
    "clip_score:arch=l14,fraction=0.3": (["uid", "clip_l14_similarity_score"], []),
    "basic_filter": (["uid", "text", "original_width", "original_height"], []),
    "laion2b": (["uid", "text", "clip_b32_similarity_score"], []),
    "text_based": (["uid", "text"], []),
    "image_based:clusters={k}": (["uid", "text"], ["l14_img"]),
    "semdedup:clusters={k}": (["uid"], ["l14_img"]),
    "dbp:clusters={k}": (["uid"], ["l14_img"]),
}


def bench_baselines(files: list[str], rows: int, config, ctx: dict, out: str, skip: set[str], clusters: int,
                    features: bool) -> None:
    build_index(files, rows)
    build_language_index(files, rows)
    for spec, (columns, keys) in NEEDS.items():
        name = spec.split(":")[0]
        if name in skip or (keys and not features):
            continue
        spec = spec.format(k=clusters)
        read = read_inputs(files, columns, keys)
        ours, kept = run_ours(files, spec, config, out, **ctx)
        row(spec, rows, ours, read, kept=kept)
    if "metaclip" not in skip:
        pool = MetadataPool(files)
        text = pool.columns(["text"])["text"]
        t0 = time.perf_counter()
        offsets, ids = metaclip.match(text, ctx["metaclip_entries"]())
        matching = time.perf_counter() - t0
        read = read_inputs(files, ["uid"], [])
        t0 = time.perf_counter()
        from datacomp_ops.filtering.pool import UidIndex

        index = UidIndex.load_or_build(MetadataPool(files), index_dir(files))
        uids = index.uids
        counts = metaclip.entry_counts(ids, len(metaclip.load_entries(ctx["metaclip_entries"]())))
        mask = metaclip.balanced_draw(offsets, ids, uids, counts, max(1, rows // 2000))
        kept = write_subset(os.path.join(out, "subset.npy"), index.sorted_subset(mask))
        row("metaclip draw, given its matches", rows, time.perf_counter() - t0, read, kept=kept)
        row("metaclip matching (Aho-Corasick)", rows, matching)


def bench_reference(files: list[str], rows: int, config, ctx: dict, out: str, skip: set[str]) -> None:
    import datacomp_reference as ref
    import fasttext
    import gcld3

    from datacomp_ops.filtering.language import bundled_fasttext_model

    model = fasttext.load_model(bundled_fasttext_model())
    matcher = ctx["text_entities"]()
    cases = {
        "no_filter": lambda: ref.no_filter(files),
        "clip_score:arch=l14,fraction=0.3": lambda: ref.clip_score(files, "clip_l14_similarity_score", 0.3),
        "basic_filter": lambda: ref.basic_filter(files, model),
        "laion2b": lambda: ref.laion2b(files, gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)),
        "text_based": lambda: ref.text_based(files, model, matcher.wordnet, matcher.entities),
    }
    build_index(files, rows)
    for name in ("fasttext_en.npy", "fasttext_en.json"):  # the first round runs without the language index
        if os.path.exists(os.path.join(index_dir(files), name)):
            os.remove(os.path.join(index_dir(files), name))
    references = {}
    for spec, reference in cases.items():
        if spec.split(":")[0] in skip:
            continue
        t0 = time.perf_counter()
        theirs = np.sort(reference())
        reference_s = time.perf_counter() - t0
        ours, kept = run_ours(files, spec, config, out, **ctx)
        mine = np.load(os.path.join(out, "subset.npy"))
        same = "same uids" if np.array_equal(mine, theirs) else f"DIFFERENT ({len(theirs)} theirs)"
        row(spec, rows, ours, reference=reference_s, kept=kept)
        print(f"{'':<34}  {same}", flush=True)
        references[spec] = (reference_s, theirs)
    # the same fastText baselines once the pool's language index exists (built once, read by each)
    fasttext = [spec for spec in references if spec in ("basic_filter", "text_based")]
    if fasttext:
        build_language_index(files, rows)
    for spec in fasttext:
        reference_s, theirs = references[spec]
        ours, kept = run_ours(files, spec, config, out, **ctx)
        same = np.array_equal(np.load(os.path.join(out, "subset.npy")), theirs)
        row(f"{spec} (given the index)", rows, ours, reference=reference_s, kept=kept)
        print(f"{'':<34}  {'same uids' if same else 'DIFFERENT'}", flush=True)


def check_resharded(out: str, subset: str) -> None:
    """The output holds the subset's samples, whole: a timing of wrong output would mean nothing."""
    import tarfile

    import webdataset as wds

    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["output_count"] == len(read_subset(subset)), meta
    first = os.path.join(out, "00000000.tar")
    with tarfile.open(first) as tar:
        members = len(tar.getmembers())
    samples = list(wds.WebDataset(first, shardshuffle=False))
    assert members == 3 * len(samples) and all(len(s["jpg"]) >= 6000 for s in samples), first


def bench_reshard(work: str, shards: int = 16, per_shard: int = 2000) -> None:
    import webdataset as wds

    from datacomp_ops.training.reshard import run_reshard

    rng = np.random.default_rng(1)
    src = os.path.join(work, "shards")
    os.makedirs(src, exist_ok=True)
    uids_all = []
    for s in range(shards):
        rows = []
        # as the pool's shards are written (webdataset's TarWriter: a pax header per member)
        with wds.TarWriter(os.path.join(src, f"{s:08d}.tar")) as tar:
            for i in range(per_shard):
                key, uid = f"{s:05d}{i:04d}", rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex()
                tar.write({"__key__": key, **{ext: rng.integers(0, 256, size, dtype=np.uint8).tobytes() for ext, size in
                                              (("jpg", int(rng.integers(6000, 20000))), ("txt", 60), ("json", 300))}})
                rows.append({"key": key, "uid": uid, "status": "success"})
                uids_all.append(uid)
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(src, f"{s:08d}.parquet"))
    tars = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".tar"))
    size = sum(os.path.getsize(t) for t in tars)
    from datacomp_ops.core.schema import uids_to_array

    subset = os.path.join(work, "subset.npy")
    write_subset(subset, uids_to_array(sorted(rng.choice(uids_all, len(uids_all) * 3 // 10, replace=False))))
    # best of three each, alternating, with dirty pages written out before each run (writeback of one
    # run's output would otherwise be charged to the next)
    copy_s, reshard_s = float("inf"), float("inf")
    for attempt in range(3):
        copy_dir, out = os.path.join(work, f"copy{attempt}"), os.path.join(work, f"resharded{attempt}")
        os.sync()
        t0 = time.perf_counter()
        os.makedirs(copy_dir)
        for f in os.listdir(src):
            shutil.copyfile(os.path.join(src, f), os.path.join(copy_dir, f))
        copy_s = min(copy_s, time.perf_counter() - t0)
        os.sync()
        t0 = time.perf_counter()
        run_reshard(subset, tars, out, shard_size=10_000, workers=os.cpu_count() or 1)
        reshard_s = min(reshard_s, time.perf_counter() - t0)
        if attempt == 0:
            check_resharded(out, subset)
        shutil.rmtree(copy_dir)
        shutil.rmtree(out)
    print(f"\nresharder: {shards} shards, {shards * per_shard:,} samples, {size / 1e6:,.0f} MB, 30% subset")
    print(f"  plain copy of the shards  {copy_s:7.2f} s  {size / 1e6 / copy_s:8.0f} MB/s")
    print(f"  resharder                 {reshard_s:7.2f} s  {size / 1e6 / reshard_s:8.0f} MB/s read"
          f"   speed vs copy: {copy_s / reshard_s:.2f}x (target >= 0.5x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_280_000, help="pool with features")
    parser.add_argument("--metadata-rows", type=int, default=12_800_000, help="metadata-only pool (0: none)")
    parser.add_argument("--reference-rows", type=int, default=400_000, help="rows for DataComp's code (0: none)")
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--skip", default="", help="comma-separated baseline names to leave out")
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    work = args.work or tempfile.mkdtemp(prefix="bench-filtering-")
    sys.path.insert(0, os.path.dirname(__file__))
    from datacomp_ops.filtering.text_entities import EntityMatcher
    from datacomp_ops.synthetic.wordnet import write_wordnet

    wn = write_wordnet(os.path.join(work, "wordnet"))
    ctx = {"text_entities": lambda: EntityMatcher(wn["wordnet_dir"], wn["imagenet21k_ids"]),
           "image_targets": lambda dim: np.random.default_rng(2).standard_normal((1000, dim)).astype(np.float32),
           "metaclip_entries": lambda: wn["metaclip_entries"]}
    config = load_config()
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; work dir {work}")
    print("(WordNet, its classes and MetaCLIP's entries are the synthetic miniatures; ImageNet targets random)")
    if args.rows:
        files = make_pool(os.path.join(work, "pool"), args.rows, features=True)
        print(f"\npool with features: {args.rows:,} rows\n{HEADER}")
        bench_baselines(files, args.rows, config, ctx, out, skip, args.clusters, features=True)
        if args.reference_rows:
            some = files[: max(1, args.reference_rows // ROWS_PER_FILE)]
            n = sum(pq.ParquetFile(f).metadata.num_rows for f in some)
            print(f"\nDataComp's code path on {n:,} of the same rows\n{HEADER}")
            bench_reference(some, n, config, ctx, out, skip)
    if args.metadata_rows:
        files = make_pool(os.path.join(work, "metadata-only"), args.metadata_rows, features=False, seed=1)
        print(f"\nmetadata-only pool: {args.metadata_rows:,} rows\n{HEADER}")
        bench_baselines(files, args.metadata_rows, config, ctx, out, skip | {"image_based", "semdedup", "dbp"},
                        args.clusters, features=False)
        shutil.rmtree(os.path.join(work, "metadata-only"), ignore_errors=True)
    bench_reshard(os.path.join(work, "reshard"))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
