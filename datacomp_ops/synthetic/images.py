"""Deterministic synthetic images: everything is a function of a name or seed.

The image server renders on request from the URL, so a million-URL crawl needs
no image files on disk, and the evaluation suite and its near-duplicates in
the crawl are the same pixels.
"""

from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"{c} {s}" for c in COLORS for s in SHAPES]

# Photographs that scikit-image ships inside its wheel (no download needed).
# `astronaut` shows a frontal face; the cameraman's face is half turned away,
# which SCRFD finds and OpenCV's frontal cascade (the embedded default) misses.
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")
FACE_PHOTOS = ("astronaut",)

EVAL_VARIANTS = ("exact", "resized", "reencoded", "cropped")


def seed_of(*parts: object) -> int:
    return int(hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _scene(seed: int, size: int, grid: int = 4) -> np.ndarray:
    """A smooth, unique background: a random grid of light colours, upsampled bicubically."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(140, 256, size=(grid, grid, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(cells, "RGB").resize((size, size), Image.BICUBIC), np.int16)


def render_shape(color: str, shape: str, seed: int, size: int | None = None,
                 extent: tuple[float, float] = (0.45, 0.8), scene: int | None = None) -> Image.Image:
    """A `color` `shape` on a light, noisy background; placement depends on `seed`.

    `extent` bounds the shape's side as a fraction of the image; with `scene`
    the background is a unique smooth colour field instead of a plain one.
    """
    rng = np.random.default_rng(seed)
    size = size or int(rng.integers(96, 257))
    noise = rng.integers(-12, 13, size=(size, size, 1))
    if scene is None:
        background = rng.integers(200, 256, size=3)[None, None, :]
    else:
        background = _scene(scene, size)
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    side = int(size * rng.uniform(*extent))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    box = (x0, y0, x0 + side, y0 + side)
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLORS[color])
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")
    return img


def eval_image(index: int, n_classes: int = len(CLASSES)) -> tuple[Image.Image, int]:
    """Image `index` of the evaluation suite and its class id.

    Like a real test set's photographs, each evaluation image is unique: a
    smaller shape on a background scene of its own, so that a copy detector can
    tell a copy of it from another shape of the same class in the crawl.
    """
    label = index % n_classes
    color, shape = CLASSES[label].split(" ")
    img = render_shape(color, shape, seed_of("eval", index), size=128, extent=(0.25, 0.45),
                       scene=seed_of("eval-scene", index))
    return img, label


def train_image(index: int, n_classes: int = len(CLASSES)) -> tuple[Image.Image, int]:
    """Image `index` of the classification task's training split (ImageNet's train, in miniature):
    drawn like the evaluation images, from seeds of their own."""
    label = index % n_classes
    color, shape = CLASSES[label].split(" ")
    img = render_shape(color, shape, seed_of("eval-train", index), size=128, extent=(0.25, 0.45),
                       scene=seed_of("eval-train-scene", index))
    return img, label


def near_duplicate(img: Image.Image, variant: str) -> Image.Image:
    """The edits under which DataComp's dedup must still find an evaluation image."""
    if variant in ("exact", "reencoded"):
        return img
    if variant == "resized":
        return img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.BICUBIC)
    if variant == "cropped":  # 5% off each side
        w, h = img.size
        return img.crop((w // 20, h // 20, w - w // 20, h - h // 20))
    raise ValueError(f"unknown near-duplicate variant {variant!r}; variants: {EVAL_VARIANTS}")


@functools.lru_cache(maxsize=None)
def _photo_array(name: str) -> np.ndarray:
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3]


def photo(name: str, seed: int) -> Image.Image:
    """A crop of a scikit-image photograph; faces stay in the frame."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; photos: {PHOTOS}")
    arr = _photo_array(name)
    rng = np.random.default_rng(seed)
    h, w = arr.shape[:2]
    scale = rng.uniform(0.8, 1.0)
    ch, cw = int(h * scale), int(w * scale)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return Image.fromarray(arr[y0 : y0 + ch, x0 : x0 + cw])


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, fmt, quality=quality)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def decompression_bomb(side: int = 10_000) -> bytes:
    """A small PNG (about 100 kB) that decodes to `side`² pixels."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def oversized() -> bytes:
    """A large but legitimate photo-sized image (4000x3000): resized, not rejected."""
    img = render_shape("blue", "square", 0, size=400).resize((4000, 3000), Image.NEAREST)
    return encode(img, quality=70)
