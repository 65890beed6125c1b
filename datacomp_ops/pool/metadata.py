"""The metadata pass: NSFW captions and images, eval-set dedup, faces and CLIP features in one read.

One call handles a group of raw shards (one mapped Airflow task, on the
``gpu`` pool). Each raw tar is read once and each image decoded once, in
loader threads that work on the next batch while the models run on this one.
The decoded, unblurred image feeds every image model (both CLIP towers, the
dedup descriptor, nudenet, the face detector); each caption feeds the caption
classifier and both CLIP text towers. Then, per sample, in DataComp's order:

    corrupt_image / missing_from_shard -> nsfw_text -> nsfw_image -> eval_duplicate -> kept

Only kept samples go through face detection (the costliest CPU model), and only
images with faces are re-encoded, blurred; the others keep their downloaded
bytes. Per raw shard the pass writes the published shard (``shards/``), the
metadata parquet and npz (``metadata/``), a ledger part with a status for
every downloaded sample, and last its marker, which holds the stats.
"""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import ledger, storage
from ..core.config import PlatformConfig
from ..core.layout import PoolLayout, crawl_of_url_part
from ..core.schema import FEATURE_KEYS, POOL_METADATA_SCHEMA
from ..core.shard_io import (
    TarReadResult,
    UnreadableImage,
    decode_image,
    encode_jpeg,
    image_bytes,
    iter_tar,
    sample_json,
    write_tar,
)
from ..core.stats import Counters, StageStats
from ..download.partition import STAGE as DOWNLOAD
from .clip_features import ClipEncoder, similarity
from .dedup import index_dir, load_descriptor, load_eval_index
from .faces import blur_faces, load_face_detector
from .models import ModelChoice, choose_models, resolve_device
from .nsfw_image import load_image_classifier
from .nsfw_text import load_text_classifier

log = logging.getLogger(__name__)

STAGE = "metadata"
# The pass's steps in DataComp's order of removal; each counts what it scored ({step}.processed).
STEPS = ("decode", "nsfw_text", "nsfw_image", "eval_dedup", "faces", "clip_features")
# What run_metadata counts: each sample's final status (kept, or removed:{reason}), the steps' work, faces.
COUNTERS = Counters.of(STAGE, ("in", "shards", "kept", "decode.in", "nsfw_image.no_skin", "faces.with_faces",
                               "faces.boxes", "faces.blurred", *(f"{step}.processed" for step in STEPS),
                               *(f"removed:{reason}" for reason in ledger.METADATA_REMOVALS)))


@dataclass
class PassModels:
    """Every model of the pass, loaded once per task."""

    choices: dict[str, ModelChoice]
    device: str
    text: object
    image: object
    faces: object
    descriptor: object
    clip: dict[str, ClipEncoder]
    index: object
    index_dir: str

    @classmethod
    def load(cls, config: PlatformConfig, device: str | None = None) -> "PassModels":
        device = device or resolve_device(config.metadata.device)
        choices = choose_models(config)
        where = index_dir(config, choices["dedup"])
        models = cls(
            choices=choices, device=device,
            text=load_text_classifier(choices["nsfw_text"], device),
            image=load_image_classifier(choices["nsfw_image"], device),
            faces=load_face_detector(choices["faces"], config.metadata, device),
            descriptor=load_descriptor(choices["dedup"], device),
            clip={"b32": ClipEncoder(choices["clip_b32"], device), "l14": ClipEncoder(choices["clip_l14"], device)},
            index=load_eval_index(where), index_dir=where,
        )
        if models.index.descriptors.shape[1] != models.descriptor.dim:
            raise storage.StorageError(f"evaluation index {where} holds {models.index.descriptors.shape[1]}-d "
                                       f"descriptors, {models.descriptor.name} makes {models.descriptor.dim}-d ones")
        return models

    def names(self) -> dict[str, str]:
        return {role: choice.name for role, choice in self.choices.items()}


@dataclass
class Prepared:
    """One sample after the loader threads: decoded once, preprocessed for every image model."""

    key: str
    raw: dict
    rgb: np.ndarray | None = None
    inputs: dict = field(default_factory=dict)  # preprocess key -> model input
    error: str | None = None
    seconds: float = 0.0


