"""URL extraction: Spark over WAT files into uid-deduplicated URL partitions.

Incremental: the crawl's WAT manifest records which files were processed, and
only new ones are read. A file that cannot be read (missing, a failed S3 read)
is recorded unprocessed with its error, and the next run tries it again. New pairs are deduplicated on uid within the batch and
against every URL already extracted under the storage root, then written as
``urls/part-{batch:04d}-{n:05d}.parquet``, one download task each. Storage goes
through fsspec on the executors, so the same code writes local paths and S3.

Commit order: URL parts, then the manifest (the commit point), then the batch
report. Parts of a batch the manifest does not list are leftovers of a failed
attempt and are removed before a new batch starts.
"""

from __future__ import annotations

import itertools
import logging
import math
import posixpath
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import PlatformConfig
from .layout import CrawlLayout
from .schema import URLS_SCHEMA, WAT_MANIFEST_SCHEMA
from .stats import StageStats
from .wat import LinkRules, WatReadError, parse_wat_file, read_wat_listing

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STAGE = "extract_urls"
_COLUMNS = URLS_SCHEMA.names


def resolve_inputs(inputs: Iterable[str]) -> list[str]:
    """WAT paths from a mix of WAT files and ``*.paths(.gz)`` listings.

    A listing's relative lines are resolved against the listing's crawl root
    (the folder holding ``crawl-data/``), as Common Crawl's are.
    """
    paths: list[str] = []
    for item in inputs:
        if item.endswith((".paths", ".paths.gz")):
            root = item.split("/crawl-data/")[0] if "/crawl-data/" in item else posixpath.dirname(item)
            paths.extend(p if "://" in p or p.startswith("/") else storage.join(root, p)
                         for p in read_wat_listing(item))
        else:
            paths.append(item)
    return list(dict.fromkeys(paths))


def read_manifest(crawl: CrawlLayout) -> pa.Table:
    if not storage.exists(crawl.wat_manifest):
        return WAT_MANIFEST_SCHEMA.empty_table()
    with storage.open_file(crawl.wat_manifest) as f:
        return pq.read_table(f, schema=WAT_MANIFEST_SCHEMA)


def _write_table(url: str, table: pa.Table) -> None:
    with storage.atomic_write(url) as f:
        pq.write_table(table, f)


# Links dropped by the rules are not errors; everything else skipped is.
_RULE_SKIPS = {"skipped:no_alt", "skipped:not_http_url", "skipped:url_too_long", "skipped:text_too_long"}


def _errors(counters: dict) -> int:
    return sum(n for k, n in counters.items() if k.startswith("skipped:") and k not in _RULE_SKIPS)


def _known_uid_files(root: str) -> list[str]:
    return storage.ls(storage.join(root, "crawls"), "*/urls/part-*.parquet")


# A uid that some earlier batch or crawl already holds travels through the
# shuffle as this marker, so that one shuffle both deduplicates and anti-joins.
_KNOWN = None


def _parse(path: str, rules: LinkRules) -> tuple[list[tuple], dict]:
    try:
        rows, counters = parse_wat_file(path, rules)
    except WatReadError as exc:
        return [], {"unreadable_wat_files": 1, "error": str(exc)}
    return [(r["uid"], (r["url"], r["text"], r["page_url"], r["wat_path"])) for r in rows], dict(counters)


def _known_uids(path: str) -> Iterator[tuple[str, None]]:
    with storage.open_file(path) as f:
        for uid in pq.read_table(f, columns=["uid"])["uid"].to_pylist():
            yield uid, _KNOWN


def _partition_of(uid: str) -> int:
    return zlib.crc32(uid.encode())  # stable across Python processes, unlike hash()


def _writer(urls_dir: str, batch: int):
    """Write one shuffle partition (sorted by uid) as a URL part; returns its counts."""

    def write(index: int, items: Iterator[tuple[str, tuple | None]]) -> Iterator[dict]:
        columns: dict[str, list] = {c: [] for c in _COLUMNS}
        duplicates = known = 0
        for uid, group in itertools.groupby(items, key=lambda kv: kv[0]):
            values = [v for _, v in group]
            rows = [v for v in values if v is not _KNOWN]
            if len(rows) < len(values):
                known += len(rows)
                continue
            url, text, page_url, wat_path = min(rows)  # deterministic choice among repeats
            duplicates += len(rows) - 1
            for column, value in zip(_COLUMNS, (uid, url, text, page_url, wat_path)):
                columns[column].append(value)
        n = len(columns["uid"])
        path = storage.join(urls_dir, f"part-{batch:04d}-{index:05d}.parquet")
        if n:
            _write_table(path, pa.table(columns, schema=URLS_SCHEMA))
        yield {"path": path if n else None, "rows": n, "duplicates": duplicates, "known": known}

    return write


