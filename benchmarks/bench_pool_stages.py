"""Pool-stage throughput: each model as the metadata pass runs it, against the bare library call.

    python benchmarks/bench_pool_stages.py [--images 512] [--models-dir var/data/models]
    python benchmarks/bench_pool_stages.py --gpu-features [--arch ViT-L-14]   # on a GPU machine

Same inputs for both columns: JPEG images of the synthetic crawl (shapes and
photographs, up to 512 px as the download leaves them) and their captions.
"ours" is the platform's wrapper (datacomp_ops); "bare" is the library called
directly on already-prepared inputs, so the ratio shows what the wrapper costs.
The last row runs the whole metadata pass over a raw shard of the same
samples (decode, every model, decisions, writing) against the sum of the bare
calls plus one decode each: its ratio shows what one decode shared by every
model and decoding overlapped with the models buy, net of all our overhead.

--gpu-features measures the CLIP feature stage alone on CUDA with bf16
autocast, on a real open_clip architecture with random weights (no download),
in images/s and as a fraction of the GPU's bf16 dense peak (FLOPs counted with
torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from datacomp_ops.core import storage
from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.core.schema import compute_uid
from datacomp_ops.embedded.images import CLASSES, PHOTOS, encode, photo, render_shape, seed_of
from datacomp_ops.pool.models import choose_models
from datacomp_ops.synthetic.crawl import PHOTO_CAPTIONS, TEMPLATES, UNSAFE_CAPTIONS


def samples(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 10 == 0:
            name = PHOTOS[i // 10 % len(PHOTOS)]
            img = photo(name, seed_of("bench", i))
            img.thumbnail((512, 512))
            out.append((PHOTO_CAPTIONS[name], encode(img, quality=95)))
            continue
        label = CLASSES[i % len(CLASSES)]
        caption = str(rng.choice(UNSAFE_CAPTIONS if i % 50 == 1 else TEMPLATES)).format(c=label)
        out.append((caption, encode(render_shape(*label.split(" "), seed_of("bench", i)), quality=95)))
    return out


def timed(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row(name: str, n: int, ours: float, bare: float, unit: str) -> None:
    print(f"  {name:<24}{n / ours:>12,.0f}{n / bare:>12,.0f}  {unit:<11}{bare / ours:>7.2f}x")


def cpu_table(args, work: str) -> None:
    from datacomp_ops.pool.clip_features import ClipEncoder
    from datacomp_ops.pool.dedup import ThumbnailDescriptor
    from datacomp_ops.pool.faces import load_face_detector
    from datacomp_ops.pool.metadata import PassModels, run_metadata
    from datacomp_ops.pool.nsfw_image import EXPOSED, load_image_classifier
    from datacomp_ops.pool.nsfw_text import load_text_classifier
    from datacomp_ops.pool.prepare_models import run_prepare_models
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    data = samples(args.images)
    captions = [c for c, _ in data]
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for _, b in data]
    rgb = [np.asarray(p) for p in pil]
    bgr = [np.ascontiguousarray(a[..., ::-1]) for a in rgb]
    n = len(data)
    generate_eval_suite(os.path.join(work, "eval"))
    config = load_config(overrides={"storage_root": work, "evaluation.sets_dir": os.path.join(work, "eval"),
                                    "models.embedded_dir": os.path.abspath(args.models_dir),
                                    "metadata.batch_size": args.batch_size})
    run_prepare_models(config)
    choices = choose_models(config)
    print(f"{n} samples (shapes and photographs up to 512 px), batch {args.batch_size}, "
          f"torch threads {__import__('torch').get_num_threads()}, {os.cpu_count()} cores")
    print(f"  {'stage':<24}{'ours':>12}{'bare':>12}  {'unit':<11}{'ratio':>8}")

    # decode: ours decodes and converts once for every model; bare is PIL alone
    from datacomp_ops.core.shard_io import decode_image

    decode_s = timed(lambda: [Image.open(io.BytesIO(b)).convert("RGB") for _, b in data])
    row("decode", n, timed(lambda: [decode_image(b) for _, b in data]), decode_s, "images/s")

    text = load_text_classifier(choices["nsfw_text"])
    from profanity_check import predict_prob

    text_s = timed(lambda: predict_prob(captions))
    row("nsfw_text (profanity)", n, timed(lambda: text.score(captions)), text_s, "captions/s")

    nude = load_image_classifier(choices["nsfw_image"])

    def bare_nudenet():
        for found in nude.detector.detect_batch(bgr, batch_size=8):
            max((d["score"] for d in found if d["class"] in EXPOSED), default=0.0)

    nude_s = timed(bare_nudenet, 1)
    row("nsfw_image (nudenet)", n, timed(lambda: nude.score(bgr), 1), nude_s, "images/s")

    faces = load_face_detector(choices["faces"], config.metadata)
    import cv2

    gray = [cv2.cvtColor(a, cv2.COLOR_RGB2GRAY) for a in rgb]
    face_s = timed(lambda: [faces.cascade.detectMultiScale(g, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
                            for g in gray], 1)
    row("faces (cascade)", n, timed(lambda: [faces.detect(a) for a in rgb], 1), face_s, "images/s")

    from datacomp_ops.pool.dedup import index_dir, load_eval_index

    index = load_eval_index(index_dir(config, choices["dedup"]))
    thumb = ThumbnailDescriptor()

    def bare_dedup():
        x = np.stack([np.asarray(p.resize((16, 16), Image.BOX), np.float32).reshape(-1, 3) for p in pil])
        x = np.concatenate([(x - x.mean(1, keepdims=True)).reshape(n, -1), np.ones((n, 1), np.float32)], axis=1)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index.index.search(x, 1)

    dedup_s = timed(bare_dedup)
    row("eval_dedup (thumbnail)", n, timed(lambda: index.nearest(thumb.describe([thumb.preprocess(p) for p in pil]))),
        dedup_s, "images/s")

    import torch

    clip_bare = 0.0
    for role in ("clip_b32", "clip_l14"):
        enc = ClipEncoder(choices[role])

        def ours():
            for i in range(0, n, args.batch_size):
                enc.encode_images([enc.preprocess(p) for p in pil[i:i + args.batch_size]])
                enc.encode_texts(captions[i:i + args.batch_size])

        def bare():
            with torch.no_grad():
                for i in range(0, n, args.batch_size):
                    x = torch.stack([enc.preprocess(p) for p in pil[i:i + args.batch_size]])
                    f = enc.model.encode_image(x)
                    f / f.norm(dim=-1, keepdim=True)
                    t = enc.model.encode_text(enc.tokenizer(captions[i:i + args.batch_size]))
                    t / t.norm(dim=-1, keepdim=True)

        bare_s = timed(bare)
        clip_bare += bare_s
        row(f"clip_features ({role[5:]})", n, timed(ours), bare_s, "pairs/s")

    # the whole pass over a raw shard against the bare calls in sequence, one decode each
    pool = PoolLayout(work, "bench")
    rows = []
    with storage.atomic_write(pool.download(0)) as f, wds.TarWriter(f) as tar:
        for i, (caption, jpg) in enumerate(data):
            url = f"http://bench/{i}.jpg"
            r = {"uid": compute_uid(caption, url), "caption": caption, "url": url, "key": f"{i:09d}",
                 "status": "success", "original_width": 0, "original_height": 0, "sha256": ""}
            rows.append(r)
            tar.write({"__key__": r["key"], "jpg": jpg, "txt": caption, "json": json.dumps(r).encode()})
    with storage.atomic_write(pool.download(0, "parquet")) as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    storage.write_json(pool.marker("download", "bench"), {"shards": [0], "partition": "bench.parquet"})
    models = PassModels.load(config)
    start = time.perf_counter()
    stats = run_metadata([0], pool, config, models)
    pass_s = time.perf_counter() - start
    bare_total = decode_s + text_s + nude_s + dedup_s + clip_bare + face_s * stats["kept"] / n
    row("metadata pass (all)", n, pass_s, bare_total, "samples/s")
    print(f"  pass timings (s): {json.dumps(stats.to_dict()['timings'])}")


def gpu_features(args) -> None:
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = "cuda"
    model, _, _ = open_clip.create_model_and_transforms(args.arch, device=device)
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with FlopCounterMode(display=False) as counter:
            model.encode_image(x[:1], normalize=True)
        flops_per_image = counter.get_total_flops()
        for _ in range(3):
            model.encode_image(x, normalize=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            model.encode_image(x, normalize=True)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rate = args.steps * args.batch_size / seconds
    name = torch.cuda.get_device_name()
    peak = args.bf16_peak_tflops or (989.0 if "H100" in name or "H200" in name else None)
    print(f"{name}: {args.arch} image tower, batch {args.batch_size}, bf16 autocast: {rate:,.0f} images/s, "
          f"{flops_per_image / 1e9:.1f} GFLOPs/image, {rate * flops_per_image / 1e12:,.0f} TFLOP/s"
          + (f" = {rate * flops_per_image / 1e12 / peak:.1%} of the {peak:.0f} TFLOP/s bf16 dense peak" if peak else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models-dir", default="var/data/models", help="the embedded CLIP stand-ins")
    parser.add_argument("--gpu-features", action="store_true")
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bf16-peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if args.gpu_features:
        gpu_features(args)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-pool-") as work:
            cpu_table(args, work)


if __name__ == "__main__":
    sys.exit(main())
