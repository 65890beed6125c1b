"""The ``datacomp`` command: every stage without Airflow, and the synthetic crawl.

    datacomp synthetic --out DIR --n-urls 2000 --base-url http://127.0.0.1:8765 [--crawls 3]
    datacomp serve --port 8765
    datacomp extract --crawl-id ID --input DIR/crawl-data/ID/wat.paths.gz
    datacomp download --partition URLS.parquet --pool-version v1 [--first-shard 0]
    datacomp prepare-models                       train the embedded stand-ins, index the eval sets
    datacomp metadata --pool-version v1 [--shard N ...]   NSFW, dedup, faces, CLIP features
    datacomp publish --pool-version v1            per-scale pools and the manifest
    datacomp build [--serve] ...                  every stage and the summary, as the DAG runs them
    datacomp ledger [--pool-version v1] [--stage download] [--uid UID | --url URL]
                                                  status counts of a pool version, or one URL's history
    datacomp filter [--pool-version v1] [--scale tiny | --metadata-dir DIR] [--baseline LABEL ...]
                                                  the filtering baselines: subset files and a table
    datacomp reshard --baseline LABEL [--pool-version v1] [--scale tiny]
    datacomp reshard --subset FILE --shards-dir DIR --out DIR      a subset's samples in new shards
    datacomp train [--baseline LABEL ...] [--seeds 0,1,2]   CLIP on subsets, once per seed
    datacomp evaluate [--run-dir DIR ...]          zero-shot evaluation, then the leaderboard
    datacomp leaderboard                           each subset's mean ± spread over its seeds
    datacomp import --name NAME --source DIR [--kind webdataset|urls] [--serve PORT]
                                                  an external dataset as a pool of its own
                                                  (filter, reshard and ledger take --dataset NAME)
    datacomp import-published --name NAME --metadata DIR [--scale small] [--download-only LABEL ...]
                                                  a pool from DataComp's published metadata, kept as published
    datacomp refresh-published [--name NAME]      published pools imported again as each recorded (new files,
                                                  transient failures retried, one more point of decay)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

from .core.config import SCALES


def _date(text: str):
    import datetime

    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _name(kind: str):
    """An argument type: a crawl id, dataset name or pool version (layout.NAME_PATTERN); empty is the default."""
    def check(text: str) -> str:
        from .core.config import ConfigError
        from .core.layout import check_name

        try:
            return check_name(kind, text) if text else text
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return check


def _seeds(text: str) -> list[int]:
    """--seeds 0,1,2: integers (their range and uniqueness are training.seeds' rule, checked by the config)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,1,2; got {text!r}") from None


def _port(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"port {text!r}: expected an integer >= 1 and <= 65535")
    return int(text)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            from .core.config import ConfigError

            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _config(args):
    from .core.config import load_config

    return load_config(args.config, _config_overrides(args))


# name -> (help, function, the function adding its arguments, whether it takes --config/--storage-root/--set);
# each command is declared with its arguments by @command, in the order `datacomp --help` lists them
COMMANDS: dict[str, tuple[str, Callable, Callable, bool]] = {}


def command(name: str, help_text: str, arguments: Callable = lambda p: None, config: bool = True) -> Callable:
    """Register the decorated function as the subcommand `name`; `arguments(p)` adds its own arguments."""

    def register(run: Callable) -> Callable:
        COMMANDS[name] = (help_text, run, arguments, config)
        return run

    return register


def _args_synthetic(p) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--n-urls", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-url", default="http://127.0.0.1:8765")
    p.add_argument("--urls-per-file", type=int, default=5000)
    p.add_argument("--crawl-id", default="CC-SYNTH-2026-47", type=_name("crawl id"), help="the (last) crawl's id")
    p.add_argument("--crawls", type=int, default=1, help="weekly crawls ending with --crawl-id")
    p.add_argument("--repeat-fraction", type=float, default=0.1,
                   help="pairs of the crawl before that each crawl links again")
    p.add_argument("--no-faults", action="store_true", help="leave out the malformed records")
    p.add_argument("--hosts", type=int, default=0, help="spread the pages and their images over this many hosts "
                   "of the synthetic web (s000.synthetic.test...: some with robots.txt rules, TDMRep reservations, "
                   "rate limits; download with download.host_addresses=*.synthetic.test=127.0.0.1); 0: the "
                   "--base-url host alone")
    p.add_argument("--published-rows", type=int, default=300, help="rows of the world's pool in DataComp's "
                   "published layout (features from the embedded CLIP stand-ins, trained first if need be); 0: none")
    p.add_argument("--published-only", action="store_true", help="write the published pool alone, into a world "
                   "made before (once the stand-ins are trained, it takes seconds)")