def extract_urls(spark: "SparkSession", wat_paths: list[str], crawl: CrawlLayout, config: PlatformConfig) -> dict:
    """Process the WAT files not yet in the manifest; returns the batch report."""
    from pyspark import StorageLevel

    start = time.monotonic()
    manifest = read_manifest(crawl)
    done = {p for p, ok in zip(manifest["wat_path"].to_pylist(), manifest["processed"].to_pylist()) if ok}
    batches = manifest["batch"].to_pylist()
    batch = max(batches, default=-1) + 1
    # leftovers of an attempt that never reached its manifest commit
    for part in storage.ls(crawl.urls, "part-*.parquet"):
        if int(part.rsplit("/", 1)[-1].split("-")[1]) >= batch:
            storage.remove(part)
    todo = [p for p in wat_paths if p not in done]
    stats = StageStats(STAGE)
    stats.add("wat_files_already_processed", len(wat_paths) - len(todo))
    if config.extract.max_wat_files and len(todo) > config.extract.max_wat_files:
        stats.add("wat_files_left_for_later", len(todo) - config.extract.max_wat_files)
        todo = todo[: config.extract.max_wat_files]
    if not todo:
        log.info("crawl %s: all %d WAT files already processed", crawl.crawl_id, len(wat_paths))
        return {"batch": None, "partitions": [], "stats": stats.to_dict(), "unreadable": []}

    rules = LinkRules(config.extract.max_url_length, config.extract.max_text_length)
    sc = spark.sparkContext
    parsed = sc.parallelize(todo, len(todo)).map(lambda p: (p, *_parse(p, rules)))
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    per_file = parsed.map(lambda x: (x[0], x[2])).collect()
    unreadable = [{"wat_path": p, "error": c["error"]} for p, c in per_file if "error" in c]
    for item in unreadable:
        log.warning("%s; it stays unprocessed and the next run tries it again", item["error"])
    counters: Counter = Counter()
    for _, c in per_file:
        counters.update({k: v for k, v in c.items() if k != "error"})

    pairs = parsed.flatMap(lambda x: x[1])
    known_files = _known_uid_files(crawl.root)
    if known_files:
        pairs = pairs.union(sc.parallelize(known_files, len(known_files)).flatMap(_known_uids))
    # Partitions sized on the pairs found, an upper bound of what gets written.
    n_parts = max(1, math.ceil(counters["pairs"] / config.extract.urls_per_partition))
    results = (
        pairs.repartitionAndSortWithinPartitions(n_parts, partitionFunc=_partition_of)
        .mapPartitionsWithIndex(_writer(crawl.urls, batch))
        .collect()
    )
    parsed.unpersist()

    written = sorted((r["path"], r["rows"]) for r in results if r["rows"])
    stats.counters.update(counters)
    stats.add("wat_files_processed", len(todo) - len(unreadable))
    # every pair found is accounted for: written, repeated in this batch, or known before
    stats.add("urls_written", sum(r["rows"] for r in results))
    stats.add("duplicates_in_batch", sum(r["duplicates"] for r in results))
    stats.add("already_known", sum(r["known"] for r in results))
    stats.seconds = time.monotonic() - start
    stats.outputs = [p for p, _ in written]

    new_rows = pa.table(
        {
            "wat_path": [p for p, _ in per_file],
            "batch": pa.array([batch] * len(per_file), pa.int32()),
            "processed": ["error" not in c for _, c in per_file],
            "records": [c.get("records", 0) for _, c in per_file],
            "pairs": [c.get("pairs", 0) for _, c in per_file],
            "errors": [_errors(c) for _, c in per_file],
            "error": [c.get("error") for _, c in per_file],
        },
        schema=WAT_MANIFEST_SCHEMA,
    )
    _write_table(crawl.wat_manifest, pa.concat_tables([manifest, new_rows]))
    report = {
        "batch": batch,
        "partitions": [{"path": p, "rows": n} for p, n in sorted(written)],
        "stats": stats.to_dict(),
        "unreadable": unreadable,
    }
    log.info("crawl %s batch %d: %s", crawl.crawl_id, batch, stats.to_dict()["counters"])
    return report


def local_spark(master: str = "local[*]", app_name: str = "datacomp") -> "SparkSession":
    """A Spark session for running the stage without spark-submit (CLI, tests)."""
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )


def run_extract_urls(inputs: list[str], crawl: CrawlLayout, config: PlatformConfig,
                     report: str | None = None, spark: "SparkSession | None" = None) -> dict:
    """Stage entry point: WAT files or listings in, URL partitions and a batch report out.

    With `report` set, a committed report makes the call a no-op (a retried
    task after success), and the new report is written there.
    """
    if report and storage.exists(report):
        log.info("report %s exists: extraction already committed", report)
        return storage.read_json(report)
    storage.check_writable(crawl.base)
    wat_paths = resolve_inputs(inputs)
    if not wat_paths:
        raise ValueError(f"no WAT files found in {inputs}")
    own = spark is None
    spark = spark or local_spark(config.extract.spark_master)
    try:
        result = extract_urls(spark, wat_paths, crawl, config)
    finally:
        if own:
            spark.stop()
    if report:
        storage.write_json(report, result)
    return result
