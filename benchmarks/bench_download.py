"""Download throughput: the platform's download stage against img2dataset called directly.

    python benchmarks/bench_download.py [--urls 10000] [--processes 2] [--threads 32] [--rounds 2]

Both download the same URL parquet, one partition of `--urls` URLs as DataComp's
download tasks have (the synthetic crawl's images that answer at full speed,
served from 127.0.0.1), with the same settings. The overhead is what the
platform adds: its own interpreter for img2dataset with the address guard, the
ledger, the moves and the marker.

The server keeps every image it made, and is load-tested on its own first (two
client processes, keep-alive connections): its requests/s, printed, bound what
any download of it can reach; the requests it served during each timed run are
printed beside the run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import urlsplit

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


def _fetch_all(urls: list[str], threads: int) -> int:
    """GET every URL over keep-alive connections, one per thread; returns the bytes received."""

    def worker(chunk: list[str]) -> int:
        received, conn = 0, None
        for url in chunk:
            parts = urlsplit(url)
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request("GET", parts.path)
            response = conn.getresponse()
            received += len(response.read())
        return received

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(worker, [urls[i::threads] for i in range(threads)]))


def server_rate(urls: list[str], processes: int = 2, threads: int = 16) -> float:
    """Requests per second the server answers to clients that do nothing but fetch."""
    start = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_fetch_all, [urls[i::processes] for i in range(processes)], [threads] * processes))
    return len(urls) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=10_000, help="URLs in the partition")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp, serving(cache_images=True) as server:
        crawl = generate_crawl(os.path.join(tmp, "crawl"),
                               CrawlSpec(n_urls=int(args.urls * 1.5) + 100, base_url=server.base_url))
        truth = pq.read_table(crawl["truth"])
        fast = truth.filter(pc.is_in(truth["kind"], value_set=pc.cast(FAST_KINDS, "string")))["uid"]
        table = pa.concat_tables(parse_wat_file(p)[0] for p in crawl["wat_files"])
        # the first row of each fast uid (a crawl repeats some pairs on several pages)
        table = table.take(pc.index_in(fast, value_set=table["uid"]).drop_null()).sort_by("uid").slice(0, args.urls)
        if table.num_rows < args.urls:
            raise SystemExit(f"the synthetic crawl gave {table.num_rows} fast URLs, fewer than {args.urls}")
        urls = os.path.join(tmp, "part-0000-00000.parquet")
        pq.write_table(table, urls)
        n = table.num_rows

        url_list = table["url"].to_pylist()
        cold = server_rate(url_list)  # makes and keeps every image
        warm = server_rate(url_list)
        print(f"server {server.base_url}: {cold:.0f} requests/s making the images, {warm:.0f} requests/s once made "
              f"({n} URLs, 2 client processes x 16 keep-alive connections)")

        config = load_config(overrides={"storage_root": os.path.join(tmp, "root"),
                                        "download.allowed_private_addresses": [server.base_url.split("//")[1]],
                                        "download.processes_count": args.processes,
                                        "download.thread_count": args.threads})
        runs: dict[str, list[tuple[float, int]]] = {"reference": [], "platform": []}
        # alternated, best of each
        for round_no in range(args.rounds):
            served, start = server.requests_served, time.perf_counter()
            img2dataset.download(**img2dataset_kwargs(urls, os.path.join(tmp, f"direct{round_no}"), config))
            runs["reference"].append((time.perf_counter() - start, server.requests_served - served))
            served, start = server.requests_served, time.perf_counter()
            stats = run_download(Partition(urls, n, 0), PoolLayout(config.storage_root, f"bench{round_no}"), config)
            runs["platform"].append((time.perf_counter() - start, server.requests_served - served))
            downloaded = stats.counters.get("downloaded", 0)
            if downloaded != n:
                raise SystemExit(f"the platform downloaded {downloaded} of {n}: {stats.counters}")

    (ref_s, ref_req), (our_s, our_req) = min(runs["reference"]), min(runs["platform"])
    print(f"{n} URLs in one partition, {args.processes} processes x {args.threads} threads, best of {args.rounds}")
    print(f"{'':40} {'images/s':>9} {'seconds':>8} {'server req/s':>13}")
    print(f"{'reference (img2dataset.download)':40} {n / ref_s:9.1f} {ref_s:8.2f} {ref_req / ref_s:13.0f}")
    print(f"{'platform (run_download + ledger)':40} {n / our_s:9.1f} {our_s:8.2f} {our_req / our_s:13.0f}")
    print(f"platform overhead: {100 * (our_s - ref_s) / ref_s:+.1f}% of img2dataset's time "
          f"(target at most +10%); the server answers {warm / (n / ref_s):.1f}x the download's rate")


if __name__ == "__main__":
    main()