@command("synthetic", "generate a synthetic crawl and evaluation suite", _args_synthetic, config=False)
def cmd_synthetic(args) -> None:
    from .core.layout import SyntheticWorld
    from .synthetic.crawl import CrawlSpec, generate_world
    from .synthetic.evalsuite import generate_eval_suite

    spec = CrawlSpec(n_urls=args.n_urls, seed=args.seed, base_url=args.base_url,
                     urls_per_file=args.urls_per_file, crawl_id=args.crawl_id, faults=not args.no_faults,
                     hosts=args.hosts)
    summaries = []
    if not args.published_only:
        with tqdm(total=spec.n_urls * args.crawls, desc="synthetic crawls", unit="URL") as bar:
            summaries = generate_world(args.out, spec, args.crawls, args.repeat_fraction, progress=bar.update)
        generate_eval_suite(SyntheticWorld(args.out).eval_sets)
    for summary in summaries:
        print(f"{summary['crawl_id']}: {summary['urls']} URLs in {len(summary['wat_files'])} WAT files "
              f"({summary['repeated_from_previous']} from the crawl before); listing: {summary['wat_listing']}")
    if args.published_rows > 0:
        from .core.config import load_config
        from .embedded.clip_models import ensure_trained, stand_ins_dir
        from .synthetic.published import write_published_pool

        config = load_config()
        ensure_trained(stand_ins_dir(config), config.metadata.embedded_clip_steps)
        pool = write_published_pool(SyntheticWorld(args.out), args.base_url, config, args.published_rows)
        print(f"a pool in DataComp's published layout: {pool['rows']} rows in {pool['files']} files "
              f"({', '.join(f'{k} {v}' for k, v in pool['fates'].items())}): {pool['metadata']}")


def _args_serve(p) -> None:
    p.add_argument("--port", type=_port, default=8765)
    p.add_argument("--hang-seconds", type=float, default=30.0)


