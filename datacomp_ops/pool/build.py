"""The CommonPool build's steps between stages: run spec, download plan, summary.

Shared by the ``commonpool_build`` DAG and the ``datacomp build`` command, so
both run exactly the same code.
"""

from __future__ import annotations

import datetime
import logging
import posixpath
import re
import textwrap
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..core import ledger, storage, versions
from ..core.config import SCALES, ConfigError, PlatformConfig, config_from_dict, load_config
from ..core.layout import CrawlLayout, PoolLayout, check_name
from ..core.stats import StageStats
from ..crawl import crawls, source_files
from ..download.partition import STAGE as DOWNLOAD

log = logging.getLogger(__name__)


@dataclass
class BuildSpec:
    """Everything one build run needs; travels between tasks as a plain dict."""

    crawl_id: str
    pool_version: str
    inputs: list[str]
    report: str
    config: dict[str, Any]
    # an import of a dataset (byod.py): its kind and column names; None for a crawl
    source: dict[str, Any] | None = None

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


def _crawl_of_inputs(inputs: list[str]) -> str | None:
    """The crawl id the inputs' paths name (``crawl-data/{id}/``), checked; None when they name none or several."""
    ids = {m.group(1) for p in inputs for m in [re.search(r"(?:^|/)crawl-data/([^/]*)/", p)] if m}
    if len(ids) != 1:
        return None
    try:
        return check_name("crawl id", ids.pop())
    except ConfigError as exc:
        raise ConfigError(f"{exc}; it comes from the inputs' crawl-data/{{id}}/ folder: {inputs}") from None


def make_spec(run_key: str, crawl_id: str | None = None, pool_version: str | None = None,
              inputs: list[str] | None = None, overrides: Mapping[str, Any] | None = None,
              logical_date: datetime.datetime | None = None, config_path: str | None = None) -> BuildSpec:
    """The run's spec: config (file, then overrides), crawl, inputs, pool version, report path.

    The config file is `config_path`, else $DATACOMP_CONFIG. With no crawl id,
    the crawl is the one the inputs name (``crawl-data/{id}/``) or, without
    inputs, the newest crawl of the config's crawl source taken in or before
    the week of `logical_date` (today when there is none). The pool version is
    the open one or the next (versions.py); naming one is allowed. Crawl ids and
    pool versions follow layout.NAME_PATTERN.
    """
    config = load_config(config_path, overrides)
    from .models import check_thresholds_apply

    check_thresholds_apply(config)  # a threshold of a model that will not run is refused, not ignored
    if crawl_id:
        check_name("crawl id", crawl_id)
    if pool_version:
        check_name("pool version", pool_version, versions.VersionError)
    storage.check_writable(config.storage_root)
    inputs = [i for i in (inputs or []) if i]
    if not crawl_id:
        crawl_id = _crawl_of_inputs(inputs) if inputs else check_name("crawl id", crawls.crawl_for_date(
            config.crawl_source, logical_date or datetime.datetime.now(datetime.timezone.utc)))
        if not crawl_id:
            raise ConfigError(f"name the crawl of these inputs (crawl_id): {inputs}")
    if not inputs:
        listing = crawls.listing(config.crawl_source, crawl_id)
        if not storage.exists(listing):
            raise crawls.CrawlNotFound(f"crawl {crawl_id}: no WAT listing at {listing}")
        inputs = [listing]
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key)
    version = versions.open_version(config.storage_root, run_key, pool_version or "")
    return BuildSpec(
        crawl_id=crawl_id,
        pool_version=version,
        inputs=inputs,
        report=CrawlLayout(config.storage_root, crawl_id).report(f"{safe_key}.json"),
        config=config.to_dict(),
    )


def form_overrides(fields: Mapping[str, tuple[str, Any]], thresholds: Mapping[str, tuple[str, float]],
                   config_overrides: Mapping[str, Any] | None, config_path: str | None = None) -> dict[str, Any]:
    """A build form's config overrides: `fields` (form field -> (config key, value)), `thresholds` (form field
    -> (role, value)) as the threshold key of the model that runs each role, and the form's
    config_overrides. A key that a field and config_overrides both set is an error naming both: neither
    may silently win."""
    from .models import running_threshold_key

    extra = dict(config_overrides or {})
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, (key, value) in fields.items():
        out[key], owner[key] = value, name
    if thresholds:
        config = load_config(config_path, out | extra)  # the models the run will have
        for name, (role, value) in thresholds.items():
            try:
                key = running_threshold_key(config, role)
            except ConfigError as exc:
                raise ConfigError(f"form field {name}: {exc}") from None
            out[key], owner[key] = value, name
    both = sorted(k for k in extra if k in owner)
    if both:
        raise ConfigError("config_overrides sets " + ", ".join(f"{k} (the form field {owner[k]} sets it too)"
                                                               for k in both) + ": keep one")
    return out | extra


