"""URL extraction: Spark over WAT files into uid-deduplicated URL partitions.

Incremental: the crawl's WAT manifest (source_files.py) records what each read
of a file gave, and only new files, pending ones (unreadable, empty, cut short,
not WARC) and changed ones are read. One bad file or record never stops the
batch: a record is a counted skip, a file a pending entry with its reason. New
pairs are deduplicated on uid within the batch and against every URL already
extracted under the storage root, then written as
``urls/part-{batch:04d}-{partition:05d}-{n:04d}.parquet`` of at most
``extract.urls_per_partition`` rows, one download task each. Storage goes
through fsspec on the executors, so the same code writes local paths and S3.

Commit order: URL parts, then the manifest (the commit point), then the batch
report. Parts of a batch the manifest does not list are leftovers of a failed
attempt and are removed before a new batch starts.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import time
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import storage
from ..core.config import PlatformConfig
from ..core.layout import CrawlLayout, crawls_dir
from ..core.schema import URLS_SCHEMA
from ..core.stats import Counters, StageStats
from .source_files import PROCESSED, FileRead, new_rows, not_read_whole, plan_reads, read_manifest, write_manifest
from .wat import LinkRules, WatReadError, file_status, parse_wat_file, read_wat_listing

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STAGE = "extract_urls"
# What the extraction counts: the WAT records and links it read (crawl/wat.py), the files it took, and
# the pairs it wrote; an import's scan (pool/byod.py) counts the same of its source files.
COUNTERS = Counters.of(STAGE, (
    "records", "records_with_html", "records_without_html", "image_links", "pairs", "truncated_at_end",
    "wat_files_already_processed", "wat_files_changed_read_again", "wat_files_given_up_before",
    "wat_files_left_for_later", "wat_files_processed", "wat_files_given_up",
    "files_already_imported", "files_changed_read_again", "files_processed", "unreadable_files", "truncated_files",
    "urls_written", "duplicates_in_batch", "already_known"), prefixes=("skipped:", "wat_files_pending:"))
_COLUMNS = URLS_SCHEMA.names


def resolve_inputs(inputs: Iterable[str]) -> list[str]:
    """WAT paths from a mix of WAT files and ``*.paths(.gz)`` listings.

    A listing's lines are relative paths, resolved against the listing's crawl
    root (the folder holding ``crawl-data/``), as Common Crawl's are; a line
    that would leave that root (absolute, a URL, or climbing out with ``..``)
    is refused with the listing and the line named.
    """
    paths: list[str] = []
    for item in inputs:
        if item.endswith((".paths", ".paths.gz")):
            root = item.split("/crawl-data/")[0] if "/crawl-data/" in item else posixpath.dirname(item)
            for number, line in enumerate(read_wat_listing(item), 1):
                relative = posixpath.normpath(line)
                if "://" in line or line.startswith("/") or relative == ".." or relative.startswith("../"):
                    raise ValueError(f"{item}, line {number}: {line!r} leaves the listing's source {root}; "
                                     f"a listing holds paths relative to it")
                paths.append(storage.join(root, relative))
        else:
            paths.append(item)
    return list(dict.fromkeys(paths))


def _write_table(url: str, table: pa.Table) -> None:
    with storage.atomic_write(url) as f:
        pq.write_table(table, f)


# Links dropped by the rules are not errors; everything else skipped is.
_RULE_SKIPS = {"skipped:no_alt", "skipped:not_http_url", "skipped:url_too_long", "skipped:text_too_long"}


# what a parse task's summary says of its file beside the counters
_FILE_KEYS = ("status", "error", "size", "fingerprint")


def _errors(counters: dict) -> int:
    return sum(n for k, n in counters.items() if k.startswith("skipped:") and k not in _RULE_SKIPS)


def _known_uid_files(root: str) -> list[str]:
    return storage.ls(crawls_dir(root), "*/urls/part-*.parquet")


# What the parsing tasks hand the JVM: the pairs, with their WAT file as its index in the batch's
# list (the path is a third of a row's bytes, and the writer puts it back), and one row per WAT file
# with its counters as JSON (uid null), so that one parse gives both and the counts are exact
# however tasks are retried.
_PARSED = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("page_url", pa.string()),
                     ("file", pa.int32()), ("counters", pa.string())])
_PARSED_DDL = "uid string, url string, text string, page_url string, file int, counters string"
_WRITTEN = "path string, rows long, pairs long, file int, counters string"


def _per_path(spark: "SparkSession", paths: list[str], fn, schema: str, tasks: int | None = None):
    """A DataFrame of what `fn(index, path)` yields (Arrow batches) over `paths`, `tasks` tasks (default:
    one per path). The paths travel in the function's closure and the tasks are a range, so no Python
    RDD is deserialised in between."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for i in batch.column(0).to_pylist():
                yield from fn(i, paths[i])

    return spark.range(len(paths), numPartitions=tasks or len(paths)).mapInArrow(run, schema)


