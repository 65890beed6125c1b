"""Download throughput: the platform's download stage against img2dataset called directly.

    python benchmarks/bench_download.py [--urls 10000] [--processes 2] [--threads 32] [--rounds 2]
    python benchmarks/bench_download.py --published      # against download_upstream.py's img2dataset call
    python benchmarks/bench_download.py --hosts 200      # politeness on against off, over 200 hosts

Both download the same URL parquet, one partition of `--urls` URLs as DataComp's
download tasks have (the synthetic crawl's images that answer at full speed,
served from 127.0.0.1), with the same settings. The overhead is what the
platform adds: its own interpreter for img2dataset with the address guard, the
hosts' robots.txt and TDMRep (one host here: its per-host pace is off, as no
pace can hold one host at a whole partition's rate), the ledger, the moves and
the marker.

With ``--hosts N`` the partition's URLs lie on N hosts of the synthetic web that
say nothing (no robots.txt, no TDMRep, no rate limit: hosts.py's plain hosts,
all names of the one server), and the platform downloads it twice per round:
with the rules and limits on (the config's defaults: robots.txt and TDMRep read
first, 5 requests a second and 4 connections per host) and with them off. When
no host's limit binds (10,000 URLs over 200 hosts: 50 a host, under the pace at
this machine's rate), the politeness costs at most 10%; the rules' own requests
are printed.

The server keeps every image it made, and is load-tested on its own first (two
client processes, keep-alive connections): its requests/s, printed, bound what
any download of it can reach; the requests it served during each timed run, and
how busy its process was (CPU seconds per second: a Python server saturates
near 1.0), are printed beside the run. The platform's time is split into
img2dataset's child process and the rest (ledger, moves, marker).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
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

from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.core.schema import compute_uids
from datacomp_ops.crawl.wat import parse_wat_file
from datacomp_ops.download import partition as download_stage
from datacomp_ops.download.partition import Partition, img2dataset_kwargs, run_download
from datacomp_ops.synthetic.crawl import CONTENT, CrawlSpec, generate_crawl
from datacomp_ops.synthetic.server import serving

# the image kinds that download at full speed (no deliberate delays or failures)
FAST_KINDS = [*CONTENT, "unsafe_caption", "eval_duplicate", "redirect"]


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


def upstream_kwargs(url_list: str, output_folder: str, config) -> dict:
    """img2dataset.download's arguments as DataComp's download_upstream.py passes them (its defaults; the
    processes and threads are this machine's)."""
    return dict(url_list=url_list, image_size=512, output_folder=output_folder,
                processes_count=config.download.processes_count, thread_count=config.download.thread_count,
                resize_mode="keep_ratio_largest", resize_only_if_bigger=True, encode_format="jpg",
                output_format="webdataset", input_format="parquet", url_col="url", caption_col="text",
                bbox_col="face_bboxes", save_additional_columns=["uid"], number_sample_per_shard=10000,
                oom_shard_count=8, retries=2, enable_wandb=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=10_000, help="URLs in the partition")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--published", action="store_true",
                        help="a published pool's partition (face boxes, sha256) against download_upstream.py's "
                             "img2dataset call (target: at most +5%%)")
    parser.add_argument("--hosts", type=int, default=0,
                        help="the URLs over this many hosts: the platform with its rules and limits on against "
                             "off (target: at most +10%% when no host's limit binds)")
    args = parser.parse_args()
    if args.hosts:
        return politeness(args)
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
        if args.published:  # as pool/published.py writes a URL part: DataComp's boxes and the bytes' sha256
            paths = [u.split("/", 3)[3] for u in table["url"].to_pylist()]
            table = table.append_column("face_bboxes", pa.array(
                [[[0.2, 0.2, 0.6, 0.7]] if i % 7 == 0 else [] for i in range(table.num_rows)],
                pa.list_(pa.list_(pa.float64())))).append_column("sha256", pa.array(
                    [hashlib.sha256(server.render("/" + p)[0]).hexdigest() if p.startswith("img/") else None
                     for p in paths], pa.string()))
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
                                        "download.thread_count": args.threads,
                                        # one host: no pace holds it at a partition's rate (--hosts measures it)
                                        "download.per_host_rps": 0, "download.per_host_connections": 0})
        # the platform's img2dataset child, timed apart from the rest of run_download (ledger, moves, marker)
        child_seconds: list[float] = []
        run_child = download_stage._run_img2dataset

        def timed_child(*a, **kw):
            start = time.perf_counter()
            run_child(*a, **kw)
            child_seconds.append(time.perf_counter() - start)

        download_stage._run_img2dataset = timed_child

        def reference(round_no: int) -> None:
            out = os.path.join(tmp, f"direct{round_no}")
            img2dataset.download(**(upstream_kwargs(urls, out, config) if args.published else
                                    img2dataset_kwargs(urls, out, config)))

        def platform(round_no: int) -> None:
            stats = run_download(Partition(urls, n, 0), PoolLayout(config.storage_root, f"bench{round_no}"), config)
            downloaded = stats.counters.get("downloaded", 0)
            if downloaded != n:
                raise SystemExit(f"the platform downloaded {downloaded} of {n}: {stats.counters}")

        runs: dict[str, list[tuple[float, int]]] = {"reference": [], "platform": []}
        # CPU of this process (the server's threads, img2dataset's idle parent) per second of each run:
        # a thread-per-connection Python server is saturated near 1.0 (the GIL)
        server_busy: dict[str, list[float]] = {"reference": [], "platform": []}
        # alternated (ABBA...: neither side always runs second), best of each; the disk flushed before each
        # run so that one run's write-back does not slow the next
        for round_no in range(args.rounds):
            order = [("reference", reference), ("platform", platform)]
            for name, run in order if round_no % 2 == 0 else order[::-1]:
                os.sync()
                served, start, cpu = server.requests_served, time.perf_counter(), time.process_time()
                run(round_no)
                seconds = time.perf_counter() - start
                runs[name].append((seconds, server.requests_served - served))
                server_busy[name].append((time.process_time() - cpu) / seconds)

    (ref_s, ref_req), (our_s, our_req) = min(runs["reference"]), min(runs["platform"])
    best_ref, best = runs["reference"].index(min(runs["reference"])), runs["platform"].index(min(runs["platform"]))
    child_s = child_seconds[best]
    print(f"{n} URLs in one partition, {args.processes} processes x {args.threads} threads, best of {args.rounds}")
    print(f"{'':40} {'images/s':>9} {'seconds':>8} {'server req/s':>13} {'server busy':>12}")
    print(f"{'reference (img2dataset.download)':40} {n / ref_s:9.1f} {ref_s:8.2f} {ref_req / ref_s:13.0f} "
          f"{server_busy['reference'][best_ref]:12.2f}")
    print(f"{'platform (run_download + ledger)':40} {n / our_s:9.1f} {our_s:8.2f} {our_req / our_s:13.0f} "
          f"{server_busy['platform'][best]:12.2f}")
    print(f"{'  of which img2dataset in its child':40} {'':9} {child_s:8.2f}")
    print(f"{'  of which ledger, moves, marker':40} {'':9} {our_s - child_s:8.2f}")
    print("all rounds (s): reference " + ", ".join(f"{s:.2f}" for s, _ in runs["reference"])
          + "; platform " + ", ".join(f"{s:.2f}" for s, _ in runs["platform"]))
    reference_name = "download_upstream.py's img2dataset call" if args.published else "img2dataset's time"
    print(f"platform overhead: {100 * (our_s - ref_s) / ref_s:+.1f}% of {reference_name} "
          f"(target at most {'+5' if args.published else '+10'}%); the server answers {warm / (n / ref_s):.1f}x the download's rate on its own, "
          f"and was busy {server_busy['reference'][best_ref]:.2f} of the one core it can use during it")