@command("serve", "serve the synthetic crawl's images on 127.0.0.1", _args_serve, config=False)
def cmd_serve(args) -> None:
    from .synthetic.server import SyntheticImageServer

    server = SyntheticImageServer(args.port, hang_seconds=args.hang_seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving synthetic images on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _args_extract(p) -> None:
    p.add_argument("--crawl-id", default="CC-SYNTH-2026-47", type=_name("crawl id"))
    p.add_argument("--input", action="append", default=[],
                   help="WAT file or wat.paths.gz listing (default: the crawl's listing in the crawl source)")


@command("extract", "URL extraction (Spark, local master)", _args_extract)
def cmd_extract(args) -> None:
    from .core.config import load_config
    from .core.layout import CrawlLayout
    from .crawl.extract import run_extract_urls

    config = load_config(args.config, _config_overrides(args))
    if args.input:
        inputs = args.input
    else:
        from .crawl.crawls import listing

        inputs = [listing(config.crawl_source, args.crawl_id)]
    stats = run_extract_urls(inputs, CrawlLayout(config.storage_root, args.crawl_id), config)
    print(json.dumps(stats.to_dict(), indent=2))


def _config_overrides(args) -> dict[str, Any]:
    overrides = _overrides(args.set)
    if args.storage_root:
        if "storage_root" in overrides:
            from .core.config import ConfigError

            raise ConfigError("--set storage_root and --storage-root both name the storage root: keep one")
        overrides["storage_root"] = args.storage_root
    return overrides


def _args_download(p) -> None:
    p.add_argument("--partition", required=True)
    p.add_argument("--pool-version", required=True, type=_name("pool version"))
    p.add_argument("--first-shard", type=int, default=0)


@command("download", "download one URL partition", _args_download)
def cmd_download(args) -> None:
    import pyarrow.parquet as pq

    from .core import storage
    from .core.layout import PoolLayout
    from .download.partition import Partition, run_download

    config = _config(args)
    with storage.open_file(args.partition) as f:
        rows = pq.read_metadata(f).num_rows
    stats = run_download(Partition(args.partition, rows, args.first_shard),
                         PoolLayout(config.storage_root, args.pool_version), config)
    print(json.dumps(stats.to_dict(), indent=2))


@command("storage-init", "create the storage root (its S3 bucket too) and check that it can be written")
def cmd_storage_init(args) -> None:
    from .core import storage

    root = _config(args).storage_root
    storage.ensure_root(root)
    print(f"storage root {root} is writable")


@command("prepare-models", "check every model, train the embedded stand-ins, index the evaluation sets")
def cmd_prepare_models(args) -> None:
    from .pool.prepare_models import run_prepare_models

    print(json.dumps(run_prepare_models(_config(args)).to_dict(), indent=2))


def _args_metadata(p) -> None:
    p.add_argument("--pool-version", required=True, type=_name("pool version"))
    p.add_argument("--shard", type=int, action="append", default=[], help="raw shard id (default: all pending)")


@command("metadata", "the metadata pass over raw shards of a pool", _args_metadata)
def cmd_metadata(args) -> None:
    from .core.layout import PoolLayout
    from .pool.metadata import plan_metadata, run_metadata

    config = _config(args)
    pool = PoolLayout(config.storage_root, args.pool_version)
    shards = args.shard or [s for group in plan_metadata(pool, config) for s in group]
    print(json.dumps(run_metadata(shards, pool, config).to_dict(), indent=2))


def _args_publish(p) -> None:
    p.add_argument("--pool-version", required=True, type=_name("pool version"))


@command("publish", "per-scale pools and the manifest of a pool", _args_publish)
def cmd_publish(args) -> None:
    from .core.layout import PoolLayout
    from .pool.publish import run_publish

    config = _config(args)
    print(json.dumps(run_publish(PoolLayout(config.storage_root, args.pool_version), config).to_dict(), indent=2))


def _run_pool_build(dag_id: str, spec, run_key: str, start: float) -> None:
    """A pool build's stages as the registry lists them for `dag_id` (stages.PIPELINES), each with the
    arguments its function takes; a mapped stage runs its plan's items one after another, as the DAG's
    mapped tasks do side by side. The version's lease (taken by the spec) is held to the end."""
    from .core import versions
    from .download.partition import Partition
    from .pool.build import format_summary, summarize
    from .pool.published import format_published_summary, summarize_published
    from .stages import pipeline

    config = spec.platform_config
    loaded = {}  # the metadata pass's models, loaded once for all its tasks

    def metadata(run, group):
        from .pool.metadata import PassModels

        if "models" not in loaded:
            loaded["models"] = PassModels.load(config)
        run(group, spec.pool, config, loaded["models"])

    calls = {
        "extract_urls": lambda run: run(spec.inputs, spec.crawl, config, spec.report),
        "scan": lambda run: run(spec),
        "download": lambda run, part: run(Partition(**part), spec.pool, config),
        "ingest": lambda run, part: run(Partition(**part), spec),
        "prepare_models": lambda run: run(config),
        "metadata": metadata,
        "publish": lambda run: run(spec.pool, config),
        "scan_published": lambda run: run(spec),
        "limit_download": lambda run: run(spec),
        "download_published": lambda run, part: run(Partition(**part), spec.pool, config),
        "publish_published": lambda run: run(spec),
    }
    summary, report = (summarize_published, format_published_summary) if dag_id == "import_published" else \
        (summarize, format_summary)
    with versions.holding(spec.pool.root, spec.pool_version, run_key):
        for stage in pipeline(dag_id):
            run, plan = stage.function(), stage.planner()
            if plan is None:
                calls[stage.name](run)
                continue
            for item in tqdm(plan(spec), desc=stage.name, unit="task"):
                calls[stage.name](run, item)
        print(report(summary(spec, time.monotonic() - start)))


def _args_build(p) -> None:
    p.add_argument("--crawl-id", default="", type=_name("crawl id"),
                   help="default: the newest crawl of the source at --date")
    p.add_argument("--date", type=_date, help="YYYY-MM-DD: build the crawl of that week (default: today)")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the open version or the next one")
    p.add_argument("--scale", default="xlarge", choices=list(SCALES),
                   help="build what this scale needs (as the DAG's form; xlarge: the whole pool)")
    p.add_argument("--input", action="append", default=[])
    p.add_argument("--serve", type=_port, metavar="PORT", help="serve the synthetic images on PORT meanwhile")
    p.add_argument("--hang-seconds", type=float, default=30.0)


@command("build", "the CommonPool build end to end, without Airflow", _args_build)
def cmd_build(args) -> None:
    from .pool.build import make_spec

    start = time.monotonic()
    run_key = f"cli-{time.time_ns()}"
    # make_spec takes the open version's lease (versions.open_version): a second build on this storage root
    # is refused there, naming this one (or waits, DATACOMP_LEASE_WAIT_S); this build holds it to its end
    spec = make_spec(run_key, args.crawl_id, args.pool_version, args.input,
                     {"scale": args.scale} | _config_overrides(args), logical_date=args.date, config_path=args.config)
    with _serving(args.serve, hang_seconds=args.hang_seconds):
        _run_pool_build("commonpool_build", spec, run_key, start)


def _root(config, args) -> str:
    """The CommonPool's storage root, or an imported dataset's (--dataset)."""
    from .core.layout import dataset_root

    return dataset_root(config.storage_root, args.dataset) if getattr(args, "dataset", "") else config.storage_root


def _args_ledger(p) -> None:
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the newest version (open ones included)")
    p.add_argument("--stage", choices=["download", "metadata"], help="counts of one stage only")
    p.add_argument("--dataset", default="", type=_name("dataset name"),
                   help="an imported dataset's pool instead of the CommonPool")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--uid", help="print this uid's status history across pool versions")
    who.add_argument("--url", help="print this image URL's status history across pool versions")


@command("ledger", "current status counts of a pool version, per version and stage; or the history of one URL",
         _args_ledger)
def cmd_ledger(args) -> None:
    from .core import versions
    from .ui.pool_report import lookup, version_summary

    config = _config(args)
    root = _root(config, args)
    version = args.pool_version or versions.latest(root, published=False)
    if not version:
        raise versions.VersionError(f"no pool version under {root} yet")
    if args.uid or args.url:
        from .core.schema import compute_uid

        story = lookup(root, args.uid or args.url, version)
        if not story["found"]:
            hint = f" (a uid is md5(caption + url), e.g. {compute_uid('a cat', args.url)} for the caption " \
                   f"'a cat')" if args.url else ""
            raise versions.VersionError(f"no ledger row of {story['column']} {story['query']} in pool version "
                                        f"{version} or its ancestors{hint}")
        names = story["chain"]
        print(f"history of {story['column']} {story['query']} (pool versions {names[0]}..{names[-1]}, oldest first):")
        for r in story["history"]:
            attempt = f" attempt {r['attempt']}" if r["attempt"] is not None else ""
            print(f"  {r['version']:<12}{r['stage']:<10}{r['status']:<16}{attempt:<11}{r['message'] or ''}")
        origin = story["origin"]
        if origin:
            print(f"from crawl {origin['crawl']}, WAT file {origin['wat_file']} (page {origin['page_url']})")
        print("in the pool" if story["in_pool"] else f"not in the pool: {story['left_because']}")
        if story["subsets"]:
            print("in subsets: " + ", ".join(story["subsets"]))
        return
    out = version_summary(root, version)
    if args.stage:
        out = {k: v for k, v in out.items() if k != "by_version"} | {
            "stage": args.stage, "by_version": {v: s.get(args.stage, {}) for v, s in out["by_version"].items()}}
    print(json.dumps(out, indent=2))


def _args_filter(p) -> None:
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the newest published version")
    p.add_argument("--scale", default="tiny", help="the scale's pool (default: tiny)")
    p.add_argument("--metadata-dir", help="any folder of DataComp-format metadata instead of a pool version")
    p.add_argument("--dataset", default="", type=_name("dataset name"),
                   help="an imported dataset's pool instead of the CommonPool")
    p.add_argument("--baseline", action="append", default=[], help="label of filtering.baselines (default: all)")


@command("filter", "filtering baselines over a pool: DataComp subset files", _args_filter)
def cmd_filter(args) -> None:
    from .core import versions
    from .core.layout import PoolLayout
    from .filtering.baselines import parse_all, uses_fasttext
    from .filtering.run import PoolSource, format_table, make_context, output_dir, read_record, run_baseline

    config = _config(args)
    root = _root(config, args)
    if args.metadata_dir:
        source = PoolSource(metadata_dir=args.metadata_dir)
    else:
        version = args.pool_version or versions.latest(root)
        if not version:
            raise SystemExit(f"datacomp filter: no published pool version under {root}")
        source = PoolSource(manifest=PoolLayout(root, version).manifest, scale=args.scale)
    labels = args.baseline or list(parse_all(config.filtering.baselines))
    out = output_dir(config, source)
    # columns, features and the pool's uid index are read once for every baseline
    ctx = make_context(source.open(), config, f"{out.rstrip('/')}/_index")
    if uses_fasttext(labels, parse_all(config.filtering.baselines)):
        ctx.build_language_index()
    for label in tqdm(labels, desc="baselines", unit="baseline"):
        run_baseline(label, source, config, out, ctx)
    print(f"subsets of {json.dumps(source.describe())} in {out}:")
    print(format_table([read_record(out, label) for label in labels]))


def _args_reshard(p) -> None:
    p.add_argument("--baseline", help="a subset written by datacomp filter / the filtering DAG")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the newest published version")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--dataset", default="", type=_name("dataset name"),
                   help="an imported dataset's pool instead of the CommonPool")
    p.add_argument("--subset", help="any DataComp subset file (u8,u8), with --shards-dir and --out")
    p.add_argument("--shards-dir", help="folder of input shards (.tar with .parquet beside)")
    p.add_argument("--out", help="default: {root}/runs/{version}/{scale}/{baseline}/shards")
    p.add_argument("--shard-size", type=int, default=0, help="samples per output shard (default: DataComp's "
                   "10,000; for --baseline, the scale's, as its training reshards: 10 at tiny)")
    p.add_argument("--workers", type=int, default=0, help="parallel tasks (default: the cores)")


