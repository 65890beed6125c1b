"""The CommonPool build's steps between stages: run spec, download plan, summary.

Shared by the ``commonpool_build`` DAG and the ``datacomp build`` command, so
both run exactly the same code.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from . import ledger, storage
from .config import DEFAULT_CRAWL_ID, PlatformConfig, config_from_dict, load_config
from .download import STAGE as DOWNLOAD, Partition, next_free_shard, plan_partitions
from .layout import CrawlLayout, PoolLayout
from .stats import StageStats

log = logging.getLogger(__name__)


@dataclass
class BuildSpec:
    """Everything one build run needs; travels between tasks as a plain dict."""

    crawl_id: str
    pool_version: str
    inputs: list[str]
    report: str
    config: dict[str, Any]

    @property
    def platform_config(self) -> PlatformConfig:
        return config_from_dict(self.config)

    @property
    def crawl(self) -> CrawlLayout:
        return CrawlLayout(self.config["storage_root"], self.crawl_id)

    @property
    def pool(self) -> PoolLayout:
        return PoolLayout(self.config["storage_root"], self.pool_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_root(config: PlatformConfig) -> str:
    """Where ``datacomp synthetic`` puts the demo crawl by default."""
    return storage.join(config.storage_root, "synthetic")


def default_inputs(config: PlatformConfig, crawl_id: str) -> list[str]:
    return [storage.join(synthetic_root(config), "crawl-data", crawl_id, "wat.paths.gz")]


def make_spec(run_key: str, crawl_id: str = DEFAULT_CRAWL_ID, pool_version: str = "",
              inputs: list[str] | None = None, overrides: Mapping[str, Any] | None = None) -> BuildSpec:
    """The run's spec: config with overrides, inputs (default: the synthetic crawl), report path."""
    config = load_config(overrides=overrides)
    storage.check_writable(config.storage_root)
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key)
    crawl = CrawlLayout(config.storage_root, crawl_id)
    return BuildSpec(
        crawl_id=crawl_id,
        pool_version=pool_version or crawl_id,
        inputs=list(inputs) if inputs else default_inputs(config, crawl_id),
        report=storage.join(crawl.base, "reports", f"{safe_key}.json"),
        config=config.to_dict(),
    )


def plan_download(spec: BuildSpec) -> list[dict]:
    """One entry per URL partition of this run's batch, each with its own shard range."""
    report = storage.read_json(spec.report)
    pool = spec.pool
    plan = plan_partitions(report["partitions"], next_free_shard(pool),
                           spec.platform_config.download.number_sample_per_shard)
    # a retried plan must hand committed partitions their original shard ids
    out = []
    for part in plan:
        marker = pool.marker(DOWNLOAD, part.name)
        if storage.exists(marker):
            first = min(storage.read_json(marker)["shards"], default=part.first_shard)
            part = Partition(part.path, part.rows, first)
        out.append(asdict(part))
    return out


def plan_metadata(spec: BuildSpec) -> list[list[int]]:
    """Groups of raw shards that still need the metadata pass (this run's and any left over)."""
    from .metadata import plan_metadata as plan

    return plan(spec.pool, spec.platform_config)


def _run_shards(spec: BuildSpec, report: dict) -> list[int]:
    shards = []
    for part in report["partitions"]:
        marker = spec.pool.marker(DOWNLOAD, Partition(part["path"], part["rows"], 0).name)
        shards += storage.read_json(marker).get("shards", []) if storage.exists(marker) else []
    return sorted(shards)


def _row(stage: str, n_in: int, kept: int | None, removed: dict, seconds: float, processed: int, unit: str,
         note: str = "") -> dict:
    return {"stage": stage, "in": n_in, "kept": kept, "removed": {k: v for k, v in sorted(removed.items()) if v},
            "seconds": round(seconds, 2), "processed": processed,
            "throughput": round(processed / seconds, 1) if seconds > 0 else None, "unit": unit, "note": note}


def stage_table(extraction: dict, download: StageStats, metadata: StageStats) -> list[dict]:
    """In, kept, removed by reason, seconds and throughput of every stage of one run.

    The metadata pass computes every model over every decoded sample in one go;
    its rows follow DataComp's order of removal (a sample counts against the
    first filter that removes it), and throughput is what each model scored
    per second of its own time.
    """
    c, d, m, t = extraction["counters"], download.counters, metadata.counters, metadata.timings
    pairs = c.get("pairs", 0)
    rows = [_row("extract_urls", pairs, c.get("urls_written", 0),
                 {"duplicates_in_batch": c.get("duplicates_in_batch", 0), "already_known": c.get("already_known", 0)},
                 extraction.get("seconds", 0.0), pairs, "pairs/s")]
    failures = {k: v for k, v in d.items() if k not in ("downloaded", "urls")}
    rows.append(_row("download", d.get("urls", 0), d.get("downloaded", 0), failures, download.seconds,
                     d.get("urls", 0), "URLs/s"))
    n = m.get("in", 0)
    for step, reasons, unit, note in (
            ("decode", ("corrupt_image", "missing_from_shard"), "images/s",
             "one decode per image, preprocessed for every model"),
            ("nsfw_text", ("nsfw_text",), "captions/s", ""),
            ("nsfw_image", ("nsfw_image",), "images/s", ""),
            ("eval_dedup", ("eval_duplicate",), "images/s", "")):
        removed = {r: m.get(f"removed:{r}", 0) for r in reasons}
        rows.append(_row(step, n, n - sum(removed.values()), removed, t.get(step, 0.0),
                         m.get(f"{step}.processed", 0), unit, note))
        n -= sum(removed.values())
    rows.append(_row("faces", n, n, {}, t.get("faces", 0.0), m.get("faces.processed", 0), "images/s",
                     f"{m.get('faces.with_faces', 0)} with faces, {m.get('faces.blurred', 0)} blurred"))
    rows.append(_row("clip_features", m.get("clip_features.processed", 0), None, {}, t.get("clip_features", 0.0),
                     m.get("clip_features.processed", 0), "images/s", "B/32 and L/14, image and text towers"))
    rows.append(_row("write", m.get("kept", 0), m.get("kept", 0), {}, t.get("write", 0.0), m.get("kept", 0),
                     "samples/s"))
    return rows


