"""Download: img2dataset over one URL partition into webdataset shards, plus its ledger part.

One call handles one partition (one mapped Airflow task). img2dataset writes
into a temporary folder; we read its per-shard parquet (one row per input URL,
with status and error message), write the ledger part, move the shards into
the pool and write the completion marker last. A rerun of a committed
partition returns the stats in its marker.

A partition whose URLs, on their first attempt, mostly failed for transient
reasons (the image hosts or the network were down) is not committed: the call raises, so that the task's
retry downloads it again. Only the last try commits such a partition, with
every URL's transient status, which later rebuilds retry.

A scale-limited build gives a partition a key limit: URLs whose scale key is
above it are not downloaded but recorded as deferred; a download limited to
chosen subsets (a published pool's, pool/published.py) gives it a subset file,
and the URLs outside it are deferred the same way.

A published pool's URL part carries DataComp's face boxes and sha256: the
faces are blurred at download from the published boxes (img2dataset's
``bbox_col``, as download_upstream.py does), and an image whose bytes' sha256
differs from the published one is ``hash_mismatch`` (kept, flagged) or
``hash_mismatch_dropped`` (taken out of its shard), as download.hash_mismatch says.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage
from ..core.address_guard import ALLOWED_ENV, BLOCKED_STATUSES, HOSTS_ENV, PROXY_ENV
from ..core.config import PlatformConfig
from ..core.layout import PoolLayout, host_claims_dir, host_rules_dir, partition_name, pools_dir
from ..core.schema import in_subset, read_subset, scale_key, uid_strings_to_array
from ..core.stats import Counters, StageStats
from .polite_fetch import user_agent

log = logging.getLogger(__name__)

STAGE = "download"
SHARD_FILES = (".tar", ".parquet", "_stats.json")


# what run_download counts: each URL's status, and the partition's totals
# the hosts' rules (host_rules.py): origins judged per partition, fetched now, read from the cache, requests made
RULE_COUNTERS = ("hosts", "rules_fetched", "rules_cached", "rules_requests")
COUNTERS = Counters.of(STAGE, ("urls", "attempted", "downloaded", ledger.DEFERRED, ledger.HASH_MISMATCH,
                               *ledger.POSTPONED, *ledger.DOWNLOAD_FAILURES, *RULE_COUNTERS))


def format_rules(counters) -> str:
    """What reading the hosts' rules cost, for a run's summary; "" when no host was asked."""
    def get(key: str) -> int:
        return counters.get(key, 0) if isinstance(counters, dict) else counters[key]

    if not get("hosts"):
        return ""
    return (f"hosts' robots.txt/TDMRep: {get('hosts'):,} looked up (a host per partition), {get('rules_fetched'):,} "
            f"fetched now ({get('rules_requests'):,} requests), {get('rules_cached'):,} from the cache")


# a published pool's URL part (pool/published.py): the boxes img2dataset blurs, the hash the bytes must have
BBOX_COLUMN, HASH_COLUMN = "face_bboxes", "sha256"


_HTTP_CODE = re.compile(r"^http error (\d{3})")
# the address guard's refusal, as urllib wraps it: "<urlopen error blocked_loopback: 127.0.0.2 ...>"
_BLOCKED = re.compile(r"\b(" + "|".join(BLOCKED_STATUSES) + r"): ")


# what urllib and http.client say of a URL no request can be made for (url_fetch refuses most of these
# before urllib sees them; a redirect's Location can still carry one): the URL's own fault, final
_URL_FAULTS = ("can't contain control characters", "nonnumeric port", "no host given", "unknown url type",
               "codec can't encode", "port must be 0-65535", "label empty or too long")


class TransientDownloadError(RuntimeError):
    """Most URLs of a partition failed for transient reasons; nothing was committed, a retry may succeed."""


def classify_failure(message: str | None, i2d_status: str) -> str:
    """Map an img2dataset error message onto a ledger status."""
    msg = (message or "").lower()
    blocked = _BLOCKED.search(msg)
    if blocked:
        return blocked.group(1)
    # url_fetch's, image_decode's and polite_fetch's refusals
    if msg.startswith(("invalid_url:", "unsupported_image:", "host_paused:", "tdm_reserved:", "disallowed_robots:",
                       "robots_unavailable:")):
        return msg.split(":", 1)[0]
    if "x-robots-tag" in msg:
        return "opted_out"
    if any(m in msg for m in _URL_FAULTS):
        return "invalid_url"
    code = _HTTP_CODE.match(msg)
    if code:
        status = int(code.group(1))
        if status == 429:
            return "rate_limited"
        return "server_error" if status >= 500 else "http_error"
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
    """One download task's input: a URL parquet file and the first shard id it may use.

    `key_limit` (a fraction of the scale-key range) leaves the URLs above it
    deferred; 1.0 downloads them all.
    """

    path: str
    rows: int
    first_shard: int
    key_limit: float = 1.0
    # a subset file (DataComp's u8,u8 .npy): only its URLs are downloaded, the others deferred; "" = all
    only: str = ""

    @property
    def name(self) -> str:
        """Unique within a pool: URL parts of several crawls may feed one pool version."""
        return partition_name(self.path)


def key_fraction(uids: pa.Array | list[str]) -> np.ndarray:
    """Each uid's scale key as a fraction of the key range (see schema.scale_key)."""
    return np.array([scale_key(u) for u in (uids.to_pylist() if hasattr(uids, "to_pylist") else uids)],
                    dtype=np.float64) / 2.0**64