@command("reshard", "a subset's samples of a pool in new shards (DataComp's layout)", _args_reshard)
def cmd_reshard(args) -> None:
    from .core import storage, versions
    from .core.config import get_scale
    from .core.layout import PoolLayout
    from .training.reshard import run_reshard
    from .training.train import TrainSpec

    config = _config(args)
    if args.subset:
        if not (args.shards_dir and args.out):
            raise SystemExit("datacomp reshard: --subset needs --shards-dir and --out")
        subset, shards, out = args.subset, storage.ls(args.shards_dir, "*.tar"), args.out
    else:
        if not args.baseline:
            raise SystemExit("datacomp reshard: name --baseline (or --subset, --shards-dir and --out)")
        root = _root(config, args)
        version = args.pool_version or versions.latest(root)
        if not version:
            raise SystemExit(f"datacomp reshard: no published pool version under {root}")
        manifest = storage.read_json(PoolLayout(root, version).manifest)
        spec = TrainSpec.for_subset(root, version, args.scale, args.baseline)  # where train reads the shards
        subset, shards, out = spec.subset, manifest["shards"], args.out or spec.shards_dir
    # a baseline's shards are where its training reads them: in its scale's shard size, as training writes them
    size = args.shard_size or (10_000 if args.subset else get_scale(args.scale).shard_size)
    stats = run_reshard(subset, shards, out, size, args.workers)
    print(json.dumps(stats.to_dict(), indent=2))
    print(f"shards in {out} (meta.json: {storage.join(out, 'meta.json')})")


