"""Training throughput through the platform against open_clip's trainer called directly, same settings.

    python benchmarks/bench_training.py [--samples-seen 25600]

Both runs train the tiny scale's model (datacomp-tiny) on the same resharded
synthetic subset with DataComp's tiny recipe: "ours" is ``run_training`` (the
recipe's arguments, lineage, the subprocess and its model-config shim, the
checkpoint bookkeeping), "direct" is ``open_clip_train.main`` run in a
subprocess with the very arguments ours gave it. The ratio is our overhead.
With a GPU the same comparison runs for the small scale's recipe (ViT-B-32,
batch 4096) for ten steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from datacomp_ops.core.config import load_config
from datacomp_ops.core.schema import uids_to_array, write_subset
from datacomp_ops.training import train as training
from datacomp_ops.training.reshard import run_reshard


def make_subset(work: str, n: int, image_size: int, scale: str) -> training.TrainSpec:
    """n synthetic shape pictures with captions, resharded where a training run reads them."""
    import webdataset as wds

    from datacomp_ops.embedded.images import CLASSES, encode, render_shape
    from datacomp_ops.synthetic.crawl import TEMPLATES

    pool = os.path.join(work, "pool")
    os.makedirs(pool)
    rows = []
    with wds.TarWriter(os.path.join(pool, "00000000.tar")) as tar:
        for i in range(n):
            label = CLASSES[i % len(CLASSES)]
            uid = hashlib.md5(str(i).encode()).hexdigest()
            tar.write({"__key__": f"{i:09d}", "jpg": encode(render_shape(*label.split(" "), i, size=image_size)),
                       "txt": TEMPLATES[i % len(TEMPLATES)].format(c=label).encode(),
                       "json": json.dumps({"uid": uid}).encode()})
            rows.append({"key": f"{i:09d}", "uid": uid, "status": "success"})
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(pool, "00000000.parquet"))
    spec = training.TrainSpec.for_subset(os.path.join(work, "root"), "v0001", scale, "bench")
    os.makedirs(os.path.dirname(spec.subset), exist_ok=True)
    write_subset(spec.subset, uids_to_array(sorted(r["uid"] for r in rows)))
    run_reshard(spec.subset, [os.path.join(pool, "00000000.tar")], spec.shards_dir, shard_size=1000, workers=1)
    return spec


def logged_rate(log_path: str) -> float | None:
    """open_clip's own samples/s of the last logged step (its running figure)."""
    rate = None
    for line in open(log_path, errors="replace"):
        m = re.search(r"Batch \(t\): [\d.]+, ([\d.]+)/s", line)
        if m:
            rate = float(m.group(1))
    return rate


def run_direct(args: list[str], logs: str) -> float:
    args = list(args)
    args[args.index("--logs") + 1] = logs
    # open_clip_train fails on webdataset 0.2.100+'s end-of-shard markers: the same fix as our entry point
    code = ("import sys, open_clip; from open_clip_train.main import main; "
            "from datacomp_ops.training.entry import _skip_end_of_shard_markers; _skip_end_of_shard_markers(); "
            f"open_clip.add_model_config({training.MODEL_CONFIGS!r}); main(sys.argv[1:])")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def compare(work: str, overrides: dict, label: str, scale: str) -> None:
    config = load_config(overrides=overrides)
    spec = make_subset(os.path.join(work, label), 2000, 64, scale)
    t0 = time.perf_counter()
    training.run_training(spec, config)
    ours = time.perf_counter() - t0
    lineage = json.load(open(os.path.join(spec.run_dir, "lineage.json")))
    samples = lineage["recipe"]["samples_seen"]
    direct = run_direct(lineage["open_clip_args"], os.path.join(work, label, "direct"))
    ours_rate = logged_rate(os.path.join(spec.run_dir, "train", "out.log"))
    direct_rate = logged_rate(os.path.join(work, label, "direct", "train", "out.log"))
    print(f"\n{label}: {lineage['recipe']['model']}, {samples:,} samples seen, batch "
          f"{lineage['recipe']['batch_size']}, {lineage['device']}")
    print(f"  {'':<34}{'wall s':>9}{'samples/s':>12}{'open_clip step rate':>22}")
    print(f"  {'platform (run_training)':<34}{ours:>9.1f}{samples / ours:>12.0f}{ours_rate or 0:>20.0f}/s")
    print(f"  {'open_clip_train.main directly':<34}{direct:>9.1f}{samples / direct:>12.0f}{direct_rate or 0:>20.0f}/s")
    print(f"  platform / direct, wall time: {ours / direct:.3f}x (overhead {100 * (ours / direct - 1):+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples-seen", type=int, default=25_600, help="the tiny recipe's budget")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-training-") as work:
        print(f"machine: {os.cpu_count()} cores, CUDA: {torch.cuda.is_available()}; work dir {work}")
        base = {"storage_root": os.path.join(work, "unused"), "training.num_checkpoints": 1,
                "training.workers": 1 if not torch.cuda.is_available() else 4}
        compare(work, base | {"training.samples_seen": args.samples_seen}, "tiny", "tiny")
        if torch.cuda.is_available():
            # DataComp's small scale (ViT-B-32, batch 4096) on this worker's GPUs, ten steps: throughput only
            compare(work, base | {"training.samples_seen": 40_960}, "small", "small")
        else:
            print("\nno GPU here: the ViT-B-32 comparison runs where torch sees one")


if __name__ == "__main__":
    main()
