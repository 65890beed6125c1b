"""Pool versions: each build publishes a new version over its parent's files, copying nothing.

All versions under one storage root form one chain. A build run works in an
*open* version (``pool/{version}/version.json`` without a manifest): its
downloads, metadata, published shards and ledger parts live there. Publishing
writes the version's manifest, which lists the parent's shards and metadata
files followed by its own, so the new version holds the old samples plus the
new ones while the parent stays readable as it was. A run that ends before
publishing leaves its version open; the next run carries on in it.

Versions are named ``v0001``, ``v0002``... unless a run names one. The run's
claim (``pool/_runs/{run}.json``) makes the choice stable when Airflow
retries the task that made it.

One build at a time works in an open version: it holds the version's lease
(``pool/_leases/{version}.json``, lease.py), taken before its claim is written.
A second build is refused with the holder named (or waits, DATACOMP_LEASE_WAIT_S).
The ``datacomp`` command holds the lease for its process (it ends when the
process dies); an Airflow run holds it for the run (``for_run``): each of its
tasks renews it, and its last task releases it.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import time
from typing import Iterator

from . import lease, storage
from .layout import PoolLayout, check_name, pools_dir, run_claims_dir, version_lease


class VersionError(ValueError):
    """A pool version cannot be used as asked; the message says why and what to do."""


class VersionBusy(VersionError):
    """Another build holds the pool version's lease; the message names it and when the lease ends."""


def _info_path(root: str, version: str) -> str:
    return storage.join(PoolLayout(root, version).base, "version.json")


def lease_path(root: str, version: str) -> str:
    return version_lease(root, version)


def _claim_path(root: str, run_key: str) -> str:
    return storage.join(run_claims_dir(root), re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key) + ".json")


def is_published(root: str, version: str) -> bool:
    return storage.exists(PoolLayout(root, version).manifest)


def list_versions(root: str) -> list[dict]:
    """Every version under `root`, oldest first, with ``published`` set."""
    infos = [storage.read_json(p) for p in storage.ls(pools_dir(root), "*/version.json")]
    for info in infos:
        info["published"] = is_published(root, info["version"])
    return sorted(infos, key=lambda i: i["seq"])


def info(root: str, version: str) -> dict:
    path = _info_path(root, version)
    if storage.exists(path):
        return storage.read_json(path) | {"published": is_published(root, version)}
    if storage.exists(PoolLayout(root, version).base):  # made by stage commands alone: a chain of its own
        return {"version": version, "parent": None, "seq": 0, "published": is_published(root, version)}
    known = ", ".join(i["version"] for i in list_versions(root)) or "none"
    raise VersionError(f"no pool version {version!r} under {root} (versions: {known})")


def runs(root: str, version: str) -> list[str]:
    """The runs that have worked in `version` (more than one while it stayed open), by their claims."""
    claims = [storage.read_json(p) for p in storage.ls(run_claims_dir(root), "*.json")]
    return sorted(c["run"] for c in claims if c["version"] == version)


def latest(root: str, published: bool = True) -> str | None:
    """The newest published version (or the newest of all, open ones included)."""
    versions = [i["version"] for i in list_versions(root) if i["published"] or not published]
    return versions[-1] if versions else None


def chain(root: str, version: str) -> list[str]:
    """`version` and its ancestors, oldest first."""
    out: list[str] = []
    current: str | None = version
    while current:
        if current in out:
            raise VersionError(f"pool versions under {root} form a cycle at {current}")
        out.append(current)
        current = info(root, current).get("parent")
    return out[::-1]


def ledger_dirs(root: str, version: str) -> tuple[list[str], list[str]]:
    """(ledger folders, version names) of the chain ending at `version`, oldest first."""
    names = chain(root, version)
    return [PoolLayout(root, v).ledger for v in names], names


def _create(root: str, version: str, run_key: str) -> None:
    parent = latest(root)
    seq = max((i["seq"] for i in list_versions(root)), default=0) + 1
    storage.write_json(_info_path(root, version), {
        "version": version, "parent": parent, "seq": seq, "created_by": run_key,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def _choose(root: str, requested: str) -> tuple[str, bool]:
    """(the version a new run builds, whether it must be created): the requested one, the open one, or the next."""
    versions = list_versions(root)
    if requested:
        check_name("pool version", requested, VersionError)
        found = [i for i in versions if i["version"] == requested]
        if found and found[0]["published"]:
            raise VersionError(f"pool version {requested!r} is published and stays as it is; name a new version, "
                               f"or leave pool_version empty for the next one")
        pending = [i["version"] for i in versions if not i["published"] and i["version"] != requested]
        if pending:
            raise VersionError(f"pool version {pending[0]!r} is still open (a run that did not publish); "
                               f"finish it with pool_version={pending[0]!r} or leave pool_version empty")
        return requested, not found
    pending = [i["version"] for i in versions if not i["published"]]
    if pending:
        return pending[-1], False
    return f"v{max((i['seq'] for i in versions), default=0) + 1:04d}", True


def _take(root: str, version: str, run_key: str, wait: float) -> None:
    try:
        lease.acquire(lease_path(root, version), run_key, wait=wait,
                      what=f"pool version {version} under {root}")
    except lease.LeaseHeld as exc:
        raise VersionBusy(str(exc)) from None


def open_version(root: str, run_key: str, requested: str = "", wait: float | None = None) -> str:
    """The version this run builds: the one it claimed before, the open one, or a new one.

    The run takes the version's lease first (for this process; see `holding`), waiting up to `wait`
    seconds (default DATACOMP_LEASE_WAIT_S, 0) for another build that holds it: VersionBusy names it.
    """
    deadline = time.monotonic() + (lease.wait_seconds() if wait is None else wait)
    claim = _claim_path(root, run_key)
    if storage.exists(claim):
        version = storage.read_json(claim)["version"]
        _take(root, version, run_key, max(0.0, deadline - time.monotonic()))
        return version
    while True:
        version, new = _choose(root, requested)
        _take(root, version, run_key, max(0.0, deadline - time.monotonic()))
        try:
            # the build we waited for may have published this version meanwhile: choose again
            if _choose(root, requested) == (version, new):
                break
        except VersionError:
            lease.release(lease_path(root, version), run_key)
            raise
        lease.release(lease_path(root, version), run_key)
    if new:
        _create(root, version, run_key)
    storage.write_json(claim, {"version": version, "run": run_key})
    return version


@contextlib.contextmanager
def holding(root: str, version: str, run_key: str, *, for_run: bool = False, release: bool | None = None,
            wait: float | None = None) -> Iterator[None]:
    """Hold `version`'s lease for `run_key` while the block works in it, renewed by a heartbeat.

    For the ``datacomp`` command (the default) the lease is this process's and is released at the
    end, also on errors. For a task of an Airflow run (``for_run``) it is the run's: it stays held
    for the run's next task, until the task that ends the run releases it (``release=True``).
    Another build's live lease raises VersionBusy, as does losing ours meanwhile.
    """
    what = f"pool version {version} under {root}"
    try:
        with lease.held(lease_path(root, version), run_key, bound_to_pid=not for_run, wait=wait, what=what,
                        release_at_end=(not for_run) if release is None else release):
            yield
    except lease.LeaseHeld as exc:
        raise VersionBusy(str(exc)) from None
    except lease.LeaseLost as exc:
        raise VersionBusy(f"{what}: build {run_key} lost its lease and stopped: {exc}") from None
