"""The resharder: a subset file and a pool's shards in, webdataset shards of only the subset's samples out.

Output as DataComp's ``resharder.py`` writes it, so DataComp's ``train.py``
and ours read it: ``{n:08d}.tar`` numbered densely from 0, each with
``{n:08d}_stats.json`` (``{"successes": count}``), ``sample_ids.npy`` (the
subset file), and ``meta.json`` last (``output_shard_count``,
``output_shard_format``, the counts), which commits the folder. Samples keep
their pool keys (unique across a pool; DataComp renames them to the uid,
which each sample's json holds anyway): their tar blocks are copied as they
are, headers included, so the resharder runs near the speed of a copy.

The work is planned before it starts: each input shard's parquet names the
uids it holds, so the number of selected samples per input shard, and hence
the output shard numbers of every task, are known up front. Tasks cover
consecutive input shards and run in parallel (mapped Airflow tasks, or
processes on one machine).
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import storage
from ..core.schema import in_subset, read_subset, uid_strings_to_array
from ..core.stats import StageStats
from ..filtering.pool import PoolError

log = logging.getLogger(__name__)

STAGE = "reshard"
OUTPUT_FORMAT = "{:08d}.tar"
STATS_FORMAT = "{:08d}_stats.json"


@dataclass
class ReshardTask:
    index: int
    inputs: list[str]  # input tars, in order
    selected: int  # samples of the subset in them
    first_output: int  # its first output shard number
    outputs: int  # output shards it writes


def _shard_uids(tar: str, with_keys: bool = True) -> tuple[list[str], np.ndarray]:
    """(keys, uids as u8,u8) of an input shard, from the parquet beside it (img2dataset's, with a uid column)."""
    parquet = tar[: -len(".tar")] + ".parquet"
    if not storage.exists(parquet):
        raise PoolError(f"{parquet}: missing; the resharder reads each shard's uids from the parquet beside it")
    with storage.open_file(parquet) as f:
        file = pq.ParquetFile(f)
        names = file.schema_arrow.names
        missing = [c for c in ("key", "uid") if c not in names]
        if missing:
            raise PoolError(f"{parquet}: no {missing[0]!r} column")
        table = file.read(columns=[c for c in ("key", "uid", "status") if c in names and (with_keys or c != "key")])
    if "status" in table.column_names:  # img2dataset lists failed downloads too: they are not in the tar
        table = table.filter(pc.equal(table["status"], "success"))
    keys = table["key"].to_pylist() if with_keys else []
    return keys, uid_strings_to_array(table["uid"], where=f"uid column of {parquet}")


def plan_reshard(subset_url: str, shards: list[str], shard_size: int = 10_000, tasks: int = 0) -> list[ReshardTask]:
    """Split the input shards into tasks of consecutive shards; number every task's outputs."""
    subset = read_subset(subset_url)
    def selected(tar: str) -> int:
        return int(in_subset(_shard_uids(tar, with_keys=False)[1], subset).sum())

    with ThreadPoolExecutor(min(16, len(shards) or 1)) as ex:  # parquet reads release the GIL
        counts = list(ex.map(selected, shards))
    total = sum(counts)
    if total < len(subset):
        log.warning("%d uids of %s are in none of the %d shards", len(subset) - total, subset_url, len(shards))
    tasks = tasks or min(len(shards), max(1, os.cpu_count() or 1))
    # balance by selected samples; every task gets consecutive shards
    target = max(1, math.ceil(total / max(tasks, 1)))
    plan: list[ReshardTask] = []
    current: list[str] = []
    selected = 0
    for tar, n in zip(shards, counts):
        current.append(tar)
        selected += n
        if selected >= target and len(plan) < tasks - 1:
            plan.append(ReshardTask(len(plan), current, selected, 0, 0))
            current, selected = [], 0
    if current:
        plan.append(ReshardTask(len(plan), current, selected, 0, 0))
    first = 0
    for task in plan:
        task.first_output = first
        task.outputs = math.ceil(task.selected / shard_size)
        first += task.outputs
    return plan


def _task_stats(record: dict) -> StageStats:
    return StageStats(STAGE, Counter({k: record[k] for k in ("samples", "output_shards", "input_shards")}),
                      record["seconds"])


def run_reshard_task(task: ReshardTask | dict, subset_url: str, out: str, shard_size: int = 10_000) -> StageStats:
    """Copy the subset's samples of the task's input shards into its output shards; its record (the
    task's marker, which finalize_reshard reads) commits it."""
    task = ReshardTask(**task) if isinstance(task, dict) else task
    marker = storage.join(out, "_tasks", f"{task.index:05d}.json")
    if storage.exists(marker):
        return _task_stats(storage.read_json(marker))
    start = time.perf_counter()
    subset = read_subset(subset_url)
    writer = _Writer(out, task.first_output, shard_size)
    seen = 0
    for tar in task.inputs:
        keys, uids = _shard_uids(tar)
        wanted = {k.encode() for k, c in zip(keys, in_subset(uids, subset)) if c}
        with _mapped(tar) as data:
            for blocks in _samples(data, wanted, tar):
                writer.write(blocks)
                seen += 1
            blocks = None  # noqa: F841  (views of the mapped input must all be gone before it is unmapped)
            writer.flush_pending()
    written = writer.close()
    if seen != task.selected or written != task.outputs:
        raise PoolError(f"reshard task {task.index}: planned {task.selected} samples in {task.outputs} shards, "
                        f"found {seen} in {written} (a shard's tar and parquet disagree)")
    record = {"task": task.index, "samples": seen, "output_shards": written, "input_shards": len(task.inputs),
              "seconds": round(time.perf_counter() - start, 3)}
    storage.write_json(marker, record)
    return _task_stats(record)


@contextlib.contextmanager
def _mapped(url: str):
    """A shard's bytes: memory-mapped when local (the pages of samples left out are never read), else read."""
    fs, path = storage.get_fs(url)
    if getattr(fs, "protocol", None) in ("file", "local") or fs.protocol == ("file", "local"):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                yield view
            finally:
                view.release()
    else:
        yield memoryview(storage.read_bytes(url))


def _pax_path(record: bytes) -> bytes | None:
    """The ``path`` of a pax extended header's records (``"%d path=...\\n"``), if it sets one."""
    if b" path=" not in record:  # webdataset's headers carry only mtime
        return None
    pos = 0
    while pos < len(record):
        length, _, rest = record[pos:].partition(b" ")
        if not length.isdigit() or int(length) <= 0:
            break
        key, _, value = rest[: int(length) - len(length) - 1].partition(b"=")
        if key == b"path":
            return value.rstrip(b"\n")
        pos += int(length)
    return None


def _size(field: bytes) -> int:
    """A tar header's size field (12 bytes)."""
    try:
        return int(field[:11], 8)
    except ValueError:  # base-256 sizes, or fields padded with spaces
        return int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.strip(b"\0 ") or b"0", 8)


