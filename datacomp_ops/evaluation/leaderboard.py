"""The leaderboard over every evaluated run: a table file and an HTML report, from the results alone.

A run is a subset (pool version, scale, baseline) trained with one seed
(core/layout.py's `run_name`). `collect` gives one row per evaluated run;
`aggregate` one per (dataset, pool version, scale, baseline): the subset's
size, the samples seen in training, DataComp's aggregates (ImageNet, ImageNet
distribution shifts, VTAB, retrieval, the average) as the mean over the
subset's seeds, each with its spread (``{score}_std``: the sample standard
deviation over the seeds; none with one seed), and ``seeds``, how many.
Written to ``{root}/leaderboard/leaderboard.parquet`` and ``.csv`` (the
subsets), ``runs.parquet`` (each run, with its seed and folder), and
``index.html`` with two plots drawn as inline SVG (the average per baseline;
the average against the dataset's size).
"""

from __future__ import annotations

import html
import io
import logging
import math
import posixpath
import statistics
import time
from collections import Counter

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..core import storage
from ..core.config import SCALES, ConfigError
from ..core.layout import datasets_dir, leaderboard_dir, parse_dataset_root, parse_run_dir, runs_dir
from ..core.stats import StageStats
from .tasks import GROUP_TITLES, GROUPS

log = logging.getLogger(__name__)
STAGE = "leaderboard"

SCORES = (*GROUPS, "average")
SUBSET = ("dataset", "pool_version", "scale", "baseline")  # what a leaderboard row is
RUN_COLUMNS = (*SUBSET, "seed", "dataset_size", "samples_seen", *SCORES, "tasks_scored", "tasks", "suite", "model",
               "run_dir")
COLUMNS = (*SUBSET, "seeds", "dataset_size", "samples_seen", *SCORES, *(f"{c}_std" for c in SCORES),
           "tasks_scored", "tasks", "suite", "model")


def _runs(root: str) -> list[tuple[str, str]]:
    """(dataset, run folder) of every evaluated run: the CommonPool's and each imported dataset's."""
    found = [("commonpool", posixpath.dirname(u)) for u in storage.ls(runs_dir(root), "*/*/*/eval_summary.json")]
    for summary in storage.ls(datasets_dir(root), "*/runs/*/*/*/eval_summary.json"):
        run = posixpath.dirname(summary)
        found.append((parse_dataset_root(parse_run_dir(run).root)[1], run))
    return found


def _order(row: dict, ranked: bool = True) -> tuple:
    """Datasets, pool versions and scales in order; within each, the best average first (`ranked`), or the
    baselines by name with their seeds in order."""
    order = {s: i for i, s in enumerate(SCALES)}
    rank = -(row["average"] if row["average"] is not None else -1) if ranked else 0
    return (row["dataset"], row["pool_version"], order.get(row["scale"], 99), rank, row["baseline"],
            row.get("seed", 0))


def collect(root: str) -> list[dict]:
    """One row per evaluated run, with its seed (from training.json or lineage.json, else its folder's name)."""
    rows = []
    for dataset, run in _runs(root):
        try:
            place = parse_run_dir(run)
        except ConfigError as exc:
            log.warning("not on the leaderboard: %s", exc)
            continue
        summary = storage.read_json(storage.join(run, "eval_summary.json"))
        trained = storage.join(run, "training.json")
        lineage = storage.join(run, "lineage.json")
        record = storage.read_json(trained) if storage.exists(trained) else {}
        origin = storage.read_json(lineage) if storage.exists(lineage) else {}
        agg = summary["aggregates"]
        rows.append({"dataset": dataset, "pool_version": place.pool_version, "scale": place.scale,
                     "baseline": place.baseline, "seed": int(record.get("seed", origin.get("seed", place.seed))),
                     "dataset_size": origin.get("subset_samples_in_shards"),
                     "samples_seen": record.get("samples_seen"),
                     **{g: agg[g]["score"] for g in SCORES},
                     "tasks_scored": agg["average"]["tasks"], "tasks": agg["average"]["of"],
                     "suite": summary.get("suite", ""), "model": summary.get("model", ""), "run_dir": run})
    rows.sort(key=lambda r: _order(r, ranked=False))
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per subset from `collect`'s rows: each score's mean over the subset's seeds, its sample
    standard deviation (``{score}_std``, None with fewer than two scored seeds), and ``seeds``, how many runs."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SUBSET), []).append(row)
    out = []
    for key, runs in groups.items():
        row = dict(zip(SUBSET, key)) | {"seeds": len(runs)}
        for column in ("dataset_size", "samples_seen"):  # the same for every seed of a subset
            row[column] = next((r[column] for r in runs if r[column] is not None), None)
        for column in SCORES:
            values = [r[column] for r in runs if r[column] is not None]
            row[column] = statistics.fmean(values) if values else None
            row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row["tasks_scored"] = min(r["tasks_scored"] for r in runs)  # what every seed was scored on, at least
        row["tasks"] = max(r["tasks"] for r in runs)
        for column in ("suite", "model"):
            row[column] = ", ".join(sorted({r[column] for r in runs if r[column]}))
        out.append(row)
    out.sort(key=_order)
    return out


_TYPES = {"seed": pa.int64(), "seeds": pa.int64(), "dataset_size": pa.int64(), "samples_seen": pa.int64(),
          "tasks_scored": pa.int64(), "tasks": pa.int64(),
          **{c: pa.float64() for c in SCORES}, **{f"{c}_std": pa.float64() for c in SCORES}}


def _table(rows: list[dict], columns: tuple[str, ...]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, _TYPES.get(c, pa.string())) for c in columns]))