def _args_train(p) -> None:
    p.add_argument("--baseline", action="append", default=[], help="a subset's label (default: every subset)")
    p.add_argument("--seeds", type=_seeds, default=[], metavar="0,1,2",
                   help="train each subset once per seed (default: the config's training.seeds)")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the newest published version")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--dataset", default="", type=_name("dataset name"),
                   help="an imported dataset's pool instead of the CommonPool")


@command("train", "CLIP on subsets with DataComp's recipe for the scale (reshards each first), once per seed: "
                  "{root}/runs/{version}/{scale}/{baseline} (seed 0) or {baseline}+seed{k}", _args_train)
def cmd_train(args) -> None:
    from .training.plan import plan_training, run_reshard_job, run_train_job, training_record

    params = {"dataset": args.dataset, "pool_version": args.pool_version, "scale": args.scale,
              "baselines": args.baseline, "seeds": args.seeds, "config_overrides": _config_overrides(args)}
    for job in plan_training(params, [], args.config):
        print(f"{job['name']}: {'resharding, then ' if job['reshards'] else ''}training")
        run_reshard_job(job)
        run_train_job(job)
        print(json.dumps(training_record(job), indent=2))


def _args_evaluate(p) -> None:
    p.add_argument("--run-dir", action="append", default=[], help="a training run's folder (default: every "
                                                                  "trained run of the version and scale)")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the newest published version")
    p.add_argument("--scale", default="tiny")
    p.add_argument("--dataset", default="", type=_name("dataset name"), help="an imported dataset's runs")