_REGULAR, _AREGULAR, _DIR, _PAX, _GNU_LONG = ord("0"), 0, ord("5"), ord("x"), ord("L")
_ZERO_BLOCK = bytes(512)
_USTAR = np.frombuffer(b"ustar", np.uint8)
_OCTAL = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_MTIME = np.frombuffer(b"mtime=", np.uint8)
_PLAIN_KINDS = np.array([_REGULAR, _AREGULAR, _PAX], np.uint8)


def _samples(data: memoryview, wanted: set[bytes], where: str):
    """The raw tar blocks (headers and data) of each wanted sample, in order, without decoding anything.

    A sample is the consecutive members sharing a key (the name up to its first dot), as webdataset
    groups them. A member's pax extended header (webdataset's TarWriter writes one for every member:
    its mtime is a float) or GNU long name travels with it; a global pax header, which would
    apply to every member after it, is refused with the shard named.
    """
    raw = data.obj if isinstance(data.obj, (bytes, mmap.mmap)) and len(data) == len(data.obj) else bytes(data)
    spans = _plain_sample_spans(raw, wanted)
    if spans is not None:
        for start, stop in spans:
            yield [data[start:stop]]
        return
    yield from _walk_samples(data, raw, wanted, where)


def _plain_sample_spans(raw, wanted: set[bytes]) -> list[tuple[int, int]] | None:
    """(start, stop) bytes of each wanted sample, with the headers read all at once by numpy; None when the
    shard is not plain (anything but ustar regular files, each after at most one pax header that sets no
    path), which the member-by-member walk handles.

    Every block with the ustar magic is a candidate header; when each candidate's size leads exactly to
    the next candidate from the first block on, the candidates are the archive's headers (magic bytes
    inside a member's data would break that chain). A sample's members are then one run of bytes.
    """
    n = len(raw) // 512
    if n == 0:
        return None
    blocks = np.frombuffer(raw, np.uint8, n * 512).reshape(n, 512)
    headers = np.flatnonzero(blocks[:, 257] == _USTAR[0])
    headers = headers[(blocks[headers, 257:262] == _USTAR).all(axis=1)]
    if len(headers) == 0 or headers[0] != 0:
        return None
    digits = blocks[headers, 124:135].astype(np.int64) - ord("0")
    if ((digits < 0) | (digits > 7)).any():
        return None
    sizes = digits @ _OCTAL
    kinds = blocks[headers, 156]
    after = headers + 1 + (sizes + 511) // 512
    last = int(after[-1]) * 512
    if (after[:-1] != headers[1:]).any() or last > len(raw) or (last < len(raw) and raw[last:last + 512] != _ZERO_BLOCK):
        return None
    pax = kinds == _PAX
    if not np.isin(kinds, _PLAIN_KINDS).all() or pax[-1] or (pax[:-1] & pax[1:]).any():
        return None
    if _pax_sets_path(raw, blocks, headers[pax], sizes[pax]):
        return None
    members = np.flatnonzero(~pax)
    if blocks[headers[members], 345].any():  # ustar name prefixes
        return None
    keys = _keys(blocks[headers[members], :100])
    if keys is None:
        return None
    before = np.maximum(members - 1, 0)  # a member's pax header is the header before it
    starts = np.where((members > 0) & pax[before], headers[before], headers[members]) * 512
    stops = after[members] * 512
    # a sample: a run of members with one key
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    last = np.concatenate([first[1:], [len(keys)]]) - 1
    chosen = np.fromiter((k in wanted for k in keys[first].tolist()), bool, len(first))
    return list(zip(starts[first[chosen]].tolist(), stops[last[chosen]].tolist()))


