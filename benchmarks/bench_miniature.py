"""The miniature against DataComp's Table 3: five baselines over several seeds, as ratios to no filtering.

    python benchmarks/bench_miniature.py [--seeds 0,1,2] [--urls 6000] [--root DIR]

Builds a miniature CommonPool from a synthetic crawl (the README's main job without Airflow: ``datacomp
synthetic``, ``build``, ``filter``, ``train``, ``evaluate``), trains the tiny scale on each of DataComp's
five Table 3 baselines once per seed under DataComp's compute rule (samples seen = the tiny pool's size,
the same budget for every subset), and prints, per baseline: the subset's share of the pool beside
DataComp's at small scale, the average over the synthetic suite and its ImageNet-like task (mean ± sample
standard deviation over the seeds), and both as ratios to no filtering, beside the paper's small and
medium ratios. It ends with the ordering Table 3 shows and whether each step of it holds here by more
than the spread. Exit status 0 when the ordering holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# DataComp's Table 3 (average over 38 tasks / ImageNet) and Table 3's dataset sizes at small scale
PAPER = {
    "no_filter": {"small": (0.132, 0.025), "medium": (0.258, 0.176), "size": 12.8},
    "basic_filter": {"small": (0.142, 0.030), "medium": (0.285, 0.226), "size": 3.0},
    "clip_score_l14_30": {"small": (0.173, 0.051), "medium": (0.328, 0.273), "size": 3.8},
    "image_based": {"small": (0.159, 0.043), "medium": (0.312, 0.268), "size": 3.0},
    "image_based_intersect_clip_score_l14_30": {"small": (0.144, 0.039), "medium": (0.328, 0.297), "size": 1.4},
}
BASELINES = list(PAPER)
# what must hold (the acceptance): each pair (better, worse) by more than the spread
ORDER = [("clip_score_l14_30", "basic_filter"), ("basic_filter", "no_filter"),
         ("image_based", "no_filter"), ("image_based_intersect_clip_score_l14_30", "no_filter")]


def datacomp(*args: str, log: str) -> None:
    """One `datacomp` command, its output to `log`; a failure prints the log's tail and stops."""
    with open(log, "a") as out:
        out.write(f"\n$ datacomp {' '.join(args)}\n")
        out.flush()
        result = subprocess.run([sys.executable, "-m", "datacomp_ops.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log) as f:
            sys.stderr.write(f.read()[-4000:])
        raise SystemExit(f"datacomp {args[0]} failed (exit {result.returncode}); log: {log}")


def summarise(runs: list[dict], baselines: list[str]) -> dict[str, dict]:
    """Per baseline: the seeds' averages and ImageNet-like scores, their means and sample spreads."""
    out = {}
    for name in baselines:
        mine = [r for r in runs if r["baseline"] == name and r["average"] is not None]
        avg = [r["average"] for r in mine]
        inet = [r["imagenet"] for r in mine]
        out[name] = {"seeds": len(mine), "average": statistics.fmean(avg) if avg else None,
                     "average_std": statistics.stdev(avg) if len(avg) > 1 else 0.0,
                     "imagenet": statistics.fmean(inet) if inet else None,
                     "imagenet_std": statistics.stdev(inet) if len(inet) > 1 else 0.0,
                     "size": mine[0]["dataset_size"] if mine else None}
    return out


def ordering(summary: dict[str, dict]) -> list[tuple[str, str, float, float, bool]]:
    """(better, worse, gap of the averages, spread, holds): the gap must exceed both spreads added."""
    checks = []
    for better, worse in ORDER:
        if better not in summary or worse not in summary:
            continue
        a, b = summary[better], summary[worse]
        gap = a["average"] - b["average"]
        spread = a["average_std"] + b["average_std"]
        checks.append((better, worse, gap, spread, gap > spread))
    return checks


def report(summary: dict[str, dict], pool: int) -> str:
    base = summary["no_filter"]
    lines = [f"{'baseline':<42} {'share':>6} {'paper':>6}  {'average':>15} {'ImageNet-like':>15}"
             f"  {'ratio avg / IN':>15}  {'paper small':>12}  {'paper medium':>12}"]
    for name in summary:
        s, p = summary[name], PAPER[name]
        share = s["size"] / pool if s["size"] else 0.0
        ratio = (s["average"] / base["average"], s["imagenet"] / base["imagenet"] if base["imagenet"] else float("nan"))
        paper = {k: (p[k][0] / PAPER["no_filter"][k][0], p[k][1] / PAPER["no_filter"][k][1]) for k in ("small", "medium")}
        lines.append(f"{name:<42} {share:>6.1%} {p['size'] / 12.8:>6.1%}  "
                     f"{s['average']:.3f} ± {s['average_std']:.3f}  {s['imagenet']:.3f} ± {s['imagenet_std']:.3f}"
                     f"  {ratio[0]:>6.2f} / {ratio[1]:<6.2f}  {paper['small'][0]:>5.2f} / {paper['small'][1]:<4.2f}"
                     f"  {paper['medium'][0]:>5.2f} / {paper['medium'][1]:<4.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="of Table 3's five, comma-separated")
    parser.add_argument("--urls", type=int, default=6000, help="URLs of the synthetic crawl (the tiny pool needs "
                        "publish.tiny_pool_size samples after download failures and the pool stages)")
    parser.add_argument("--pool-size", type=int, default=0, help="publish.tiny_pool_size (default: the config's)")
    parser.add_argument("--crawl-seed", type=int, default=0)
    parser.add_argument("--root", default="", help="storage root (default: a temporary folder, removed after)")
    parser.add_argument("--port", type=int, default=8796)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()

    from datacomp_ops.core.config import load_config
    from datacomp_ops.evaluation.leaderboard import collect

    baselines = [b for b in args.baselines.split(",") if b]
    if "no_filter" not in baselines or set(baselines) - set(BASELINES):
        parser.error(f"--baselines: no_filter and any of {', '.join(BASELINES[1:])}")
    started = time.monotonic()
    tmp = None if args.root else tempfile.TemporaryDirectory(prefix="bench-miniature-")
    root = os.path.abspath(args.root or tmp.name)
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, "bench.log")
    config = os.path.join(root, "bench-config.yaml")
    with open(config, "w") as f:
        # one loopback host serves the whole crawl: no per-host pace (the demo's crawl is on 200 hosts)
        f.write(f"download:\n  allowed_private_addresses: ['127.0.0.1:{args.port}']\n  timeout: 5\n"
                f"  per_host_rps: 0\n  per_host_connections: 0\n"
                f"  processes_count: 4\n  thread_count: 32\n  number_sample_per_shard: 2000\n"
                f"extract:\n  urls_per_partition: 2000\n"
                + (f"publish:\n  tiny_pool_size: {args.pool_size}\n" if args.pool_size else "")
                + "training:\n  num_checkpoints: 1\n"
                "filtering:\n  baselines:\n" + "".join(f"    - {b}\n" for b in _specs(baselines)))
    common = ["--config", config, "--storage-root", root]
    seconds = {}
    t = time.monotonic()
    datacomp("synthetic", "--out", os.path.join(root, "synthetic"), "--n-urls", str(args.urls), "--seed",
             str(args.crawl_seed), "--base-url", f"http://127.0.0.1:{args.port}", "--urls-per-file", "2000", log=log)
    datacomp("build", *common, "--scale", "tiny", "--serve", str(args.port), "--hang-seconds", "10", log=log)
    seconds["build"] = time.monotonic() - t
    t = time.monotonic()
    datacomp("filter", *common, "--scale", "tiny", log=log)
    seconds["filter"] = time.monotonic() - t
    t = time.monotonic()
    datacomp("train", *common, "--scale", "tiny", *sum((["--baseline", b] for b in baselines), []),
             "--seeds", args.seeds, log=log)
    seconds["train"] = time.monotonic() - t
    t = time.monotonic()
    datacomp("evaluate", *common, "--scale", "tiny", log=log)
    seconds["evaluate"] = time.monotonic() - t

    pool_size = load_config(overrides={"storage_root": root}).publish.tiny_pool_size
    manifest = json.load(open(_manifest(root)))
    pool = int(manifest.get("scales", {}).get("tiny", {}).get("samples", pool_size))
    summary = summarise(collect(root), baselines)
    print(f"miniature: {args.urls:,} URLs -> a tiny pool of {pool:,} samples; every baseline trains on "
          f"{pool_size:,} samples seen (DataComp's rule: the pool's size), seeds {args.seeds}")
    print(report(summary, pool))
    print("Table 3's ordering, on the average (gap vs the two seeds' standard deviations added):")
    checks = ordering(summary)
    for better, worse, gap, spread, holds in checks:
        print(f"  {better} > {worse}: gap {gap:+.3f}, spread {spread:.3f}  {'holds' if holds else 'DOES NOT HOLD'}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
          + f", total {time.monotonic() - started:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pool": pool, "samples_seen": pool_size, "seeds": args.seeds, "summary": summary,
                       "checks": checks, "seconds": seconds}, f, indent=2)
    if tmp:
        tmp.cleanup()
    return 0 if all(c[-1] for c in checks) else 1


def _specs(baselines: list[str]) -> list[str]:
    from datacomp_ops.core.config import DATACOMP_BASELINES

    return [s for s in DATACOMP_BASELINES if s.split("=")[0].strip() in baselines]


def _manifest(root: str) -> str:
    from datacomp_ops.core import versions
    from datacomp_ops.core.layout import PoolLayout

    return PoolLayout(root, versions.latest(root)).manifest


if __name__ == "__main__":
    sys.exit(main())
