"""URL extraction throughput, against cc2dataset's extractor in one process on the same files.

    python benchmarks/bench_extract.py [--urls 200000] [--master local[*]]

Prints WAT records per second and pairs per second for
  reference  cc2dataset's extract_documents_from_wat: fastwarc over each gzip file, simdjson,
             IMG@/src links with alt, urljoin for links not absolute, md5 uids
             (the crawl has no broken gzip members here: fastwarc alone stops at the first one);
  parser     datacomp_ops.wat.parse_wat_file in one process (member splitting, counters, uid);
  spark      the whole stage: Spark local, parse, uid dedup, partitioned parquet, manifest;
and the ratios parser/reference and spark/reference.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
from urllib.parse import urljoin

import simdjson
from fastwarc.warc import ArchiveIterator, WarcRecordType

from datacomp_ops.config import load_config
from datacomp_ops.extract import local_spark, run_extract_urls
from datacomp_ops.layout import CrawlLayout
from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl
from datacomp_ops.wat import parse_wat_file


def reference(paths: list[str]) -> tuple[int, int]:
    """cc2dataset's extractor (``extract_documents_from_wat``, the one DataComp's pool was built with):
    fastwarc over the gzip file, simdjson, IMG@/src links with a non-empty alt, urljoin for links that are
    not absolute, md5(alt + url) as the uid."""
    records = pairs = 0
    for path in paths:
        with open(path, "rb") as f:
            stream = io.BytesIO(f.read())
        for record in ArchiveIterator(stream, record_types=WarcRecordType.metadata, parse_http=False):
            records += 1
            try:
                data = simdjson.load(record.reader)
            except Exception:  # noqa: BLE001 - as cc2dataset: a record that fails is skipped
                continue
            payload = data["Envelope"]["Payload-Metadata"]
            if "HTTP-Response-Metadata" not in payload or "HTML-Metadata" not in payload["HTTP-Response-Metadata"]:
                continue
            metadata = payload["HTTP-Response-Metadata"]["HTML-Metadata"]
            if "Links" not in metadata:
                continue
            page = record.headers.get("WARC-Target-URI", "")
            for link in metadata["Links"]:
                if link.get("path", "") != "IMG@/src" or not link.get("alt", ""):
                    continue
                url = link.get("url", "")
                if not url.startswith("http"):
                    url = urljoin(page, url)
                    if not url.startswith("http"):
                        continue
                hashlib.md5((link["alt"] + url).encode()).hexdigest()
                pairs += 1
    return records, pairs


def ours(paths: list[str]) -> tuple[int, int]:
    records = pairs = 0
    for path in paths:
        rows, counters = parse_wat_file(path)
        records += counters["records"]
        pairs += len(rows)
    return records, pairs


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=200_000)
    parser.add_argument("--urls-per-file", type=int, default=25_000)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        summary, gen_s = timed(generate_crawl, os.path.join(tmp, "crawl"),
                               CrawlSpec(n_urls=args.urls, urls_per_file=args.urls_per_file, faults=False))
        paths = summary["wat_files"]
        size = sum(os.path.getsize(p) for p in paths) / 1e6
        print(f"crawl: {args.urls} URLs, {len(paths)} WAT files, {size:.1f} MB gzip (generated in {gen_s:.1f} s)")
        (ref_records, ref_pairs), ref_s = timed(reference, paths)
        (our_records, our_pairs), our_s = timed(ours, paths)
        config = load_config(overrides={"storage_root": os.path.join(tmp, "root"), "extract.spark_master": args.master})
        spark = local_spark(args.master, "bench-extract")
        spark.sparkContext.parallelize([0]).count()  # JVM and workers up before the clock starts
        report, spark_s = timed(run_extract_urls, paths, CrawlLayout(config.storage_root, "BENCH"), config, None, spark)
        spark.stop()
    rows = [
        ("reference (cc2dataset's extractor, 1 process)", ref_records, ref_pairs, ref_s),
        ("parser (parse_wat_file, 1 process)", our_records, our_pairs, our_s),
        (f"spark stage ({args.master}, dedup + parquet)", report["stats"]["counters"]["records"],
         report["stats"]["counters"]["pairs"], spark_s),
    ]
    print(f"{'':46} {'records/s':>10} {'pairs/s':>10} {'seconds':>8} {'vs ref':>7}")
    for name, records, pairs, seconds in rows:
        print(f"{name:46} {records / seconds:10.0f} {pairs / seconds:10.0f} {seconds:8.2f} {ref_s / seconds:6.2f}x")
    print(f"pairs: reference {ref_pairs}, parser {our_pairs}, unique after dedup {report['stats']['counters']['urls_written']}")


if __name__ == "__main__":
    main()
