"""The leaderboard over every evaluated run: a table file and an HTML report, from the results alone.

One row per (dataset, pool version, scale, baseline): the subset's size, the
samples seen in training, and DataComp's aggregates (ImageNet, ImageNet
distribution shifts, VTAB, retrieval, the average). Written to
``{root}/leaderboard/leaderboard.parquet`` and ``.csv``, and
``{root}/leaderboard/index.html`` with two plots drawn as inline SVG (the
average per baseline; the average against the dataset's size).
"""

from __future__ import annotations

import html
import io
import logging
import math

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import storage
from .config import SCALES
from .eval_tasks import GROUP_TITLES, GROUPS

log = logging.getLogger(__name__)

COLUMNS = ("dataset", "pool_version", "scale", "baseline", "dataset_size", "samples_seen", *GROUPS, "average",
           "tasks_scored", "tasks", "suite", "model", "run_dir")


def _runs(root: str) -> list[tuple[str, str]]:
    """(dataset, run folder) of every evaluated run: the CommonPool's and each imported dataset's."""
    found = [("commonpool", u.rsplit("/", 1)[0]) for u in storage.ls(storage.join(root, "runs"), "*/*/*/eval_summary.json")]
    for summary in storage.ls(storage.join(root, "datasets"), "*/runs/*/*/*/eval_summary.json"):
        parts = summary.split("/")
        found.append((parts[-6], summary.rsplit("/", 1)[0]))
    return found


def collect(root: str) -> list[dict]:
    rows = []
    for dataset, run in _runs(root):
        summary = storage.read_json(storage.join(run, "eval_summary.json"))
        trained = storage.join(run, "training.json")
        lineage = storage.join(run, "lineage.json")
        record = storage.read_json(trained) if storage.exists(trained) else {}
        origin = storage.read_json(lineage) if storage.exists(lineage) else {}
        version, scale, baseline = run.split("/")[-3:]
        agg = summary["aggregates"]
        rows.append({"dataset": dataset, "pool_version": version, "scale": scale, "baseline": baseline,
                     "dataset_size": origin.get("subset_samples_in_shards"),
                     "samples_seen": record.get("samples_seen"),
                     **{g: agg[g]["score"] for g in (*GROUPS, "average")},
                     "tasks_scored": agg["average"]["tasks"], "tasks": agg["average"]["of"],
                     "suite": summary.get("suite", ""), "model": summary.get("model", ""), "run_dir": run})
    order = {s: i for i, s in enumerate(SCALES)}
    rows.sort(key=lambda r: (r["dataset"], r["pool_version"], order.get(r["scale"], 99),
                             -(r["average"] if r["average"] is not None else -1)))
    return rows


def write_leaderboard(root: str) -> dict:
    """Collect every evaluated run and write the table files and the report; returns their paths."""
    rows = collect(root)
    out = storage.join(root, "leaderboard")
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.string()) for c in ("dataset", "pool_version", "scale", "baseline")]
        + [("dataset_size", pa.int64()), ("samples_seen", pa.int64())]
        + [(g, pa.float64()) for g in (*GROUPS, "average")]
        + [("tasks_scored", pa.int64()), ("tasks", pa.int64())]
        + [(c, pa.string()) for c in ("suite", "model", "run_dir")]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, "leaderboard.parquet"), buf.getvalue())
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    storage.write_bytes(storage.join(out, "leaderboard.csv"), buf.getvalue())
    storage.write_bytes(storage.join(out, "index.html"), render_html(rows).encode())
    log.info("leaderboard: %d runs -> %s", len(rows), out)
    return {"rows": len(rows), "parquet": storage.join(out, "leaderboard.parquet"),
            "csv": storage.join(out, "leaderboard.csv"), "html": storage.join(out, "index.html")}


# -- the report -------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else html.escape(str(value))