def _pax_sets_path(raw, blocks: np.ndarray, headers: np.ndarray, sizes: np.ndarray) -> bool:
    """Whether any of these pax headers has a ``path`` record. webdataset's hold one record, an mtime
    ("NN mtime=...\\n" whose length NN is the whole body): those are recognised together, the rest searched."""
    head = blocks[headers + 1, :9].astype(np.int64)
    digits = head[:, :2] - ord("0")
    only_mtime = ((digits >= 0) & (digits <= 9)).all(axis=1) & (head[:, 2] == ord(" ")) \
        & (head[:, 3:9] == _MTIME).all(axis=1) & (digits[:, 0] * 10 + digits[:, 1] == sizes)
    for h, size in zip(headers[~only_mtime].tolist(), sizes[~only_mtime].tolist()):
        if raw.find(b" path=", (h + 1) * 512, (h + 1) * 512 + size) != -1:
            return True
    return False


def _keys(names: np.ndarray) -> np.ndarray | None:
    """webdataset's key of each 100-byte name field (the name up to its first dot), as fixed-width bytes;
    None when a name has a folder (the walk reads those)."""
    if (names == ord("/")).any():
        return None
    nul = names == 0
    dot = names == ord(".")
    width = names.shape[1]
    end = np.minimum(np.where(nul.any(axis=1), nul.argmax(axis=1), width),
                     np.where(dot.any(axis=1), dot.argmax(axis=1), width))
    keys = names * (np.arange(width, dtype=np.int16) < end[:, None].astype(np.int16))
    return np.ascontiguousarray(keys, np.uint8).view(f"S{width}")[:, 0]


def _walk_samples(data: memoryview, raw, wanted: set[bytes], where: str):
    """_samples member by member, for any shard: pax and GNU long names, folders, odd size fields."""
    # header fields are read from the buffer itself (small bytes copies, no view objects)
    pos, end = 0, len(raw)
    current, parts = None, []
    pending: list[tuple[int, int]] = []  # (start, end) of the extended headers of the next member
    long_name = None
    while pos + 512 <= end:
        kind = raw[pos + 156]
        if not raw[pos] and raw[pos:pos + 512] == _ZERO_BLOCK:  # the end-of-archive blocks
            break
        size = _size(raw[pos + 124:pos + 136])
        total = 512 + ((size + 511) & ~511)
        if kind == _PAX or kind == _GNU_LONG:
            body = raw[pos + 512:pos + 512 + size]
            found = _pax_path(body) if kind == _PAX else body.rstrip(b"\0")
            long_name = found if found is not None else long_name
            pending.append((pos, pos + total))
            pos += total
            continue
        if kind != _REGULAR and kind != _AREGULAR and kind != _DIR:
            for view in parts:  # no view of the mapped shard may outlive this frame, or the map cannot close
                view.release()
            raise PoolError(f"{where}: tar member type {bytes([kind])!r} at byte {pos} is not supported by the "
                            f"resharder (regular files, folders, pax and GNU long-name headers are)")
        if kind != _DIR:
            name = long_name
            if name is None:
                name = raw[pos:pos + 100].split(b"\0", 1)[0]
                if raw[pos + 345]:  # ustar's name prefix
                    name = raw[pos + 345:pos + 500].split(b"\0", 1)[0] + b"/" + name
            key = name.rpartition(b"/")[2].partition(b".")[0]
            if key != current:
                if current in wanted:
                    yield parts
                current, parts = key, []
            if key in wanted:
                parts.extend(data[a:b] for a, b in pending)
                parts.append(data[pos:pos + total])
        if pending:
            pending, long_name = [], None
        pos += total
    if current in wanted:
        yield parts


