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
"""

from __future__ import annotations

import datetime
import re

from . import storage
from .layout import PoolLayout


class VersionError(ValueError):
    """A pool version cannot be used as asked; the message says why and what to do."""


def _info_path(root: str, version: str) -> str:
    return storage.join(PoolLayout(root, version).base, "version.json")


def _claim_path(root: str, run_key: str) -> str:
    return storage.join(root, "pool", "_runs", re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key) + ".json")


def is_published(root: str, version: str) -> bool:
    return storage.exists(PoolLayout(root, version).manifest)


def list_versions(root: str) -> list[dict]:
    """Every version under `root`, oldest first, with ``published`` set."""
    infos = [storage.read_json(p) for p in storage.ls(storage.join(root, "pool"), "*/version.json")]
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
    claims = [storage.read_json(p) for p in storage.ls(storage.join(root, "pool", "_runs"), "*.json")]
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


def open_version(root: str, run_key: str, requested: str = "") -> str:
    """The version this run builds: the one it claimed before, the open one, or a new one."""
    claim = _claim_path(root, run_key)
    if storage.exists(claim):
        return storage.read_json(claim)["version"]
    versions = list_versions(root)
    if requested:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", requested):
            raise VersionError(f"pool version {requested!r}: use letters, digits, '.', '_' and '-'")
        found = [i for i in versions if i["version"] == requested]
        if found and found[0]["published"]:
            raise VersionError(f"pool version {requested!r} is published and stays as it is; name a new version, "
                               f"or leave pool_version empty for the next one")
        pending = [i["version"] for i in versions if not i["published"] and i["version"] != requested]
        if pending:
            raise VersionError(f"pool version {pending[0]!r} is still open (a run that did not publish); "
                               f"finish it with pool_version={pending[0]!r} or leave pool_version empty")
        if not found:
            _create(root, requested, run_key)
        version = requested
    else:
        pending = [i["version"] for i in versions if not i["published"]]
        if pending:
            version = pending[-1]
        else:
            version = f"v{max((i['seq'] for i in versions), default=0) + 1:04d}"
            _create(root, version, run_key)
    storage.write_json(claim, {"version": version, "run": run_key})
    return version