def plan_download(spec: BuildSpec) -> list[dict]:
    """Every partition this run downloads (download_plan.py), each with its own shard range."""
    from ..download.plan import plan_download as plan

    return [asdict(p) for p in plan(spec.pool, spec.platform_config)]


def plan_metadata(spec: BuildSpec) -> list[list[int]]:
    """Groups of raw shards that still need the metadata pass (this run's and any left over)."""
    from .metadata import plan_metadata as plan

    return plan(spec.pool, spec.platform_config)


def _row(stage: str, n_in: int, kept: int | None, removed: dict, seconds: float, processed: int, unit: str,
         note: str = "") -> dict:
    return {"stage": stage, "in": n_in, "kept": kept, "removed": {k: v for k, v in sorted(removed.items()) if v},
            "seconds": round(seconds, 2), "processed": processed,
            "throughput": round(processed / seconds, 1) if seconds > 0 else None, "unit": unit, "note": note}


def stage_table(extraction: dict, download: StageStats, metadata: StageStats) -> list[dict]:
    """In, kept, removed by reason, seconds and throughput of every stage of one run.

    Every counter is read through the stage's declared set (its module's COUNTERS, listed in the stage
    registry): a counter renamed on one side fails here, naming it, instead of printing zeros.
    The metadata pass computes every model over every decoded sample in one go;
    its rows follow DataComp's order of removal (a sample counts against the
    first filter that removes it), and throughput is what each model scored
    per second of its own time.
    """
    from ..crawl.extract import COUNTERS as EXTRACT
    from ..download.partition import COUNTERS as DOWNLOADED
    from ..download.partition import RULE_COUNTERS, format_rules
    from .metadata import COUNTERS as METADATA
    from .metadata import STEPS

    c = EXTRACT.check(extraction["counters"])
    DOWNLOADED.check(download)
    METADATA.check(metadata)

    def x(key: str) -> int:
        return EXTRACT.get(c, key)

    def d(key: str) -> int:
        return DOWNLOADED.get(download, key)

    def m(key: str) -> int:
        return METADATA.get(metadata, key)

    t = metadata.timings
    pairs = x("pairs")
    stage = extraction.get("stage", "extract_urls")
    skipped = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("skipped:"))
    note = "" if stage == "extract_urls" else f"{x('records')} read" + (f"; skipped {skipped}" if skipped else "") \
        + (f"; {x('files_already_imported')} files imported before" if x("files_already_imported") else "")
    rows = [_row(stage, pairs, x("urls_written"),
                 {"duplicates_in_batch": x("duplicates_in_batch"), "already_known": x("already_known")},
                 extraction.get("seconds", 0.0), pairs, "pairs/s", note)]
    failures = {k: v for k, v in download.counters.items()
                if k not in ("downloaded", "urls", "attempted", *RULE_COUNTERS)}
    rows.append(_row("download", d("urls"), d("downloaded"), failures, download.seconds, d("urls"), "URLs/s",
                     format_rules(download.counters)))
    n = m("in")
    removes = {"decode": ("corrupt_image", "missing_from_shard"), "nsfw_text": ("nsfw_text",),
               "nsfw_image": ("nsfw_image",), "eval_dedup": ("eval_duplicate",)}
    units = {"nsfw_text": "captions/s"}
    notes = {"decode": "one decode per image, preprocessed for every model",
             "nsfw_image": f"{m('nsfw_image.no_skin')} without skin-toned pixels, scored 0 unseen"
                           if m("nsfw_image.no_skin") else "",
             "faces": f"{m('faces.with_faces')} with faces, {m('faces.blurred')} blurred",
             "clip_features": "B/32 and L/14, image and text towers"}
    for step in STEPS:
        removed = {r: m(f"removed:{r}") for r in removes.get(step, ())}
        kept = None if step == "clip_features" else n - sum(removed.values())
        n_in = m("clip_features.processed") if step == "clip_features" else n
        rows.append(_row(step, n_in, kept, removed, t.get(step, 0.0), m(f"{step}.processed"),
                         units.get(step, "images/s"), notes.get(step, "")))
        n -= sum(removed.values())
    rows.append(_row("write", m("kept"), m("kept"), {}, t.get("write", 0.0), m("kept"), "samples/s"))
    return rows


def _transient_left(accounts: dict, max_attempts: int) -> tuple[int, int]:
    """(URLs a later run tries again, URLs given up after max_attempts) among transient failures."""
    current, attempts = accounts["current"], accounts["attempts"]
    again = gave_up = 0
    for uid, status in zip(current["uid"].to_pylist(), current["status"].to_pylist()):
        if status in ledger.TRANSIENT_FAILURES:
            if attempts.get(uid, 0) < max_attempts:
                again += 1
            else:
                gave_up += 1
    return again, gave_up


