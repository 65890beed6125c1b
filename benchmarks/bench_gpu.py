"""The GPU paths, run on a GPU (issue 26): the metadata pass's CLIP features, training and evaluation.

    python benchmarks/bench_gpu.py --out DIR            # on the GPU machine (scripts/gpu_run.sh)
    python benchmarks/bench_gpu.py --tiny --out DIR     # the CPU dry run: tiny sizes, CUDA-only checks skipped

Prints its figures and writes them to DIR/results.json (after every part, so a run cut short still
leaves what it measured), with open_clip's training logs and the evaluation's results beside it.

1. Metadata pass. The synthetic crawl's images (``bench_pool_stages.samples``: shapes and photographs,
   JPEG quality 95 as img2dataset writes them, at most 512 px) in a raw webdataset shard of the pool's
   layout, and the same images scaled up to 512 px on their longer side (CommonPool-like sizes). Fresh
   open_clip architectures of the real sizes (ViT-B-32 and ViT-L-14, random weights, saved to files and
   loaded by the platform's ``ClipEncoder`` as configured models are). Measured:
   - the towers alone (``encode_image``/``encode_text`` on tensors already on the GPU, under the bf16
     autocast ``ClipEncoder`` uses): images/s and the fraction of the bf16 dense peak, FLOPs counted
     with torch's FlopCounterMode; and, as a candidate, the same towers with bf16 weights;
   - decode alone: the pass's loader threads (``metadata._batches``: PIL decode and open_clip's
     preprocessing), and the GPU-decode candidate (nvJPEG through ``torchvision.io.decode_jpeg``);
   - end to end over a raw shard, the pass's CLIP path: ``shard_io.iter_tar`` -> ``metadata._batches``
     (CPU decode in the loader threads) -> ``ClipEncoder.encode_images``/``encode_texts`` of both
     models, as ``MetadataPass.process_batch`` calls them; and the whole stage (``run_metadata``: the
     pass's decisions, its writing of the published shard, parquet, npz and ledger) with the other
     models replaced by no-op stubs (labelled as such: the NSFW classifiers, the face detector and the
     dedup index are not measured here);
   - the GPU-decode CANDIDATE (not in the platform): the shard's JPEG bytes decoded on the GPU in
     batches on a CUDA stream of its own while the towers run, resized and normalised there, captions
     tokenized once for both models, one host transfer per batch; and that with bf16 weights;
   - correctness: the pass's features on the GPU against the same pass on the CPU in fp32 (cosine of
     every row), and the candidate's against the CPU too.
2. Training: DataComp's small-scale recipe (ViT-B-32, batch 4096, amp bf16) for a fixed number of
   steps through ``training.run_training`` against ``open_clip_train.main`` called with the very same
   arguments; samples/s of each (wall clock, and open_clip's steady step rate), the ratio, and the
   split of step time between waiting for data and compute, from open_clip's own log.
3. Evaluation: the checkpoint training just wrote over the synthetic evaluation suite
   (``evaluation.run_evaluation``): seconds per task.
4. CUDA stays out of the processes that start the GPU work: the pass, the evaluation and the training
   task run in child processes; this process, and the one that called ``run_training``, check
   ``torch.cuda.is_initialized()`` after the work.

Every GPU part runs in a child process of this one; each has a time limit, and the whole run keeps
to ``--budget`` seconds (the device's limit is 8 minutes for the run).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # on the GPU machine the package is not installed: PYTHONPATH=$PWD
    sys.path.insert(0, REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

H200_BF16_DENSE_TFLOPS = 989.0  # the datasheet's dense bf16 peak (a matmul measured 769-798 there)
ROLES = {"b32": "clip_b32", "l14": "clip_l14"}
GOALS = {"pairs_per_s": 2000, "tower_peak_fraction": 0.5, "training_overhead": 0.05, "cosine": 0.99}


@dataclass
class Sizes:
    archs: dict = field(default_factory=lambda: {"b32": "ViT-B-32", "l14": "ViT-L-14"})
    unique: int = 1024  # distinct synthetic samples, repeated to fill a shard
    images: int = 8192  # samples per raw shard (a pass's end-to-end run reads one shard)
    batch_default: int = 128  # metadata.batch_size's default
    batch: int = 512
    threads: int = field(default_factory=lambda: os.cpu_count() or 16)  # the pass's loader threads: a core each
    check: int = 32  # images compared between the GPU and the CPU
    tower_batch: dict = field(default_factory=lambda: {"b32": 1024, "l14": 512, "text": 1024})
    tower_seconds: float = 1.5
    scale: str = "small"
    # open_clip's loaders each build whole batches (4096 float images, 2.5 GB, twice that while stacking)
    # and keep up to 2 in /dev/shm: 8 of them stay well inside the machine's 128 GiB
    train_steps: int = 24  # a multiple of the loaders: each loader makes steps / loaders batches
    train_workers: int = 8
    train_precision: str = "amp_bf16"
    timeouts: dict = field(default_factory=lambda: {"metadata": 240, "train": 150, "evaluation": 90})

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(archs={"b32": "ViT-S-32", "l14": "ViT-S-32"}, unique=8, images=16, batch_default=4, batch=8,
                   threads=2, check=4, tower_batch={"b32": 4, "l14": 4, "text": 8}, tower_seconds=0.0,
                   scale="tiny", train_steps=4, train_workers=1, train_precision="auto",
                   timeouts={"metadata": 240, "train": 180, "evaluation": 120})


def say(line: str = "") -> None:
    print(line, flush=True)


# -- data (this process, CPU only) ----------------------------------------------------------------------


def _samples(n_unique: int) -> list[tuple[str, bytes]]:
    """bench_pool_stages' samples: the synthetic crawl's shapes and, one in ten, scikit-image's photographs."""
    sys.path.insert(0, HERE)
    from bench_pool_stages import samples

    try:
        return samples(n_unique)
    except Exception as exc:  # noqa: BLE001 - the photographs ship in scikit-image; shapes alone if not
        from datacomp_ops.embedded.images import CLASSES, encode, render_shape, seed_of
        from datacomp_ops.synthetic.crawl import TEMPLATES

        say(f"  photographs unavailable ({type(exc).__name__}: {exc}): shapes only")
        return [(TEMPLATES[i % len(TEMPLATES)].format(c=CLASSES[i % len(CLASSES)]),
                 encode(render_shape(*CLASSES[i % len(CLASSES)].split(" "), seed_of("bench", i)), quality=95))
                for i in range(n_unique)]