def plan_partitions(partitions: list[dict], first_shard: int, samples_per_shard: int) -> list[Partition]:
    """Give each partition its own dense range of shard ids, starting at `first_shard`."""
    plan, nxt = [], first_shard
    for part in partitions:
        plan.append(Partition(part["path"], int(part["rows"]), nxt))
        nxt += max(1, -(-int(part["rows"]) // samples_per_shard))
    return plan


def committed_markers(root: str) -> list[str]:
    """The download markers of every pool version under `root`."""
    return storage.ls(pools_dir(root), f"*/_markers/{STAGE}/*")


def next_free_shard(pool: PoolLayout) -> int:
    """One past the highest shard id any committed download task of any pool version used.

    Shard ids are unique across the versions of a storage root, so a version
    that lists its parent's shards beside its own never holds two of one name.
    """
    used = [max(storage.read_json(m).get("shards", [-1]), default=-1) for m in committed_markers(pool.root)]
    return max(used, default=-1) + 1


def img2dataset_kwargs(url_list: str, output_folder: str, config: PlatformConfig, blur_faces: bool = False) -> dict:
    """The arguments of ``img2dataset.download`` for one URL parquet: DataComp's settings (download_upstream.py's,
    with the published face boxes blurred when `blur_faces`)."""
    dl = config.download
    return dict(
        url_list=url_list,
        bbox_col=BBOX_COLUMN if blur_faces else None,
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


def polite_settings(config: PlatformConfig, pool: PoolLayout, tmp: str) -> dict:
    """What the runner screens and paces the partition's hosts by (host_rules.py, polite_fetch.py), and
    where it writes the URLs to download, those decided without a request, and what the rules cost."""
    dl = config.download
    return {"robots_txt": dl.robots_txt, "tdmrep": dl.tdmrep, "cache_dir": host_rules_dir(pool.root),
            "claims_dir": host_claims_dir(pool.root),
            "user_agent": user_agent(dl.user_agent_token, dl.contact_url), "agent": dl.user_agent_token,
            "timeout": dl.timeout, "max_age_s": dl.rules_max_age_hours * 3600,
            # the rules' requests wait on the network only: as many at once as the download's threads together
            "threads": max(64, dl.processes_count * dl.thread_count),
            "per_host_rps": dl.per_host_rps, "connections": dl.per_host_connections,
            "retry_after_max_s": dl.retry_after_max_s, "backoff_max_s": dl.host_backoff_max_s,
            "urls": storage.join(tmp, "_input", "screened.parquet"),
            "decisions": storage.join(tmp, "decided.parquet"), "report": storage.join(tmp, "rules.json")}


def _run_img2dataset(partition: Partition, url_list: str, out_dir: str, config: PlatformConfig,
                     blur_faces: bool, polite: dict) -> None:
    dl = config.download
    if partition.first_shard > 0:
        # img2dataset's "extend" mode numbers new shards after the highest existing
        # stats file: seeding one makes this partition's shards start at first_shard.
        seed = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0,
                "start_time": time.time(), "end_time": time.time(), "status_dict": {}}
        storage.write_json(storage.join(out_dir, f"{partition.first_shard - 1:08d}_stats.json"), seed)
    else:
        storage.makedirs(out_dir)
    kwargs = img2dataset_kwargs(url_list, out_dir, config, blur_faces) | {"incremental_mode": "extend"}
    job = {"img2dataset": kwargs, "polite": polite}
    env = dict(os.environ)
    # OpenCV refuses to decode beyond this many pixels: a bomb costs no memory.
    env.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2 * dl.max_image_area))
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    env[ALLOWED_ENV] = json.dumps(list(dl.allowed_private_addresses))
    env[PROXY_ENV] = dl.proxy  # the runner drops the environment's own proxies (download_runner.py)
    env[HOSTS_ENV] = json.dumps(list(dl.host_addresses))
    # a child interpreter of its own: img2dataset's workers are spawned, and spawn re-runs the parent's
    # __main__ (in Airflow, the airflow CLI, which must not start up inside a task); the runner's
    # __main__ installs the address guard in each of them.
    # In a session (process group) of its own, with its download processes: it kills that group when this
    # process dies (download_runner's parent-death signal: kill -9 too, and the SIGKILL with which Airflow's
    # supervisor ends a task), and this call kills it whenever it ends (Ctrl-C, which the terminal no longer
    # sends to the group; a task's execution_timeout), so no runner outlives the attempt that started it.
    proc = subprocess.Popen([sys.executable, "-m", "datacomp_ops.download.runner", json.dumps(job),
                             str(os.getpid())], env=env, start_new_session=True)
    try:
        returncode = proc.wait()
    finally:
        _kill_group(proc)
    if returncode != 0:
        raise RuntimeError(f"img2dataset failed on {partition.path} (exit code {returncode})")


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the runner's process group: the runner and any download process left of it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _attempt_dir(pool: PoolLayout, partition: Partition) -> tuple[str, str]:
    """(the partition's temporary folder, a fresh one inside it for this attempt).

    Earlier attempts' folders go: the caller holds the pool version's lease (versions.py), so none of
    them is still in use. Each attempt has its own, so that a runner left over from a killed attempt
    (on another machine, or where no parent-death signal exists) never writes into this one.
    """
    base = storage.join(pool.base, "_tmp", f"{STAGE}-{partition.name}")
    storage.remove(base)
    return base, storage.join(base, f"attempt-{uuid.uuid4().hex[:12]}")


