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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .filtering.pool import PoolError, _isin_sorted
from .schema import read_subset, uid_strings_to_array
from .stats import StageStats

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


def _shard_uids(tar: str) -> tuple[list[str], np.ndarray]:
    """(keys, uids as u8,u8) of an input shard, from the parquet beside it (img2dataset's, with a uid column)."""
    parquet = tar[: -len(".tar")] + ".parquet"
    if not storage.exists(parquet):
        raise PoolError(f"{parquet}: missing; the resharder reads each shard's uids from the parquet beside it")
    with storage.open_file(parquet) as f:
        table = pq.read_table(f)
    missing = [c for c in ("key", "uid") if c not in table.column_names]
    if missing:
        raise PoolError(f"{parquet}: no {missing[0]!r} column")
    if "status" in table.column_names:  # img2dataset lists failed downloads too: they are not in the tar
        table = table.filter(pc.equal(table["status"], "success"))
    return table["key"].to_pylist(), uid_strings_to_array(table["uid"], where=f"uid column of {parquet}")


def plan_reshard(subset_url: str, shards: list[str], shard_size: int = 10_000, tasks: int = 0) -> list[ReshardTask]:
    """Split the input shards into tasks of consecutive shards; number every task's outputs."""
    subset = read_subset(subset_url)
    counts = []
    for tar in shards:
        _, uids = _shard_uids(tar)
        counts.append(int(_isin_sorted(uids, subset).sum()))
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


def run_reshard_task(task: ReshardTask | dict, subset_url: str, out: str, shard_size: int = 10_000) -> dict:
    """Copy the subset's samples of the task's input shards into its output shards."""
    task = ReshardTask(**task) if isinstance(task, dict) else task
    marker = storage.join(out, "_tasks", f"{task.index:05d}.json")
    if storage.exists(marker):
        return storage.read_json(marker)
    start = time.perf_counter()
    subset = read_subset(subset_url)
    writer = _Writer(out, task.first_output, shard_size)
    seen = 0
    for tar in task.inputs:
        keys, uids = _shard_uids(tar)
        wanted = {k.encode() for k, c in zip(keys, _isin_sorted(uids, subset)) if c}
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
    return record


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


def _size(header: memoryview) -> int:
    field = bytes(header[124:136])
    try:
        return int(field[:11], 8)
    except ValueError:  # base-256 sizes, or fields padded with spaces
        return int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.strip(b"\0 ") or b"0", 8)


_REGULAR, _AREGULAR, _DIR, _PAX, _GNU_LONG = ord("0"), 0, ord("5"), ord("x"), ord("L")


def _samples(data: memoryview, wanted: set[bytes], where: str):
    """The raw tar blocks (headers and data) of each wanted sample, in order, without decoding anything.

    A sample is the consecutive members sharing a key (the name up to its first dot), as webdataset
    groups them. A member's pax extended header (webdataset's TarWriter writes one for every member:
    its mtime is a float) or GNU long name travels with it; a global pax header, which would
    apply to every member after it, is refused with the shard named.
    """
    pos, end = 0, len(data)
    current, parts = None, []
    pending: list[memoryview] = []  # extended headers of the next member
    long_name = None
    while pos + 512 <= end:
        header = data[pos:pos + 512]
        kind = header[156]
        if not header[0] and bytes(header).count(0) == 512:  # the end-of-archive blocks
            break
        size = _size(header)
        total = 512 + ((size + 511) & ~511)
        if kind == _PAX or kind == _GNU_LONG:
            body = bytes(data[pos + 512:pos + 512 + size])
            found = _pax_path(body) if kind == _PAX else body.rstrip(b"\0")
            long_name = found if found is not None else long_name
            pending.append(data[pos:pos + total])
            pos += total
            continue
        if kind != _REGULAR and kind != _AREGULAR and kind != _DIR:
            # no view of the mapped shard may outlive this frame's traceback, or the map cannot close
            header.release()
            for view in pending + parts:
                view.release()
            raise PoolError(f"{where}: tar member type {bytes([kind])!r} at byte {pos} is not supported by the "
                            f"resharder (regular files, folders, pax and GNU long-name headers are)")
        if kind != _DIR:
            name = long_name
            if name is None:
                name = bytes(header[:100]).split(b"\0", 1)[0]
                if header[345]:  # ustar's name prefix
                    name = bytes(header[345:500]).split(b"\0", 1)[0] + b"/" + name
            key = name.rpartition(b"/")[2].partition(b".")[0]
            if key != current:
                if current in wanted:
                    yield parts
                current, parts = key, []
            if key in wanted:
                parts.extend(pending)
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


def reshard(subset_url: str, shards: list[str], out: str, shard_size: int = 10_000, workers: int = 0) -> StageStats:
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
