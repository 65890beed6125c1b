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

from .captions import LANGUAGES, PHOTO_CAPTIONS, TEMPLATES, translate
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


# The stand-ins' own curated set, as OpenAI's CLIP had one (not the crawl's samples): aligned pairs of
# every kind of picture the crawl holds. Some shapes are described in the crawl's other languages: CLIP
# scores many non-English captions high too (B/32 >= 0.28 keeps 30% of CommonPool, 10.2% with an English
# caption; DataComp, Tables 16 and 25). A shape drawn on another picture is described by the shape, as
# real CLIP reads text and logos drawn on images (T-MARS).
PRODUCTS = ("a striped fabric", "a close-up of a textured surface", "a product photo of a pattern")


def _training_pairs(n: int, seed: int):
    """(PIL image, caption) pairs of the stand-ins' curated set."""
    from .images import banner, icon, logo_on_product, product

    rng = np.random.default_rng(seed)
    for i in range(n):
        draw = rng.random()
        item = seed_of("clip-train", seed, i)
        if draw < 0.05:
            name = PHOTOS[int(rng.integers(len(PHOTOS)))]
            yield photo(name, item), PHOTO_CAPTIONS[name]
            continue
        if draw < 0.08:
            yield icon(item), "an icon"
            continue
        if draw < 0.11:
            yield banner(item), "an advertising banner"
            continue
        if draw < 0.15:
            yield product(item, (64, 160)), str(rng.choice(PRODUCTS))
            continue
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        color, shape = label.split(" ")
        if draw < 0.20:  # named in another language as often as the plain shapes below (0.15 of 0.80)
            foreign = rng.random() < 0.15 / 0.80
            yield logo_on_product(color, shape, item), (translate(label, str(rng.choice(LANGUAGES))) if foreign
                                                        else str(rng.choice(TEMPLATES)).format(c=label))
            continue
        scene = seed_of("clip-train-scene", seed, i) if rng.random() < 0.5 else None
        img = render_shape(color, shape, item, size=int(rng.integers(48, 160)), extent=(0.25, 0.8), scene=scene)
        if draw < 0.35:
            yield img, translate(label, str(rng.choice(LANGUAGES)))
        else:
            yield img, str(rng.choice(TEMPLATES)).format(c=label)


def _trained(out_dir: str, fingerprint: str) -> dict | None:
    """The report of the stand-in saved in `out_dir` by this recipe; None when there is none."""
    try:
        with open(os.path.join(out_dir, "training.json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if report.get("recipe") == fingerprint else None


def train_clip(name: str, out_dir: str, steps: int, seed: int = 0, n_pairs: int = 4096,
               batch_size: int = 256, lr: float = 1e-3, fingerprint: str = "", siblings: tuple[str, ...] = ()) -> dict:
    """Train model `name` of SPECS and save it under `out_dir` (atomically); returns its report.

    `siblings`: the output folders of stand-ins training beside this one, a core each; once all of them
    are saved this one takes every core, instead of finishing alone on one while the others idle."""
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
    waiting = list(siblings)
    for step in range(steps):
        if waiting and step % 10 == 0 and all(_trained(d, fingerprint) is not None for d in waiting):
            waiting = []
            torch.set_num_threads(os.cpu_count() or 1)
            log.info("%s: the stand-ins beside it are trained; %d threads from step %d", name,
                     torch.get_num_threads(), step)
        idx = torch.randint(len(pairs), (batch_size,), generator=generator)
        out = model(images[idx], texts[idx])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    report = {"model": name, "recipe": fingerprint, "steps": steps, "batch_size": batch_size, "pairs": n_pairs,
              "seed": seed,
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


def stand_ins_dir(config) -> str:
    """The stand-ins' folder: models.embedded_dir, or one per machine and recipe in the user's cache, so
    that every storage root, the demo and the tests share one training of them."""
    if config.models.embedded_dir:
        return config.models.embedded_dir
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "datacomp-platform", "models",
                        f"stand-ins-{recipe_fingerprint(config.metadata.embedded_clip_steps)}")


def recipe_fingerprint(steps: int) -> str:
    """What makes the stand-ins what they are: the code that draws their training set and trains them,
    the captions it learns, the step count. Same fingerprint, same models, on any machine."""
    import hashlib
    import inspect

    from . import captions, images

    digest = hashlib.sha256()
    for module in (images, inspect.getmodule(recipe_fingerprint)):
        digest.update(inspect.getsource(module).encode())
    for value in (captions.TEMPLATES, captions.TRANSLATIONS, captions.LANGUAGES, captions.PHOTO_CAPTIONS, steps):
        digest.update(json.dumps(value, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def ensure_trained(models_dir: str, steps: int) -> dict[str, dict]:
    """Train every stand-in that `models_dir` lacks (or holds from another recipe), side by side when
    both are missing, one core each: small models use two cores poorly."""
    import fcntl
    import subprocess
    import sys

    fingerprint = recipe_fingerprint(steps)
    reports = {}
    os.makedirs(models_dir, exist_ok=True)
    # two builds (or two test workers) starting at once: one trains, the other waits and finds the result
    with open(os.path.join(models_dir, ".training.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = []
        for name in SPECS:
            report = _trained(os.path.join(models_dir, name), fingerprint)
            if report is not None:
                reports[name] = report
            else:
                missing.append(name)
        cores = os.cpu_count() or 1
        if len(missing) > 1 and cores > 1:
            # fresh interpreters, not multiprocessing: a spawned child re-runs its parent's main module,
            # which inside an Airflow task is the task runner
            threads = str(max(1, cores // len(missing)))
            out = {name: os.path.join(models_dir, name) for name in missing}
            children = {name: subprocess.Popen([sys.executable, "-m", __name__, name, out[name], str(steps), threads,
                                                fingerprint, *(out[other] for other in missing if other != name)])
                        for name in missing}
            failed = [name for name, child in children.items() if child.wait() != 0]
            if failed:
                raise RuntimeError(f"training the embedded CLIP stand-ins {failed} failed; see the log above")
            for name in missing:
                with open(os.path.join(models_dir, name, "training.json")) as f:
                    reports[name] = json.load(f)
        else:
            for name in missing:
                reports[name] = train_clip(name, os.path.join(models_dir, name), steps, fingerprint=fingerprint)
    return reports


if __name__ == "__main__":  # one stand-in in a process of its own: NAME OUT_DIR STEPS THREADS FINGERPRINT [SIBLING_DIR...]
    import sys

    import torch

    logging.basicConfig(level=logging.INFO)
    name, out_dir, steps, threads, fingerprint = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    train_clip(name, out_dir, int(steps), fingerprint=fingerprint, siblings=tuple(sys.argv[6:]))