def _thresholds(config: PlatformConfig) -> dict[str, dict]:
    """Each role's threshold as this run's models used it: the key it came from and its value."""
    from .models import choose_models, threshold_key

    return {role: {"key": threshold_key(c), "value": c.threshold}
            for role, c in choose_models(config).items() if threshold_key(c)}


def summarize(spec: BuildSpec, seconds: float | None = None) -> dict:
    """What this run added, what the pool version holds, and the ledger's accounts over every run.

    Checks that every URL ever extracted under the storage root has exactly one
    current status, and that this version's stages account for their inputs.
    """
    from ..download.plan import lineage_accounts
    from .metadata import STAGE as METADATA
    from .metadata import downloaded_shards

    report = storage.read_json(spec.report)
    pool = spec.pool
    config = spec.platform_config
    markers = storage.ls(storage.join(pool.markers, DOWNLOAD), "*")
    records = [storage.read_json(m) for m in markers]
    download = StageStats.total(DOWNLOAD, [StageStats.from_dict(r) for r in records])
    shards = sorted(downloaded_shards(pool))
    metadata = StageStats.total(METADATA, [StageStats.from_dict(storage.read_json(pool.marker(METADATA, f"{s:08d}")))
                                           for s in shards])
    own = ledger.final_statuses(pool.ledger)
    own_counts = ledger.counts(own) if own.num_rows else {}
    # one download row per URL a download task took (a version open over several runs can take one URL twice)
    taken = ledger.read(pool.ledger, DOWNLOAD).num_rows
    if download["urls"] != taken:
        raise ledger.LedgerError(f"pool {pool.version}: its download tasks took {download['urls']} URLs but its "
                                 f"ledger holds {taken} download rows")
    if metadata["in"] != download["downloaded"]:
        raise ledger.LedgerError(f"{download['downloaded']} URLs downloaded but the metadata pass "
                                 f"accounts for {metadata['in']}")
    accounts = lineage_accounts(pool)
    if accounts["with_status"] + accounts["pending"] != accounts["urls"] or accounts["statuses"].get("downloaded"):
        raise ledger.LedgerError(
            f"storage root {pool.root}: {accounts['urls']} URLs extracted, {accounts['with_status']} with a status, "
            f"{accounts['pending']} in parts not downloaded yet, "
            f"{accounts['statuses'].get('downloaded', 0)} downloaded without a pool status")
    again, gave_up = _transient_left(accounts, config.download.max_attempts)
    published = versions.is_published(pool.root, pool.version)
    shown = pool if published else PoolLayout(pool.root, versions.latest(pool.root) or pool.version)
    manifest = storage.read_json(shown.manifest) if storage.exists(shown.manifest) else {}
    extraction = report["stats"]["counters"]
    retried = sum(r["counters"].get("urls", 0) for r in records if "/requeue/" in r.get("partition", ""))
    summary = {
        "crawl_id": spec.crawl_id,
        "source_kind": report.get("kind", "crawl"),
        "pool_version": pool.version,
        "published": published,
        "parent": versions.info(pool.root, pool.version).get("parent"),
        "runs_of_version": versions.runs(pool.root, pool.version),
        "scale": config.scale,
        "batch": report["batch"],
        "wat_files": extraction.get("wat_files_processed", extraction.get("files_processed", 0)),
        "wat_files_unreadable": report.get("unreadable", []),
        "wat_file_states": source_files.state_counts(spec.crawl),
        "wat_files_left_for_later": extraction.get("wat_files_left_for_later", 0),
        "urls_extracted": sum(p["rows"] for p in report["partitions"]),
        "urls_downloaded_again": retried,
        "downloaded": download["downloaded"],
        "kept": own_counts.get("kept", 0),
        "final_statuses": own_counts,
        "stages": stage_table(report["stats"], download, metadata),
        "models": (manifest.get("models") or [{}])[-1],
        "thresholds": _thresholds(config),
        "pool": {"version": manifest.get("pool_version"), "samples": manifest.get("samples"),
                 "crawls": manifest.get("crawls", []),
                 "scales": {k: v["samples"] for k, v in manifest.get("scales", {}).items()},
                 "scales_not_built": sorted(k for k, v in manifest.get("scales", {}).items() if not v["built"])},
        "ledger": {"urls": accounts["urls"], "statuses": accounts["statuses"], "retried_next_run": again,
                   "gave_up": gave_up},
        "extraction": extraction,
    }
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    storage.write_json(pool.report(posixpath.basename(spec.report)), summary)
    return summary


