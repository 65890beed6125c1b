"""A crawl's manifest of source files (WAT files, or an import's files): what each read gave, what to read next.

A file is *processed* when it was read to its end. One that was empty, cut
short, not WARC at all, unusable, or could not be read stays *pending* with its
reason, and every later run reads it again, up to ``extract.max_read_attempts``
reads; then it is *given up* (a final status, counted in the build's summary).
What was read is remembered: the file's size and fingerprint (the store's ETag,
or the local file's mtime), so a file that changes after it was processed or
given up (re-downloaded, repaired) is read again; the uid dedup against every
URL already extracted keeps a re-read from adding a pair twice.

The manifest is append-only (``crawls/{crawl}/wat_manifest.parquet``): one row
per read of a file; a file's state is its last row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import storage
from ..core.layout import CrawlLayout
from ..core.schema import WAT_MANIFEST_SCHEMA

PROCESSED = "processed"
GAVE_UP = "gave_up"
# why a file is not processed yet; each is read again by the next run
PENDING = ("unreadable", "empty", "not_warc", "corrupt", "truncated")


def read_manifest(crawl: CrawlLayout) -> pa.Table:
    """The crawl's manifest; a manifest written before files had a status gets one from `processed`."""
    if not storage.exists(crawl.wat_manifest):
        return WAT_MANIFEST_SCHEMA.empty_table()
    with storage.open_file(crawl.wat_manifest) as f:
        table = pq.read_table(f)
    n = table.num_rows
    defaults = {
        "status": pa.array([PROCESSED if ok else "unreadable" for ok in table["processed"].to_pylist()]),
        "attempt": pa.array([1] * n, pa.int32()),
    }
    columns = [table[f.name] if f.name in table.column_names else defaults.get(f.name, pa.nulls(n, f.type))
               for f in WAT_MANIFEST_SCHEMA]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, WAT_MANIFEST_SCHEMA)],
                                schema=WAT_MANIFEST_SCHEMA)


def write_manifest(crawl: CrawlLayout, manifest: pa.Table, new_rows: pa.Table) -> None:
    with storage.atomic_write(crawl.wat_manifest) as f:
        pq.write_table(pa.concat_tables([manifest, new_rows]), f)


def current(manifest: pa.Table) -> dict[str, dict]:
    """Each file's last row."""
    return {row["wat_path"]: row for row in manifest.to_pylist()}


@dataclass
class ReadPlan:
    """Which of a run's files to read, and why the others are not read."""

    todo: list[str]
    reads_before: dict[str, int] = field(default_factory=dict)  # pending files: reads so far
    already_processed: int = 0
    changed: int = 0  # processed or given up before, changed since: read again
    given_up: int = 0  # given up before and unchanged


def plan_reads(manifest: pa.Table, paths: list[str]) -> ReadPlan:
    state = current(manifest)
    finished = [p for p in paths if p in state and state[p]["status"] in (PROCESSED, GAVE_UP)]
    now = storage.fingerprints(finished) if finished else {}
    plan = ReadPlan([])
    for path in paths:
        row = state.get(path)
        if row is None:
            plan.todo.append(path)
        elif row["status"] not in (PROCESSED, GAVE_UP):
            plan.todo.append(path)
            plan.reads_before[path] = row["attempt"] or 1
        elif row["fingerprint"] and now.get(path) and now[path] != row["fingerprint"]:
            plan.todo.append(path)
            plan.changed += 1
        elif row["status"] == PROCESSED:
            plan.already_processed += 1
        else:
            plan.given_up += 1
    return plan


@dataclass
class FileRead:
    """What one read of a file gave."""

    path: str
    status: str  # PROCESSED or one of PENDING
    records: int = 0
    pairs: int = 0
    errors: int = 0
    error: str | None = None
    size: int | None = None
    fingerprint: str | None = None


def new_rows(reads: list[FileRead], batch: int, plan: ReadPlan, max_attempts: int) -> pa.Table:
    """The manifest rows of this batch's reads: a pending file read `max_attempts` times is given up."""
    rows = []
    for read in reads:
        attempt = plan.reads_before.get(read.path, 0) + 1
        status, error = read.status, read.error
        if status != PROCESSED and attempt >= max_attempts:
            error = f"{status}: {error}; given up after {attempt} reads (extract.max_read_attempts)"
            status = GAVE_UP
        rows.append({"wat_path": read.path, "batch": batch, "processed": status == PROCESSED, "records": read.records,
                     "pairs": read.pairs, "errors": read.errors, "error": error, "status": status,
                     "attempt": attempt, "size": read.size, "fingerprint": read.fingerprint})
    return pa.Table.from_pylist(rows, schema=WAT_MANIFEST_SCHEMA)


def not_read_whole(rows: pa.Table) -> list[dict]:
    """The report's entries for this batch's files that were not processed, with their reasons."""
    return [{"wat_path": r["wat_path"], "status": r["status"], "error": r["error"], "attempt": r["attempt"],
             "final": r["status"] == GAVE_UP} for r in rows.to_pylist() if r["status"] != PROCESSED]


def state_counts(crawl: CrawlLayout) -> dict[str, int]:
    """How many of the crawl's files are in each state now (processed, each pending reason, gave_up)."""
    counts: dict[str, int] = {}
    for row in current(read_manifest(crawl)).values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))
