"""Eval-set deduplication: copy-detection descriptors of pool and evaluation images.

A pool sample whose descriptor has cosine similarity at or above the
descriptor's threshold with any evaluation image leaves the pool as
``eval_duplicate``. The search is exact (faiss ``IndexFlatIP``: every pool
descriptor against every evaluation descriptor), never sampled.

Descriptors:
- ``isc``: the ISC21 copy-detection model DataComp used (lyakaap's 1st-place
  ISCNet: a timm EfficientNetV2-M, GeM pooling, a 256-d projection, BatchNorm,
  L2 norm; 512x512 inputs normalised with mean and std 0.5, as DataComp's
  dataset2metadata fed it), threshold 0.604169.
- ``thumbnail``: the embedded default, needing no weights: a 16x16 RGB
  thumbnail, mean-subtracted per channel and L2-normalised. A global
  thumbnail does not survive cropping, so each evaluation image is indexed
  three times, whole and centre-cropped to 90% and 80% (copy detection's
  multi-view references); a pool image matches when it is close to any view.
  It finds copies that are re-encoded, rescaled or cropped by up to about 10%
  a side, not flipped, recoloured or heavily cropped ones; its threshold is
  calibrated on the synthetic crawl (benchmarks/calibrate_dedup.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import hf_arrow, storage
from ..core.config import ConfigError, PlatformConfig
from ..core.layout import eval_index_dir
from ..core.shard_io import TarReadResult, UnreadableImage, decode_image, image_bytes, iter_tar
from ..core.stats import StageStats
from .models import ModelChoice

log = logging.getLogger(__name__)

STAGE = "eval_index"
THUMBNAIL_SIDE = 16


class ThumbnailDescriptor:
    name = "thumbnail-16px-rgb"
    # the thumbnail plus one constant component, which keeps a flat image (no
    # structure left after the mean is taken out) at unit norm; it moves the
    # similarity of any two real images by about 1e-6
    dim = THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3 + 1
    preprocess_key = "thumbnail16"

    def __init__(self, choice: ModelChoice | None = None):
        self.name = choice.name if choice else self.name

    @staticmethod
    def index_views(image) -> list:
        """The views of an evaluation image that go into the index."""
        w, h = image.size
        views = [image]
        for keep in (0.9, 0.8):
            dx, dy = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
            views.append(image.crop((dx, dy, w - dx, h - dy)))
        return views

    @staticmethod
    def preprocess(image) -> np.ndarray:
        from PIL import Image

        small = image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BOX)
        return np.asarray(small, np.float32)

    def describe(self, batch) -> np.ndarray:
        x = np.asarray(batch, np.float32).reshape(len(batch), -1, 3)
        x = x - x.mean(axis=1, keepdims=True)
        x = np.concatenate([x.reshape(len(batch), -1), np.ones((len(batch), 1), np.float32)], axis=1)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class ISCDescriptor:
    """ISC21's descriptor from a local checkpoint (``{"arch", "args", "state_dict"}``)."""

    dim = 256

    def __init__(self, choice: ModelChoice, device: str = "cpu"):
        import timm
        import torch
        import torch.nn.functional as F

        try:  # the checkpoint's "args" is an argparse Namespace: allow exactly that class
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(choice.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"models.dedup_descriptor: {choice.path} is not a loadable checkpoint: {exc}") from exc
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ConfigError(f"models.dedup_descriptor: {choice.path} holds no state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        arch = (ckpt.get("arch") if isinstance(ckpt, dict) else None) or choice.arch
        args = ckpt.get("args") if isinstance(ckpt, dict) else None
        self.input_size = int(getattr(args, "input_size", 512) or 512)
        try:
            backbone = timm.create_model(arch, features_only=True, pretrained=False)
        except RuntimeError as exc:
            raise ConfigError(f"models.dedup_backbone: timm has no model {arch!r}: {exc}") from exc

        class ISCNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone
                self.fc = torch.nn.Linear(backbone.feature_info.info[-1]["num_chs"], ISCDescriptor.dim, bias=False)
                self.bn = torch.nn.BatchNorm1d(ISCDescriptor.dim)

            def forward(self, x):
                x = self.backbone(x)[-1]
                x = F.adaptive_avg_pool2d(x.clamp(min=1e-6), 1).flatten(1)  # GeM with p = 1, as evaluated
                return F.normalize(self.bn(self.fc(x)))

        self.model = ISCNet()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"models.dedup_descriptor: {choice.path} does not match an ISCNet over "
                              f"{arch}: {str(exc).splitlines()[0]}") from exc
        self.model.to(device).eval()
        self.device, self.name = device, choice.name
        self.preprocess_key = f"isc{self.input_size}"

    @staticmethod
    def index_views(image) -> list:
        return [image]  # ISC21 was trained to match crops

    def preprocess(self, image):
        import torchvision.transforms.functional as TF
        from PIL import Image

        x = TF.to_tensor(image.resize((self.input_size, self.input_size), Image.BILINEAR))
        return TF.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def describe(self, batch) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.stack(list(batch)).to(self.device) if not torch.is_tensor(batch) else batch.to(self.device)
            return self.model(x).float().cpu().numpy()


def load_descriptor(choice: ModelChoice, device: str = "cpu"):
    if choice.kind == "thumbnail":
        return ThumbnailDescriptor(choice)
    if choice.kind == "isc":
        return ISCDescriptor(choice, device)
    raise ConfigError(f"no dedup descriptor of kind {choice.kind!r}")


# --- the evaluation sets' index -------------------------------------------------------------

