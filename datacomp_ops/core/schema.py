"""Table schemas, the sample uid, and DataComp subset files.

A uid is md5(caption + url) in hex, as cc2dataset computes it. Subset files are
DataComp's: a sorted numpy array of dtype ``u8,u8`` holding the two 64-bit
halves of each uid, saved with ``np.save``.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Iterable

import numpy as np
import pyarrow as pa

from . import storage

UID_DTYPE = np.dtype("u8,u8")
_UID_RE = re.compile(r"^[0-9a-f]{32}$")


class SchemaError(ValueError):
    """Data does not follow the platform's formats; the message says where."""


def compute_uids(texts: list[str], urls: list[str]) -> list[str]:
    """DataComp's uid of each pair: the md5 of caption + URL, hex."""
    md5 = hashlib.md5
    return [md5((text + url).encode("utf-8")).hexdigest() for text, url in zip(texts, urls)]


def compute_uid(text: str, url: str) -> str:
    return compute_uids([text], [url])[0]


def scale_key(uid: str) -> int:
    """The 64-bit key that orders samples for the per-scale pools (publish.py)."""
    return int(hashlib.md5(b"datacomp-scale:" + uid.encode()).hexdigest()[:16], 16)


# One row per image link extracted from the crawl.
URLS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("page_url", pa.string()),
        pa.field("wat_path", pa.string()),
    ]
)

WAT_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("wat_path", pa.string(), nullable=False),
        pa.field("batch", pa.int32(), nullable=False),
        pa.field("processed", pa.bool_(), nullable=False),
        pa.field("records", pa.int64()),
        pa.field("pairs", pa.int64()),
        pa.field("errors", pa.int64()),
        pa.field("error", pa.string()),  # why an unprocessed file could not be read
        # source_files.py: processed, a pending reason (unreadable, empty, ...) or gave_up; the read's number;
        # what was read (size, and the store's ETag or the file's mtime), so a changed file is read again
        pa.field("status", pa.string()),
        pa.field("attempt", pa.int32()),
        pa.field("size", pa.int64()),
        pa.field("fingerprint", pa.string()),
    ]
)

# DataComp's metadata columns, then the platform's own. One row per published
# sample, in the order of its shard; row i of a shard's npz is row i here.
POOL_METADATA_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("text", pa.string()),
        pa.field("original_width", pa.int64()),
        pa.field("original_height", pa.int64()),
        pa.field("clip_b32_similarity_score", pa.float32()),
        pa.field("clip_l14_similarity_score", pa.float32()),
        pa.field("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        pa.field("sha256", pa.string()),
        pa.field("nsfw_text_score", pa.float32()),  # the caption classifier's score
        pa.field("nsfw_image_score", pa.float32()),
        pa.field("eval_dedup_score", pa.float32()),  # highest similarity to any evaluation image
        pa.field("crawl_id", pa.string()),
        pa.field("shard", pa.int64()),  # where the sample is: shards/{shard:08d}.tar, key
        pa.field("key", pa.string()),
    ]
)

# The npz beside each metadata parquet: DataComp's keys, float32 rows, L2-normalised.
FEATURE_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt", "dedup")


def validate_uids(uids: Iterable[str], where: str = "input") -> list[str]:
    out = []
    for i, uid in enumerate(uids):
        if not isinstance(uid, str) or not _UID_RE.match(uid):
            raise SchemaError(f"{where}: uid #{i} {uid!r} is not 32 lowercase hex characters")
        out.append(uid)
    return out


def sorted_uids(arr: np.ndarray) -> np.ndarray:
    """``u8,u8`` uids in DataComp's order (high half, then low half): a lexsort of the halves, several
    times faster than numpy's sort of the structured array."""
    return arr[np.lexsort((arr["f1"], arr["f0"]))] if len(arr) > 1 else arr


def uids_to_array(uids: Iterable[str], where: str = "input") -> np.ndarray:
    """uids -> sorted ``u8,u8`` array; duplicates are an error."""
    checked = validate_uids(uids, where)
    arr = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in checked], dtype=UID_DTYPE)
    arr.sort()
    _check_sorted_unique(arr, where)
    return arr


