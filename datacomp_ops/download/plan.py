"""What a build run downloads: new URL parts, URLs to try again, and as much as its scale needs.

A run's download tasks cover, over every crawl under the storage root:

- URL parts no pool version has downloaded yet (this run's extraction, and
  parts a failed earlier run left behind);
- URLs whose current status is transient (timeout, network error, HTTP
  429/5xx, truncated) with fewer than ``download.max_attempts`` attempts, and
  URLs an earlier scale-limited build deferred. They are written as requeue
  parts of the run's pool version, with their next attempt number.

A build for one scale downloads only the URLs whose scale key (the key that
picks the per-scale pools, see publish.py) lies below a limit: the fraction of
the key range that holds as many URLs as the scale needs at the kept fraction
seen so far, times a margin. The pool of that scale is then exactly the one a
full build would pick; the URLs above the limit are recorded as deferred.
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage, versions
from ..core.config import PlatformConfig
from ..core.layout import CrawlLayout, PoolLayout, crawls_dir, is_name, partition_name
from ..core.schema import in_subset, read_subset, uid_strings_to_array
from ..crawl.source_files import read_manifest
from .partition import Partition, committed_markers, key_fraction, next_free_shard, plan_partitions

log = logging.getLogger(__name__)

# below this many decided URLs, the kept fraction is the config's guess
_MIN_FOR_YIELD = 100


def _rows(path: str) -> int:
    with storage.open_file(path) as f:
        return pq.read_metadata(f).num_rows


def url_parts(root: str) -> list[str]:
    """The URL parts of every crawl under `root` whose extraction batch committed."""
    out = []
    for base in storage.ls(crawls_dir(root), "*"):
        name = posixpath.basename(base.rstrip("/"))
        if not is_name(name):  # a stray file beside the crawls (.DS_Store), never a crawl of ours
            continue
        crawl = CrawlLayout(root, name)
        batches = set(read_manifest(crawl)["batch"].to_pylist())
        out += [p for p in storage.ls(crawl.urls, "part-*.parquet")
                if int(p.rsplit("/", 1)[-1].split("-")[1]) in batches]
    return out


def staged_names(root: str) -> set[str]:
    """Parts of imported webdataset shards (byod.py): their URL part is written by the import, never downloaded."""
    return {partition_name(p) for p in storage.ls(crawls_dir(root), "*/staging/part-*.parquet")}


def committed_names(root: str) -> set[str]:
    return {m.rstrip("/").rsplit("/", 1)[-1] for m in committed_markers(root)}


def current_statuses(pool: PoolLayout) -> tuple[pa.Table, dict[str, int]]:
    """(one row per URL with its current status, download attempts per uid) over `pool`'s chain."""
    history = ledger.history(*versions.ledger_dirs(pool.root, pool.version))
    return ledger.latest(history), ledger.attempts(history)


def scale_key_limit(config: PlatformConfig, total_urls: int, current: pa.Table) -> float:
    """The fraction of the scale-key range this run's scale needs; 1.0 is everything."""
    from ..core.config import pool_sizes

    if total_urls == 0:
        return 1.0
    needed = pool_sizes(config)[config.scale]
    counts = ledger.counts(current) if current.num_rows else {}
    undecided = set(ledger.TRANSIENT_FAILURES) | set(ledger.WAITING) | {"downloaded"}
    decided = sum(n for s, n in counts.items() if s not in undecided)
    kept_fraction = counts.get("kept", 0) / decided if decided >= _MIN_FOR_YIELD else config.publish.expected_yield
    limit = config.publish.scale_margin * needed / (max(kept_fraction, 1e-3) * total_urls)
    return min(1.0, limit)


def _retriable(current: pa.Table, attempts: dict[str, int], config: PlatformConfig, limit: float,
               only: str = "") -> pa.Table:
    if current.num_rows == 0:
        return current
    status = current["status"]
    transient = pc.is_in(status, pa.array(ledger.TRANSIENT_FAILURES))
    tries = pa.array([attempts.get(u, 0) for u in current["uid"].to_pylist()], pa.int32())
    again = pc.or_(pc.and_(transient, pc.less(tries, config.download.max_attempts)),
                   pc.is_in(status, pa.array(ledger.WAITING)))
    candidates = current.filter(again)
    if limit < 1.0 and candidates.num_rows:
        candidates = candidates.filter(pa.array(key_fraction(candidates["uid"]) < limit))
    if only and candidates.num_rows:  # a download limited to chosen subsets: the others stay deferred
        candidates = candidates.filter(pa.array(in_subset(uid_strings_to_array(candidates["uid"]), read_subset(only))))
    return candidates


