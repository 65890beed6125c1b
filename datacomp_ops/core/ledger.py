"""The ledger: every URL that enters the pool build ends in exactly one status.

Each stage writes one parquet part per task under ``ledger/{stage}/`` with a
row for every sample it was given: the pass status, or the named reason it
dropped the sample. A sample reaches a later stage only if it passed the
earlier ones, so its status within one pool version is the one of the last
stage it reached.

A URL can be tried again by a later pool version (a transient failure, or a
URL a scale-limited build deferred), so its history spans the versions of a
pool's chain, oldest first: its current status is the one the newest version
gave it. Download rows carry the attempt number and the URL part the row came
from, so a later run can download it again.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .address_guard import BLOCKED_STATUSES

# The pass status of each stage; anything else is a rejection reason.
PASS_STATUS = {"download": "downloaded", "metadata": "kept"}
STAGE_ORDER = ["download", "metadata"]

# Failures a later attempt may not repeat: scheduled rebuilds try these URLs
# again, up to download.max_attempts in all.
TRANSIENT_FAILURES = (
    "timeout",
    "network_error",  # refused connections, resets, DNS failures
    "rate_limited",  # HTTP 429
    "server_error",  # HTTP 5xx
    "truncated",  # body shorter than announced: a dropped connection
    "robots_unavailable",  # the host's robots.txt or tdmrep.json answered 5xx/429 (RFC 9309: try later); not requested
)
# Failures that are the URL's own: final.
PERMANENT_FAILURES = (
    "http_error",  # 4xx answers other than 429 (404, 403, 410...)
    "not_image",  # the body does not decode as an image
    "unsupported_image",  # decodes, but its samples have no 8-bit display mapping (image_decode.py)
    "invalid_url",  # no request can be made for the URL as written (url_fetch.py): credentials, bad port or host
    "image_too_large",  # above max_image_area (decompression bombs)
    "opted_out",  # X-Robots-Tag noai and friends
    "resize_error",
    "missing_from_source",  # an imported webdataset shard no longer holds a sample its scan listed
    "invalid_metadata",  # a published pool's row that cannot be downloaded safely (no URL, a face box no blur covers)
    "hash_mismatch_dropped",  # a published pool's image whose bytes differ from the published sha256, dropped
    "disallowed_robots",  # the host's robots.txt disallows it for the platform's agent: never requested
    "tdm_reserved",  # the host reserves TDM rights (tdmrep.json, or the response's tdm-reservation header)
    # the address guard refused the host (datacomp_ops.core.address_guard): a crawl must not reach these
    *BLOCKED_STATUSES,
)
DOWNLOAD_FAILURES = TRANSIENT_FAILURES + PERMANENT_FAILURES
# Downloaded, and held, but not as published: the bytes' sha256 differs from a published pool's
# (download.hash_mismatch=keep). Final: fetching again gives the same bytes.
HASH_MISMATCH = "hash_mismatch"
# Not downloaded because the run's scale did not need it (a scale-limited
# build); a build of a larger scale downloads it.
DEFERRED = "deferred"
# Not requested this run because its host asked for a pause (429/503 with Retry-After), not counted as an
# attempt nor as a failure. Every later run tries them again, as deferred URLs.
POSTPONED = ("host_paused",)
# what a later run downloads whatever its attempts: deferred and postponed URLs
WAITING = (DEFERRED, *POSTPONED)

METADATA_REMOVALS = (
    "corrupt_image",  # the downloaded bytes do not decode
    "missing_from_shard",  # img2dataset reported it, the shard does not hold it (a broken tar)
    "nsfw_text",  # unsafe caption
    "nsfw_image",  # unsafe image
    "eval_duplicate",  # near-duplicate of an evaluation image
)

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("message", pa.string()),
        # download rows: which attempt this was (0 for a deferred URL never tried)
        pa.field("attempt", pa.int32()),
        # download rows: the URL part the URL was read from (where a retry reads it again)
        pa.field("source", pa.string()),
    ]
)


class LedgerError(AssertionError):
    """The ledger does not account for its inputs exactly once."""


def make_part(
    stage: str, uids: Sequence[str], urls: Sequence[str], statuses: Sequence[str], messages: Sequence[str | None],
    attempts: Sequence[int | None] | None = None, source: str | None = None,
) -> pa.Table:
    return pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "url": pa.array(urls, pa.string()),
            "stage": pa.array([stage] * len(uids), pa.string()),
            "status": pa.array(statuses, pa.string()),
            "message": pa.array(messages, pa.string()),
            "attempt": pa.array(attempts if attempts is not None else [None] * len(uids), pa.int32()),
            "source": pa.array([source] * len(uids), pa.string()),
        },
        schema=LEDGER_SCHEMA,
    )


def write_part(url: str, table: pa.Table) -> None:
    with storage.atomic_write(url) as f:
        pq.write_table(table, f)


def read_part(url: str) -> pa.Table:
    with storage.open_file(url) as f:
        return pq.read_table(f, schema=LEDGER_SCHEMA)


def read(ledger_dir: str, stage: str | None = None) -> pa.Table:
    stages = [stage] if stage else STAGE_ORDER
    tables = [
        read_part(part) for name in stages for part in storage.ls(storage.join(ledger_dir, name), "*.parquet")
    ]
    return pa.concat_tables(tables) if tables else LEDGER_SCHEMA.empty_table()


HISTORY_SCHEMA = LEDGER_SCHEMA.append(pa.field("version", pa.string()))


def history(ledger_dirs: str | Sequence[str], versions: Sequence[str] | None = None) -> pa.Table:
    """Every row of a chain of ledgers (oldest first), each with the version that wrote it, in order."""
    dirs = [ledger_dirs] if isinstance(ledger_dirs, str) else list(ledger_dirs)
    names = list(versions) if versions is not None else [d.rstrip("/").rsplit("/", 2)[-2] for d in dirs]
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    tables = []
    for seq, (directory, name) in enumerate(zip(dirs, names)):
        table = read(directory)
        if table.num_rows:
            order = [seq * len(STAGE_ORDER) + rank[s] for s in table["stage"].to_pylist()]
            tables.append(table.append_column("version", pa.array([name] * table.num_rows, pa.string()))
                          .append_column("_order", pa.array(order, pa.int32())))
    if not tables:
        return HISTORY_SCHEMA.empty_table().append_column("_order", pa.array([], pa.int32()))
    return pa.concat_tables(tables)


def final_statuses(ledger_dirs: str | Sequence[str], versions: Sequence[str] | None = None) -> pa.Table:
    """One row per uid: the status that the newest version, at the last stage the sample reached, gave it."""
    return latest(history(ledger_dirs, versions))


def latest(history_table: pa.Table) -> pa.Table:
    """The current row of each uid of a `history` table (without its ordering column)."""
    if history_table.num_rows == 0:
        return history_table.drop_columns(["_order"])
    # an open version can take one URL twice (two runs before it is published): the later attempt is newer
    table = history_table.sort_by([("uid", "ascending"), ("_order", "descending"), ("attempt", "descending")])
    uids = table["uid"]
    first = pc.not_equal(uids.slice(1), uids.slice(0, len(uids) - 1))
    keep = pa.concat_arrays([pa.array([True]), *first.chunks]) if len(uids) > 1 else pa.array([True])
    return table.filter(keep).drop_columns(["_order"])


def attempts(table: pa.Table) -> dict[str, int]:
    """uid -> download attempts so far, from a history table."""
    out: dict[str, int] = {}
    for uid, stage, attempt in zip(table["uid"].to_pylist(), table["stage"].to_pylist(),
                                   table["attempt"].to_pylist()):
        if stage == "download" and attempt is not None:
            out[uid] = max(out.get(uid, 0), attempt)
    return out


def counts(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table["status"].to_pylist()).items()))


def check_accounts_for(table: pa.Table, input_uids: Iterable[str], where: str) -> None:
    """Every input uid appears exactly once in `table`, and nothing else does."""
    expected = Counter(input_uids)
    seen = Counter(table["uid"].to_pylist())
    twice = [u for u, n in seen.items() if n > 1]
    missing = expected.keys() - seen.keys()
    extra = seen.keys() - expected.keys()
    if twice or missing or extra:
        raise LedgerError(
            f"{where}: ledger does not match its input ({sum(expected.values())} inputs, "
            f"{table.num_rows} rows; {len(missing)} missing, {len(extra)} unknown, {len(twice)} twice"
            + (f"; e.g. missing {sorted(missing)[0]}" if missing else "")
            + ")"
        )
