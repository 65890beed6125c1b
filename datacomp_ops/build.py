"""The CommonPool build's steps between stages: run spec, download plan, summary.

Shared by the ``commonpool_build`` DAG and the ``datacomp build`` command, so
both run exactly the same code.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from . import ledger, storage
from .config import PlatformConfig, config_from_dict, load_config
from .download import STAGE as DOWNLOAD, Partition, next_free_shard, plan_partitions
from .layout import CrawlLayout, PoolLayout
from .synthetic.crawl import DEFAULT_CRAWL_ID

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


def summarize(spec: BuildSpec, seconds: float | None = None) -> dict:
    """Totals of this run's batch; checks that the ledger accounts for every URL extracted."""
    report = storage.read_json(spec.report)
    extracted = sum(p["rows"] for p in report["partitions"])
    pool = spec.pool
    names = [Partition(p["path"], p["rows"], 0).name for p in report["partitions"]]
    parts = [ledger.read_part(pool.ledger_part(DOWNLOAD, n)) for n in names]
    statuses: dict[str, int] = {}
    for part in parts:
        for status, n in ledger.counts(part).items():
            statuses[status] = statuses.get(status, 0) + n
    accounted = sum(statuses.values())
    if accounted != extracted:
        raise ledger.LedgerError(f"ledger holds {accounted} URLs but {extracted} were extracted")
    counters = report["stats"]["counters"]
    summary = {
        "crawl_id": spec.crawl_id,
        "pool_version": spec.pool_version,
        "batch": report["batch"],
        "wat_files": counters.get("wat_files_processed", 0),
        "urls_extracted": extracted,
        "downloaded": statuses.get("downloaded", 0),
        "failed": {k: v for k, v in sorted(statuses.items()) if k != "downloaded"},
        "extraction": counters,
    }
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    storage.write_json(storage.join(pool.base, "reports", spec.report.rsplit("/", 1)[-1]), summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"CommonPool build of {summary['crawl_id']} into pool {summary['pool_version']}",
        f"  WAT files processed : {summary['wat_files']}",
        f"  URLs extracted      : {summary['urls_extracted']}",
        f"  downloaded          : {summary['downloaded']}",
        f"  failed              : {sum(summary['failed'].values())}",
    ]
    lines += [f"    {reason:<18}: {n}" for reason, n in summary["failed"].items()]
    if "seconds" in summary:
        lines.append(f"  seconds             : {summary['seconds']}")
    return "\n".join(lines)