def write_requeue(pool: PoolLayout, config: PlatformConfig, limit: float, current: pa.Table,
                  attempts: dict[str, int], done: set[str], only: str = "") -> list[str]:
    """Requeue parts of `pool` for the URLs to try again; the uncommitted ones of an earlier try are replaced.

    `current` and `attempts` are `current_statuses(pool)`, `done` the committed partition names; `only` a
    subset file the download is limited to. A requeued row keeps every column of its URL part (a published
    pool's face boxes and sha256 too).
    """
    requeue_dir = pool.requeue
    existing = storage.ls(requeue_dir, "part-*.parquet")
    for path in existing:
        if partition_name(path) not in done:
            storage.remove(path)
    todo = _retriable(current, attempts, config, limit, only)
    if not todo.num_rows:
        return []
    by_source: dict[str, set[str]] = defaultdict(set)
    for uid, source in zip(todo["uid"].to_pylist(), todo["source"].to_pylist()):
        if not source:
            raise ledger.LedgerError(f"ledger row of {uid} names no source URL part; it cannot be downloaded again")
        by_source[source].add(uid)
    tables = []
    for source, uids in sorted(by_source.items()):
        with storage.open_file(source) as f:
            table = pq.read_table(f)
        table = table.filter(pc.is_in(table["uid"], pa.array(sorted(uids))))
        if "attempt" in table.column_names:  # a requeue part's row: its attempt is counted again below
            table = table.drop_columns(["attempt"])
        next_attempt = pa.array([attempts.get(u, 0) + 1 for u in table["uid"].to_pylist()], pa.int32())
        tables.append(table.append_column("attempt", next_attempt))
    rows = pa.concat_tables(tables, promote_options="default").sort_by("uid")
    used = [int(p.rsplit("-", 1)[-1].split(".")[0]) for p in existing if partition_name(p) in done]
    first = max(used, default=-1) + 1
    size = config.extract.urls_per_partition
    paths = []
    for k, start in enumerate(range(0, rows.num_rows, size)):
        path = storage.join(requeue_dir, f"part-{first + k:05d}.parquet")
        with storage.atomic_write(path) as f:
            pq.write_table(rows.slice(start, size), f)
        paths.append(path)
    counts = ledger.counts(current.filter(pc.is_in(current["uid"], rows["uid"])))
    log.info("pool %s: %d URLs to download again (%s)", pool.version, rows.num_rows, counts)
    return paths


def plan_download(pool: PoolLayout, config: PlatformConfig, only: str = "", by_scale: bool = True) -> list[Partition]:
    """The partitions this run downloads, each with its own range of shard ids and the scale's key limit
    (`by_scale` false: none, as a published pool is its scale already), and `only`, a subset file the
    download is limited to."""
    current, attempts = current_statuses(pool)
    rows = {p: _rows(p) for p in url_parts(pool.root)}
    limit = scale_key_limit(config, sum(rows.values()), current) if by_scale else 1.0
    if limit < 1.0:
        log.info("scale %s needs the URLs below %.4g of the scale-key range", config.scale, limit)
    done = committed_names(pool.root) | staged_names(pool.root)
    todo = [{"path": p, "rows": n} for p, n in rows.items() if partition_name(p) not in done]
    todo += [{"path": p, "rows": _rows(p)} for p in write_requeue(pool, config, limit, current, attempts, done, only)]
    plan = plan_partitions(todo, next_free_shard(pool), config.download.number_sample_per_shard)
    return [Partition(p.path, p.rows, p.first_shard, limit, only) for p in plan]


def lineage_accounts(pool: PoolLayout) -> dict:
    """Every URL ever extracted under the root against its current status in `pool`'s chain."""
    rows = {p: _rows(p) for p in url_parts(pool.root)}
    done = committed_names(pool.root)
    current, attempts = current_statuses(pool)
    return {"urls": sum(rows.values()), "with_status": current.num_rows,
            "pending": sum(n for p, n in rows.items() if partition_name(p) not in done),
            "statuses": ledger.counts(current) if current.num_rows else {}, "current": current,
            "attempts": attempts}