def _to_512(item: tuple[str, bytes]) -> tuple[str, bytes]:
    import io

    from PIL import Image

    from datacomp_ops.embedded.images import encode

    caption, jpg = item
    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    scale = 512 / max(img.size)
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return caption, encode(img, quality=95)


def _at_512(data: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The same samples scaled up so the longer side is 512 px, as most CommonPool images are after
    img2dataset's resize (DataComp: 512 px, keep ratio, only if bigger)."""
    if (os.cpu_count() or 1) <= 2:
        return [_to_512(d) for d in data]
    import multiprocessing

    # forked before any CUDA use (this process never makes a CUDA context)
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(_to_512, data, chunksize=16)


def write_raw_shard(root: str, version: str, data: list[tuple[str, bytes]], n: int) -> dict:
    """A raw shard of `n` samples (the data repeated) where the metadata pass reads one, with its parquet
    and a committed download marker; returns where and how big."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from datacomp_ops.core import storage
    from datacomp_ops.core.layout import PoolLayout
    from datacomp_ops.core.schema import compute_uid
    from datacomp_ops.core.shard_io import write_tar

    pool = PoolLayout(root, version)
    sizes = [Image.open(io.BytesIO(jpg)).size for _, jpg in data]
    rows, nbytes, pixels = [], 0, 0
    with write_tar(pool.download(0)) as tar:
        for i in range(n):
            caption, jpg = data[i % len(data)]
            (w, h) = sizes[i % len(data)]
            url = f"http://bench.example/{version}/{i}.jpg"
            r = {"uid": compute_uid(caption, url), "caption": caption, "url": url, "key": f"{i:09d}",
                 "status": "success", "original_width": w, "original_height": h, "sha256": ""}
            rows.append(r)
            tar.write({"__key__": r["key"], "jpg": jpg, "txt": caption, "json": json.dumps(r).encode()})
            nbytes += len(jpg)
            pixels += w * h
    with storage.atomic_write(pool.download(0, "parquet")) as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    storage.write_json(pool.marker("download", "bench"), {"shards": [0], "partition": "bench.parquet"})
    return {"root": root, "version": version, "tar": pool.download(0), "images": n,
            "mean_jpeg_kb": round(nbytes / n / 1024, 1), "mean_megapixels": round(pixels / n / 1e6, 3),
            "captions": {r["key"]: r["caption"] for r in rows}}


# -- the metadata pass's CLIP path (child process) -------------------------------------------------------


class NoOpText:
    """STUB for the benchmark: no NSFW caption model runs (only the CLIP path is measured)."""

    def score(self, texts):
        return np.zeros(len(texts), np.float32)


class NoOpImage:
    """STUB: DataComp's NSFW image check reads the L/14 features the pass already has; here it scores 0."""

    needs = "l14_img"

    def score(self, features):
        return np.zeros(len(features), np.float32)


class NoFaces:
    """STUB: no face detector runs."""

    def detect(self, rgb):
        return []


class NoIndex:
    """STUB: no evaluation-set index (faiss is not on the GPU machine); nothing is a duplicate."""

    def nearest(self, queries):
        return np.zeros(len(queries), np.float32), np.zeros(len(queries), np.int64)

    def describe(self, i: int) -> str:
        return "none"


def _config(plan: dict, batch: int | None = None, threads: int | None = None, root: str | None = None):
    from datacomp_ops.core.config import load_config

    s = plan["sizes"]
    over = {"storage_root": root or plan["root"], "metadata.batch_size": batch or s["batch"],
            "metadata.loader_threads": threads or s["threads"]}
    for tag, role in ROLES.items():
        over[f"models.{role}"] = plan["weights"][tag]
        over[f"models.{role}_arch"] = s["archs"][tag]
    return load_config(overrides=over)


def _pass_models(config, encoders: dict, device: str):
    """The pass's models: the platform's CLIP encoders and dedup thumbnail, the rest no-op stubs."""
    from datacomp_ops.pool.dedup import ThumbnailDescriptor
    from datacomp_ops.pool.metadata import PassModels
    from datacomp_ops.pool.models import choose_models

    choices = choose_models(config)
    return PassModels(choices=choices, device=device, text=NoOpText(), image=NoOpImage(), faces=NoFaces(),
                      descriptor=ThumbnailDescriptor(choices["dedup"]), clip=encoders, index=NoIndex(),
                      index_dir="(stub)")


def clip_pass(shard: dict, models, batch: int, threads: int, limit: int | None = None,
              encode: bool = True) -> dict:
    """The pass's CLIP path over a raw shard: its reader, its loader threads, its encoder calls."""
    from datacomp_ops.core.shard_io import iter_tar
    from datacomp_ops.pool.metadata import _batches, _stack

    captions = shard["captions"]
    samples = iter_tar(shard["tar"])
    if limit:
        samples = (s for i, s in zip(range(limit), samples))
    feats = {f"{t}_{k}": [] for t in models.clip for k in ("img", "txt")}
    n, waited, modelled, decode_cpu = 0, 0.0, 0.0, 0.0
    start = time.perf_counter()
    batches = _batches(samples, models, batch, threads)
    while True:
        t0 = time.perf_counter()
        got = next(batches, None)
        waited += time.perf_counter() - t0
        if got is None:
            break
        ok = [p for p in got if p.error is None]
        n += len(ok)
        decode_cpu += sum(p.seconds for p in got)
        if not encode or not ok:
            continue
        t0 = time.perf_counter()
        texts = [captions[p.key] or "" for p in ok]
        for tag, encoder in models.clip.items():  # as MetadataPass.process_batch
            images = _stack([p.inputs[encoder.preprocess_key] for p in ok])
            feats[f"{tag}_img"].append(encoder.encode_images(images))
            feats[f"{tag}_txt"].append(encoder.encode_texts(texts))
        modelled += time.perf_counter() - t0
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "waiting_for_loader_s": waited, "in_encoders_s": modelled,
            "loader_thread_ms_per_image": 1000 * decode_cpu / max(n, 1),
            "features": {k: np.concatenate(v) for k, v in feats.items() if v}}