def format_summary(summary: dict) -> str:
    pool, accounts = summary["pool"], summary["ledger"]
    kind = summary.get("source_kind", "crawl")
    if kind == "crawl":
        lines = [f"CommonPool build of {summary['crawl_id']} into pool version {summary['pool_version']} "
                 f"(scale {summary['scale']})"]
        files, found = "WAT files", "URLs"
    else:
        lines = [f"Import of dataset {summary['crawl_id']} ({kind}) into its pool version {summary['pool_version']} "
                 f"(scale {summary['scale']})"]
        files, found = "source files", "URLs" if kind == "urls" else "samples"
    this = (f"  this run: {summary['wat_files']} new {files}, {summary['urls_extracted']} new {found}, "
            f"{summary['urls_downloaded_again']} URLs downloaded again; {summary['kept']} samples added")
    lines.append(this)
    if len(summary.get("runs_of_version", [])) > 1:
        lines.append(f"  ({summary['pool_version']} stayed open over {len(summary['runs_of_version'])} runs: "
                     f"the download figures onwards count all of them)")
    for item in summary["wat_files_unreadable"]:
        if item.get("final"):
            lines.append(f"  given up: {item['error']}")
        else:
            reads = item.get("attempt", 1)
            lines.append(f"  not read whole ({item.get('status', 'unreadable')}; {reads} read{'s' if reads > 1 else ''} "
                         f"so far), read again next run: {item['error']}")
    states = summary.get("wat_file_states", {})
    if set(states) - {"processed"}:
        lines.append(f"  {files} of {summary['crawl_id']} by state: " + ", ".join(f"{k} {v}" for k, v in states.items()))
    if summary["wat_files_left_for_later"]:
        lines.append(f"  WAT files left for later runs (extract.max_wat_files): {summary['wat_files_left_for_later']}")
    if summary["published"]:
        lines.append(f"  published {summary['pool_version']}"
                     + (f" over {summary['parent']}" if summary["parent"] else "")
                     + f": {pool['samples']} samples from {'crawls' if kind == 'crawl' else 'dataset'} "
                       f"{', '.join(pool['crawls'])}")
    else:
        lines.append(f"  nothing new to publish: {summary['pool_version']} stays open for the next run; "
                     + (f"the latest pool is {pool['version']} with {pool['samples']} samples"
                        if pool["version"] else "no pool is published yet"))
    lines += ["", f"  {'stage':<14}{'in':>8}{'kept':>8}  {'removed':<44}{'seconds':>9}  throughput"]
    width = 44
    for row in summary["stages"]:
        removed = "; ".join(x for x in (", ".join(f"{k} {v}" for k, v in row["removed"].items()),
                                         row.get("note", "")) if x)
        kept = "" if row["kept"] is None else row["kept"]
        rate = f"{row['throughput']:,.0f} {row['unit']}" if row["throughput"] else "-"
        chunks = textwrap.wrap(removed, width) or [""]
        lines.append(f"  {row['stage']:<14}{row['in']:>8}{kept:>8}  {chunks[0]:<{width}}{row['seconds']:>9.2f}  {rate}")
        lines += [f"  {'':<30}{chunk}" for chunk in chunks[1:]]
    lines.append("")
    lines.append("  statuses of this run's URLs:")
    lines += [f"    {status:<20}{n:>8}" for status, n in summary["final_statuses"].items()]
    lines.append(f"  every URL extracted so far ({accounts['urls']}), current status (exactly one each):")
    lines += [f"    {status:<20}{n:>8}" for status, n in accounts["statuses"].items()]
    if accounts["retried_next_run"] or accounts["gave_up"]:
        lines.append(f"    transient failures: {accounts['retried_next_run']} tried again next run, "
                     f"{accounts['gave_up']} given up after download.max_attempts")
    if pool.get("scales"):
        scales = sorted(pool["scales"].items(), key=lambda kv: list(SCALES).index(kv[0]) if kv[0] in SCALES else len(SCALES))
        lines.append(f"  per-scale pools of {pool['version']}: " + ", ".join(f"{k} {v}" for k, v in scales))
        if pool["scales_not_built"]:
            lines.append(f"    not built (URLs deferred by a smaller scale's build): {', '.join(pool['scales_not_built'])}")
    if summary.get("models"):
        lines.append("  models:")
        used = summary.get("thresholds", {})
        lines += [f"    {role:<20}{name}" + (f"  (threshold {used[role]['value']:g}, {used[role]['key']})"
                                             if role in used else "") for role, name in summary["models"].items()]
    if "seconds" in summary:
        lines.append(f"  seconds: {summary['seconds']}")
    return "\n".join(lines)