def _split_by_key(partition: Partition, tmp: str) -> tuple[str | None, pa.Table, pa.Table, list[str]]:
    """(URL parquet for img2dataset or None, rows to download, rows deferred, why each was deferred)."""
    with storage.open_file(partition.path) as f:
        table = pq.read_table(f)
    if "attempt" not in table.column_names:  # a crawl's URL part: first attempt
        table = table.append_column("attempt", pa.array([1] * table.num_rows, pa.int32()))
    if partition.key_limit >= 1.0 and not partition.only:
        return partition.path, table, table.slice(0, 0), []
    below = key_fraction(table["uid"]) < partition.key_limit
    wanted = in_subset(uid_strings_to_array(table["uid"], where=partition.path), read_subset(partition.only)) \
        if partition.only else np.ones(table.num_rows, bool)
    todo, deferred = table.filter(pa.array(below & wanted)), table.filter(pa.array(~(below & wanted)))
    why = [f"scale key above {partition.key_limit:.6g}: not needed by this build's scale" if not b else
           f"not in the subsets this download is limited to ({partition.only})"
           for b in below[~(below & wanted)]]
    if not todo.num_rows:
        return None, todo, deferred, why
    path = storage.join(tmp, "_input", "urls.parquet")
    with storage.atomic_write(path) as f:
        pq.write_table(todo, f)
    return path, todo, deferred, why