class GpuDecodeCandidate:
    """CANDIDATE, not the platform's code: the pass's image path with the JPEGs decoded on the GPU.

    A reader thread walks the raw shard (the platform's ``iter_tar``), tokenizes each batch's captions
    once per distinct tokenizer (both CLIP models share open_clip's), and on a CUDA stream of its own
    decodes the batch with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``), resizes and
    crops each image as the encoders' open_clip transform does (shorter side, bicubic with antialias,
    centre crop) and normalises the stacked batch once for both models; the main thread runs all four
    towers under the same bf16 autocast as ``ClipEncoder`` while the next batch is decoded, and copies
    the features back once per batch.
    """

    def __init__(self, encoders: dict, device: str, bf16_weights: bool = False):
        import torch

        specs = {tag: self.transform_spec(enc.preprocess) for tag, enc in encoders.items()}
        if len({json.dumps(s, sort_keys=True) for s in specs.values()}) != 1:
            raise ValueError(f"the candidate expects one transform for every model: {specs}")
        self.spec = next(iter(specs.values()))
        self.encoders, self.device = encoders, device
        # bf16_weights: bf16 copies of the models, run without autocast (no weight casts per call)
        self.bf16 = bf16_weights and device.startswith("cuda")
        self.models = {tag: copy.deepcopy(enc.model).to(torch.bfloat16) if self.bf16 else enc.model
                       for tag, enc in encoders.items()}
        self.mean = torch.tensor(self.spec["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(self.spec["std"], device=device).view(1, 3, 1, 1) * 255
        self.tokenizers: dict[str, object] = {}
        self.token_key = {}
        for tag, enc in encoders.items():
            key = f"{type(enc.tokenizer).__name__}/{getattr(enc.tokenizer, 'context_length', '')}"
            self.tokenizers.setdefault(key, enc.tokenizer)
            self.token_key[tag] = key

    @staticmethod
    def transform_spec(preprocess) -> dict:
        from torchvision import transforms as T

        spec = {}
        for t in getattr(preprocess, "transforms", []):
            if isinstance(t, T.Resize):
                spec["resize"] = t.size if isinstance(t.size, int) else list(t.size)
                spec["interpolation"] = str(t.interpolation.value)
            elif isinstance(t, T.CenterCrop):
                spec["crop"] = list(t.size)
            elif isinstance(t, T.Normalize):
                spec["mean"], spec["std"] = list(map(float, t.mean)), list(map(float, t.std))
        if {"resize", "crop", "mean"} - spec.keys():
            raise ValueError(f"the candidate knows Resize, CenterCrop and Normalize; the transform is {preprocess}")
        return spec

    def _reader(self, shard: dict, batch: int, limit: int | None, out: queue.Queue, times: dict) -> None:
        """Reads, tokenizes and decodes batch after batch on a CUDA stream of its own, so that the next
        batch is decoded while the towers run on this one."""
        import contextlib

        import torch

        from datacomp_ops.core.shard_io import image_bytes, iter_tar

        cuda = self.device.startswith("cuda")
        stream = torch.cuda.Stream() if cuda else None

        def put(keys, datas):
            texts = [shard["captions"][k] or "" for k in keys]
            tokens = {}
            for key, tok in self.tokenizers.items():
                t = tok(texts)
                tokens[key] = t.pin_memory() if cuda else t
            t0 = time.perf_counter()
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                x = self.images(datas)
                done = stream.record_event() if cuda else None
            times["decode_resize_s"] += time.perf_counter() - t0
            out.put((x, done, tokens))

        try:
            keys, datas = [], []
            for i, sample in enumerate(iter_tar(shard["tar"])):
                if limit and i >= limit:
                    break
                keys.append(sample["__key__"])
                datas.append(torch.frombuffer(bytearray(image_bytes(sample)), dtype=torch.uint8))
                if len(keys) == batch:
                    put(keys, datas)
                    keys, datas = [], []
            if keys:
                put(keys, datas)
            out.put(None)
        except BaseException as exc:  # the main thread re-raises it
            out.put(exc)

    def images(self, datas: list):
        import torch
        import torchvision.transforms.v2.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms import InterpolationMode

        try:
            decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad file fails the batch: decode one by one, dropping the bad ones
            decoded = []
            for d in datas:
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    pass
        interp = InterpolationMode(self.spec["interpolation"])
        out = []
        for img in decoded:
            x = F.resize(img.float(), self.spec["resize"], interpolation=interp, antialias=True)
            out.append(F.center_crop(x, self.spec["crop"]))
        x = torch.stack(out).clamp_(0, 255)
        x = (x - self.mean) / self.std
        return x.to(torch.bfloat16) if self.bf16 else x

    def run(self, shard: dict, batch: int, limit: int | None = None, encode: bool = True) -> dict:
        import contextlib

        import torch

        q: queue.Queue = queue.Queue(maxsize=2)
        times = {"decode_resize_s": 0.0}
        reader = threading.Thread(target=self._reader, args=(shard, batch, limit, q, times), daemon=True)
        cuda = self.device.startswith("cuda")
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and not self.bf16 \
            else contextlib.nullcontext
        feats = {f"{t}_{k}": [] for t in self.encoders for k in ("img", "txt")}
        n, waited = 0, 0.0
        start = time.perf_counter()
        reader.start()
        while True:
            t0 = time.perf_counter()
            item = q.get()
            waited += time.perf_counter() - t0
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            x, done, tokens = item
            if cuda:
                main = torch.cuda.current_stream()
                main.wait_event(done)
                x.record_stream(main)  # made on the reader's stream, used (and freed) on this one
            n += len(x)
            if not encode:
                continue
            with torch.no_grad(), autocast():
                batch_feats = {}
                for tag, model in self.models.items():
                    batch_feats[f"{tag}_img"] = model.encode_image(x, normalize=True)
                    tok = tokens[self.token_key[tag]].to(self.device, non_blocking=True)
                    batch_feats[f"{tag}_txt"] = model.encode_text(tok, normalize=True)
            host = torch.cat([v.float() for v in batch_feats.values()], dim=1).cpu().numpy()
            at = 0
            for k, v in batch_feats.items():
                feats[k].append(host[:, at:at + v.shape[1]])
                at += v.shape[1]
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        reader.join()
        return {"images": n, "seconds": seconds, "waiting_for_reader_s": waited,
                "reader_decode_resize_s": times["decode_resize_s"],
                "features": {k: np.concatenate(v) for k, v in feats.items() if v}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _rate(fn, device: str, seconds: float) -> tuple[int, float]:
    """(calls, seconds) of `fn` repeated for at least `seconds` after two warm-up calls."""
    fn()
    fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        _sync(device)
        if time.perf_counter() - start >= seconds:
            return calls, time.perf_counter() - start


def towers(encoders: dict, device: str, sizes: dict, peak: float | None) -> dict:
    """Each tower alone on inputs already on the device, under ClipEncoder's autocast; then, as a
    candidate, with the weights cast to bf16 (no autocast)."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    out = {}
    for tag, enc in encoders.items():
        size = enc.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        bi, bt = sizes["tower_batch"][tag], sizes["tower_batch"]["text"]
        x = torch.randn(bi, 3, size, size, device=device)
        tokens = enc.tokenizer(["a photo of a red circle on a light background."] * bt).to(device)
        with torch.no_grad(), autocast():
            with FlopCounterMode(display=False) as counter:
                enc.model.encode_image(x[:2], normalize=True)
            img_flops = counter.get_total_flops() / 2
            with FlopCounterMode(display=False) as counter:
                enc.model.encode_text(tokens[:2], normalize=True)
            txt_flops = counter.get_total_flops() / 2
            ci, si = _rate(lambda: enc.model.encode_image(x, normalize=True), device, sizes["tower_seconds"])
            ct, st = _rate(lambda: enc.model.encode_text(tokens, normalize=True), device, sizes["tower_seconds"])
        res = {"image_batch": bi, "text_batch": bt, "image_gflops": img_flops / 1e9, "text_gflops": txt_flops / 1e9,
               "images_per_s": ci * bi / si, "texts_per_s": ct * bt / st}
        res["image_tflops"] = res["images_per_s"] * img_flops / 1e12
        res["text_tflops"] = res["texts_per_s"] * txt_flops / 1e12
        # candidate: bf16 weights, no autocast (no per-call weight casts)
        half = copy.deepcopy(enc.model).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        with torch.no_grad():
            ci, si = _rate(lambda: half.encode_image(xb, normalize=True), device, sizes["tower_seconds"])
            ct, st = _rate(lambda: half.encode_text(tokens, normalize=True), device, sizes["tower_seconds"])
        half = xb = None  # free the bf16 copy before the next model's
        res["bf16_weights_images_per_s"] = ci * bi / si
        res["bf16_weights_texts_per_s"] = ct * bt / st
        if peak:
            for k in ("image", "text"):
                res[f"{k}_peak_fraction"] = res[f"{k}_tflops"] / peak
        out[tag] = res
    # both towers of both models, one pair at a time: total FLOPs over total time
    flops = sum(r["image_gflops"] + r["text_gflops"] for r in out.values()) * 1e9
    per_pair = sum(1 / r["images_per_s"] + 1 / r["texts_per_s"] for r in out.values())
    per_pair_bf16 = sum(1 / r["bf16_weights_images_per_s"] + 1 / r["bf16_weights_texts_per_s"] for r in out.values())
    out["all"] = {"gflops_per_pair": flops / 1e9, "pairs_per_s": 1 / per_pair, "tflops": flops / per_pair / 1e12,
                  "bf16_weights_pairs_per_s": 1 / per_pair_bf16}
    if peak:
        out["all"]["peak_fraction"] = out["all"]["tflops"] / peak
        out["all"]["bf16_weights_peak_fraction"] = flops / per_pair_bf16 / 1e12 / peak
    return out


def _cosines(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        if k not in b:
            continue
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        n = min(len(x), len(y))
        cos = np.einsum("ij,ij->i", x[:n], y[:n]) / (np.linalg.norm(x[:n], axis=1) * np.linalg.norm(y[:n], axis=1))
        out[k] = {"rows": int(n), "min": float(cos.min()), "mean": float(cos.mean())}
    return out


def _make_weights(plan: dict) -> None:
    """Fresh open_clip models of the configured architectures, saved as weights files (seeded)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    for tag, arch in plan["sizes"]["archs"].items():
        path = plan["weights"][tag]
        if os.path.exists(path):
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = open_clip.create_model(arch, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path + ".tmp")
        os.replace(path + ".tmp", path)
        say(f"  {tag}: fresh {arch}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
            f"saved in {time.perf_counter() - t0:.1f} s")


def child_metadata(plan: dict, save) -> dict:
    import torch

    from datacomp_ops.core.layout import PoolLayout
    from datacomp_ops.pool.clip_features import ClipEncoder
    from datacomp_ops.pool.metadata import run_metadata
    from datacomp_ops.pool.models import choose_models, resolve_device

    s = plan["sizes"]
    res: dict = {"skipped": [], "errors": {}}
    runs = res["runs"] = {}

    def attempt(name: str, fn):
        """One measurement; a failure is recorded and printed, and the others still run."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a one-shot run on a lent machine: keep going
            import traceback

            res["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(f"  {name}: FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None
        finally:
            save(res)

    _make_weights(plan)
    config = _config(plan)
    choices = choose_models(config)
    crawl, big = plan["shards"]["crawl"], plan["shards"]["512"]

    # the CPU reference first, before anything touches CUDA (fp32, the same pass code on the CPU)
    def reference():
        t0 = time.perf_counter()
        cpu_enc = {tag: ClipEncoder(choices[role], "cpu") for tag, role in ROLES.items()}
        res["load_cpu_s"] = time.perf_counter() - t0
        out = clip_pass(crawl, _pass_models(config, cpu_enc, "cpu"), s["batch"], s["threads"], limit=s["check"])
        res["cpu_reference_s"] = out["seconds"]
        return out

    ref = attempt("CPU reference", reference)
    device = resolve_device(config.metadata.device)  # the platform's: CUDA when a GPU is there
    cuda = device.startswith("cuda")
    res["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    peak = H200_BF16_DENSE_TFLOPS if cuda and ("H200" in res["device"] or "H100" in res["device"]) else None
    res["bf16_peak_tflops"] = peak
    say(f"  metadata pass on {res['device']} ({device}); CPU reference of {s['check']} images in "
        f"{res.get('cpu_reference_s', float('nan')):.1f} s")
    if not cuda:
        res["skipped"] += ["correctness on CUDA (no GPU: the CPU is compared with itself)",
                           "GPU decode on CUDA (the candidate ran with torchvision's CPU decoder)",
                           "bf16 autocast and peak fractions (the CPU runs fp32)"]
    t0 = time.perf_counter()
    enc = {tag: ClipEncoder(choices[role], device) for tag, role in ROLES.items()}
    res["load_s"] = time.perf_counter() - t0
    models = _pass_models(config, enc, device)

    tw = res["towers"] = attempt("towers", lambda: towers(enc, device, s, peak)) or {}
    for tag, r in tw.items():
        if tag == "all":
            say(f"  towers, all four: {r['pairs_per_s']:,.0f} pairs/s, {r['tflops']:.0f} TFLOP/s"
                + (f" = {r['peak_fraction']:.1%} of bf16 peak" if peak else "")
                + f"; bf16 weights (candidate): {r['bf16_weights_pairs_per_s']:,.0f} pairs/s"
                + (f" = {r['bf16_weights_peak_fraction']:.1%}" if peak else ""))
            continue
        fi = f", {r['image_peak_fraction']:.1%}" if peak else ""
        ft = f", {r['text_peak_fraction']:.1%}" if peak else ""
        say(f"  towers, {tag} ({s['archs'][tag]}): image {r['images_per_s']:,.0f}/s ({r['image_gflops']:.1f} GFLOP, "
            f"{r['image_tflops']:.0f} TFLOP/s{fi}), text {r['texts_per_s']:,.0f}/s ({r['text_gflops']:.1f} GFLOP, "
            f"{r['text_tflops']:.0f} TFLOP/s{ft}); bf16 weights (candidate): image "
            f"{r['bf16_weights_images_per_s']:,.0f}/s, text {r['bf16_weights_texts_per_s']:,.0f}/s")

    # correctness: the pass on the device against the pass on the CPU; the candidate against the CPU
    def correctness():
        got = clip_pass(crawl, models, s["batch"], s["threads"], limit=s["check"])
        res["cosine_pass_vs_cpu"] = _cosines(got["features"], ref["features"])
        worst = min(v["min"] for v in res["cosine_pass_vs_cpu"].values())
        res["cosine_ok"] = worst >= GOALS["cosine"]
        say(f"  correctness, {s['check']} images: the pass on {device} vs on the CPU in fp32, lowest row cosine "
            f"{worst:.5f} ({'ok' if res['cosine_ok'] else 'BELOW'} {GOALS['cosine']}): "
            + ", ".join(f"{k} {v['min']:.5f}" for k, v in res["cosine_pass_vs_cpu"].items())
            + ("" if cuda else "  [CPU vs CPU: plumbing only]"))

    if ref:
        attempt("correctness, pass", correctness)
    cand = attempt("GPU-decode candidate", lambda: GpuDecodeCandidate(enc, device))

    def candidate_correctness():
        res["candidate_transform"] = cand.spec
        got = cand.run(crawl, s["batch"], limit=s["check"])
        res["cosine_candidate_vs_cpu"] = _cosines(got["features"], ref["features"])
        say("  correctness, GPU-decode candidate vs the CPU pass (another decoder and resizer): lowest row cosine "
            + ", ".join(f"{k} {v['min']:.5f}" for k, v in res["cosine_candidate_vs_cpu"].items()))

    if ref and cand:
        attempt("correctness, candidate", candidate_correctness)

    def record(name: str, fn) -> None:
        r = attempt(name, fn)
        if r is None:
            return
        rate = r["images"] / r["seconds"]
        runs[name] = {k: v for k, v in r.items() if k != "features"} | {"images_per_s": rate}
        extra = ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.endswith(("_s", "_per_image")) and k != "seconds")
        say(f"  {name:<62}{rate:>8,.0f} images/s  ({r['images']} in {r['seconds']:.1f} s; {extra})")
        save(res)

    def one_thread(fn):
        """`fn` with torch's intra-op threads at 1 (each loader thread then does its own tensor work)."""
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(before)
        return run

    th, b = s["threads"], s["batch"]
    for label, shard in (("crawl", crawl), ("512px", big)):
        record(f"decode only, pass loader threads x{th}, {label}",
               lambda: clip_pass(shard, models, b, th, encode=False))
        if cand:
            record(f"decode only, GPU-decode candidate, {label}", lambda: cand.run(shard, b, encode=False))
    for label, shard, batch in (("crawl", crawl, s["batch_default"]), ("crawl", crawl, b), ("512px", big, b)):
        record(f"pass CLIP path (CPU decode), {label}, batch {batch}",
               lambda: clip_pass(shard, models, batch, th))
    record(f"pass CLIP path (CPU decode), 512px, batch {b}, torch threads 1",
           one_thread(lambda: clip_pass(big, models, b, th)))
    if cand:
        for label, shard in (("crawl", crawl), ("512px", big)):
            record(f"GPU-decode candidate, {label}, batch {b}", lambda: cand.run(shard, b))
    if cand and cuda:
        fast = attempt("GPU-decode candidate, bf16 weights", lambda: GpuDecodeCandidate(enc, device, bf16_weights=True))
        if fast:
            if ref:
                cos = res["cosine_candidate_bf16_vs_cpu"] = _cosines(fast.run(crawl, b, limit=s["check"])["features"],
                                                                     ref["features"])
                say("  correctness, GPU-decode candidate with bf16 weights vs the CPU pass: lowest row cosine "
                    + ", ".join(f"{k} {v['min']:.5f}" for k, v in cos.items()))
            record(f"GPU-decode candidate + bf16 weights, 512px, batch {b}", lambda: fast.run(big, b))
            fast = None

    # the stage itself (run_metadata), other models stubbed: its decisions and its writing included
    def stage():
        pool = PoolLayout(crawl["root"], crawl["version"])
        t0 = time.perf_counter()
        stats = run_metadata([0], pool, _config(plan, root=crawl["root"]), models)
        seconds = time.perf_counter() - t0
        timings = stats.to_dict().get("timings", {})
        runs["run_metadata, other models stubbed, crawl"] = {
            "images": stats["in"], "seconds": seconds, "images_per_s": stats["in"] / seconds, "kept": stats["kept"],
            "timings": timings}
        say(f"  {'run_metadata (the stage; other models no-op stubs), crawl':<62}{stats['in'] / seconds:>8,.0f} "
            f"images/s  ({stats['in']} in {seconds:.1f} s; its timings {json.dumps(timings)})")

    attempt("run_metadata", stage)
    return res


# -- training (child processes) ---------------------------------------------------------------------


def make_training_data(plan: dict, shard: dict) -> dict:
    """The crawl shard as a pool shard, all of it as a subset, resharded where a run reads it."""
    import pyarrow.parquet as pq

    from datacomp_ops.core.schema import read_subset, uids_to_array, write_subset
    from datacomp_ops.training import train as training
    from datacomp_ops.training.reshard import run_reshard

    spec = training.TrainSpec.for_subset(os.path.join(plan["work"], "train_root"), "v0001", plan["sizes"]["scale"],
                                         "bench")
    os.makedirs(os.path.dirname(spec.subset), exist_ok=True)
    uids = pq.read_table(shard["tar"][:-4] + ".parquet", columns=["uid"])["uid"].to_pylist()
    write_subset(spec.subset, uids_to_array(sorted(uids)))
    stats = run_reshard(spec.subset, [shard["tar"]], spec.shards_dir, shard_size=1000, workers=1)
    assert len(read_subset(spec.subset)) == stats["samples"]
    return asdict(spec)


def _train_config(plan: dict, logs_root: str):
    from datacomp_ops.core.config import load_config

    s = plan["sizes"]
    batch = 4096 if s["scale"] in ("small", "medium") else 256
    return load_config(overrides={
        "storage_root": logs_root, "training.num_checkpoints": 1,
        "training.samples_seen": s["train_steps"] * batch, "training.workers": plan["train_workers"],
        "training.log_every_n_steps": 1, "training.precision": s["train_precision"]})


def child_train_platform(plan: dict) -> dict:
    """The platform's task body: run_training, which starts open_clip's trainer in a child of its own."""
    import torch

    from datacomp_ops.training import train as training

    spec = training.TrainSpec(**plan["train_spec"])
    config = _train_config(plan, os.path.join(plan["work"], "unused"))
    t0 = time.perf_counter()
    training.run_training(spec, config)
    seconds = time.perf_counter() - t0
    record = json.load(open(os.path.join(spec.run_dir, "training.json")))
    lineage = json.load(open(os.path.join(spec.run_dir, "lineage.json")))
    return {"seconds": seconds, "record": record, "args": lineage["open_clip_args"], "recipe": lineage["recipe"],
            "device": lineage["device"], "log": os.path.join(spec.run_dir, "train", "out.log"),
            "cuda_initialized_in_task_process": torch.cuda.is_initialized()}


def run_direct(plan: dict, args: list[str], timeout: float) -> dict:
    """open_clip_train.main in a child, with the platform run's arguments (its logs elsewhere). The same
    two lines the platform's entry point adds: our model configs, and webdataset's end-of-shard fix."""
    from datacomp_ops.training import train as training

    logs = os.path.join(plan["work"], "direct")
    args = list(args)
    args[args.index("--logs") + 1] = logs
    code = ("import sys, open_clip; from open_clip_train.main import main; "
            "from datacomp_ops.training.entry import _skip_end_of_shard_markers; _skip_end_of_shard_markers(); "
            f"open_clip.add_model_config({training.MODEL_CONFIGS!r}); main(sys.argv[1:])")
    stdout = os.path.join(plan["work"], "train_direct.stdout")
    t0 = time.perf_counter()
    rc = _run([sys.executable, "-c", code, *args], timeout, stdout)
    return {"rc": rc, "seconds": time.perf_counter() - t0, "log": os.path.join(logs, "train", "out.log")}


def parse_train_log(path: str, batch: int) -> dict:
    """Per-step data and step times from open_clip's log: logged every step, its meters reset after each
    line, so each line's "Data (t)" and "Batch (t)" are that step's."""
    data, step = [], []
    pattern = re.compile(r"Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), ")
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            m = pattern.search(line)
            if m:
                data.append(float(m.group(1)))
                step.append(float(m.group(2)))
    if not step:
        return {"steps": 0}
    half = len(step) // 2  # steady state: the second half (the loaders' first burst of batches is over)
    d, b = sum(data[half:]), sum(step[half:])
    return {"steps": len(step), "step_s": step, "data_s": data, "first_step_s": step[0],
            "steady_steps": len(step) - half, "steady_step_s": b / (len(step) - half),
            "steady_data_s": d / (len(step) - half), "steady_compute_s": (b - d) / (len(step) - half),
            "steady_samples_per_s": batch * (len(step) - half) / b if b > 0 else None,
            "steady_data_fraction": d / b if b > 0 else None,
            "all_samples_per_s": batch * len(step) / sum(step) if sum(step) > 0 else None}


# -- evaluation (child process) ---------------------------------------------------------------------


class _TaskTimes(logging.Handler):
    """run_evaluation logs one line per task: name, metric, score, seconds."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.tasks: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%s: %s = %s (%.1f s)" and len(record.args) == 4:
            name, metric, score, seconds = record.args
            self.tasks.append({"task": name, "metric": metric, "score": score, "seconds": round(seconds, 2)})


def child_evaluation(plan: dict) -> dict:
    import torch

    from datacomp_ops.core.config import load_config
    from datacomp_ops.evaluation.zero_shot import RESULTS, run_evaluation

    handler = _TaskTimes()
    log = logging.getLogger("datacomp_ops.evaluation.zero_shot")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the lines are printed by the parent, once
    config = load_config(overrides={"storage_root": os.path.join(plan["work"], "unused"),
                                    "evaluation.sets_dir": plan["eval_dir"], "evaluation.device": "auto"})
    t0 = time.perf_counter()
    stats = run_evaluation(plan["train_spec"]["run_dir"], config)
    seconds = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    return {"seconds": seconds, "device": torch.cuda.get_device_name() if cuda else "cpu", "tasks": handler.tasks,
            "tasks_s": sum(t["seconds"] for t in handler.tasks), "counters": stats.to_dict().get("counters", {}),
            "results": os.path.join(plan["train_spec"]["run_dir"], RESULTS)}


# -- the parent --------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float, stdout: str | None = None) -> int:
    """A child in a session of its own, killed with everything it started if it outlives `timeout`."""
    out = open(stdout, "w") if stdout else None
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
    try:
        return child.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return -9
    finally:
        if out:
            out.close()


def child(part: str, plan: dict, timeout: float) -> dict:
    """Run one part in a child interpreter; its result, or why there is none."""
    result = os.path.join(plan["work"], f"result_{part}.json")
    if os.path.exists(result):
        os.remove(result)
    t0 = time.perf_counter()
    stdout = os.path.join(plan["work"], f"{part}.stdout") if part == "train_platform" else None
    rc = _run([sys.executable, os.path.abspath(__file__), "--child", part, "--work", plan["work"]], timeout, stdout)
    out = json.load(open(result)) if os.path.exists(result) else {}
    if rc != 0 or not out.get("complete"):
        why = f"timed out after {timeout:.0f} s" if rc == -9 else f"exit status {rc}"
        out["error"] = f"{part}: {why} (its output is in the log above); what it measured before is kept"
    out["child_seconds"] = time.perf_counter() - t0
    return out


class Run:
    def __init__(self, args):
        self.args, self.start = args, time.monotonic()
        self.results: dict = {"tiny": args.tiny, "goals": GOALS, "skipped": []}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def timeout(self, cap: float, reserve: float) -> float:
        return max(10.0, min(cap, self.left() - reserve))

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        with open(os.path.join(self.args.out, "results.json.tmp"), "w") as f:
            json.dump(self.results, f, indent=1, default=_jsonable)
        os.replace(os.path.join(self.args.out, "results.json.tmp"), os.path.join(self.args.out, "results.json"))


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _copy(src: str, dst: str) -> None:
    if os.path.exists(src):
        shutil.copyfile(src, dst)


def _shm_workers(wanted: int, batch_gb: float) -> tuple[int, float]:
    """Loader processes the shared memory holds: each keeps up to 2 batches of float images there."""
    try:
        st = os.statvfs("/dev/shm")
        free = st.f_bavail * st.f_frsize / 1e9
    except OSError:
        return wanted, float("nan")
    return max(1, min(wanted, int(free / (2.2 * batch_gb)))), free


def _write_plan(plan: dict) -> None:
    """What the child processes read: sizes, shards, weights, the training run."""
    with open(os.path.join(plan["work"], "plan.json"), "w") as f:
        json.dump(plan, f)


def part_training(run: Run, plan: dict) -> None:
    """DataComp's recipe through run_training, then open_clip_train.main with the same arguments."""
    sizes, r, out, work = Sizes(**plan["sizes"]), run.results, run.args.out, plan["work"]
    batch = 4096 if sizes.scale in ("small", "medium") else 256
    say(f"\n2. training: scale {sizes.scale} (batch {batch}) through run_training, then open_clip_train.main")
    t0 = time.perf_counter()
    plan["train_spec"] = make_training_data(plan, plan["shards"]["crawl"])
    batch_gb = batch * 3 * 224 * 224 * 4 / 1e9 if sizes.scale != "tiny" else 0.01
    plan["train_workers"], shm = _shm_workers(sizes.train_workers, batch_gb)
    workers = plan["train_workers"]
    # open_clip gives each loader ceil(steps / loaders) batches: a multiple of the loaders is what runs
    rounds = max(1, round(sizes.train_steps / workers))
    if workers < sizes.train_workers:  # fewer loaders: slower steps, so fewer of them
        rounds = min(rounds, 3)
        say(f"  /dev/shm holds batches for {workers} loader processes only")
    plan["sizes"]["train_steps"] = workers * rounds
    _write_plan(plan)
    say(f"  {plan['sizes']['train_steps']} steps of batch {batch}, {workers} loader processes (/dev/shm {shm:.0f} GB "
        f"free; a batch of float images is {batch_gb:.1f} GB); data resharded in {time.perf_counter() - t0:.1f} s")
    t = r["training"] = {"scale": sizes.scale, "batch": batch, "workers": plan["train_workers"],
                         "shm_free_gb": shm}
    ours = child("train_platform", plan, run.timeout(sizes.timeouts["train"], 100))
    t["platform"] = ours
    _copy(os.path.join(work, "train_platform.stdout"), os.path.join(out, "train_platform.txt"))
    run.save()
    if "error" not in ours:
        direct = run_direct(plan, ours["args"], run.timeout(sizes.timeouts["train"], 40))
        t["direct"] = direct
        _copy(os.path.join(work, "train_direct.stdout"), os.path.join(out, "train_direct.txt"))
        for side, info in (("platform", ours), ("direct", direct)):
            info["steps"] = parse_train_log(info["log"], batch)
            _copy(info["log"], os.path.join(out, f"train_{side}_out.log"))
        say(f"  {'':<32}{'wall s':>7}{'samples/s':>10}{'steady samples/s':>17}{'step s':>8}{'data s':>8}"
            f"{'compute s':>10}{'data share':>11}")
        for side, info in (("platform (run_training)", ours), ("open_clip_train.main directly", direct)):
            st = info["steps"]
            info["samples"] = st.get("steps", 0) * batch
            info["wall_samples_per_s"] = info["samples"] / info["seconds"]
            say(f"  {side:<32}{info['seconds']:>7.1f}{info['wall_samples_per_s']:>10,.0f}"
                f"{st.get('steady_samples_per_s') or 0:>17,.0f}{st.get('steady_step_s') or 0:>8.3f}"
                f"{st.get('steady_data_s') or 0:>8.3f}{st.get('steady_compute_s') or 0:>10.3f}"
                f"{st.get('steady_data_fraction') or 0:>11.1%}")
        say(f"  (wall: the whole run, start-up and checkpoint included; steady: open_clip's own step times "
            f"over the last {ours['steps'].get('steady_steps', 0)} steps, data = waiting for the loaders)")
        if direct["rc"] == 0:
            t["wall_ratio"] = ours["seconds"] / direct["seconds"]
            sp, sd = ours["steps"].get("steady_samples_per_s"), direct["steps"].get("steady_samples_per_s")
            t["steady_ratio"] = sd / sp if sp and sd else None
            say(f"  platform / direct wall time {t['wall_ratio']:.3f}x "
                f"(overhead {100 * (t['wall_ratio'] - 1):+.1f}%; goal <= {100 * GOALS['training_overhead']:.0f}%); "
                f"steady step time ratio {t['steady_ratio'] or float('nan'):.3f}x; first step "
                f"{ours['steps'].get('first_step_s', 0):.1f} s / {direct['steps'].get('first_step_s', 0):.1f} s")
        else:
            say(f"  open_clip_train.main directly failed (exit {direct['rc']}): {direct['log']}")
        say(f"  CUDA initialised in the process that called run_training: "
            f"{ours['cuda_initialized_in_task_process']}")
    else:
        say(f"  {ours['error']}")
    run.save()


def part_evaluation(run: Run, plan: dict) -> None:
    """The checkpoint training wrote, over the synthetic evaluation suite."""
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    work = plan["work"]
    t0 = time.perf_counter()
    plan["eval_dir"] = os.path.join(work, "eval")
    generate_eval_suite(plan["eval_dir"])
    _write_plan(plan)
    say(f"\n3. evaluation of the checkpoint training wrote (suite made in {time.perf_counter() - t0:.1f} s)")
    e = run.results["evaluation"] = child("evaluation", plan, run.timeout(plan["sizes"]["timeouts"]["evaluation"], 5))
    if "error" in e:
        say(f"  {e['error']}")
    else:
        for task in e["tasks"]:
            say(f"  {task['task']:<28}{task['seconds']:>7.2f} s   {task['metric']} = {task['score']}")
        say(f"  {len(e['tasks'])} tasks in {e['tasks_s']:.1f} s; run_evaluation {e['seconds']:.1f} s in all "
            f"(the rest: loading the checkpoint, writing) on {e['device']}")
        if os.path.exists(e["results"]):
            shutil.copyfile(e["results"], os.path.join(run.args.out, "eval_results.jsonl"))
    run.save()


def parent(args) -> None:
    import torch

    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="bench-gpu-")
    os.makedirs(work, exist_ok=True)
    sizes = Sizes.tiny() if args.tiny else Sizes()
    if args.images:
        sizes.images = args.images
    if args.train_steps:
        sizes.train_steps = args.train_steps
    run = Run(args)
    r = run.results
    cuda_visible = torch.cuda.is_available()  # asks the driver; creates no CUDA context
    r["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "torchvision": __import__("torchvision").__version__, "cuda_available": cuda_visible,
                    "work": work}
    r["sizes"] = asdict(sizes)
    say(f"bench_gpu: {'tiny (CPU dry run)' if args.tiny else 'full'}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, CUDA visible: {cuda_visible}; work dir {work}; budget {args.budget:.0f} s")
    if not cuda_visible:
        r["skipped"].append("everything that needs CUDA: the parts run on the CPU to check the plumbing; "
                            "no rate here says anything about the GPU")
        say("  no GPU here: each part runs on the CPU to check its plumbing; CUDA-only checks are skipped")

    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    base = _samples(sizes.unique)
    data = {"crawl": base, "512": _at_512(base)}
    shards = {label: write_raw_shard(os.path.join(work, f"root_{label}"), "bench", d, sizes.images)
              for label, d in data.items()}
    wdir = os.path.join(work, "weights")
    os.makedirs(wdir, exist_ok=True)
    plan = {"work": work, "sizes": asdict(sizes), "shards": shards, "root": os.path.join(work, "root_crawl"),
            "weights": {tag: os.path.join(wdir, f"{tag}_{arch}.safetensors") for tag, arch in sizes.archs.items()}}
    r["data"] = {label: {k: v for k, v in sh.items() if k != "captions"}
                 for label, sh in shards.items()}
    say(f"data: {sizes.images} samples per raw shard ({sizes.unique} distinct, repeated) in "
        f"{time.perf_counter() - t0:.1f} s; crawl as generated: {shards['crawl']['mean_megapixels']} MP, "
        f"{shards['crawl']['mean_jpeg_kb']} kB a JPEG; at 512 px: {shards['512']['mean_megapixels']} MP, "
        f"{shards['512']['mean_jpeg_kb']} kB")

    _write_plan(plan)
    run.save()

    # 1. the metadata pass
    if "metadata" in parts:
        say(f"\n1. metadata pass ({sizes.archs['b32']} + {sizes.archs['l14']}, random weights; "
            f"{sizes.threads} loader threads)")
        m = r["metadata"] = child("metadata", plan, run.timeout(sizes.timeouts["metadata"], 200))
        r["skipped"] += m.pop("skipped", [])
        if "error" in m:
            say(f"  {m['error']}")
        run.save()

    if "training" in parts:
        part_training(run, plan)
    if "evaluation" in parts and "train_spec" in plan and "error" not in r.get("training", {}).get("platform", {}):
        part_evaluation(run, plan)

    # 4. this process never initialised CUDA
    r["cuda_initialized_in_parent"] = torch.cuda.is_initialized()
    say(f"\n4. CUDA initialised in this (the parent) process after every part: {r['cuda_initialized_in_parent']}")
    summary(r)
    run.save()
    say(f"\nresults: {os.path.join(args.out, 'results.json')} ({run.results['elapsed_s']:.0f} s)")
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def summary(r: dict) -> None:
    """The goals of issue 26, met or not (or not measured)."""
    say("\nsummary against the goals:")
    cuda = r["machine"]["cuda_available"]
    m = r.get("metadata", {})
    runs = m.get("runs", {})
    best = max(((k, v["images_per_s"]) for k, v in runs.items() if k.startswith(("pass CLIP", "GPU-decode cand"))),
               key=lambda kv: kv[1], default=None)
    pass_best = max(((k, v["images_per_s"]) for k, v in runs.items() if k.startswith("pass CLIP")),
                    key=lambda kv: kv[1], default=None)
    goals = r["goal_check"] = {}
    if pass_best:
        goals["pass_pairs_per_s"] = pass_best[1]
        say(f"  end to end, the platform's pass: {pass_best[1]:,.0f} images/s ({pass_best[0]}); goal "
            f">= {GOALS['pairs_per_s']:,}" + ("" if cuda else "  [CPU: not the goal's figure]"))
    if best:
        goals["best_pairs_per_s"] = best[1]
        say(f"  end to end, best of pass and candidates: {best[1]:,.0f} images/s ({best[0]})")
    towers_rate = m.get("towers", {}).get("all", {}).get("pairs_per_s")
    if towers_rate and pass_best:
        say(f"  the towers alone (autocast, as the pass runs them) would allow {towers_rate:,.0f} pairs/s: the pass "
            f"reaches {pass_best[1] / towers_rate:.0%} of that" + (f", the best candidate {best[1] / towers_rate:.0%}"
                                                                   if best else ""))
    frac = m.get("towers", {}).get("all", {}).get("peak_fraction")
    if frac is not None:
        goals["tower_peak_fraction"] = frac
        say(f"  towers alone: {frac:.1%} of the bf16 dense peak; goal >= {GOALS['tower_peak_fraction']:.0%}")
    else:
        say("  towers alone as a fraction of the bf16 peak: skipped (needs an H100/H200)")
    t = r.get("training", {})
    if "wall_ratio" in t:
        goals["training_overhead"] = t["wall_ratio"] - 1
        say(f"  training overhead (wall): {100 * (t['wall_ratio'] - 1):+.1f}%; goal <= "
            f"{100 * GOALS['training_overhead']:.0f}%")
    if "cosine_pass_vs_cpu" in m:
        worst = min(v["min"] for v in m["cosine_pass_vs_cpu"].values())
        goals["cosine_min"] = worst
        say(f"  GPU features vs CPU: lowest row cosine {worst:.5f}" + ("" if cuda else "  [CPU vs CPU: skipped]"))
    goals["cuda_never_initialised_in_parent"] = not r.get("cuda_initialized_in_parent", True)
    if r["skipped"]:
        say("  skipped: " + "; ".join(r["skipped"]))


def child_main(part: str, work: str) -> None:
    plan = json.load(open(os.path.join(work, "plan.json")))
    path = os.path.join(work, f"result_{part}.json")

    def save(out: dict) -> None:  # partial results survive a timeout
        with open(path + ".tmp", "w") as f:
            json.dump(out, f, default=_jsonable)
        os.replace(path + ".tmp", path)

    if part == "metadata":
        out = child_metadata(plan, save)
    else:
        out = {"train_platform": child_train_platform, "evaluation": child_evaluation}[part](plan)
    save(out | {"complete": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=False, default="bench-gpu-out", help="folder for results.json and logs")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny sizes and small architectures")
    parser.add_argument("--parts", default="metadata,training,evaluation", help="which parts to run")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--images", type=int, default=0, help="samples per raw shard (default: 8192; tiny 16)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="training steps, rounded to a multiple of the loaders (default: 24; tiny 4)")
    parser.add_argument("--work", default="", help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.work)
    else:
        parent(args)


if __name__ == "__main__":
    main()
