"""Leases on storage: one holder at a time for a named thing (an open pool version), local or ``s3://``.

A lease is one JSON file: its holder (a build's run key), the host and pid that last wrote it, when it
was acquired and when it expires. The holder renews it from a heartbeat thread every quarter of its
time to live. Anyone may take a lease that has expired, or whose holder was bound to a process on
this host that is gone (``kill -9`` included): no one waits out the time to live of a dead local
build. A lease bound to a *run* instead (an Airflow DAG run, whose tasks are separate processes that
come and go) survives between its tasks and ends only by time or release.

Taking a lease is write, settle, read back. fsspec gives no exclusive create that works across
S3-compatible stores (s3fs's ``mode="create"`` sends ``If-None-Match``, "only known to work on AWS
S3"; taking over an expired lease would also need a compare-and-swap), and renames are copies
there. So two builds that both found the lease free may both write it; S3 is strongly consistent
read-after-write and the last write wins, so each writer waits ``settle`` seconds and reads the
lease back: the one whose write is not there lost and is refused as if it had found the lease held.
At most one wins while each writer's read and write are less than ``settle`` apart: a writer reads
again when its read is already half that old, writes in one PUT, and waits twice its own
read-to-write time when that was longer. Should a race still be lost unseen, the loser's next
heartbeat finds the other holder's name in the file and stops its build. The same protocol runs on
local paths (written by rename, so never read half-written), with a shorter settle.

Times: ``DATACOMP_LEASE_TTL_S`` (default 120 s) for a process's lease, ``DATACOMP_LEASE_RUN_TTL_S``
(default 3600 s) for a run's, ``DATACOMP_LEASE_WAIT_S`` (default 0: refuse at once) for how long a
second build waits for the holder to finish, ``DATACOMP_LEASE_SETTLE_S`` (default 2 s on S3,
0.5 s on local paths).
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Iterator

from fsspec.implementations.local import LocalFileSystem

from . import storage

log = logging.getLogger(__name__)

TTL_ENV, RUN_TTL_ENV, WAIT_ENV, SETTLE_ENV = ("DATACOMP_LEASE_TTL_S", "DATACOMP_LEASE_RUN_TTL_S",
                                              "DATACOMP_LEASE_WAIT_S", "DATACOMP_LEASE_SETTLE_S")
DEFAULT_TTL_S, DEFAULT_RUN_TTL_S = 120.0, 3600.0
_POLL_S = 2.0


class LeaseError(RuntimeError):
    """A lease cannot be had or was lost; ``record`` is the lease as its holder wrote it."""

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record


class LeaseHeld(LeaseError):
    """Another live holder has the lease."""


class LeaseLost(LeaseError):
    """Our lease was taken over (it expired unrenewed, or a race was lost unseen)."""


def _seconds(env: str, default: float) -> float:
    return float(os.environ.get(env) or default)


def ttl() -> float:
    return _seconds(TTL_ENV, DEFAULT_TTL_S)


def run_ttl() -> float:
    return _seconds(RUN_TTL_ENV, DEFAULT_RUN_TTL_S)


def wait_seconds() -> float:
    return _seconds(WAIT_ENV, 0.0)


def settle_seconds(url: str) -> float:
    return _seconds(SETTLE_ENV, 0.5 if storage.is_local(url) else 2.0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(t: datetime.datetime) -> str:
    return t.isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended


def process_alive(pid: int, started: str | None = None) -> bool:
    if os.path.isdir("/proc/self"):
        now = _process_start(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(url: str) -> dict | None:
    """The lease at `url`, or None when there is none; a storage failure is raised, never taken as free."""
    fs, path = storage.get_fs(url)
    try:
        # one whole GET: a file opened for reading fails when another writer replaces it meanwhile
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write(url: str, record: dict) -> None:
    """`record` at `url` whole: by rename on a local path, in one PUT on an object store."""
    fs, path = storage.get_fs(url)
    if isinstance(fs, LocalFileSystem):
        storage.write_json(url, record)
    else:  # one PUT: the object appears whole, sooner than through write_json's copy of a temporary
        fs.pipe_file(path, json.dumps(record, indent=2, sort_keys=True).encode())


def is_live(record: dict | None, holder: str | None = None) -> bool:
    """Whether `record` still holds its lease against `holder`.

    Not when it expired; not when it is bound to a process of this host that is gone; not when it
    was taken by this very process for another holder (one process builds one version at a time: a
    process that opens a version again under a new run key has finished with the last one).
    """
    if not record or record.get("holder") == holder:
        return False
    if datetime.datetime.fromisoformat(record["expires_at"]) <= _now():
        return False
    if record.get("host") == socket.gethostname():
        if record.get("pid") == os.getpid():
            return False
        if record.get("bound_to_pid") and not process_alive(record["pid"], record.get("pid_start")):
            return False
    return True


def describe(record: dict) -> str:
    """Who holds a lease, since when, and when it ends if nobody renews it."""
    who = f"pid {record.get('pid')} on host {record.get('host')}"
    if record.get("bound_to_pid"):
        return (f"held by build {record['holder']} ({who}) since {record['acquired_at']}; it expires at "
                f"{record['expires_at']} if its holder dies (at once, on this host)")
    return (f"held by run {record['holder']} (last renewed by {who}) since {record['acquired_at']}; it expires "
            f"at {record['expires_at']} unless a task of that run renews it")


def _record(holder: str, bound_to_pid: bool, seconds: float, acquired_at: str | None = None) -> dict:
    now = _now()
    return {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "bound_to_pid": bound_to_pid,
            "acquired_at": acquired_at or _iso(now), "renewed_at": _iso(now),
            "expires_at": _iso(now + datetime.timedelta(seconds=seconds))}


def acquire(url: str, holder: str, *, bound_to_pid: bool = True, seconds: float | None = None,
            wait: float | None = None, what: str = "") -> dict:
    """Take or renew the lease at `url` for `holder`, waiting up to `wait` seconds for another live holder.

    Raises LeaseHeld, naming the holder, when it is still held after that. `what` starts the message.
    """
    seconds = seconds if seconds is not None else (ttl() if bound_to_pid else run_ttl())
    wait = wait_seconds() if wait is None else wait
    settle = settle_seconds(url)
    deadline = time.monotonic() + wait
    waited, slow_reads = False, 0
    while True:
        read_at = time.monotonic()
        current = read(url)
        if is_live(current, holder):
            if time.monotonic() >= deadline:
                time.sleep(settle)  # a writer still racing for it may be named now: refuse naming the winner
                if (read(url) or {}).get("holder") != current["holder"]:
                    deadline = time.monotonic()
                    continue
                raise LeaseHeld(f"{what or url} is {describe(current)}", current)
            if not waited:
                log.warning("%s is %s; waiting up to %.0f s", what or url, describe(current), wait)
                waited = True
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
            continue
        ours = current is not None and current.get("holder") == holder and \
            datetime.datetime.fromisoformat(current["expires_at"]) > _now()
        if not ours and time.monotonic() - read_at > settle / 2 and slow_reads < 5:
            slow_reads += 1
            continue  # too long since the read: someone may have taken it meanwhile
        record = _record(holder, bound_to_pid, seconds, current["acquired_at"] if ours else None)
        write(url, record)
        if ours:
            return record  # a renewal: nobody takes a live lease
        time.sleep(max(settle, 2 * (time.monotonic() - read_at)))
        back = read(url)
        if back is not None and back.get("holder") == holder:
            if current is not None:
                log.info("%s: took over from %s", what or url, describe(current))
            return record
        # lost the race: once the other writers' read-backs are done too, the file names the winner, whom
        # the loop then finds live (and refuses or waits)
        time.sleep(settle)


def renew(url: str, holder: str, *, bound_to_pid: bool, seconds: float) -> dict:
    """Extend our lease; LeaseLost when the file names someone else.

    A takeover written between this read and this write is overwritten: the taker, reading its write
    back after `settle`, then finds ours and counts itself the loser (acquire), so one holder remains.
    """
    current = read(url)
    if current is not None and current.get("holder") != holder:
        raise LeaseLost(f"lease {url} was taken over: {describe(current)}", current)
    record = _record(holder, bound_to_pid, seconds, current["acquired_at"] if current else None)
    write(url, record)
    return record


def release(url: str, holder: str) -> bool:
    """Give the lease up if `holder` has it; whether it did."""
    current = read(url)
    if current is None or current.get("holder") != holder:
        return False
    storage.remove(url)
    return True


def _interrupt_main() -> None:
    """KeyboardInterrupt in the main thread, even while it waits in a system call (held() says why)."""
    try:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    except (AttributeError, ValueError, OSError):
        _thread.interrupt_main()


class _Heartbeat(threading.Thread):
    def __init__(self, url: str, holder: str, bound_to_pid: bool, seconds: float):
        super().__init__(name=f"lease-heartbeat {holder}", daemon=True)
        self.url, self.holder, self.bound_to_pid, self.seconds = url, holder, bound_to_pid, seconds
        self.stop = threading.Event()
        self.lost: LeaseLost | None = None

    def run(self) -> None:
        while not self.stop.wait(self.seconds / 4):
            try:
                renew(self.url, self.holder, bound_to_pid=self.bound_to_pid, seconds=self.seconds)
            except LeaseLost as exc:
                log.error("%s; stopping", exc)
                self.lost = exc
                if not self.stop.is_set():  # the block is still working
                    _interrupt_main()
                return
            except OSError as exc:  # storage unreachable for a moment: the next beat tries again
                log.warning("could not renew lease %s: %s", self.url, exc)


@contextlib.contextmanager
def held(url: str, holder: str, *, bound_to_pid: bool = True, seconds: float | None = None,
         wait: float | None = None, release_at_end: bool = True, what: str = "") -> Iterator[dict]:
    """Hold the lease for the block, renewed by a heartbeat; released at the end (also on errors).

    A run's task (``bound_to_pid=False, release_at_end=False``) leaves it held for the run's next
    task. Losing the lease meanwhile interrupts the block and raises LeaseLost.
    """
    seconds = seconds if seconds is not None else (ttl() if bound_to_pid else run_ttl())
    record = acquire(url, holder, bound_to_pid=bound_to_pid, seconds=seconds, wait=wait, what=what)
    beat = _Heartbeat(url, holder, bound_to_pid, seconds)
    beat.start()
    try:
        yield record
    except KeyboardInterrupt:
        if beat.lost is not None:
            raise beat.lost from None
        raise
    finally:
        beat.stop.set()
        beat.join()
        if release_at_end and beat.lost is None:
            release(url, holder)
