"""What the UI page and ``datacomp ledger`` show of a pool: its versions' counts, and one URL's story.

- ``version_summary``: a pool version's ledger, the current status of every
  URL and the counts per stage and status of each version of its chain.
- ``lookup``: a URL or uid, the crawl and WAT file it was extracted from (its
  URL part's row), its status at each stage of each version, why it left the
  pool if it did, and the subsets that hold it.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage, versions
from ..core.layout import crawl_of_url_part, parse_subset, subsets_dir
from ..core.schema import uid_strings_to_array

UID = re.compile(r"^[0-9a-f]{32}$")


def version_summary(root: str, version: str) -> dict:
    dirs, names = versions.ledger_dirs(root, version)
    history = ledger.history(dirs, names)
    current = ledger.latest(history)
    out = {"pool_version": version, "chain": names, "published": versions.is_published(root, version),
           "urls": current.num_rows, "statuses": ledger.counts(current) if current.num_rows else {},
           "by_version": {}}
    for name in names:
        rows = history.filter(pc.equal(history["version"], name))
        out["by_version"][name] = {stage: ledger.counts(part) for stage in ledger.STAGE_ORDER
                                   if (part := rows.filter(pc.equal(rows["stage"], stage))).num_rows}
    return out


def pool_versions(root: str) -> list[dict]:
    """Every version of the pool under `root`, newest first, with its counts (a version without a ledger
    yet is listed as open)."""
    out = []
    for info in reversed(versions.list_versions(root)):
        name = info["version"]
        try:
            out.append(version_summary(root, name))
        except (FileNotFoundError, KeyError, ValueError):
            out.append({"pool_version": name, "chain": [name], "published": False, "urls": 0, "statuses": {},
                        "by_version": {}})
    return out


def _origin(source: str, uid: str) -> dict:
    """The URL part row of `uid` (crawl, WAT file, page, caption), from the part a download row names."""
    if not source or not storage.exists(source):
        return {}
    with storage.open_file(source) as f:
        table = pq.read_table(f)
    rows = table.filter(pc.equal(table["uid"], uid)).to_pylist()
    if not rows:
        return {}
    row = rows[0]
    crawl = crawl_of_url_part(source)
    return {"crawl": crawl, "wat_file": row.get("wat_path"), "page_url": row.get("page_url"),
            "caption": row.get("text"), "url_part": source}


def _subsets_holding(root: str, uid: str) -> list[str]:
    key = uid_strings_to_array(pa.array([uid]))[0]
    found = []
    for path in storage.ls(subsets_dir(root), "*/*/*.npy"):
        with storage.open_file(path) as f:
            subset = np.load(f)
        at = np.searchsorted(subset, key)
        if at < len(subset) and subset[at] == key:
            found.append("/".join(parse_subset(path)))
    return found


def lookup(root: str, query: str, version: str = "") -> dict:
    """The story of one URL or uid in the pool's newest version's chain."""
    query = query.strip()
    version = version or versions.latest(root, published=False)
    if not version:
        raise versions.VersionError(f"no pool version under {root} yet")
    dirs, names = versions.ledger_dirs(root, version)
    history = ledger.history(dirs, names)
    column = "uid" if UID.match(query) else "url"
    rows = history.filter(pc.equal(history[column], query)).drop_columns(["_order"]).to_pylist()
    if not rows:
        return {"query": query, "column": column, "found": False, "pool_version": version, "chain": names}
    uid = rows[0]["uid"]
    current = rows[-1]
    passed = current["status"] == ledger.PASS_STATUS.get(current["stage"])
    source = next((r["source"] for r in reversed(rows) if r.get("source")), "")
    return {"query": query, "column": column, "found": True, "pool_version": version, "chain": names,
            "uid": uid, "url": rows[0]["url"], "history": rows, "status": current["status"],
            "stage": current["stage"], "in_pool": passed and current["stage"] == ledger.STAGE_ORDER[-1],
            "left_because": None if passed else current["status"], "message": current.get("message"),
            "origin": _origin(source, uid), "subsets": _subsets_holding(root, uid)}
