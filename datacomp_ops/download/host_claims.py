"""Which partition asks a host for its rules when several partitions meet the host at once.

A run's partitions start together (mapped Airflow tasks, the CLI's parallel partitions) and share their
large hosts: each would find the host's robots.txt and tdmrep.json missing from the cache
(host_rules.py) and ask for them, so a host would be asked once per partition running, not once per run.
Before asking, a partition claims the origins it misses: one small JSON per origin under
``hosts/claims/`` on the storage root, naming the claim's token and until when it holds. A partition
that finds an origin claimed asks the others it won first, then waits for that origin's answer: the
cache entry once the claimer has written it, or, for a host that could not be asked, the answer the
claimer leaves in its claim. That answer serves only the partitions that were waiting on the claim: one
that starts later (a task's retry, the next run) asks the host again, as the cache does not keep it.

Claiming: on a local root an exclusive create (O_EXCL, which fails when the claim exists); on an
object store write, settle, read back, as core/lease.py does (fsspec has no exclusive create that works
on every S3-compatible store), one settle per partition for all its origins.
A claim whose time is up (its claimer died on another machine, or a host's Crawl-delay kept it longer),
or whose claimer was a process of this machine that is gone, is free to take: at worst the host is asked
twice, never not at all. Taking over a stale claim on a local root removes it
first: two partitions doing that at the same moment may both win, with the same worst case.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from concurrent.futures import Executor
from typing import Callable, TypeVar

from ..core import lease, storage

T = TypeVar("T")

# polling for answers: first after this long, then twice as long each round up to _POLL_MAX_S
_POLL_S, _POLL_MAX_S = 0.1, 2.0
# a claim created but not written yet is held this long from its creation
_UNWRITTEN_S = 10.0


def _read(path: str) -> dict | None:
    try:
        return lease.read(path)
    except ValueError:
        # created by a claimer this very moment, its record not written yet; held briefly from its creation,
        # so that one left empty by a claimer that died is free soon
        fs, p = storage.get_fs(path)
        try:
            made = fs.modified(p).timestamp()
        except (OSError, NotImplementedError, AttributeError):
            made = time.time()
        return {"token": "", "until": made + _UNWRITTEN_S}


def _record(token: str, life_s: float, answer: dict | None = None) -> dict:
    now = time.time()
    record = {"token": token, "until": now + life_s, "host": socket.gethostname(), "pid": os.getpid()}
    if answer is not None:
        record |= {"answer": answer, "answered_at": now}
    return record


def _create(path: str, record: dict) -> bool:
    """Create the claim at local `path` unless one exists: whether this call did. A reader that finds it
    before its record is written reads it as held (`_read`)."""
    _, p = storage.get_fs(path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def answered(record: dict | None, since: float) -> bool:
    """Whether `record` holds an answer given at `since` or later (while its reader was waiting on it)."""
    return bool(record) and "answer" in record and record.get("answered_at", 0.0) >= since


def _held(record: dict | None, now: float) -> bool:
    """Whether `record` is a claim still held: unanswered, within its time, and not made by a process of this
    machine that is gone (a download killed and run again at once does not wait out its own claims)."""
    if not record or "answer" in record or record.get("until", 0.0) <= now:
        return False
    return record.get("host") != socket.gethostname() or "pid" not in record or lease.process_alive(record["pid"])


def take(paths: dict[str, str], life_s: float, pool: Executor) -> tuple[str, list[str], list[str]]:
    """Claim the origins of `paths` (origin -> claim path) that no one else holds: (this call's token, the
    origins claimed, the origins others hold: wait for them). A claim holding an answer given before this
    call is free: the host is asked again."""
    token = uuid.uuid4().hex
    origins = list(paths)
    now = time.time()
    seen = dict(zip(origins, pool.map(lambda o: _read(paths[o]), origins)))
    others = [o for o in origins if _held(seen[o], now)]
    free = [o for o in origins if o not in set(others)]
    mine: list[str] = []
    if not free:
        return token, mine, others
    record = _record(token, life_s)
    if storage.is_local(paths[free[0]]):
        def create(origin: str) -> bool:
            if seen[origin] is not None:
                storage.remove(paths[origin])  # its time is up
            return _create(paths[origin], record)

        won = dict(zip(free, pool.map(create, free)))
    else:
        started = time.monotonic()
        list(pool.map(lambda o: lease.write(paths[o], record), free))
        time.sleep(max(lease.settle_seconds(paths[free[0]]), 2 * (time.monotonic() - started)))
        won = dict(zip(free, pool.map(lambda o: (_read(paths[o]) or {}).get("token") == token, free)))
    mine = [o for o in free if won[o]]
    return token, mine, others + [o for o in free if not won[o]]


def finish(path: str, token: str, answer: dict | None) -> None:
    """The claimer is done: its claim goes (the answer is in the cache), or holds `answer` for those waiting
    (a host that could not be asked, which the cache does not keep)."""
    current = _read(path)
    if current is None or current.get("token") != token:
        return  # taken over after its time was up: the taker answers
    if answer is None:
        storage.remove(path)
    else:
        lease.write(path, _record(token, 0.0, answer))


def wait(paths: dict[str, str], cached: Callable[[str], T | None], from_answer: Callable[[dict], T],
         since: float, pool: Executor) -> dict[str, T | None]:
    """Each origin's answer once its claimer gives it: the claim's answer given after `since` (when the
    caller found the claims held), else the cache's entry (`cached`) once the claim is gone; None where the
    claim ran out, or went without an answer the cache can give (then the caller asks the host itself)."""
    pending, out = list(paths), {}
    poll = _POLL_S
    while pending:
        now = time.time()
        records = dict(zip(pending, pool.map(lambda o: _read(paths[o]), pending)))
        for origin, record in records.items():
            if answered(record, since):
                out[origin] = from_answer(record["answer"])
            elif not _held(record, now):
                out[origin] = cached(origin)
        pending = [o for o in pending if o not in out]
        if pending:
            time.sleep(poll)
            poll = min(_POLL_MAX_S, 2 * poll)
    return out
