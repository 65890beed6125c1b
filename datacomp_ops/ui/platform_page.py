"""The platform's page in the Airflow UI (plugins/datacomp_plugin.py serves it): pool versions with
their counts per stage and removal reason, a ledger lookup, and the leaderboard."""

from __future__ import annotations

import html
import posixpath

from ..core import storage, versions
from ..core.layout import PoolLayout, dataset_root, datasets_dir, is_name
from ..evaluation import leaderboard
from .pool_report import lookup, pool_versions

STYLE = """
body{font-family:system-ui,sans-serif;margin:20px;color:#222} h1{margin-top:0}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f2f2f2} td.n{text-align:right} .ok{color:#17702a} .out{color:#a33}
form input[type=text]{width:560px;padding:4px} section{margin-bottom:28px} .muted{color:#777}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _decay_html(report: dict) -> str:
    """A published pool version's decay (pool/decay.py): held of given, lost by status, the hosts that lost most."""
    now = report["now"]
    lost = ", ".join(f"{_e(k)} {n:,}" for k, n in sorted(now["lost_by_status"].items(), key=lambda kv: -kv[1]))
    hosts = ", ".join(f"{_e(d['host'])} {d['lost']:,}" for d in report["top_domains_lost"][:3])
    return (f"held <b>{now['held']:,}</b> of {now['given']:,} ({100 * report['held_fraction']:.1f}%), "
            f"pending {now['pending']:,}, lost {now['lost']:,}" + (f": {lost}" if lost else "")
            + (f"<br><span class='muted'>hosts that lost most: {hosts}</span>" if hosts else ""))


def _versions_table(root: str, title: str) -> str:
    rows = pool_versions(root)
    if not rows:
        return f"<h3>{_e(title)}</h3><p class='muted'>No pool version yet.</p>"
    decay = {v["pool_version"]: storage.read_json(PoolLayout(root, v["pool_version"]).decay_report) for v in rows
             if storage.exists(PoolLayout(root, v["pool_version"]).decay_report)}
    out = [f"<h3>{_e(title)}</h3><table class='versions'><thead><tr><th>Version</th><th>Published</th>"
           "<th>URLs (chain)</th><th>Current status of each URL</th><th>This version's rows, per stage</th>"
           + ("<th>Decay of the published uids</th>" if decay else "") + "</tr></thead><tbody>"]
    for v in rows:
        statuses = ", ".join(f"{_e(k)} {n:,}" for k, n in sorted(v["statuses"].items(), key=lambda kv: -kv[1]))
        own = v["by_version"].get(v["pool_version"], {})
        stages = "<br>".join(f"<b>{_e(stage)}</b>: " + ", ".join(f"{_e(k)} {n:,}" for k, n in sorted(
            counts.items(), key=lambda kv: -kv[1])) for stage, counts in own.items())
        cell = (f"<td class='decay'>{_decay_html(decay[v['pool_version']]) if v['pool_version'] in decay else '–'}"
                "</td>") if decay else ""
        out.append(f"<tr><td>{_e(v['pool_version'])}</td><td>{'yes' if v['published'] else 'open'}</td>"
                   f"<td class='n'>{v['urls']:,}</td><td>{statuses or '–'}</td><td>{stages or '–'}</td>{cell}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _lookup_html(root: str, query: str) -> str:
    form = ("<form method='get'><input type='text' name='q' placeholder='a URL or a uid (32 hex digits)' "
            f"value='{_e(query)}'> <button type='submit'>Look up</button></form>")
    if not query:
        return form
    try:
        story = lookup(root, query)
    except versions.VersionError as exc:
        return form + f"<p class='out'>{_e(exc)}</p>"
    if not story["found"]:
        return form + (f"<p class='out' id='lookup-result'>No ledger row of {_e(story['column'])} "
                       f"{_e(query)} in pool version {_e(story['pool_version'])} or its ancestors.</p>")
    origin = story["origin"]
    verdict = ("<span class='ok'>in the pool</span>" if story["in_pool"]
               else f"<span class='out'>left the pool: {_e(story['left_because'])}</span>"
               + (f" ({_e(story['message'])})" if story.get("message") else ""))
    rows = "".join(f"<tr><td>{_e(r['version'])}</td><td>{_e(r['stage'])}</td><td>{_e(r['status'])}</td>"
                   f"<td>{_e(r['attempt'])}</td><td>{_e(r['message'])}</td></tr>" for r in story["history"])
    subsets = ", ".join(_e(s) for s in story["subsets"]) or "none"
    return form + (
        f"<div id='lookup-result'><p><b>uid</b> {_e(story['uid'])}<br><b>URL</b> {_e(story['url'])}<br>"
        f"<b>Status</b> {verdict}<br>"
        f"<b>From</b> crawl {_e(origin.get('crawl'))}, WAT file {_e(origin.get('wat_file'))}, page "
        f"{_e(origin.get('page_url'))}<br><b>Caption</b> {_e(origin.get('caption'))}<br>"
        f"<b>In subsets</b> {subsets}</p>"
        "<table><thead><tr><th>Version</th><th>Stage</th><th>Status</th><th>Attempt</th><th>Message</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></div>")


def _kind(root: str) -> str:
    """How the page names a pool of its own: a published DataComp pool, or an imported dataset."""
    latest = versions.latest(root)
    published = latest and storage.read_json(PoolLayout(root, latest).manifest).get("kind") == "published"
    return "Published pool" if published else "Imported dataset"


def render(root: str, query: str = "") -> str:
    datasets = [name for name in (posixpath.basename(p.rstrip("/")) for p in storage.ls(datasets_dir(root), "*"))
                if is_name(name)]
    pools = _versions_table(root, "CommonPool") + "".join(
        _versions_table(dataset_root(root, d), f"{_kind(dataset_root(root, d))} {d}") for d in sorted(datasets))
    rows = leaderboard.aggregate(leaderboard.collect(root))  # one row per subset: its seeds' mean ± spread
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>DataComp</title>"
        f"<style>{STYLE}</style></head><body><h1>DataComp platform</h1>"
        f"<p class='muted'>Storage root {_e(root)}</p>"
        f"<section id='pools'><h2>Pool versions</h2>{pools}</section>"
        f"<section id='lookup'><h2>Ledger lookup</h2>{_lookup_html(root, query)}</section>"
        f"<section id='leaderboard'><h2>Leaderboard</h2>"
        + (leaderboard.table_html(rows) + leaderboard.plots_html(rows)
           if rows else "<p class='muted'>No evaluated run yet: train_clip, then evaluate_clip.</p>")
        + "</section></body></html>")
