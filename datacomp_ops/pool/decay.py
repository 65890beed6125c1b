"""A pool's decay: how much of what it was given it holds, what it lost and why, where, and since when.

The web forgets: of the URLs a pool was given (a published pool's uids, a crawl's image links), some
die, some change, some answer later. The report reads the ledger of a pool version's chain and the
URL parts it was given, and says, as of each version of the chain:

- ``given``: the URLs the pool was given (URL parts, and rows refused before any download);
- ``held``: those whose current status is a held one (a published pool's ``downloaded`` and
  ``hash_mismatch``; a built pool's ``kept``);
- ``pending``: not decided yet (a URL part not downloaded, a URL deferred, a transient failure that a
  later run tries again);
- ``lost``: the others, by status (``http_error``, ``hash_mismatch_dropped``, ...);
- ``domains``: the hosts that lost the most URLs, with what they lost and what they held.

``pool/{version}/reports/decay.json`` holds the report of the version; the platform page shows it.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage, versions
from ..core.layout import PoolLayout

_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"


def hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The lower-cased host of each URL ("" where there is none), without a Python loop."""
    found = pc.extract_regex(pc.fill_null(urls, ""), _HOST)
    return pc.utf8_lower(pc.fill_null(pc.struct_field(found, "host"), ""))


def given_urls(url_parts: list[str]) -> pa.Table:
    """(uid, url) of every URL part a pool was given."""
    tables = []
    for path in url_parts:
        with storage.open_file(path) as f:
            tables.append(pq.read_table(f, columns=["uid", "url"]))
    return pa.concat_tables(tables) if tables else pa.table({"uid": pa.array([], pa.string()),
                                                             "url": pa.array([], pa.string())})


def _pending_mask(table: pa.Table, held: tuple[str, ...], max_attempts: int) -> pa.Array:
    """Rows not decided yet: deferred or postponed (their host), downloaded but not through a later stage
    that decides, or failed transiently with attempts left (a later run tries them again)."""
    waiting = pc.is_in(table["status"], pa.array(list(ledger.WAITING) + ([] if "downloaded" in held else ["downloaded"])))
    transient = pc.is_in(table["status"], pa.array(list(ledger.TRANSIENT_FAILURES)))
    retried = pc.and_(transient, pc.less(pc.fill_null(table["attempt"], 0), max_attempts))
    return pc.or_(waiting, retried)


def _state(current: pa.Table, given: pa.Table, held: tuple[str, ...], max_attempts: int) -> tuple[dict, pa.Table]:
    """(counts, the lost rows) of one version: every given uid's current status, pending where it has none."""
    undecided = given.filter(pc.invert(pc.is_in(given["uid"], current["uid"]))) if current.num_rows else given
    is_held = pc.is_in(current["status"], pa.array(list(held)))
    is_pending = _pending_mask(current, held, max_attempts)
    lost_rows = current.filter(pc.invert(pc.or_(is_held, is_pending)))
    counts = {"given": current.num_rows + undecided.num_rows, "held": pc.sum(is_held).as_py() or 0,
              "pending": undecided.num_rows + (pc.sum(is_pending).as_py() or 0), "lost": lost_rows.num_rows,
              "held_by_status": ledger.counts(current.filter(is_held)) if current.num_rows else {},
              "pending_by_status": (ledger.counts(current.filter(is_pending)) if current.num_rows else {})
              | ({"not_downloaded_yet": undecided.num_rows} if undecided.num_rows else {}),
              "lost_by_status": ledger.counts(lost_rows) if lost_rows.num_rows else {}}
    return counts, lost_rows


def decay_report(pool: PoolLayout, url_parts: list[str], held: tuple[str, ...], max_attempts: int,
                 top: int = 10) -> dict:
    """The decay of `pool`'s chain up to its version: now, by domain, and as of each version before."""
    names = versions.chain(pool.root, pool.version)
    history = ledger.history([PoolLayout(pool.root, v).ledger for v in names], names)
    given = given_urls(url_parts)
    over_time = []
    for i, name in enumerate(names):
        upto = history.filter(pc.is_in(history["version"], pa.array(names[: i + 1]))) if history.num_rows else history
        counts, lost_rows = _state(ledger.latest(upto), given, held, max_attempts)
        published_at = storage.read_json(PoolLayout(pool.root, name).manifest)["published_at"] \
            if versions.is_published(pool.root, name) else None
        over_time.append({"version": name, "published_at": published_at} | counts)
    now, lost_rows = _state(ledger.latest(history), given, held, max_attempts)
    current = ledger.latest(history)
    domains = []
    if lost_rows.num_rows:
        lost_hosts = hosts(lost_rows["url"])
        held_rows = current.filter(pc.is_in(current["status"], pa.array(list(held))))
        held_by_host = Counter(hosts(held_rows["url"]).to_pylist()) if held_rows.num_rows else Counter()
        for host, n in Counter(lost_hosts.to_pylist()).most_common(top):
            rows = lost_rows.filter(pc.equal(lost_hosts, host))
            domains.append({"host": host, "lost": n, "held": held_by_host.get(host, 0),
                            "lost_by_status": ledger.counts(rows)})
    return {"pool_version": pool.version, "held_statuses": list(held),
            "held_fraction": now["held"] / now["given"] if now["given"] else 0.0,
            "now": now, "top_domains_lost": domains, "over_time": over_time}


def format_decay(report: dict) -> list[str]:
    """The report as the summary's lines."""
    now = report["now"]
    given = now["given"] or 1
    lines = [f"  decay: {now['held']:,} of {now['given']:,} given URLs held ({100 * now['held'] / given:.1f}%), "
             f"{now['lost']:,} lost, {now['pending']:,} pending"]
    if now.get("lost_by_status"):
        lines.append("    lost by status: " + ", ".join(f"{s} {n:,}" for s, n in now["lost_by_status"].items()))
    if now.get("held_by_status"):
        lines.append("    held by status: " + ", ".join(f"{s} {n:,}" for s, n in now["held_by_status"].items()))
    if report["top_domains_lost"]:
        lines.append("    hosts that lost the most: " + ", ".join(
            f"{d['host']} {d['lost']} lost/{d['held']} held" for d in report["top_domains_lost"][:5]))
    if len(report["over_time"]) > 1:
        lines.append("    held over versions: " + ", ".join(f"{v['version']} {v['held']:,}" for v in report["over_time"]))
    return lines
