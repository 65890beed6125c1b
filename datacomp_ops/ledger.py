"""The ledger: every URL that enters the pool build ends in exactly one status.

Each stage writes one parquet part per task under ``ledger/{stage}/`` with a
row for every sample it was given: the pass status, or the named reason it
dropped the sample. A sample reaches a later stage only if it passed the
earlier ones, so its final status is the one of the last stage it reached.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage

# The pass status of each stage; anything else is a rejection reason.
PASS_STATUS = {"download": "downloaded", "metadata": "kept"}
STAGE_ORDER = ["download", "metadata"]

DOWNLOAD_FAILURES = (
    "http_error",  # 4xx / 5xx answers
    "timeout",
    "network_error",  # refused connections, resets, bad URLs
    "truncated",  # body shorter than announced
    "not_image",  # the body does not decode as an image
    "image_too_large",  # above max_image_area (decompression bombs)
    "opted_out",  # X-Robots-Tag noai and friends
    "resize_error",
)

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
    ]
)


class LedgerError(AssertionError):
    """The ledger does not account for its inputs exactly once."""


def make_part(
    stage: str, uids: Sequence[str], urls: Sequence[str], statuses: Sequence[str], messages: Sequence[str | None]
) -> pa.Table:
    return pa.table(
        {
            "uid": pa.array(uids, pa.string()),
            "url": pa.array(urls, pa.string()),
            "stage": pa.array([stage] * len(uids), pa.string()),
            "status": pa.array(statuses, pa.string()),
            "message": pa.array(messages, pa.string()),
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


def final_statuses(ledger_dir: str) -> pa.Table:
    """One row per uid: the status from the last stage the sample reached."""
    table = read(ledger_dir)
    if table.num_rows == 0:
        return table
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    order = pa.array([rank[s] for s in table["stage"].to_pylist()], pa.int32())
    table = table.append_column("_rank", order).sort_by([("uid", "ascending"), ("_rank", "descending")])
    uids = table["uid"]
    first = pc.not_equal(uids.slice(1), uids.slice(0, len(uids) - 1))
    keep = pa.concat_arrays([pa.array([True]), *first.chunks]) if len(uids) > 1 else pa.array([True])
    return table.filter(keep).drop_columns(["_rank"])


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