@command("evaluate", "zero-shot evaluation of trained runs on DataComp's tasks (eval_results.jsonl), then the "
                     "leaderboard", _args_evaluate)
def cmd_evaluate(args) -> None:
    from .evaluation.leaderboard import run_leaderboard
    from .evaluation.plan import evaluation_record, plan_evaluation, run_evaluation_job, storage_roots

    params = {"run_dirs": args.run_dir, "dataset": args.dataset, "pool_version": args.pool_version,
              "scale": args.scale, "config_overrides": _config_overrides(args)}
    jobs = plan_evaluation(params, [], args.config)
    for job in jobs:
        run_evaluation_job(job)
        scores = {g: a["score"] for g, a in evaluation_record(job)["aggregates"].items()}
        print(f"{job['name']}: " + ", ".join(f"{g} {v:.3f}" if v is not None else f"{g} -" for g, v in scores.items()))
    for root in storage_roots(jobs):
        print(f"leaderboard: {run_leaderboard(root).outputs[-1]}")


@command("leaderboard", "the leaderboard over every evaluated run (table + HTML)")
def cmd_leaderboard(args) -> None:
    from .evaluation.leaderboard import aggregate, collect, score_text, write_leaderboard

    config = _config(args)
    paths = write_leaderboard(config.storage_root)
    for row in aggregate(collect(config.storage_root)):
        seeds = f"{row['seeds']} seed{'s' if row['seeds'] > 1 else ''}"
        print(f"{row['dataset']:<12} {row['pool_version']:<6} {row['scale']:<7} {row['baseline']:<40} "
              f"{row['dataset_size'] or 0:>10,}  average {score_text(row, 'average', '-'):<13}  {seeds:<8}  "
              f"({row['tasks_scored']} of {row['tasks']} tasks)")
    print(f"table: {paths['parquet']}  runs: {paths['runs_parquet']}  report: {paths['html']}")


def _args_import_published(p) -> None:
    p.add_argument("--name", default="", type=_name("pool name"),
                   help="the pool's name: it lives under {root}/datasets/NAME (filter it with --dataset NAME); "
                        "with no --metadata on the embedded default: published_example")
    p.add_argument("--metadata", default="",
                   help="a folder of DataComp's published metadata (local or s3://): *.parquet, *.npz beside; "
                        "empty on the embedded default: the synthetic world's published pool")
    p.add_argument("--scale", default="small", choices=list(SCALES), help="the published pool's scale")
    p.add_argument("--shards", default="", metavar="0-9,12", help="metadata files by position or name "
                   "(default: all)")
    p.add_argument("--no-npz", action="store_true", help="import the parquet files alone (no features)")
    p.add_argument("--subset", default="", help="a DataComp subset file (.npy): only its uids enter the pool")
    p.add_argument("--download", default="all", choices=["all", "none"],
                   help="all (download_upstream.py's default) or none (the metadata alone, --skip_shards)")
    p.add_argument("--download-only", action="append", default=[], metavar="LABEL",
                   help="download only the union of these baselines' subsets of the pool's newest version")
    p.add_argument("--hash-mismatch", choices=["keep", "drop"],
                   help="an image whose sha256 differs from the published one (default: the config's, keep)")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the open version or the next one")
    p.add_argument("--serve", type=_port, metavar="PORT", help="serve the synthetic images on PORT meanwhile")


@command("import-published", "a pool from DataComp's published metadata ({root}/datasets/NAME), kept as "
                             "published; downloaded as download_upstream.py does, or only chosen subsets",
         _args_import_published)
def cmd_import_published(args) -> None:
    overrides = _config_overrides(args)
    if args.hash_mismatch:
        if "download.hash_mismatch" in overrides:
            raise SystemExit("datacomp import-published: --hash-mismatch and --set download.hash_mismatch: keep one")
        overrides["download.hash_mismatch"] = args.hash_mismatch
    download = "subsets" if args.download_only else args.download
    if args.download_only and args.download == "none":
        raise SystemExit("datacomp import-published: --download none and --download-only: keep one")
    conf = {"name": args.name, "metadata": args.metadata, "scale": args.scale, "shards": args.shards,
            "npz": not args.no_npz, "subset": args.subset, "download": download, "download_only": args.download_only}
    with _serving(args.serve):
        _import_published(conf, overrides, args.config, args.pool_version)