def _drop_from_shard(tar_url: str, keys: set[str], status: str) -> None:
    """Take `keys`' samples out of an img2dataset shard (its tar, and its parquet's status), in place."""
    import tarfile

    with storage.open_file(tar_url) as f:
        data = f.read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            if member.name.split(".", 1)[0] not in keys:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    storage.write_bytes(tar_url, out.getvalue())
    parquet = tar_url[: -len(".tar")] + ".parquet"
    with storage.open_file(parquet) as f:
        meta = pq.read_table(f)
    dropped = pc.is_in(meta["key"], pa.array(sorted(keys)))
    meta = meta.set_column(meta.column_names.index("status"), "status",
                           pc.if_else(dropped, status, meta["status"]))
    with storage.atomic_write(parquet) as f:
        pq.write_table(meta, f)


def run_download(partition: Partition, pool: PoolLayout, config: PlatformConfig,
                 last_try: bool = True) -> StageStats:
    """Download one partition into ``pool``'s shards; every URL gets a ledger row.

    With `last_try` false, a partition whose URLs failed mostly for transient
    reasons (more than ``download.max_transient_fraction`` of them) raises
    TransientDownloadError and commits nothing.
    """
    marker = pool.marker(STAGE, partition.name)
    if storage.exists(marker):
        log.info("partition %s already downloaded; nothing to do", partition.name)
        return StageStats.from_dict(storage.read_json(marker))
    start = time.monotonic()
    tmp_base, tmp = _attempt_dir(pool, partition)
    url_list, todo, deferred, deferred_why = _split_by_key(partition, tmp)
    published = HASH_COLUMN in todo.column_names and BBOX_COLUMN in todo.column_names
    i2d_dir = storage.join(tmp, "out")
    polite = polite_settings(config, pool, tmp)
    if url_list:
        _run_img2dataset(partition, url_list, i2d_dir, config, published, polite)

    stats = StageStats(STAGE)
    attempt_of = dict(zip(todo["uid"].to_pylist(), todo["attempt"].to_pylist()))
    expected = dict(zip(todo["uid"].to_pylist(), todo[HASH_COLUMN].to_pylist())) if published else {}
    drop = config.download.hash_mismatch == "drop"
    shard_ids, uids, urls, statuses, messages, attempts = [], [], [], [], [], []
    for meta_path in storage.ls(i2d_dir, "*.parquet") if url_list else []:
        shard_id = int(os.path.basename(meta_path).split(".")[0])
        with storage.open_file(meta_path) as f:
            meta = pq.read_table(f, columns=["uid", "url", "status", "error_message", "key"]
                                 + (["sha256"] if published else [])).to_pydict()
        dropped: set[str] = set()
        for i, (uid, url, i2d_status, message) in enumerate(zip(meta["uid"], meta["url"], meta["status"],
                                                                meta["error_message"])):
            status = "downloaded" if i2d_status == "success" else classify_failure(message, i2d_status)
            if status == "downloaded" and published and expected.get(uid) and meta["sha256"][i] != expected[uid]:
                status = "hash_mismatch_dropped" if drop else ledger.HASH_MISMATCH
                message = (f"sha256 {meta['sha256'][i]} of the bytes, {expected[uid]} published; "
                           + ("dropped (download.hash_mismatch=drop)" if drop else "kept, flagged"))
                if drop:
                    dropped.add(meta["key"][i])
            uids.append(uid)
            urls.append(url)
            statuses.append(status)
            messages.append(None if status == "downloaded" else message)
            attempts.append(attempt_of.get(uid) - (status in ledger.POSTPONED))  # a host's pause is no attempt
            stats.add(status)
        if dropped:
            _drop_from_shard(storage.join(i2d_dir, f"{shard_id:08d}.tar"), dropped, "hash_mismatch_dropped")
        shard_ids.append(shard_id)
    for uid, url, attempt, why in zip(deferred["uid"].to_pylist(), deferred["url"].to_pylist(),
                                      deferred["attempt"].to_pylist(), deferred_why):
        uids.append(uid)
        urls.append(url)
        statuses.append(ledger.DEFERRED)
        messages.append(why)
        attempts.append(attempt - 1)  # not tried this time
        stats.add(ledger.DEFERRED)
    decided_rows = []
    if url_list and storage.exists(polite["decisions"]):  # decided by their hosts' rules, never requested
        with storage.open_file(polite["decisions"]) as f:
            decided = pq.read_table(f).to_pydict()
        decided_rows = decided["uid"]
        for uid, url, status, message in zip(decided["uid"], decided["url"], decided["status"], decided["message"]):
            uids.append(uid)
            urls.append(url)
            statuses.append(status)
            messages.append(message)
            attempts.append(attempt_of[uid] - (status in ledger.POSTPONED))
            stats.add(status)
        report = storage.read_json(polite["report"])
        for key, counter in (("origins", "hosts"), ("fetched", "rules_fetched"), ("cached", "rules_cached"),
                             ("requests", "rules_requests")):
            stats.add(counter, report[key])
        stats.timings["rules"] += report["seconds"]  # before the first request of the partition
    table = ledger.make_part(STAGE, uids, urls, statuses, messages, attempts, partition.path)
    input_uids = todo["uid"].to_pylist() + deferred["uid"].to_pylist()
    ledger.check_accounts_for(table, input_uids, where=f"download of {partition.path}")

    # Judged on first attempts only: URLs that already failed transiently before
    # (a requeue part) failing again says nothing about the hosts being down now.
    first = {u for u, a in attempt_of.items() if a == 1}
    transient = Counter(s for u, s in zip(uids, statuses) if s in ledger.TRANSIENT_FAILURES and u in first)
    tried = len(uids) - len(deferred) - len(decided_rows)  # handed to img2dataset after the hosts' rules
    if first and sum(transient.values()) > config.download.max_transient_fraction * len(first):
        detail = ", ".join(f"{k} {v}" for k, v in transient.most_common())
        if not last_try:
            storage.remove(tmp_base)
            raise TransientDownloadError(
                f"partition {partition.name}: {sum(transient.values())} of {len(first)} URLs failed transiently "
                f"({detail}); the image hosts or the network look down. Nothing was committed: the task's "
                f"retry downloads the partition again.")
        log.warning("partition %s: %d of %d URLs failed transiently (%s) on the last try; committing them as "
                    "such, later rebuilds retry them", partition.name, sum(transient.values()), len(first), detail)

    for shard_id in shard_ids:
        for suffix in SHARD_FILES:
            src = storage.join(i2d_dir, f"{shard_id:08d}{suffix}")
            if storage.exists(src):
                storage.move(src, storage.join(pool.downloads, f"{shard_id:08d}{suffix}"))
    ledger.write_part(pool.ledger_part(STAGE, partition.name), table)
    storage.remove(tmp_base)
    stats.add("urls", len(input_uids))
    stats.add("attempted", tried)
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.download(s) for s in shard_ids]
    record = stats.to_dict() | {"shards": shard_ids, "partition": partition.path}
    storage.write_json(marker, record)
    log.info("partition %s: %s", partition.name, json.dumps(stats.to_dict()["counters"]))
    return stats