def eval_sources(sets_dir: str) -> list[tuple[str, str]]:
    """Every evaluation set's test data, as (dataset folder relative to `sets_dir`, url): clip_benchmark's
    webdataset shards ``{dataset}/test/*.tar`` and the Hugging Face cache's datasets (DataComp's retrieval
    sets and WinoGAViL, ``hf_cache/{owner}___{name}``)."""
    found = [(t.split("/")[-3], t) for t in storage.ls(sets_dir, "*/test/*.tar")]
    found += [(f"{hf_arrow.HF_CACHE}/{d.rstrip('/').rsplit('/', 1)[-1]}", d) for d in hf_arrow.cached_datasets(sets_dir)]
    if not found:
        raise ConfigError(f"evaluation.sets_dir: no evaluation sets under {sets_dir} (expected {{dataset}}/test/*.tar, "
                          "clip_benchmark's webdataset layout, or hf_cache/, the Hugging Face cache)")
    return found


def _listing(sets_dir: str) -> list[tuple[str, int]]:
    """Each evaluation file with its size: what the index is built from."""
    fs, _ = storage.get_fs(sets_dir)
    urls = []
    for _, url in eval_sources(sets_dir):
        urls += [url] if url.endswith(".tar") else hf_arrow.split_files(url)
    return [(u, fs.size(storage.get_fs(u)[1])) for u in urls]


def _eval_images(url: str):
    """(key, encoded image) of one evaluation source."""
    if not url.endswith(".tar"):
        yield from hf_arrow.iter_images(url)
        return
    result = TarReadResult()
    for sample in iter_tar(url, result):
        yield sample["__key__"], image_bytes(sample)
    if result.error:
        raise storage.StorageError(f"evaluation shard {url} is unreadable after {result.samples} "
                                   f"samples: {result.error}")


def index_dir(config: PlatformConfig, choice: ModelChoice) -> str:
    """Where the evaluation descriptors of this descriptor and these sets live."""
    sets_dir = config.eval_sets_dir
    listing = _listing(sets_dir)
    dim = ThumbnailDescriptor.dim if choice.kind == "thumbnail" else ISCDescriptor.dim
    digest = hashlib.sha256(repr((choice.name, choice.path, dim, listing)).encode()).hexdigest()[:12]
    slug = choice.kind + "-" + digest
    return eval_index_dir(config.storage_root, slug)


def run_eval_index(sets_dir: str, out_dir: str, config: PlatformConfig, choice: ModelChoice,
                   device: str = "cpu") -> StageStats:
    """Describe every evaluation image once; a committed index makes this a no-op."""
    if storage.is_committed(out_dir):
        return StageStats.from_dict(storage.committed_stats(out_dir))
    start = time.monotonic()
    descriptor = load_descriptor(choice, device)
    stats = StageStats(STAGE)
    keys: dict[str, list] = {"dataset": [], "key": []}
    vectors, batch = [], []

    def flush():
        if batch:
            vectors.append(descriptor.describe(batch))
            batch.clear()

    for dataset, url in eval_sources(sets_dir):
        for key, data in _eval_images(url):
            try:
                image = decode_image(data)
            except UnreadableImage as exc:
                log.warning("evaluation image %s of %s skipped: %s", key, url, exc)
                stats.add("skipped:unreadable_eval_image")
                continue
            for view in descriptor.index_views(image):
                batch.append(descriptor.preprocess(view))
                keys["dataset"].append(dataset)
                keys["key"].append(key)
            stats.add("eval_images")
            if len(batch) >= config.metadata.batch_size:
                flush()
        stats.add("eval_shards")
    flush()
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, descriptor.dim), np.float32)
    buf = io.BytesIO()
    np.save(buf, matrix.astype(np.float32))
    storage.write_bytes(storage.join(out_dir, "descriptors.npy"), buf.getvalue())
    with storage.atomic_write(storage.join(out_dir, "keys.parquet")) as f:
        pq.write_table(pa.table(keys), f)
    stats.add("index_rows", len(matrix))
    stats.seconds = time.monotonic() - start
    stats.outputs = [out_dir]
    storage.commit(out_dir, stats.to_dict() | {"descriptor": choice.name, "sets_dir": sets_dir})
    log.info("eval index %s: %d images of %d shards or cached sets", out_dir, stats["eval_images"], stats["eval_shards"])
    return stats


@dataclass
class EvalIndex:
    """Exact inner-product search over the evaluation descriptors."""

    descriptors: np.ndarray
    datasets: list[str]
    keys: list[str]

    def __post_init__(self):
        import faiss

        self.index = faiss.IndexFlatIP(self.descriptors.shape[1])
        self.index.add(np.ascontiguousarray(self.descriptors, np.float32))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Highest cosine similarity of each query to any evaluation image, and which image."""
        if len(queries) == 0 or self.index.ntotal == 0:
            return np.full(len(queries), -1.0, np.float32), np.full(len(queries), -1, np.int64)
        sims, idx = self.index.search(np.ascontiguousarray(queries, np.float32), 1)
        return sims[:, 0], idx[:, 0]

    def describe(self, i: int) -> str:
        return f"{self.datasets[i]}/{self.keys[i]}"


def load_eval_index(out_dir: str) -> EvalIndex:
    if not storage.is_committed(out_dir):
        raise storage.StorageError(f"evaluation index {out_dir} is not built: run the eval_index stage first")
    descriptors = np.load(io.BytesIO(storage.read_bytes(storage.join(out_dir, "descriptors.npy"))))
    with storage.open_file(storage.join(out_dir, "keys.parquet")) as f:
        keys = pq.read_table(f).to_pydict()
    return EvalIndex(descriptors, keys["dataset"], keys["key"])