def politeness(args) -> None:
    """One partition over `args.hosts` plain hosts, downloaded by the platform with its rules and limits on and
    off, alternated, best of `args.rounds` each."""
    from datacomp_ops.synthetic import hosts

    with tempfile.TemporaryDirectory(prefix="bench-polite-") as tmp, serving(cache_images=True) as server:
        crawl = generate_crawl(os.path.join(tmp, "crawl"), CrawlSpec(
            n_urls=int(args.urls * 1.5) + 100, base_url=server.base_url, hosts=args.hosts, plain_hosts=True))
        truth = pq.read_table(crawl["truth"])
        fast = truth.filter(pc.is_in(truth["kind"], value_set=pc.cast(FAST_KINDS, "string")))
        table = fast.select(["url", "text"]).slice(0, args.urls)
        # every host the same share, in turn (the crawl's pages hold 1 to 8 links each: uneven hosts)
        port = urlsplit(server.base_url).port
        spread = [f"http://{hosts.host_name(i % args.hosts, plain=True)}:{port}{urlsplit(u).path}"
                  for i, u in enumerate(table["url"].to_pylist())]
        table = pa.table({"uid": compute_uids(table["text"].to_pylist(), spread), "url": spread,
                          "text": table["text"], "page_url": pa.nulls(table.num_rows, pa.string()),
                          "wat_path": pa.array(["bench"] * table.num_rows)})
        urls = os.path.join(tmp, "part-0000-00000.parquet")
        pq.write_table(table, urls)
        n = table.num_rows
        per_host = list(collections.Counter(urlsplit(u).hostname for u in spread).values())
        common = {"download.allowed_private_addresses": [server.base_url.split("//")[1]],
                  "download.host_addresses": [hosts.PINNED], "download.processes_count": args.processes,
                  "download.thread_count": args.threads}
        off = {"download.robots_txt": False, "download.tdmrep": False, "download.per_host_rps": 0,
               "download.per_host_connections": 0}
        runs: dict[str, list[float]] = {"on": [], "off": []}
        rules: list[dict] = []
        # untimed: the server makes and keeps every image, so that no timed run pays for making them
        config = load_config(overrides={"storage_root": os.path.join(tmp, "warm")} | common | off)
        run_download(Partition(urls, n, 0), PoolLayout(config.storage_root, "v0001"), config)
        for round_no in range(args.rounds):
            order = ["on", "off"] if round_no % 2 == 0 else ["off", "on"]
            for name in order:
                # each round's "on" run on a fresh storage root: the hosts' rules fetched, not read from a cache
                config = load_config(overrides={"storage_root": os.path.join(tmp, f"{name}{round_no}")} | common
                                     | (off if name == "off" else {}))
                os.sync()
                seen = len(server.host_log)
                start = time.perf_counter()
                stats = run_download(Partition(urls, n, 0), PoolLayout(config.storage_root, "v0001"), config)
                runs[name].append(time.perf_counter() - start)
                if stats.counters.get("downloaded", 0) != n:
                    raise SystemExit(f"{name}: downloaded {stats.counters.get('downloaded', 0)} of {n}: "
                                     f"{stats.counters}")
                if name == "on":
                    asked = [p for _, _, p, _ in server.host_log[seen:] if p in ("/robots.txt",
                                                                                   "/.well-known/tdmrep.json")]
                    rules.append({"requests": stats["rules_requests"], "seen": len(asked), "hosts": stats["hosts"],
                                  "seconds": stats.timings["rules"]})
                    busiest = max(_most_in_a_second(server.host_log[seen:]).values())
    on, off_s = min(runs["on"]), min(runs["off"])
    cfg = load_config()
    print(f"{n} URLs in one partition over {args.hosts} hosts ({min(per_host)}-{max(per_host)} URLs a host), "
          f"{args.processes} processes x {args.threads} threads, best of {args.rounds}")
    print(f"{'':44} {'images/s':>9} {'seconds':>8}")
    print(f"{'rules and limits off':44} {n / off_s:9.1f} {off_s:8.2f}")
    print(f"{'rules and limits on (the config defaults)':44} {n / on:9.1f} {on:8.2f}")
    print(f"  on: robots.txt and tdmrep.json of {rules[-1]['hosts']} hosts, {rules[-1]['requests']} requests "
          f"({rules[-1]['seen']} seen by the server) in {rules[-1]['seconds']:.2f} s before the first image, "
          f"{cfg.download.per_host_rps:g} requests/s and "
          f"{cfg.download.per_host_connections} connections per host; the busiest host saw {busiest} requests "
          f"in one second")
    print("all rounds (s): on " + ", ".join(f"{s:.2f}" for s in runs["on"]) + "; off "
          + ", ".join(f"{s:.2f}" for s in runs["off"]))
    print(f"politeness cost: {100 * (on - off_s) / off_s:+.1f}% (target at most +10% when no host's limit binds)")


def _most_in_a_second(log) -> dict[str, int]:
    """Per host, the most requests that arrived within one second."""
    by_host: dict[str, list[float]] = {}
    for t, host, _, _ in log:
        by_host.setdefault(host, []).append(t)
    out = {}
    for host, times in by_host.items():
        times.sort()
        most, j = 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - 1.0:
                j += 1
            most = max(most, i - j + 1)
        out[host] = most
    return out


if __name__ == "__main__":
    main()
