"""Download throughput: the platform's download stage against img2dataset called directly.

    python benchmarks/bench_download.py [--urls 3000] [--processes 2] [--threads 32]

Both download the same URL parquet (the synthetic crawl's reachable images,
served from 127.0.0.1) with the same settings. The ratio shows what the
platform adds: its own interpreter for img2dataset, the ledger, the moves and
the marker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import img2dataset
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datacomp_ops.config import load_config
from datacomp_ops.download import Partition, img2dataset_kwargs, run_download
from datacomp_ops.layout import PoolLayout
from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl
from datacomp_ops.synthetic.server import serving
from datacomp_ops.wat import parse_wat_file

# the image kinds that download at full speed (no deliberate delays or failures)
FAST_KINDS = ["shape", "shape_mismatch", "non_english", "unsafe_caption", "photo", "eval_duplicate", "redirect"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp, serving() as server:
        crawl = generate_crawl(os.path.join(tmp, "crawl"), CrawlSpec(n_urls=args.urls, base_url=server.base_url))
        truth = pq.read_table(crawl["truth"])
        fast = set(truth.filter(pc.is_in(truth["kind"], value_set=pc.cast(FAST_KINDS, "string")))["uid"].to_pylist())
        rows = {r["uid"]: r for p in crawl["wat_files"] for r in parse_wat_file(p)[0].to_pylist() if r["uid"] in fast}
        urls = os.path.join(tmp, "part-0000-00000.parquet")
        pq.write_table(pa.Table.from_pylist(sorted(rows.values(), key=lambda r: r["uid"])), urls)
        config = load_config(overrides={"storage_root": os.path.join(tmp, "root"),
                                        "download.allowed_private_addresses": [server.base_url.split("//")[1]],
                                        "download.processes_count": args.processes,
                                        "download.thread_count": args.threads})
        ref_times, our_times = [], []
        # alternate the two, best of each: the server's caches warm up on the first run
        for round_no in range(args.rounds):
            start = time.perf_counter()
            img2dataset.download(**img2dataset_kwargs(urls, os.path.join(tmp, f"direct{round_no}"), config))
            ref_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            stats = run_download(Partition(urls, len(rows), 0), PoolLayout(config.storage_root, f"bench{round_no}"), config)
            our_times.append(time.perf_counter() - start)
        ref_s, our_s = min(ref_times), min(our_times)
    n = len(rows)
    print(f"{n} reachable images from {server.base_url}, {args.processes} processes x {args.threads} threads")
    print(f"{'':40} {'images/s':>9} {'seconds':>8} {'vs ref':>7}")
    print(f"{'reference (img2dataset.download)':40} {n / ref_s:9.1f} {ref_s:8.2f} {1.0:6.2f}x")
    print(f"{'platform (run_download + ledger)':40} {n / our_s:9.1f} {our_s:8.2f} {ref_s / our_s:6.2f}x")
    print(f"downloaded: {stats['downloaded']} of {n}")


if __name__ == "__main__":
    main()