def _serving(port: int | None, **kwargs):
    """The synthetic image server on `port` (--serve) for the block, or nothing."""
    import contextlib

    if not port:
        return contextlib.nullcontext()
    from .synthetic.server import serving

    return serving(port, **kwargs)


def _import_published(conf: dict, overrides: dict, config_path: str | None, pool_version: str = "") -> None:
    """One import_published run in this process; `conf` holds the DAG form's fields (published_refresh.FIELDS)."""
    from .pool.published import make_published_spec

    start = time.monotonic()
    run_key = f"cli-{time.time_ns()}"
    spec = make_published_spec(run_key, conf["name"], conf["metadata"], conf["scale"], conf["shards"], conf["npz"],
                               conf["subset"], pool_version, overrides, config_path=config_path,
                               download=conf["download"], download_only=conf["download_only"])
    _run_pool_build("import_published", spec, run_key, start)


def _args_refresh_published(p) -> None:
    p.add_argument("--name", action="append", default=[], type=_name("pool name"),
                   help="refresh this published pool (repeatable; default: every published pool)")
    p.add_argument("--serve", type=_port, metavar="PORT", help="serve the synthetic images on PORT meanwhile")


@command("refresh-published", "every published pool imported again as its newest version recorded: new "
                              "metadata files, transient download failures retried, one more point of decay",
         _args_refresh_published)
def cmd_refresh_published(args) -> None:
    from .core.config import load_config
    from .pool.published_refresh import refreshes

    overrides = _config_overrides(args)
    confs = refreshes(load_config(args.config, overrides).storage_root, args.name)
    if not confs:
        print("no published pool to refresh")
    with _serving(args.serve):  # one server for every pool's run
        for conf in confs:
            _import_published(conf, overrides | {"download.hash_mismatch": conf["hash_mismatch"]}, args.config)


def _args_import(p) -> None:
    p.add_argument("--name", required=True, type=_name("dataset name"),
                   help="the dataset's name (letters, digits, . _ -)")
    p.add_argument("--source", action="append", required=True,
                   help="webdataset .tar files, .parquet files of URLs and captions, or folders of either")
    p.add_argument("--kind", default="auto", choices=["auto", "webdataset", "urls"])
    p.add_argument("--url-column", default="", help="URL tables: default url or URL")
    p.add_argument("--caption-column", default="", help="URL tables: default caption, text, TEXT or alt")
    p.add_argument("--pool-version", default="", type=_name("pool version"),
                   help="default: the open version or the next one")
    p.add_argument("--scale", default="xlarge", choices=list(SCALES),
                   help="URL tables: download what this scale needs (xlarge: everything)")
    p.add_argument("--serve", type=_port, metavar="PORT", help="serve the synthetic images on PORT meanwhile")


@command("import", "an external image-text dataset as a pool of its own ({root}/datasets/NAME), with the "
                   "CommonPool's metadata", _args_import)
def cmd_import(args) -> None:
    from .pool.byod import make_import_spec

    start = time.monotonic()
    run_key = f"cli-{time.time_ns()}"
    # make_import_spec takes the version's lease, as make_spec does for cmd_build
    spec = make_import_spec(run_key, args.name, args.source, args.kind, args.url_column,
                            args.caption_column, args.pool_version, {"scale": args.scale} | _config_overrides(args),
                            config_path=args.config)
    with _serving(args.serve):
        _run_pool_build("import_dataset", spec, run_key, start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="datacomp", description="DataComp platform stages without Airflow")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, run, arguments, config) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if config:
            p.add_argument("--config", help="YAML config file (default: $DATACOMP_CONFIG)")
            p.add_argument("--storage-root", help="overrides the config's storage_root")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="config override, e.g. --set download.timeout=5")
        arguments(p)
        p.set_defaults(func=run)

    args = parser.parse_args(argv)
    # the platform's own INFO; other libraries' warnings (open_clip logs each model load at INFO on the root)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("datacomp_ops").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from .core.config import ConfigError
    from .core.ledger import LedgerError
    from .core.schema import SchemaError
    from .core.storage import StorageError
    from .core.versions import VersionError
    from .crawl.crawls import CrawlNotFound

    try:
        args.func(args)
    except (ConfigError, SchemaError, StorageError, LedgerError, VersionError, CrawlNotFound) as exc:
        parser.exit(2, f"datacomp: error: {exc}\n")


if __name__ == "__main__":
    main()
