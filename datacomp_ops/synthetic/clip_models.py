"""The embedded default's CLIP stand-ins: small open_clip models trained here on synthetic pairs.

Without OpenAI's ViT-B/32 and ViT-L/14 on disk, the metadata pass still runs
the same open_clip code path on two small models of open_clip's own
architecture, trained on a CPU in about a minute each on a synthetic set of
their own (shapes on plain and scene backgrounds, and crops of the
scikit-image photographs, with matching captions; not the crawl's samples), so
that their scores carry signal: a matching caption scores higher than a
mismatching one. They are fixtures and every output names them as such.

Each is saved as an open_clip ``local-dir`` model (``open_clip_config.json``
and ``open_clip_model.safetensors``) plus ``training.json`` with the figures
of its training run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid

import numpy as np

from .crawl import PHOTO_CAPTIONS, TEMPLATES
from .images import CLASSES, PHOTOS, photo, render_shape, seed_of

log = logging.getLogger(__name__)

_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 2}
# Two sizes, so the two roles differ as B/32 and L/14 do (the larger is wider and deeper).
SPECS = {
    "embedded-clip-b32": {"embed_dim": 64, "quick_gelu": False, "text_cfg": _TEXT,
                          "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 8}},
    "embedded-clip-l14": {"embed_dim": 96, "quick_gelu": False, "text_cfg": _TEXT | {"width": 128},
                          "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8}},
}
PREPROCESS = {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
              "interpolation": "bicubic", "resize_mode": "shortest"}


def _training_pairs(n: int, seed: int):
    """(PIL image, caption) pairs: shapes on plain and scene backgrounds, some photographs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        if rng.random() < 0.06:
            name = PHOTOS[int(rng.integers(len(PHOTOS)))]
            yield photo(name, seed_of("clip-train-photo", seed, i)), PHOTO_CAPTIONS[name]
            continue
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        color, shape = label.split(" ")
        scene = seed_of("clip-train-scene", seed, i) if rng.random() < 0.5 else None
        img = render_shape(color, shape, seed_of("clip-train", seed, i), size=int(rng.integers(64, 160)),
                           extent=(0.25, 0.8), scene=scene)
        yield img, str(rng.choice(TEMPLATES)).format(c=label)


def train_clip(name: str, out_dir: str, steps: int, seed: int = 0, n_pairs: int = 4096,
               batch_size: int = 256, lr: float = 1e-3) -> dict:
    """Train model `name` of SPECS and save it under `out_dir` (atomically); returns its report."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    start = time.monotonic()
    torch.manual_seed(seed)
    model_cfg = SPECS[name]
    model = open_clip.CLIP(**model_cfg, output_dict=True)
    preprocess = open_clip.image_transform(PREPROCESS["size"], is_train=False, mean=PREPROCESS["mean"],
                                           std=PREPROCESS["std"], interpolation="bicubic")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=_TEXT["context_length"])
    pairs = list(_training_pairs(n_pairs, seed))
    images = torch.stack([preprocess(img) for img, _ in pairs])
    texts = tokenizer([caption for _, caption in pairs])
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(pairs), (batch_size,), generator=generator)
        out = model(images[idx], texts[idx])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    report = {"model": name, "steps": steps, "batch_size": batch_size, "pairs": n_pairs, "seed": seed,
              "loss_first": round(losses[0], 4), "loss_last": round(float(np.mean(losses[-10:])), 4),
              "seconds": round(time.monotonic() - start, 1), **_signal(model, preprocess, tokenizer, seed)}

    tmp = os.path.join(os.path.dirname(out_dir.rstrip("/")) or ".", f".tmp-{uuid.uuid4().hex}-{name}")
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, "open_clip_model.safetensors"))
    with open(os.path.join(tmp, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}, f, indent=2)
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump(report, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log.info("trained %s in %.0f s: %s", name, report["seconds"], report)
    return report


def _signal(model, preprocess, tokenizer, seed: int) -> dict:
    """Held-out check that scores carry signal: matching captions against shuffled ones."""
    import torch

    pairs = list(_training_pairs(512, seed + 1000))
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i, _ in pairs]), normalize=True)
        txt = model.encode_text(tokenizer([c for _, c in pairs]), normalize=True)
    matched = (img * txt).sum(-1)
    mismatched = (img * txt.roll(1, 0)).sum(-1)
    return {"heldout_matched_score": round(float(matched.mean()), 4),
            "heldout_mismatched_score": round(float(mismatched.mean()), 4),
            "heldout_retrieval_top1": round(float(((img @ txt.T).argmax(1) == torch.arange(len(pairs))).float().mean()), 4)}


def ensure_trained(models_dir: str, steps: int) -> dict[str, dict]:
    """Train every stand-in that `models_dir` lacks (or has from another step count)."""
    import fcntl

    reports = {}
    os.makedirs(models_dir, exist_ok=True)
    # two builds (or two test workers) starting at once: one trains, the other waits and finds the result
    with open(os.path.join(models_dir, ".training.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in SPECS:
            path = os.path.join(models_dir, name)
            report_path = os.path.join(path, "training.json")
            if os.path.exists(report_path):
                with open(report_path) as f:
                    report = json.load(f)
                if report.get("steps") == steps:
                    reports[name] = report
                    continue
            reports[name] = train_clip(name, path, steps)
    return reports