def summarize(spec: BuildSpec, seconds: float | None = None) -> dict:
    """Totals of this run, stage by stage; checks that the ledger gives every URL one final status."""
    from .metadata import STAGE as METADATA

    report = storage.read_json(spec.report)
    extracted = sum(p["rows"] for p in report["partitions"])
    pool = spec.pool
    names = [Partition(p["path"], p["rows"], 0).name for p in report["partitions"]]
    download = StageStats.total(DOWNLOAD, [StageStats.from_dict(storage.read_json(pool.marker(DOWNLOAD, n)))
                                           for n in names])
    shards = _run_shards(spec, report)
    metadata = StageStats.total(METADATA, [StageStats.from_dict(storage.read_json(pool.marker(METADATA, f"{s:08d}")))
                                           for s in shards])
    # every URL of this run: one download status, and each download one pool status
    statuses: dict[str, int] = {}
    for n in names:
        for status, k in ledger.counts(ledger.read_part(pool.ledger_part(DOWNLOAD, n))).items():
            statuses[status] = statuses.get(status, 0) + k
    if sum(statuses.values()) != extracted:
        raise ledger.LedgerError(f"ledger holds {sum(statuses.values())} URLs but {extracted} were extracted")
    if metadata["in"] != statuses.get("downloaded", 0):
        raise ledger.LedgerError(f"{statuses.get('downloaded', 0)} URLs downloaded but the metadata pass "
                                 f"accounts for {metadata['in']}")
    final = {k: v for k, v in statuses.items() if k != "downloaded"}
    for key, value in metadata.counters.items():
        if key == "kept" or key.startswith("removed:"):
            final[key.removeprefix("removed:")] = final.get(key.removeprefix("removed:"), 0) + value
    assert sum(final.values()) == extracted  # the two checks above imply it
    manifest = storage.read_json(pool.manifest) if storage.exists(pool.manifest) else {}
    summary = {
        "crawl_id": spec.crawl_id,
        "pool_version": spec.pool_version,
        "batch": report["batch"],
        "wat_files": report["stats"]["counters"].get("wat_files_processed", 0),
        "urls_extracted": extracted,
        "downloaded": statuses.get("downloaded", 0),
        "kept": final.get("kept", 0),
        "final_statuses": dict(sorted(final.items())),
        "stages": stage_table(report["stats"], download, metadata),
        "models": (manifest.get("models") or [{}])[-1],
        "pool_samples": manifest.get("samples"),
        "scales": {k: v["samples"] for k, v in manifest.get("scales", {}).items()},
        "extraction": report["stats"]["counters"],
    }
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    storage.write_json(storage.join(pool.base, "reports", spec.report.rsplit("/", 1)[-1]), summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"CommonPool build of {summary['crawl_id']} into pool {summary['pool_version']}",
        f"  WAT files processed: {summary['wat_files']}; URLs extracted: {summary['urls_extracted']}; "
        f"kept: {summary['kept']}",
        "",
        f"  {'stage':<14}{'in':>8}{'kept':>8}  {'removed':<44}{'seconds':>9}  throughput",
    ]
    width = 44
    for row in summary["stages"]:
        removed = ", ".join(f"{k} {v}" for k, v in row["removed"].items()) or row.get("note", "")
        kept = "" if row["kept"] is None else row["kept"]
        rate = f"{row['throughput']:,.0f} {row['unit']}" if row["throughput"] else "-"
        chunks = textwrap.wrap(removed, width) or [""]
        lines.append(f"  {row['stage']:<14}{row['in']:>8}{kept:>8}  {chunks[0]:<{width}}{row['seconds']:>9.2f}  {rate}")
        lines += [f"  {'':<30}{chunk}" for chunk in chunks[1:]]
    lines.append("")
    lines.append("  final statuses (every extracted URL exactly once):")
    lines += [f"    {status:<20}{n:>8}" for status, n in summary["final_statuses"].items()]
    if summary.get("scales"):
        order = ("tiny", "small", "medium", "large", "xlarge")
        scales = sorted(summary["scales"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
        lines.append("  per-scale pools: " + ", ".join(f"{k} {v}" for k, v in scales)
                     + f" (pool: {summary.get('pool_samples')} samples)")
    if summary.get("models"):
        lines.append("  models:")
        lines += [f"    {role:<20}{name}" for role, name in summary["models"].items()]
    if "seconds" in summary:
        lines.append(f"  seconds: {summary['seconds']}")
    return "\n".join(lines)