def table_html(rows: list[dict]) -> str:
    head = ["Dataset", "Pool version", "Scale", "Baseline", "Dataset size", "Samples seen",
            *[GROUP_TITLES[g] for g in GROUPS], "Average", "Tasks"]
    body = []
    for r in rows:
        cells = [r["dataset"], r["pool_version"], r["scale"], r["baseline"], r["dataset_size"], r["samples_seen"],
                 *[r[g] for g in GROUPS], r["average"], f"{r['tasks_scored']} of {r['tasks']}"]
        body.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
    return ("<table class='leaderboard'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def bar_chart_svg(rows: list[dict], width: int = 640, bar: int = 22) -> str:
    """The average score of each run, one bar each, longest first."""
    scored = sorted((r for r in rows if r["average"] is not None), key=lambda r: -r["average"])
    if not scored:
        return "<p>No evaluated runs yet.</p>"
    label_w, top = 260, 10
    height = top * 2 + bar * len(scored)
    scale = (width - label_w - 60) / max(1e-9, max(r["average"] for r in scored))
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='Average score per baseline'>"]
    for i, r in enumerate(scored):
        y = top + i * bar
        name = html.escape(f"{r['baseline']} ({r['scale']}, {r['pool_version']})")
        w = r["average"] * scale
        parts.append(f"<text x='{label_w - 6}' y='{y + bar * 0.7:.0f}' text-anchor='end' font-size='12'>{name}</text>"
                     f"<rect x='{label_w}' y='{y + 3}' width='{w:.1f}' height='{bar - 6}' fill='#3b6fb6'/>"
                     f"<text x='{label_w + w + 4:.1f}' y='{y + bar * 0.7:.0f}' font-size='11'>{r['average']:.3f}</text>")
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(rows: list[dict], width: int = 640, height: int = 320) -> str:
    """The average score against the dataset's size (log scale), one point per run."""
    points = [r for r in rows if r["average"] is not None and r["dataset_size"]]
    if not points:
        return "<p>No evaluated runs with a dataset size yet.</p>"
    left, bottom, pad = 60, 40, 20
    xs = [math.log10(r["dataset_size"]) for r in points]
    ys = [r["average"] for r in points]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = 0.0, max(ys) * 1.1 or 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - pad)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - bottom - pad)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='Average score against dataset size'>",
             f"<line x1='{left}' y1='{height - bottom}' x2='{width - pad}' y2='{height - bottom}' stroke='#444'/>",
             f"<line x1='{left}' y1='{pad}' x2='{left}' y2='{height - bottom}' stroke='#444'/>",
             f"<text x='{(width + left) / 2:.0f}' y='{height - 6}' text-anchor='middle' font-size='12'>"
             f"dataset size (samples, log scale)</text>",
             f"<text x='14' y='{(height - bottom) / 2:.0f}' font-size='12' transform='rotate(-90 14 "
             f"{(height - bottom) / 2:.0f})' text-anchor='middle'>average score</text>"]
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(f"<text x='{left - 6}' y='{sy(value) + 4:.0f}' text-anchor='end' font-size='11'>{value:.2f}</text>"
                     f"<line x1='{left - 3}' y1='{sy(value):.1f}' x2='{left}' y2='{sy(value):.1f}' stroke='#444'/>")
    for tick in range(math.ceil(x0), math.floor(x1) + 1):
        parts.append(f"<text x='{sx(tick):.0f}' y='{height - bottom + 16}' text-anchor='middle' font-size='11'>"
                     f"1e{tick}</text>")
    for r, x, y in zip(points, xs, ys):
        parts.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='5' fill='#d9822b'><title>"
                     f"{html.escape(r['baseline'])}: {r['average']:.3f} at {r['dataset_size']:,}</title></circle>"
                     f"<text x='{sx(x) + 7:.1f}' y='{sy(y) + 4:.1f}' font-size='10'>{html.escape(r['baseline'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def plots_html(rows: list[dict]) -> str:
    """The two plots side by side, each with its caption."""
    return ("<div style='display:flex;flex-wrap:wrap;gap:24px'>"
            f"<figure><figcaption><b>Average score per baseline</b></figcaption>{bar_chart_svg(rows)}</figure>"
            f"<figure><figcaption><b>Average score against dataset size</b></figcaption>{scatter_svg(rows)}"
            "</figure></div>")


def render_html(rows: list[dict]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>DataComp leaderboard</title><style>"
            "body{font-family:sans-serif;margin:24px} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f0f0f0}"
            "</style></head><body><h1>Leaderboard</h1>"
            f"<p>{len(rows)} evaluated runs. Scores are the main metrics of each task, averaged as DataComp's "
            "aggregate_scores.py does; a group with missing tasks averages those present (see Tasks).</p>"
            + table_html(rows) + plots_html(rows) + "</body></html>")
