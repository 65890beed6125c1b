"""A published pool's metadata: import it and draw clip_score_l14_30, against DataComp's code on the same files.

    python benchmarks/bench_published.py [--rows 1280000] [--files 128] [--npz] [--work DIR]

Writes `--rows` rows of metadata in DataComp's published layout (`--files` parquet files, and with
`--npz` their npz of DataComp's dimensions, float16), then times, in this process:

- the platform: `run_scan_published` (every file checked: columns, types, uids, duplicates, face
  boxes, npz rows; copied; URL parts written), `run_publish_published`, and `clip_score_l14_30` over
  the version's manifest (`run_baseline`);
- DataComp's code path for the same subset (benchmarks/datacomp_reference.py: pandas reads, the
  threshold at int(N * 0.3), uids converted per row), reading the same files.

Prints both times, their ratio, and whether the subsets are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIMS = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}
SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                    ("original_width", pa.int64()), ("original_height", pa.int64()),
                    ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                    ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])


def write_metadata(folder: str, rows: int, files: int, npz: bool, seed: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for f, (a, b) in enumerate(zip(np.linspace(0, rows, files + 1).astype(int)[:-1],
                                   np.linspace(0, rows, files + 1).astype(int)[1:])):
        n = int(b - a)
        ids = np.arange(a, b)
        urls = [f"https://img{i % 9973}.example.com/{i}.jpg" for i in ids]
        texts = [f"a photo of thing {i}" for i in ids]
        uids = [hashlib.md5((t + u).encode()).hexdigest() for t, u in zip(texts, urls)]
        boxes = pa.array([[[0.1, 0.1, 0.3, 0.4]] if i % 7 == 0 else [] for i in ids], pa.list_(pa.list_(pa.float64())))
        table = pa.table({"uid": uids, "url": urls, "text": texts,
                          "original_width": rng.integers(64, 2048, n), "original_height": rng.integers(64, 2048, n),
                          "clip_b32_similarity_score": rng.random(n, np.float32),
                          "clip_l14_similarity_score": rng.random(n, np.float32), "face_bboxes": boxes,
                          "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in urls]}, schema=SCHEMA)
        name = hashlib.md5(f"bench-{f}".encode()).hexdigest()[:16]
        pq.write_table(table, os.path.join(folder, f"{name}.parquet"))
        if npz:
            np.savez(os.path.join(folder, f"{name}.npz"),
                     **{k: rng.standard_normal((n, d), np.float32).astype(np.float16) for k, d in DIMS.items()})
        paths.append(os.path.join(folder, f"{name}.parquet"))
    return sorted(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_280_000)
    parser.add_argument("--files", type=int, default=128)
    parser.add_argument("--npz", action="store_true", help="write and import the features too (~5 KB a row)")
    parser.add_argument("--work", default="")
    args = parser.parse_args()

    import datacomp_reference as reference  # beside this script

    from datacomp_ops.core.config import load_config
    from datacomp_ops.core.layout import PoolLayout
    from datacomp_ops.core.schema import read_subset
    from datacomp_ops.filtering.run import PoolSource, run_baseline
    from datacomp_ops.pool.published import make_published_spec, run_publish_published, run_scan_published

    work = args.work or tempfile.mkdtemp(prefix="bench-published-")
    start = time.perf_counter()
    files = write_metadata(os.path.join(work, "metadata"), args.rows, args.files, args.npz)
    print(f"{args.rows:,} rows in {len(files)} files{' with npz' if args.npz else ''}: written in "
          f"{time.perf_counter() - start:.1f} s ({work})")

    overrides = {"storage_root": os.path.join(work, "root"), "extract.urls_per_partition": 1_000_000,
                 "filtering.baselines": ["clip_score_l14_30 = clip_score:arch=l14,fraction=0.3",
                                         "clip_score_l14_30_again = clip_score:arch=l14,fraction=0.3"]}
    start = time.perf_counter()
    spec = make_published_spec("bench", "bench", os.path.join(work, "metadata"), "small", npz=args.npz,
                               overrides=overrides, download="none")
    scanned = run_scan_published(spec)
    run_publish_published(spec)
    imported = time.perf_counter() - start
    source = PoolSource(manifest=PoolLayout(spec.pool.root, spec.pool_version).manifest, scale="small")
    start = time.perf_counter()
    stats = run_baseline("clip_score_l14_30", source, load_config(overrides=overrides))
    filtered = time.perf_counter() - start
    # the filtering DAG builds a pool's uid index once for all its baselines: the next one finds it
    start = time.perf_counter()
    run_baseline("clip_score_l14_30_again", source, load_config(overrides=overrides))
    again = time.perf_counter() - start
    start = time.perf_counter()
    theirs = reference.clip_score(files, "clip_l14_similarity_score", 0.3)
    datacomp = time.perf_counter() - start
    same = read_subset(stats.outputs[0]).tolist() == np.sort(theirs).tolist()
    print(f"platform: import {imported:.1f} s ({scanned['records']:,} rows checked, {scanned['urls_written']:,} to "
          f"download, {scanned['skipped:bad_face_box']} bad boxes), clip_score_l14_30 {filtered:.2f} s "
          f"({stats['kept']:,} kept)")
    print(f"  the same baseline again, the pool's uid index built (as for every baseline after a DAG's first): "
          f"{again:.2f} s")
    print(f"DataComp's code path, clip_score_l14_30 on the same files: {datacomp:.2f} s ({len(theirs):,} kept)")
    print(f"clip_score_l14_30: platform {filtered / datacomp:.2f}x DataComp's time with its uid index built, "
          f"{again / datacomp:.2f}x once built; import and filter together {(imported + filtered) / datacomp:.1f}x; "
          f"same subset: {same}")


if __name__ == "__main__":
    main()
