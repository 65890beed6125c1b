"""A synthetic published pool: DataComp's published layout, its URLs on the synthetic image server.

What download_upstream.py fetches for a pool, in miniature: parquet files of metadata (uid, url,
text, original sizes, both CLIP scores, face boxes, the sha256 of the bytes served) with npz
features beside (float16, as DataComp publishes them), computed by the embedded CLIP stand-ins and
the embedded face detector, as the platform's metadata pass computes them. Its pairs are drawn as
the crawl's are (synthetic/crawl.py's CONTENT), and the web has moved on since the pool was
published: some links are dead, some images changed after they were hashed, some hosts fail (HTTP
500) and some answer slowly. ``truth.parquet`` says what the download must give each uid.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.config import PlatformConfig
from ..core.layout import SyntheticWorld
from ..core.schema import compute_uid
from ..embedded.captions import PHOTO_CAPTIONS
from ..embedded.images import FACE_PHOTOS
from .crawl import _CONTENT_WEIGHTS, CONTENT, _link

log = logging.getLogger(__name__)

# What happened to a published pair since: (share, the URL's prefix on the server, the download's status)
DECAY: dict[str, tuple[float, str, str]] = {
    "dead": (0.06, "/missing", "http_error"),
    "changed": (0.05, "", "hash_mismatch"),
    "failing_host": (0.03, "/error", "server_error"),
    "slow_host": (0.03, "/slow", "downloaded"),
}
FACE_EVERY = 40
SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                    ("original_width", pa.int64()), ("original_height", pa.int64()),
                    ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                    ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])


def write_published_pool(world: SyntheticWorld, base_url: str, config: PlatformConfig, rows: int = 300,
                         files: int = 3, seed: int = 0, first_image: int = 5_000_000) -> dict:
    """Write the world's published pool (metadata folder and truth); the embedded stand-ins must be trained."""
    from PIL import Image

    from ..pool.clip_features import ClipEncoder, similarity
    from ..pool.faces import load_face_detector
    from ..pool.models import choose_models
    from .server import render

    rng = np.random.default_rng(seed)
    kinds = list(CONTENT)
    fates = list(DECAY)
    draws = rng.random(rows)
    bounds = np.cumsum([w for w, _, _ in DECAY.values()])
    records, images = [], []
    for i in range(rows):
        kind = kinds[int(rng.choice(len(kinds), p=_CONTENT_WEIGHTS))]
        path, text = _link(kind, first_image + i, rng)
        if i % FACE_EVERY == FACE_EVERY // 2:  # a photograph of a person: the published boxes have something to blur
            kind, name = "photo", FACE_PHOTOS[i // FACE_EVERY % len(FACE_PHOTOS)]
            path, text = f"/img/photo/{name}/{first_image + i}.jpg", PHOTO_CAPTIONS[name]
        at = int(np.searchsorted(bounds, draws[i], side="right"))
        fate = fates[at] if at < len(fates) else "as_published"
        prefix, status = (DECAY[fate][1], DECAY[fate][2]) if fate in DECAY else ("", "downloaded")
        body = render(path)[0]
        image = Image.open(io.BytesIO(body)).convert("RGB")
        digest = hashlib.sha256(body if fate != "changed" else b"hashed before it changed: " + body).hexdigest()
        url = f"{base_url}{prefix}{path}"
        records.append({"uid": compute_uid(text, url), "url": url, "text": text, "original_width": image.width,
                        "original_height": image.height, "sha256": digest, "kind": kind, "fate": fate,
                        "expected_status": status})
        images.append(image)

    models = choose_models(config)
    features = {}
    for role, prefix in (("clip_b32", "b32"), ("clip_l14", "l14")):
        encoder = ClipEncoder(models[role])
        features[f"{prefix}_img"] = np.concatenate([encoder.encode_images([encoder.preprocess(im) for im in
                                                                           images[k:k + 64]])
                                                    for k in range(0, rows, 64)])
        features[f"{prefix}_txt"] = encoder.encode_texts([r["text"] for r in records])
    detector = load_face_detector(models["faces"], config.metadata)
    for r, image, b32i, b32t, l14i, l14t in zip(records, images, features["b32_img"], features["b32_txt"],
                                                features["l14_img"], features["l14_txt"]):
        r["clip_b32_similarity_score"] = float(similarity(b32i[None], b32t[None])[0])
        r["clip_l14_similarity_score"] = float(similarity(l14i[None], l14t[None])[0])
        r["face_bboxes"] = detector.detect(np.asarray(image))

    out = Path(world.published_metadata)
    out.mkdir(parents=True, exist_ok=True)
    edges = np.linspace(0, rows, files + 1).astype(int)
    for f, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        name = hashlib.md5(f"synthetic-published-{seed}-{f}".encode()).hexdigest()[:16]  # DataComp names by hash
        pq.write_table(pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in records[a:b]], schema=SCHEMA),
                       out / f"{name}.parquet")
        np.savez(out / f"{name}.npz", **{k: v[a:b].astype(np.float16) for k, v in features.items()})
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in ("uid", "url", "kind", "fate", "expected_status")}
                                         for r in records]), world.published_truth)
    counts = {fate: sum(r["fate"] == fate for r in records) for fate in fates + ["as_published"]}
    log.info("synthetic published pool: %d rows in %d files (%s), %d with faces", rows, files, counts,
             sum(bool(r["face_bboxes"]) for r in records))
    return {"rows": rows, "files": files, "fates": counts, "metadata": str(out)}