def _prepare(sample: dict, models: PassModels) -> Prepared:
    start = time.perf_counter()
    out = Prepared(sample["__key__"], sample)
    try:
        image = decode_image(image_bytes(sample))
        out.rgb = np.asarray(image)
        for model in (*models.clip.values(), models.descriptor):
            if model.preprocess_key not in out.inputs:
                out.inputs[model.preprocess_key] = model.preprocess(image)
    except UnreadableImage as exc:
        out.error = str(exc)
    except Exception as exc:  # decodes, yet a model's transform rejects it (degenerate sizes and the like)
        out.error = f"cannot preprocess: {type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - start
    return out


def _batches(samples: Iterator[dict], models: PassModels, size: int, threads: int) -> Iterator[list[Prepared]]:
    """Batches of prepared samples; the next batch is decoded while the caller works on this one."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode") as pool:
        pending, chunk = None, []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) == size:
                futures = [pool.submit(_prepare, s, models) for s in chunk]
                chunk = []
                if pending:
                    yield [f.result() for f in pending]
                pending = futures
        futures = [pool.submit(_prepare, s, models) for s in chunk]
        if pending:
            yield [f.result() for f in pending]
        if futures:
            yield [f.result() for f in futures]


def _stack(items: list):
    import torch

    return torch.stack(items) if torch.is_tensor(items[0]) else np.stack(items)


@dataclass
class _ShardResult:
    """What one raw shard becomes, filled batch by batch."""

    statuses: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # key -> (status, message)
    rows: list[dict] = field(default_factory=list)  # metadata rows of kept samples
    features: dict[str, list] = field(default_factory=lambda: {k: [] for k in FEATURE_KEYS})
    published: list[dict] = field(default_factory=list)  # webdataset samples of kept ones


class MetadataPass:
    def __init__(self, config: PlatformConfig, models: PassModels):
        self.config, self.models = config, models
        self.stats = StageStats(STAGE)  # of the shard in progress
        c = models.choices
        self.thresholds = {"nsfw_text": c["nsfw_text"].threshold, "nsfw_image": c["nsfw_image"].threshold,
                           "eval_duplicate": c["dedup"].threshold}

    def _timed(self, step: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.stats.timings[step] += time.perf_counter() - start
        return out

    def process_batch(self, batch: list[Prepared], expected: dict[str, dict], crawl_id: str, shard_id: int,
                      result: _ShardResult) -> None:
        m, s = self.models, self.stats
        s.timings["decode"] += sum(p.seconds for p in batch)
        ok = [p for p in batch if p.error is None]
        for p in batch:
            if p.error is not None:
                result.statuses[p.key] = ("corrupt_image", p.error)
        s.add("decode.in", len(batch))
        s.add("decode.processed", len(batch))
        if not ok:
            return
        texts = [expected[p.key]["caption"] or "" for p in ok]
        text_scores = self._timed("nsfw_text", m.text.score, texts)
        s.add("nsfw_text.processed", len(ok))

        feats: dict[str, np.ndarray] = {}
        for tag, encoder in m.clip.items():
            images = _stack([p.inputs[encoder.preprocess_key] for p in ok])
            feats[f"{tag}_img"] = self._timed("clip_features", encoder.encode_images, images)
            feats[f"{tag}_txt"] = self._timed("clip_features", encoder.encode_texts, texts)
        s.add("clip_features.processed", len(ok))

        if getattr(m.image, "needs", "") == "l14_img":
            image_scores = self._timed("nsfw_image", m.image.score, feats["l14_img"])
        else:
            bgr = [np.ascontiguousarray(p.rgb[..., ::-1]) for p in ok]
            skipped = getattr(m.image, "skipped", 0)
            image_scores = self._timed("nsfw_image", m.image.score, bgr)
            if getattr(m.image, "skipped", 0) > skipped:
                s.add("nsfw_image.no_skin", m.image.skipped - skipped)
        s.add("nsfw_image.processed", len(ok))

        def dedup(items):
            d = m.descriptor.describe(_stack([p.inputs[m.descriptor.preprocess_key] for p in items]))
            return d, *m.index.nearest(d)

        feats["dedup"], dup_sims, dup_idx = self._timed("eval_dedup", dedup, ok)
        s.add("eval_dedup.processed", len(ok))

        th = self.thresholds
        for i, p in enumerate(ok):
            if text_scores[i] >= th["nsfw_text"]:
                result.statuses[p.key] = ("nsfw_text", f"score {text_scores[i]:.4f} >= {th['nsfw_text']} "
                                                       f"({m.choices['nsfw_text'].name})")
            elif image_scores[i] >= th["nsfw_image"]:
                result.statuses[p.key] = ("nsfw_image", f"score {image_scores[i]:.4f} >= {th['nsfw_image']} "
                                                        f"({m.choices['nsfw_image'].name})")
            elif dup_sims[i] >= th["eval_duplicate"]:
                result.statuses[p.key] = ("eval_duplicate", f"{m.index.describe(int(dup_idx[i]))} similarity "
                                          f"{dup_sims[i]:.4f} >= {th['eval_duplicate']} ({m.choices['dedup'].name})")
            else:
                result.statuses[p.key] = ("kept", None)
                self._keep(p, i, expected[p.key], feats, text_scores, image_scores, dup_sims, crawl_id, shard_id,
                           result)

    def _keep(self, p: Prepared, i: int, row: dict, feats: dict, text_scores, image_scores, dup_sims,
              crawl_id: str, shard_id: int, result: _ShardResult) -> None:
        s = self.stats
        boxes = self._timed("faces", self.models.faces.detect, p.rgb)
        s.add("faces.processed")
        jpg = image_bytes(p.raw)
        if boxes:
            s.add("faces.with_faces")
            s.add("faces.boxes", len(boxes))
            if self.config.metadata.blur_faces:
                blurred = self._timed("faces", blur_faces, p.rgb, boxes)
                jpg = encode_jpeg(blurred, self.config.download.encode_quality)
                s.add("faces.blurred")
        # the stored score is the dot product of the stored features, exactly
        vectors = {k: feats[k][i] for k in FEATURE_KEYS}
        for k, v in vectors.items():
            result.features[k].append(v)
        meta = sample_json(p.raw) | {"face_bboxes": boxes}
        result.published.append({"__key__": p.key, "jpg": jpg, "txt": row["caption"] or "",
                                 "json": json.dumps(meta).encode()})
        result.rows.append({
            "uid": row["uid"], "url": row["url"], "text": row["caption"],
            "original_width": row.get("original_width"), "original_height": row.get("original_height"),
            "clip_b32_similarity_score": float(similarity(vectors["b32_img"][None], vectors["b32_txt"][None])[0]),
            "clip_l14_similarity_score": float(similarity(vectors["l14_img"][None], vectors["l14_txt"][None])[0]),
            "face_bboxes": boxes, "sha256": row.get("sha256"),
            "nsfw_text_score": float(text_scores[i]), "nsfw_image_score": float(image_scores[i]),
            "eval_dedup_score": float(dup_sims[i]), "crawl_id": crawl_id, "shard": shard_id, "key": p.key,
        })

    def process_shard(self, shard_id: int, pool: PoolLayout, crawl_id: str) -> StageStats:
        marker = pool.marker(STAGE, f"{shard_id:08d}")
        if storage.exists(marker):
            log.info("shard %08d already processed; nothing to do", shard_id)
            return StageStats.from_dict(storage.read_json(marker))
        self.stats = StageStats(STAGE)
        start = time.monotonic()
        with storage.open_file(pool.download(shard_id, "parquet")) as f:
            table = pq.read_table(f)
        expected = {r["key"]: r for r in table.to_pylist() if r["status"] == "success"}
        result = _ShardResult()
        read = TarReadResult()
        samples = (smp for smp in iter_tar(pool.download(shard_id), read) if smp["__key__"] in expected)
        cfg = self.config.metadata
        for batch in _batches(samples, self.models, cfg.batch_size, cfg.loader_threads):
            self.process_batch(batch, expected, crawl_id, shard_id, result)
        for key in expected.keys() - result.statuses.keys():
            why = f"shard unreadable after {read.samples} samples: {read.error}" if read.error else "not in the shard"
            result.statuses[key] = ("missing_from_shard", why)
        if read.error:
            log.warning("raw shard %08d: %s", shard_id, read.error)
        self._timed("write", self._write, shard_id, pool, table, expected, result)

        s = self.stats
        for status, _ in result.statuses.values():
            s.add(status if status == "kept" else f"removed:{status}")
        s.add("in", len(expected))
        s.add("shards")
        s.seconds = time.monotonic() - start
        s.outputs = [pool.shard(shard_id), pool.metadata_file(shard_id)]
        storage.write_json(marker, s.to_dict() | {"shard": shard_id, "models": self.models.names(),
                                                  "thresholds": self.thresholds})
        return s

    def _write(self, shard_id: int, pool: PoolLayout, raw: pa.Table, expected: dict, result: _ShardResult) -> None:
        with write_tar(pool.shard(shard_id)) as tar:
            for sample in result.published:
                tar.write(sample)
        kept_keys = [r["key"] for r in result.rows]
        position = {k: i for i, k in enumerate(raw["key"].to_pylist())}
        published = raw.take(pa.array([position[k] for k in kept_keys], pa.int64())) if kept_keys \
            else raw.schema.empty_table()
        with storage.atomic_write(pool.shard(shard_id, "parquet")) as f:
            pq.write_table(published, f)

        table = pa.Table.from_pylist(result.rows, schema=POOL_METADATA_SCHEMA).replace_schema_metadata(
            {"datacomp.models": json.dumps(self.models.names()), "datacomp.thresholds": json.dumps(self.thresholds)})
        buf = io.BytesIO()
        np.savez(buf, **{k: _matrix(result.features[k], self._dim(k)) for k in FEATURE_KEYS})
        storage.write_bytes(pool.metadata_file(shard_id, "npz"), buf.getvalue())
        with storage.atomic_write(pool.metadata_file(shard_id)) as f:
            pq.write_table(table, f)

        keys = list(expected)
        statuses = [result.statuses[k] for k in keys]
        part = ledger.make_part(STAGE, [expected[k]["uid"] for k in keys], [expected[k]["url"] for k in keys],
                                [st for st, _ in statuses], [msg for _, msg in statuses])
        ledger.check_accounts_for(part, [expected[k]["uid"] for k in keys], where=f"metadata of shard {shard_id:08d}")
        ledger.write_part(pool.ledger_part(STAGE, f"{shard_id:08d}"), part)

    def _dim(self, key: str) -> int:
        if key == "dedup":
            return self.models.descriptor.dim
        return self.models.clip[key[:3]].dim


def _matrix(rows: list, dim: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


def downloaded_shards(pool: PoolLayout) -> dict[int, str]:
    """Raw shard id -> the crawl its URLs came from, for every committed download task."""
    out = {}
    for path in storage.ls(storage.join(pool.markers, DOWNLOAD), "*"):
        record = storage.read_json(path)
        crawl_id = crawl_of_url_part(record.get("partition", ""))
        for shard in record.get("shards", []):
            out[int(shard)] = crawl_id
    return out


def plan_metadata(pool: PoolLayout, config: PlatformConfig) -> list[list[int]]:
    """Groups of raw shards still without metadata, `metadata.shards_per_task` each."""
    todo = [s for s in sorted(downloaded_shards(pool)) if not storage.exists(pool.marker(STAGE, f"{s:08d}"))]
    n = max(1, config.metadata.shards_per_task)
    return [todo[i:i + n] for i in range(0, len(todo), n)]


def run_metadata(shard_ids: list[int], pool: PoolLayout, config: PlatformConfig,
                 models: PassModels | None = None) -> StageStats:
    """Stage entry point: raw shards in, published shards, metadata and ledger parts out."""
    crawls = downloaded_shards(pool)
    unknown = [s for s in shard_ids if s not in crawls]
    if unknown:
        raise storage.StorageError(f"pool {pool.base}: no committed download holds shard {unknown[0]:08d}")
    todo = [s for s in shard_ids if not storage.exists(pool.marker(STAGE, f"{s:08d}"))]
    done = [StageStats.from_dict(storage.read_json(pool.marker(STAGE, f"{s:08d}"))) for s in shard_ids if s not in todo]
    if todo:
        models = models or PassModels.load(config)
        runner = MetadataPass(config, models)
        done += [runner.process_shard(s, pool, crawls[s]) for s in todo]
    total = StageStats.total(STAGE, done)
    log.info("metadata of %d shards: %s", len(shard_ids), json.dumps(total.to_dict()["counters"]))
    return total