def parsed_pairs(spark: "SparkSession", wat_paths: list[str], rules: LinkRules):
    """The pairs of every WAT file, a task per file (mapInArrow), plus one counters row per file (uid null)."""
    return _per_path(spark, wat_paths, _parser(rules), _PARSED_DDL)


def _parser(rules: LinkRules):
    def parse(index: int, path: str) -> Iterator[pa.RecordBatch]:
        table, summary = URLS_SCHEMA.empty_table(), {}
        try:
            summary["size"], summary["fingerprint"] = storage.fingerprint(path)
            table, counters = parse_wat_file(path, rules)
            summary |= dict(counters) | {"status": file_status(counters)}
        except WatReadError as exc:
            summary |= {"status": exc.status, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the store's own errors (botocore, aiohttp...): read again later
            summary |= {"status": "unreadable", "error": f"cannot read WAT file {path}: {type(exc).__name__}: {exc}"}
        if summary["status"] == "truncated":
            summary["error"] = f"WAT file {path} ends inside a gzip member: cut short (its pairs so far are kept)"
        elif summary["status"] == "corrupt" and "error" not in summary:
            summary["error"] = f"WAT file {path}: no gzip member of it decompresses to a WARC record"
        n = table.num_rows
        columns = [table[name] for name in ("uid", "url", "text", "page_url")]
        columns += [pa.repeat(pa.scalar(index, pa.int32()), n), pa.nulls(n, pa.string())]
        yield from pa.table(columns, schema=_PARSED).to_batches()
        yield pa.record_batch([pa.nulls(1, pa.string())] * 4 + [pa.array([index], pa.int32()),
                                                                pa.array([json.dumps(summary)])], schema=_PARSED)

    return parse


def _uid_reader(_: int, path: str) -> Iterator[pa.RecordBatch]:
    """The uid column of a URL part, read on an executor through fsspec (S3 included)."""
    with storage.open_file(path) as f:
        yield from pq.read_table(f, columns=["uid"]).cast(pa.schema([("uid", pa.string())])).to_batches()


def _writer(urls_dir: str, batch: int, rows_per_part: int, wat_paths: list[str]):
    """Write one shuffle partition as URL parts of at most `rows_per_part` rows, sorted by uid, the
    smallest row of each uid kept (so that a rerun writes the same parts); yields the counts of each
    part and the counters of the WAT files whose summary rows this partition holds."""
    from pyspark import TaskContext

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = TaskContext.get().partitionId()
        table = pa.Table.from_batches([b for b in batches if b.num_rows], schema=_PARSED)
        # one sort, one copy: pairs by (uid, url, text, page_url, file), the summary rows (uid null) last
        order = pc.sort_indices(table, [(name, "ascending") for name in ("uid", "url", "text", "page_url", "file")])
        n_pairs = table.num_rows - table["uid"].null_count
        summaries = table.take(order[n_pairs:])
        if summaries.num_rows:
            yield pa.record_batch({"path": pa.nulls(summaries.num_rows, pa.string()),
                                   "rows": pa.nulls(summaries.num_rows, pa.int64()),
                                   "pairs": pa.nulls(summaries.num_rows, pa.int64()),
                                   "file": summaries["file"].combine_chunks(),
                                   "counters": summaries["counters"].combine_chunks()})
        if not n_pairs:
            return
        order = order[:n_pairs]
        uids = table["uid"].take(order).combine_chunks()
        first = pc.not_equal(uids[1:], uids[:-1])  # the first row of each run of one uid
        unique = table.take(order.filter(pa.concat_arrays([pa.array([True]), first])))
        unique = pa.table([unique["uid"], unique["url"], unique["text"], unique["page_url"],
                           paths.take(unique["file"])], schema=URLS_SCHEMA)
        n_parts = math.ceil(unique.num_rows / rows_per_part)
        size = math.ceil(unique.num_rows / n_parts)
        for chunk in range(n_parts):
            part = unique.slice(chunk * size, size)
            path = storage.join(urls_dir, f"part-{batch:04d}-{index:05d}-{chunk:04d}.parquet")
            _write_table(path, part)
            # the pairs of this partition are counted with its first part
            yield pa.record_batch({"path": [path], "rows": [part.num_rows], "pairs": [n_pairs if chunk == 0 else 0],
                                   "file": pa.nulls(1, pa.int32()), "counters": pa.nulls(1, pa.string())})

    paths = pa.array(wat_paths)
    return write


def extract_urls(spark: "SparkSession", wat_paths: list[str], crawl: CrawlLayout, config: PlatformConfig) -> dict:
    """Process the WAT files not yet in the manifest; returns the batch report.

    One Spark job: Python parses, a task per WAT file, and hands Arrow batches to the JVM; the
    shuffle on uid and the anti-join against every uid extracted before run there (the known uids
    are read by the executors, never by the driver); a writer per shuffle partition drops the
    repeats of a uid (Arrow) and writes URL parts. Only counts reach the driver.
    """

    start = time.monotonic()
    manifest = read_manifest(crawl)
    batch = max(manifest["batch"].to_pylist(), default=-1) + 1
    # leftovers of an attempt that never reached its manifest commit
    for part in storage.ls(crawl.urls, "part-*.parquet"):
        if int(part.rsplit("/", 1)[-1].split("-")[1]) >= batch:
            storage.remove(part)
    plan = plan_reads(manifest, wat_paths)
    todo = plan.todo
    stats = StageStats(STAGE)
    stats.add("wat_files_already_processed", plan.already_processed)
    stats.add("wat_files_changed_read_again", plan.changed)
    stats.add("wat_files_given_up_before", plan.given_up)
    if config.extract.max_wat_files and len(todo) > config.extract.max_wat_files:
        stats.add("wat_files_left_for_later", len(todo) - config.extract.max_wat_files)
        todo = todo[: config.extract.max_wat_files]
    if not todo:
        log.info("crawl %s: all %d WAT files already processed", crawl.crawl_id, len(wat_paths))
        return {"batch": None, "partitions": [], "stats": stats.to_dict(), "unreadable": []}

    rules = LinkRules(config.extract.max_url_length, config.extract.max_text_length)
    parallelism = spark.sparkContext.defaultParallelism
    known_files = _known_uid_files(crawl.root)
    # A shuffle partition per WAT file, so a writer holds about one file's pairs whatever the crawl's
    # size, and per 16 known URL parts, so a partition's share of the known uids stays a few hundred
    # thousand however many crawls came before.
    n_partitions = max(len(todo), math.ceil(len(known_files) / 16))
    pairs = parsed_pairs(spark, todo, rules).repartition(n_partitions, "uid")
    if known_files:
        known = _per_path(spark, known_files, _uid_reader, "uid string", min(len(known_files), 4 * parallelism))
        # a hash join on the partitions the shuffle made: the writer sorts, so no sort is needed here
        pairs = pairs.join(known.hint("shuffle_hash"), "uid", "left_anti")
    results = [r.asDict() for r in
               pairs.mapInArrow(_writer(crawl.urls, batch, config.extract.urls_per_partition, todo), _WRITTEN).collect()]
    per_file = [(todo[r["file"]], json.loads(r["counters"]))
                for r in sorted((r for r in results if r["counters"] is not None), key=lambda r: r["file"])]
    results = [r for r in results if r["path"] is not None]
    counters: Counter = Counter()
    for _, c in per_file:
        counters.update({k: v for k, v in c.items() if k not in _FILE_KEYS})

    written = sorted((r["path"], r["rows"]) for r in results if r["rows"])
    stats.counters.update(counters)
    reads = [FileRead(p, c["status"], c.get("records", 0), c.get("pairs", 0), _errors(c), c.get("error"),
                      c.get("size"), c.get("fingerprint")) for p, c in per_file]
    rows = new_rows(reads, batch, plan, config.extract.max_read_attempts)
    not_whole = not_read_whole(rows)
    for item in not_whole:
        log.warning("%s; %s", item["error"], "given up" if item["final"] else
                    f"read {item['attempt']} of {config.extract.max_read_attempts} times, the next run reads it again")
    stats.add("wat_files_processed", sum(1 for r in reads if r.status == PROCESSED))
    for item in not_whole:
        stats.add("wat_files_given_up" if item["final"] else f"wat_files_pending:{item['status']}")
    # every pair found is accounted for: written, repeated in this batch, or known before
    new_pairs = sum(r["pairs"] for r in results)
    stats.add("urls_written", sum(r["rows"] for r in results))
    stats.add("duplicates_in_batch", new_pairs - stats.counters["urls_written"])
    stats.add("already_known", counters["pairs"] - new_pairs)
    stats.seconds = time.monotonic() - start
    stats.outputs = [p for p, _ in written]

    write_manifest(crawl, manifest, rows)
    report = {
        "batch": batch,
        "partitions": [{"path": p, "rows": n} for p, n in sorted(written)],
        "stats": stats.to_dict(),
        "unreadable": not_whole,
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
                     report: str | None = None, spark: "SparkSession | None" = None) -> StageStats:
    """Stage entry point: WAT files or listings in, URL partitions out (the stats' outputs).

    With `report` set, the batch report (partitions with their rows, WAT files
    not read whole) is written there, and a committed report makes the call a
    no-op that returns its stats (a retried task after success).
    """
    if report and storage.exists(report):
        log.info("report %s exists: extraction already committed", report)
        return StageStats.from_dict(storage.read_json(report)["stats"])
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
    return StageStats.from_dict(result["stats"])
