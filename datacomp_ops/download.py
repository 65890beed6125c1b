"""Download: img2dataset over one URL partition into webdataset shards, plus its ledger part.

One call handles one partition (one mapped Airflow task). img2dataset writes
into a temporary folder; we read its per-shard parquet (one row per input URL,
with status and error message), write the ledger part, move the shards into
the pool and write the completion marker last. A rerun of a committed
partition returns the stats in its marker.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from . import ledger, storage
from .config import PlatformConfig
from .layout import PoolLayout
from .stats import StageStats

log = logging.getLogger(__name__)

STAGE = "download"
SHARD_FILES = (".tar", ".parquet", "_stats.json")


def classify_failure(message: str | None, i2d_status: str) -> str:
    """Map an img2dataset error message onto a ledger status."""
    msg = (message or "").lower()
    if "x-robots-tag" in msg:
        return "opted_out"
    if msg.startswith("http error"):
        return "http_error"
    if "timed out" in msg or "timeout" in msg:
        return "timeout"
    if "incompleteread" in msg or "incomplete read" in msg:
        return "truncated"
    if "image area too large" in msg:
        return "image_too_large"
    if "image decoding error" in msg:
        return "not_image"
    if i2d_status == "failed_to_resize":
        return "resize_error"
    return "network_error"


@dataclass(frozen=True)
class Partition:
    """One download task's input: a URL parquet file and the first shard id it may use."""

    path: str
    rows: int
    first_shard: int

    @property
    def name(self) -> str:
        """Unique within a pool: URL parts of several crawls may feed one pool version."""
        parts = self.path.rstrip("/").split("/")
        stem = parts[-1].removesuffix(".parquet")
        if len(parts) >= 3 and parts[-2] == "urls":  # {root}/crawls/{crawl_id}/urls/part-*.parquet
            return f"{parts[-3]}-{stem}"
        return stem


def plan_partitions(partitions: list[dict], first_shard: int, samples_per_shard: int) -> list[Partition]:
    """Give each partition its own dense range of shard ids, starting at `first_shard`."""
    plan, nxt = [], first_shard
    for part in partitions:
        plan.append(Partition(part["path"], int(part["rows"]), nxt))
        nxt += max(1, -(-int(part["rows"]) // samples_per_shard))
    return plan


def next_free_shard(pool: PoolLayout) -> int:
    """One past the highest shard id any committed download task used."""
    used = [
        max(stats.get("shards", [-1]), default=-1)
        for stats in (storage.read_json(m) for m in storage.ls(storage.join(pool.markers, STAGE), "*"))
    ]
    return max(used, default=-1) + 1


# img2dataset runs in a child interpreter of its own: its worker processes are
# spawned, and spawn re-imports the parent's __main__ (in Airflow, the airflow
# CLI, which must not start up inside a task); it also installs signal handlers.
_I2D_RUNNER = "import json, sys; from img2dataset import download; download(**json.loads(sys.argv[1]))"


def img2dataset_kwargs(url_list: str, output_folder: str, config: PlatformConfig) -> dict:
    """The arguments of ``img2dataset.download`` for one URL parquet: DataComp's settings."""
    dl = config.download
    return dict(
        url_list=url_list,
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=["uid"],
        output_folder=output_folder,
        output_format="webdataset",
        image_size=dl.image_size,
        resize_mode=dl.resize_mode,
        resize_only_if_bigger=dl.resize_only_if_bigger,
        encode_format=dl.encode_format,
        encode_quality=dl.encode_quality,
        number_sample_per_shard=dl.number_sample_per_shard,
        oom_shard_count=8,
        compute_hash="sha256",
        processes_count=dl.processes_count,
        thread_count=dl.thread_count,
        timeout=dl.timeout,
        retries=dl.retries,
        max_image_area=dl.max_image_area,
        disallowed_header_directives=list(dl.disallowed_header_directives),
        user_agent_token=dl.user_agent_token,
        distributor="multiprocessing",
        enable_wandb=False,
    )


def _run_img2dataset(partition: Partition, out_dir: str, config: PlatformConfig) -> None:
    dl = config.download
    if partition.first_shard > 0:
        # img2dataset's "extend" mode numbers new shards after the highest existing
        # stats file: seeding one makes this partition's shards start at first_shard.
        seed = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0,
                "start_time": time.time(), "end_time": time.time(), "status_dict": {}}
        storage.write_json(storage.join(out_dir, f"{partition.first_shard - 1:08d}_stats.json"), seed)
    else:
        storage.makedirs(out_dir)
    kwargs = img2dataset_kwargs(partition.path, out_dir, config) | {"incremental_mode": "extend"}
    env = dict(os.environ)
    # OpenCV refuses to decode beyond this many pixels: a bomb costs no memory.
    env.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2 * dl.max_image_area))
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    proc = subprocess.run([sys.executable, "-c", _I2D_RUNNER, json.dumps(kwargs)], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed on {partition.path} (exit code {proc.returncode})")


def run_download(partition: Partition, pool: PoolLayout, config: PlatformConfig) -> StageStats:
    """Download one partition into ``pool``'s shards; every URL gets a ledger row."""
    marker = pool.marker(STAGE, partition.name)
    if storage.exists(marker):
        log.info("partition %s already downloaded; nothing to do", partition.name)
        return StageStats.from_dict(storage.read_json(marker))
    start = time.monotonic()
    tmp = storage.join(pool.base, "_tmp", f"{STAGE}-{partition.name}")
    storage.remove(tmp)
    _run_img2dataset(partition, tmp, config)

    with storage.open_file(partition.path) as f:
        input_uids = pq.read_table(f, columns=["uid"])["uid"].to_pylist()
    stats = StageStats(STAGE)
    shard_ids, uids, urls, statuses, messages = [], [], [], [], []
    for meta_path in storage.ls(tmp, "*.parquet"):
        shard_id = int(os.path.basename(meta_path).split(".")[0])
        with storage.open_file(meta_path) as f:
            meta = pq.read_table(f, columns=["uid", "url", "status", "error_message"]).to_pydict()
        for uid, url, i2d_status, message in zip(meta["uid"], meta["url"], meta["status"], meta["error_message"]):
            status = "downloaded" if i2d_status == "success" else classify_failure(message, i2d_status)
            uids.append(uid)
            urls.append(url)
            statuses.append(status)
            messages.append(None if status == "downloaded" else message)
            stats.add(status)
        shard_ids.append(shard_id)
    table = ledger.make_part(STAGE, uids, urls, statuses, messages)
    ledger.check_accounts_for(table, input_uids, where=f"download of {partition.path}")

    for shard_id in shard_ids:
        for suffix in SHARD_FILES:
            src = storage.join(tmp, f"{shard_id:08d}{suffix}")
            if storage.exists(src):
                storage.move(src, storage.join(pool.downloads, f"{shard_id:08d}{suffix}"))
    ledger.write_part(pool.ledger_part(STAGE, partition.name), table)
    storage.remove(tmp)
    stats.add("urls", len(input_uids))
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.download(s) for s in shard_ids]
    record = stats.to_dict() | {"shards": shard_ids, "partition": partition.path}
    storage.write_json(marker, record)
    log.info("partition %s: %s", partition.name, json.dumps(stats.to_dict()["counters"]))
    return stats