class _Writer:
    """Output shards of `size` samples, numbered from `first`, each with its stats file.

    Samples go to the open output shard as they come: a local file gets the input's mapped blocks
    with writev (one copy, in the kernel); elsewhere the shard is buffered and written atomically.
    A shard appears under its name only when complete.
    """

    def __init__(self, out: str, first: int, size: int):
        self.out, self.next, self.size = out, first, size
        fs, _ = storage.get_fs(out)
        self.local = fs.protocol == ("file", "local") or fs.protocol in ("file", "local")
        self.file = None  # a raw local file, or a list of bytes for remote storage
        self.tmp = ""
        self.count = 0
        self.shards = 0

    def _open(self) -> None:
        final = storage.join(self.out, OUTPUT_FORMAT.format(self.next))
        if self.local:
            _, path = storage.get_fs(final)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.tmp = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{os.path.basename(path)}"
            self.file = open(self.tmp, "wb", buffering=0)
        else:
            self.file = []

    def write(self, blocks: list[memoryview]) -> None:
        if self.file is None:
            self._open()
        if self.local:
            for i in range(0, len(blocks), 512):
                chunk = blocks[i:i + 512]
                written, want = os.writev(self.file.fileno(), chunk), sum(len(b) for b in chunk)
                if written != want:  # a short write: finish it the slow way
                    self.file.write(b"".join(bytes(b) for b in chunk)[written:])
        else:
            self.file.append(b"".join(blocks))
        self.count += 1
        if self.count == self.size:
            self._finish()

    def flush_pending(self) -> None:
        """Nothing of the current input is kept after this (remote buffers hold copies already)."""

    def _finish(self) -> None:
        number = self.next
        final = storage.join(self.out, OUTPUT_FORMAT.format(number))
        if self.local:
            self.file.write(b"\0" * 1024)  # the end-of-archive blocks
            self.file.close()
            os.replace(self.tmp, storage.get_fs(final)[1])
        else:
            storage.write_bytes(final, b"".join(self.file) + b"\0" * 1024)
        storage.write_json(storage.join(self.out, STATS_FORMAT.format(number)), {"successes": self.count})
        self.next += 1
        self.shards += 1
        self.file, self.count = None, 0

    def close(self) -> int:
        if self.count:
            self._finish()
        return self.shards


def finalize_reshard(plan: list[ReshardTask], subset_url: str, out: str, shards: list[str],
                     shard_size: int) -> dict:
    """Check every task's record, copy the subset file, write meta.json (the commit)."""
    records = [storage.read_json(storage.join(out, "_tasks", f"{t.index:05d}.json")) for t in plan]
    samples = sum(r["samples"] for r in records)
    output_shards = sum(r["output_shards"] for r in records)
    subset = read_subset(subset_url)
    storage.write_bytes(storage.join(out, "sample_ids.npy"), storage.read_bytes(subset_url))
    meta = {"output_shard_count": output_shards, "output_shard_format": OUTPUT_FORMAT,
            "output_shard_stats_format": STATS_FORMAT, "output_count": samples, "subset_size": len(subset),
            "missing_from_shards": len(subset) - samples, "input_shard_count": len(shards),
            "shard_size": shard_size, "subset_file": subset_url, "tasks": len(plan),
            "seconds": round(sum(r["seconds"] for r in records), 3)}
    storage.write_json(storage.join(out, "meta.json"), meta)
    return meta


def run_reshard(subset_url: str, shards: list[str], out: str, shard_size: int = 10_000, workers: int = 0) -> StageStats:
    """Plan, run the tasks in parallel processes, finalize. A folder with meta.json is done already."""
    stats = StageStats(STAGE)
    if storage.exists(storage.join(out, "meta.json")):
        meta = storage.read_json(storage.join(out, "meta.json"))
        stats.add("samples", meta["output_count"])
        return stats
    start = time.perf_counter()
    plan = plan_reshard(subset_url, shards, shard_size, workers)
    if len(plan) == 1 or workers == 1:
        for task in plan:
            run_reshard_task(task, subset_url, out, shard_size)
    else:
        with ProcessPoolExecutor(len(plan)) as ex:
            list(ex.map(run_reshard_task, plan, [subset_url] * len(plan), [out] * len(plan),
                        [shard_size] * len(plan)))
    meta = finalize_reshard(plan, subset_url, out, shards, shard_size)
    stats.add("samples", meta["output_count"])
    stats.add("output_shards", meta["output_shard_count"])
    stats.add("missing_from_shards", meta["missing_from_shards"])
    stats.seconds = time.perf_counter() - start
    stats.outputs.append(out)
    return stats


def plan_to_dicts(plan: list[ReshardTask]) -> list[dict]:
    return [asdict(t) for t in plan]