def write_leaderboard(root: str) -> dict:
    """Collect every evaluated run and write the subsets' table files, the runs' table and the report;
    returns their paths."""
    runs = collect(root)
    rows = aggregate(runs)
    out = leaderboard_dir(root)
    table = _table(rows, COLUMNS)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, "leaderboard.parquet"), buf.getvalue())
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    storage.write_bytes(storage.join(out, "leaderboard.csv"), buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(_table(runs, RUN_COLUMNS), buf)
    storage.write_bytes(storage.join(out, "runs.parquet"), buf.getvalue())
    storage.write_bytes(storage.join(out, "index.html"), render_html(rows).encode())
    log.info("leaderboard: %d subsets, %d runs -> %s", len(rows), len(runs), out)
    return {"rows": len(rows), "runs": len(runs), "parquet": storage.join(out, "leaderboard.parquet"),
            "csv": storage.join(out, "leaderboard.csv"), "runs_parquet": storage.join(out, "runs.parquet"),
            "html": storage.join(out, "index.html")}


def run_leaderboard(root: str) -> StageStats:
    """Stage entry point: the leaderboard of `root` written again over every evaluated run."""
    start = time.perf_counter()
    paths = write_leaderboard(root)
    return StageStats(STAGE, Counter(subsets=paths["rows"], runs=paths["runs"]), time.perf_counter() - start,
                      [paths[k] for k in ("parquet", "csv", "runs_parquet", "html")])


# -- the report -------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else html.escape(str(value))


def score_text(row: dict, column: str, missing: str = "–", digits: int = 3) -> str:
    """A score of `aggregate`'s row: its mean, with ``± spread`` when several seeds were scored."""
    value, spread = row[column], row.get(f"{column}_std")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def table_html(rows: list[dict]) -> str:
    """`aggregate`'s rows as a table: one per subset, each score the mean ± spread over its seeds."""
    head = ["Dataset", "Pool version", "Scale", "Baseline", "Seeds", "Dataset size", "Samples seen",
            *[GROUP_TITLES[g] for g in SCORES], "Tasks"]
    body = []
    for r in rows:
        cells = [_fmt(c) for c in (r["dataset"], r["pool_version"], r["scale"], r["baseline"], r.get("seeds", 1),
                                   r["dataset_size"], r["samples_seen"])]
        cells += [score_text(r, g) for g in SCORES] + [f"{r['tasks_scored']} of {r['tasks']}"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table class='leaderboard'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def bar_chart_svg(rows: list[dict], width: int = 640, bar: int = 22) -> str:
    """The average score of each subset (the mean over its seeds, a whisker of ± the spread), longest first."""
    scored = sorted((r for r in rows if r["average"] is not None), key=lambda r: -r["average"])
    if not scored:
        return "<p>No evaluated runs yet.</p>"
    label_w, top = 260, 10
    height = top * 2 + bar * len(scored)
    scale = (width - label_w - 110) / max(1e-9, max(r["average"] + (r.get("average_std") or 0) for r in scored))
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='Average score per baseline'>"]
    for i, r in enumerate(scored):
        y = top + i * bar
        seeds = f", {r['seeds']} seeds" if r.get("seeds", 1) > 1 else ""
        name = html.escape(f"{r['baseline']} ({r['scale']}, {r['pool_version']}{seeds})")
        w = r["average"] * scale
        spread = (r.get("average_std") or 0) * scale
        whisker = (f"<line x1='{label_w + w - spread:.1f}' y1='{y + bar / 2:.1f}' x2='{label_w + w + spread:.1f}' "
                   f"y2='{y + bar / 2:.1f}' stroke='#222'/>" if spread else "")
        parts.append(f"<text x='{label_w - 6}' y='{y + bar * 0.7:.0f}' text-anchor='end' font-size='12'>{name}</text>"
                     f"<rect x='{label_w}' y='{y + 3}' width='{w:.1f}' height='{bar - 6}' fill='#3b6fb6'/>{whisker}"
                     f"<text x='{label_w + w + spread + 4:.1f}' y='{y + bar * 0.7:.0f}' font-size='11'>"
                     f"{score_text(r, 'average')}</text>")
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(rows: list[dict], width: int = 640, height: int = 320) -> str:
    """The average score against the dataset's size (log scale), one point per subset (its seeds' mean)."""
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
                     f"{html.escape(r['baseline'])}: {score_text(r, 'average')} at {r['dataset_size']:,}"
                     "</title></circle>"
                     f"<text x='{sx(x) + 7:.1f}' y='{sy(y) + 4:.1f}' font-size='10'>{html.escape(r['baseline'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def plots_html(rows: list[dict]) -> str:
    """The two plots side by side, each with its caption."""
    return ("<div style='display:flex;flex-wrap:wrap;gap:24px'>"
            f"<figure><figcaption><b>Average score per baseline</b></figcaption>{bar_chart_svg(rows)}</figure>"
            f"<figure><figcaption><b>Average score against dataset size</b></figcaption>{scatter_svg(rows)}"
            "</figure></div>")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def render_html(rows: list[dict]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>DataComp leaderboard</title><style>"
            "body{font-family:sans-serif;margin:24px} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f0f0f0}"
            "</style></head><body><h1>Leaderboard</h1>"
            f"<p>{_count(len(rows), 'subset')}, {_count(sum(r.get('seeds', 1) for r in rows), 'evaluated run')}. "
            "Scores are the main metrics of each task, averaged as DataComp's aggregate_scores.py does; a group "
            "with missing tasks averages those present (see Tasks). A subset trained with several seeds shows each "
            "score's mean over them ± their sample standard deviation (Seeds: how many).</p>"
            + table_html(rows) + plots_html(rows) + "</body></html>")
