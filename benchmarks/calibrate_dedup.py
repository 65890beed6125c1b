"""Calibrate the embedded thumbnail descriptor's eval-dedup threshold on the synthetic crawl.

    python benchmarks/calibrate_dedup.py [--urls 20000] [--seed 1]

Renders every image of a synthetic crawl exactly as the image server sends it,
re-encodes it as the download does (JPEG, quality 95), describes it, and finds
its most similar evaluation image. Planted near-duplicates (exact, resized,
re-encoded at quality 40, cropped 5% a side) are the positives; every other
image is a negative. Prints recall and false positives at a grid of thresholds
and the midpoint of the gap between the hardest positive and negative.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from datacomp_ops.pool.dedup import ThumbnailDescriptor
from datacomp_ops.synthetic.crawl import KINDS, CrawlSpec, _kind_schedule, _link
from datacomp_ops.synthetic.evalsuite import EVAL_IMAGES, image_at
from datacomp_ops.synthetic.server import render

IMAGE_KINDS = {k for k, (_, status) in KINDS.items() if status == "downloaded"} - {"redirect", "slow", "oversized"}


def as_downloaded(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.monotonic()
    d = ThumbnailDescriptor()
    # as run_eval_index builds it: every view of every evaluation image, as the suite stores it
    evals = d.describe([d.preprocess(view) for i in range(EVAL_IMAGES)
                        for view in d.index_views(as_downloaded(encode(image_at(i)[0])))])
    rng = np.random.default_rng(args.seed)
    kinds = _kind_schedule(CrawlSpec(n_urls=args.urls, seed=args.seed), rng)
    pos, neg, variants = [], [], []
    for i, kind in enumerate(kinds):
        if kind not in IMAGE_KINDS:
            continue
        path, _ = _link(kind, i, rng)
        best = float((evals @ d.describe([d.preprocess(as_downloaded(render(path)[0]))])[0]).max())
        if kind == "eval_duplicate":
            pos.append(best)
            variants.append(path.split("/")[4])
        else:
            neg.append(best)
    pos, neg = np.array(pos), np.array(neg)
    print(f"{len(pos)} planted near-duplicates, {len(neg)} other images ({args.urls} URLs, seed {args.seed}), "
          f"{time.monotonic() - start:.0f} s")
    for v in sorted(set(variants)):
        sel = pos[np.array(variants) == v]
        print(f"  {v:<10} min similarity {sel.min():.4f} (n={len(sel)})")
    print(f"  hardest negative: {neg.max():.4f}; 99.9th percentile {np.quantile(neg, 0.999):.4f}")
    print(f"  {'threshold':>9}  {'recall':>7}  {'false positives':>15}")
    for t in np.arange(0.90, 1.0, 0.01):
        print(f"  {t:>9.2f}  {(pos >= t).mean():>7.4f}  {int((neg >= t).sum()):>15}")
    print(f"midpoint of the gap: {(pos.min() + neg.max()) / 2:.4f}")


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


if __name__ == "__main__":
    main()
