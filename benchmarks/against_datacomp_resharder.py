"""DataComp's own resharder.py against ours, on the same shards and subset file.

    python benchmarks/against_datacomp_resharder.py --resharder /path/to/datacomp/resharder.py \
        [--deps DIR] [--urls 400] [--fraction 0.5]

The shards are the platform's own: a published pool of the synthetic world downloaded by the
download stage (img2dataset's format: {key}.jpg/.txt/.json in the tar, the parquet beside with key,
uid and status; some URLs dead, so some keys are missing from the tars), and the subset file is a
DataComp baseline drawn by the platform (a CLIP-score fraction of the published metadata). DataComp's
resharder (mlfoundations/datacomp, run as a script, never copied here) reads them as its users run it:
``resharder.py -i SHARDS -o OUT -s SUBSET``. It needs pysimdjson and cloudpathlib: ``--deps DIR`` is
put on its PYTHONPATH (``pip install --target DIR cloudpathlib pysimdjson``).

Printed: the samples each resharder wrote, and whether both wrote the same uids with the same bytes
(the image, caption and json of every sample).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def samples_of(folder: str) -> dict[str, dict[str, str]]:
    """uid -> {extension: sha256 of the member} of every sample in a folder's tars."""
    import json

    out: dict[str, dict[str, str]] = {}
    for tar_path in sorted(Path(folder).glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for files in members.values():
            uid = json.loads(files["json"])["uid"]
            out[uid] = {ext: hashlib.sha256(data).hexdigest() for ext, data in files.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resharder", required=True, help="DataComp's resharder.py")
    parser.add_argument("--deps", default="", help="a folder with cloudpathlib and pysimdjson for it")
    parser.add_argument("--urls", type=int, default=400)
    parser.add_argument("--fraction", type=float, default=0.5, help="the CLIP-score subset's fraction")
    args = parser.parse_args()

    from datacomp_ops.core.config import PlatformConfig, load_config
    from datacomp_ops.core.layout import PoolLayout, SyntheticWorld, dataset_root
    from datacomp_ops.core.schema import read_subset
    from datacomp_ops.download.partition import Partition, run_download
    from datacomp_ops.embedded.clip_models import ensure_trained, stand_ins_dir
    from datacomp_ops.filtering.run import PoolSource, run_baseline
    from datacomp_ops.pool.published import (
        make_published_spec,
        plan_published_download,
        run_publish_published,
        run_scan_published,
    )
    from datacomp_ops.synthetic.published import write_published_pool
    from datacomp_ops.synthetic.server import serving
    from datacomp_ops.training.reshard import run_reshard

    tmp = tempfile.mkdtemp(prefix="against-datacomp-")
    root = os.path.join(tmp, "root")
    ensure_trained(stand_ins_dir(PlatformConfig()), PlatformConfig().metadata.embedded_clip_steps)
    with serving(cache_images=True) as server:
        overrides = {"storage_root": root, "download.allowed_private_addresses": ["127.0.0.1/32"],
                     "download.timeout": 5, "download.retries": 0, "download.number_sample_per_shard": 100,
                     "download.per_host_rps": 0, "download.per_host_connections": 0,  # one loopback host
                     "filtering.baselines": [f"clip_half = clip_score:arch=l14,fraction={args.fraction}"]}
        world = SyntheticWorld.under(root)
        write_published_pool(world, server.base_url, load_config(overrides=overrides), rows=args.urls)
        spec = make_published_spec("against", "dc", world.published_metadata, "tiny", overrides=overrides)
        run_scan_published(spec)
        for part in plan_published_download(spec):
            run_download(Partition(**part), spec.pool, spec.platform_config)
        run_publish_published(spec)
    proot = dataset_root(root, "dc")
    manifest = PoolLayout(proot, spec.pool_version).manifest
    stats = run_baseline("clip_half", PoolSource(manifest=manifest, scale="tiny"), load_config(overrides=overrides))
    subset = stats.outputs[0]
    shards_dir = PoolLayout(proot, spec.pool_version).downloads
    print(f"shards: {len(list(Path(shards_dir).glob('*.tar')))} in {shards_dir}; subset {subset}: "
          f"{len(read_subset(subset))} uids")

    start = time.perf_counter()
    ours = os.path.join(tmp, "ours")
    run_reshard(subset, sorted(str(p) for p in Path(shards_dir).glob("*.tar")), ours, shard_size=100)
    ours_s = time.perf_counter() - start
    theirs = os.path.join(tmp, "theirs")
    os.makedirs(theirs)  # DataComp's resharder lists the output folder before it writes
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (args.deps, os.environ.get("PYTHONPATH", "")) if p))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, args.resharder, "-i", shards_dir, "-o", theirs, "-s", subset,
                           "--shard-size", "100", "-j", "2"], env=env, capture_output=True, text=True)
    theirs_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"DataComp's resharder failed:\n{done.stderr[-4000:]}")
    a, b = samples_of(ours), samples_of(theirs)
    same_uids = set(a) == set(b)
    same_bytes = same_uids and all(a[u] == b[u] for u in a)
    print(f"ours: {len(a)} samples in {len(list(Path(ours).glob('*.tar')))} shards ({ours_s:.2f} s); DataComp's "
          f"resharder: {len(b)} samples in {len(list(Path(theirs).glob('*.tar')))} shards ({theirs_s:.2f} s)")
    print(f"same uids: {same_uids}; same bytes (image, caption, json) of every sample: {same_bytes}")
    if not same_uids:
        print(f"  only ours: {sorted(set(a) - set(b))[:5]}  only theirs: {sorted(set(b) - set(a))[:5]}")
    wanted = {f"{int(h):016x}{int(lo):016x}" for h, lo in np.asarray(read_subset(subset)).tolist()}
    print(f"subset uids held in the shards: {len(wanted & set(a))} of {len(wanted)} (the rest did not download)")
    sys.exit(0 if same_bytes else 1)


if __name__ == "__main__":
    main()