def uid_strings_to_array(uids: pa.Array | pa.ChunkedArray, where: str = "input") -> np.ndarray:
    """A column of hex uids -> ``u8,u8`` pairs in the same order, without a Python loop per uid."""
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    n = len(arr)
    out = np.empty(n, dtype=UID_DTYPE)
    if n == 0:
        return out
    if arr.null_count:
        raise SchemaError(f"{where}: {arr.null_count} uids are null")
    if pa.types.is_large_string(arr.type) or pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_string(arr.type) else np.int32)
        offsets = offsets[arr.offset: arr.offset + n + 1]
    else:
        raise SchemaError(f"{where}: uids must be strings, got {arr.type}")
    lengths = np.diff(offsets)
    bad = np.flatnonzero(lengths != 32)
    if len(bad):
        raise SchemaError(f"{where}: uid #{bad[0]} {arr[int(bad[0])].as_py()!r} is not 32 hex characters")
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
    try:
        raw = bytes.fromhex(data.tobytes().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) != 16 * n:  # a non-hex character somewhere (fromhex also skips spaces): name the first
        text = data.reshape(n, 32)
        hexdigit = np.isin(text, np.frombuffer(b"0123456789abcdefABCDEF", np.uint8)).all(axis=1)
        i = int(np.argmin(hexdigit))
        raise SchemaError(f"{where}: uid #{i} {arr[i].as_py()!r} is not 32 hex characters")
    halves = np.frombuffer(raw, ">u8").reshape(n, 2)
    out["f0"], out["f1"] = halves[:, 0], halves[:, 1]
    return out


def sort_uids(arr: np.ndarray, where: str = "subset") -> np.ndarray:
    """Sorted copy of a ``u8,u8`` array (as DataComp's subset files are); duplicates are an error."""
    out = arr[np.lexsort((arr["f1"], arr["f0"]))] if len(arr) > 1 else arr.copy()
    _check_sorted_unique(out, where)
    return out


def array_to_uids(arr: np.ndarray) -> list[str]:
    return [f"{int(a):016x}{int(b):016x}" for a, b in arr.tolist()]


def _check_sorted_unique(arr: np.ndarray, where: str) -> None:
    if len(arr) < 2:
        return
    a, b = arr["f0"], arr["f1"]
    # lexicographic comparison of consecutive (hi, lo) pairs
    greater = (a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] > b[:-1]))
    if greater.all():
        return
    i = int(np.argmin(greater))
    equal = a[i + 1] == a[i] and b[i + 1] == b[i]
    what = "duplicated uid" if equal else "unsorted uids"
    uid = array_to_uids(arr[i + 1 : i + 2])[0]
    raise SchemaError(f"{where}: {what} at index {i + 1} ({uid}); subset files must be sorted and unique")


def write_subset(url: str, uids: Iterable[str] | np.ndarray) -> int:
    """Write a DataComp subset file; returns the number of uids."""
    arr = uids if isinstance(uids, np.ndarray) else uids_to_array(uids, where=url)
    if arr.dtype != UID_DTYPE:
        raise SchemaError(f"{url}: subset arrays must have dtype {UID_DTYPE}, got {arr.dtype}")
    _check_sorted_unique(arr, url)
    buf = io.BytesIO()
    np.save(buf, arr)
    storage.write_bytes(url, buf.getvalue())
    return len(arr)


def read_subset(url: str) -> np.ndarray:
    """Read and validate a subset file, ours or one written by DataComp's baselines."""
    try:
        arr = np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
    except ValueError as exc:
        raise SchemaError(f"{url}: not a numpy array file: {exc}") from exc
    if arr.dtype != UID_DTYPE:
        raise SchemaError(f"{url}: subset file has dtype {arr.dtype}, expected {UID_DTYPE}")
    if arr.ndim != 1:
        raise SchemaError(f"{url}: subset file must be one-dimensional, got shape {arr.shape}")
    _check_sorted_unique(arr, url)
    return arr


def in_subset(uids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of `uids` (any order) are in `wanted` (a sorted subset array).

    Searched on the high halves (uint64: faster than the structured compare); the uids whose high half
    `wanted` holds more than once are searched in full.
    """
    out = np.zeros(len(uids), bool)
    if len(wanted) == 0 or len(uids) == 0:
        return out
    high, key = np.ascontiguousarray(wanted["f0"]), np.ascontiguousarray(uids["f0"])
    at = np.minimum(np.searchsorted(high, key), len(high) - 1)
    out = (high[at] == key) & (wanted["f1"][at] == uids["f1"])
    repeated = high[1:] == high[:-1]
    if repeated.any():
        again = np.flatnonzero(np.isin(key, high[1:][repeated]))
        pos = np.minimum(np.searchsorted(wanted, uids[again]), len(wanted) - 1)
        out[again] = wanted[pos] == uids[again]
    return out
