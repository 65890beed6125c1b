"""The resharder: a subset file and a pool's shards in, webdataset shards of only the subset's samples out.

Output as DataComp's ``resharder.py`` writes it, so DataComp's ``train.py``
and ours read it: ``{n:08d}.tar`` numbered densely from 0, each with
``{n:08d}_stats.json`` (``{"successes": count}``), ``sample_ids.npy`` (the
subset file), and ``meta.json`` last (``output_shard_count``,
``output_shard_format``, the counts), which commits the folder. Samples are
keyed by their uid.

The work is planned before it starts: each input shard's parquet names the
uids it holds, so the number of selected samples per input shard, and hence
the output shard numbers of every task, are known up front. Tasks cover
consecutive input shards and run in parallel (mapped Airflow tasks, or
processes on one machine); members are copied byte for byte, never decoded.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tarfile
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
        chosen = _isin_sorted(uids, subset)
        wanted = {k: f"{int(u[0]):016x}{int(u[1]):016x}" for k, u, c in zip(keys, uids.tolist(), chosen) if c}
        with storage.open_file(tar) as f, tarfile.open(fileobj=f, mode="r|") as archive:
            current_key, members = None, []
            for member in archive:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if key != current_key:
                    if current_key in wanted:
                        writer.write(wanted[current_key], members)
                        seen += 1
                    current_key, members = key, []
                if key in wanted:
                    members.append((ext, archive.extractfile(member).read()))
            if current_key in wanted:
                writer.write(wanted[current_key], members)
                seen += 1
    written = writer.close()
    if seen != task.selected or written != task.outputs:
        raise PoolError(f"reshard task {task.index}: planned {task.selected} samples in {task.outputs} shards, "
                        f"found {seen} in {written} (a shard's tar and parquet disagree)")
    record = {"task": task.index, "samples": seen, "output_shards": written, "input_shards": len(task.inputs),
              "seconds": round(time.perf_counter() - start, 3)}
    storage.write_json(marker, record)
    return record


class _Writer:
    """Output shards of `size` samples, numbered from `first`; each written atomically with its stats file."""

    def __init__(self, out: str, first: int, size: int):
        self.out, self.next, self.size = out, first, size
        self.buffer: io.BytesIO | None = None
        self.tar: tarfile.TarFile | None = None
        self.count = 0
        self.shards = 0

    def write(self, uid: str, members: list[tuple[str, bytes]]) -> None:
        if self.tar is None:
            self.buffer = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buffer, mode="w")
        for ext, data in members:
            info = tarfile.TarInfo(f"{uid}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        if self.count == self.size:
            self._flush()

    def _flush(self) -> None:
        self.tar.close()
        number = self.next
        storage.write_bytes(storage.join(self.out, OUTPUT_FORMAT.format(number)), self.buffer.getvalue())
        storage.write_json(storage.join(self.out, STATS_FORMAT.format(number)), {"successes": self.count})
        self.next += 1
        self.shards += 1
        self.tar, self.buffer, self.count = None, None, 0

    def close(self) -> int:
        if self.tar is not None and self.count:
            self._flush()
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
