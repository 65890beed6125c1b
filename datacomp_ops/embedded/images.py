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


def _shape_mask(shape: str, box: tuple[int, int, int, int], size: int, outline: int = 0) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    kw = {"outline": 255, "width": outline} if outline else {"fill": 255}
    if shape == "circle":
        draw.ellipse(box, **kw)
    elif shape == "square":
        draw.rectangle(box, **kw)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], **kw)
    return mask


# The VTAB-like tasks have as many classes as the DataComp tasks they stand in for where we can draw
# them: CLEVR Counts has 8 (3-10 objects), so count has 8; DTD has 47 textures, of which these 7 (and
# plain) are fills a 128-px shape can show. With 4 classes a model at chance scored anywhere in
# 0.08-0.40 on texture, by the seed alone (README "The miniature").
TEXTURES = ("striped", "banded", "dotted", "checkered", "grid", "crosshatched", "zigzagged", "plain")
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight")


def _pattern(texture: str, color: tuple[int, int, int], size: int) -> Image.Image:
    """The shape's colour in a pattern over white (plain: the colour alone)."""
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "striped":
        on = (xx // 6) % 2 == 0
    elif texture == "banded":
        on = (yy // 6) % 2 == 0
    elif texture == "dotted":
        on = ((xx % 10 - 5) ** 2 + (yy % 10 - 5) ** 2) <= 6
    elif texture == "checkered":
        on = ((xx // 8) + (yy // 8)) % 2 == 0
    elif texture == "grid":
        on = (xx % 10 < 3) | (yy % 10 < 3)
    elif texture == "crosshatched":
        on = ((xx + yy) % 10 < 3) | ((xx - yy) % 10 < 3)
    elif texture == "zigzagged":
        on = ((yy + np.abs(xx % 12 - 6)) // 6) % 2 == 0
    elif texture == "plain":
        on = np.ones((size, size), bool)
    else:
        raise ValueError(f"unknown texture {texture!r}; textures: {TEXTURES}")
    pixels = np.where(on[..., None], np.array(color, np.uint8), np.uint8(250))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def variant_image(task: str, index: int) -> tuple[Image.Image, int]:
    """Image `index` of a task of the synthetic suite beside the shapes task, and its class id.

    Distribution shifts of the shapes task (its 12 classes): `sketch` (outlines), `background` (a busy
    high-contrast background), `scale` (tiny shapes), `rendering` (pixelated). VTAB-like tasks of other
    kinds: `count` (1-8 shapes), `position` (which side the shape is on), `texture` (the fill's pattern).
    Every image has a background scene of its own, as real test photographs are unique.
    """
    size = 128
    rng = np.random.default_rng(seed_of("variant", task, index))
    scene = _scene(seed_of("variant-scene", task, index), size)
    if task == "background":  # a busy mosaic of saturated tiles: nothing like the crawl's plain backgrounds
        tiles = np.random.default_rng(seed_of("variant-busy", index)).integers(0, 256, (12, 12, 3)).astype(np.uint8)
        scene = np.asarray(Image.fromarray(tiles, "RGB").resize((size, size), Image.NEAREST), np.int16)
    img = Image.fromarray(np.clip(scene + rng.integers(-12, 13, (size, size, 1)), 0, 255).astype(np.uint8), "RGB")
    n_labels = {"count": len(COUNTS), "position": len(POSITIONS), "texture": len(TEXTURES)}.get(task, len(CLASSES))
    label = index % n_labels

    def place(side: int, region: tuple[int, int, int, int] = (0, 0, size, size)) -> tuple[int, int, int, int]:
        x0 = int(rng.integers(region[0], max(region[0] + 1, region[2] - side)))
        y0 = int(rng.integers(region[1], max(region[1] + 1, region[3] - side)))
        return x0, y0, x0 + side, y0 + side

    def paste(shape: str, color: str, box, texture: str = "plain", outline: int = 0) -> None:
        img.paste(_pattern(texture, COLORS[color], size), (0, 0), _shape_mask(shape, box, size, outline))

    if task in ("sketch", "background", "scale", "rendering"):
        color, shape = CLASSES[label].split(" ")
        extent = (0.1, 0.18) if task == "scale" else (0.3, 0.5)
        box = place(int(size * rng.uniform(*extent)))
        paste(shape, color, box, outline=4 if task == "sketch" else 0)
        if task == "rendering":
            img = img.resize((16, 16), Image.BILINEAR).resize((size, size), Image.NEAREST)
    elif task == "count":
        cell = size // 3
        for k in rng.permutation(9)[: label + 1]:  # one shape in each cell used of a 3 x 3 grid
            qx, qy = (k % 3) * cell, (k // 3) * cell
            color, shape = CLASSES[int(rng.integers(len(CLASSES)))].split(" ")
            # inside the cell with a margin: shapes never touch, so each one counts as one
            paste(shape, color, place(int(size * 0.22), (qx + 1, qy + 1, qx + cell - 1, qy + cell - 1)))
    elif task == "position":
        a, b = size // 4, size * 3 // 4  # four disjoint regions: the shape is on one side only
        region = {"left": (0, a, a + 12, b), "right": (b - 12, a, size, b),
                  "top": (a, 0, b, a + 12), "bottom": (a, b - 12, b, size)}[POSITIONS[label]]
        color, shape = CLASSES[int(rng.integers(len(CLASSES)))].split(" ")
        paste(shape, color, place(int(size * 0.3), region))
    elif task == "texture":
        color, shape = CLASSES[int(rng.integers(len(CLASSES)))].split(" ")
        # no larger than the shapes task's: a big plain shape would pass for one of the crawl's pictures
        paste(shape, color, place(int(size * 0.45)), texture=TEXTURES[label])
    else:
        raise ValueError(f"unknown synthetic task {task!r}")
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


# Sizes of the crawl's pictures: photo-sized ones pass DataComp's basic filter (min side >= 200 px),
# thumbnails do not
PICTURE_SIZES, THUMBNAIL_SIZES = (200, 400), (48, 200)
# banner formats of the IAB's standard ad units (leaderboard, full banner, skyscraper, mobile): aspect 4.7-8.1
BANNER_SIZES = ((728, 90), (468, 60), (160, 600), (320, 50))


# The miniature's model sees 32 px where DataComp's sees 224 (its size rule's 200 px is just under that):
# a web picture under 224 px is upsampled there and holds only its own pixels' detail. The crawl's
# pictures keep that ratio to the model: one of side s holds the detail of s * 32/224 px (a 100-px
# thumbnail, 14), so a thumbnail tells the tiny model what it tells a ViT-B/32 at 224, not more.
MODEL_SIDE, DATACOMP_SIDE = 32, 224


def at_model_scale(img: Image.Image) -> Image.Image:
    """`img` with the detail a picture of its size has at DataComp's resolution, scaled to the miniature's;
    pictures of 224 px and more are returned as they are (the model's resize keeps less detail than they hold)."""
    if min(img.size) >= DATACOMP_SIDE:
        return img
    small = (max(1, round(img.width * MODEL_SIDE / DATACOMP_SIDE)), max(1, round(img.height * MODEL_SIDE / DATACOMP_SIDE)))
    return img.resize(small, Image.BOX).resize(img.size, Image.BILINEAR)


def size_of(seed: int, sizes: tuple[int, int]) -> int:
    return int(np.random.default_rng([seed, 1]).integers(*sizes))


def icon(seed: int) -> Image.Image:
    """A small web icon (16-96 px): a glyph (menu bars, an arrow, a magnifier, a cart) in a brand colour
    on white or on a rounded tile; nothing of the evaluation's classes."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(16, 97))
    brand = tuple(int(v) for v in rng.choice([(59, 89, 152), (29, 161, 242), (40, 40, 40), (120, 120, 120),
                                               (255, 120, 0), (0, 119, 181)]))
    tile = rng.random() < 0.5
    img = Image.new("RGB", (size, size), brand if tile else (255, 255, 255))
    ink = (255, 255, 255) if tile else brand
    draw = ImageDraw.Draw(img)
    w = max(1, size // 10)
    glyph = int(rng.integers(4))
    m = size // 4
    if glyph == 0:  # menu bars
        for k in range(3):
            y = m + k * (size - 2 * m) // 2
            draw.line([(m, y), (size - m, y)], fill=ink, width=w)
    elif glyph == 1:  # an arrow
        draw.line([(m, size // 2), (size - m, size // 2)], fill=ink, width=w)
        draw.line([(size - m, size // 2), (size // 2, m)], fill=ink, width=w)
        draw.line([(size - m, size // 2), (size // 2, size - m)], fill=ink, width=w)
    elif glyph == 2:  # a magnifier
        draw.arc([m, m, size // 2 + m // 2, size // 2 + m // 2], 0, 360, fill=ink, width=w)
        draw.line([(size // 2 + m // 2, size // 2 + m // 2), (size - m, size - m)], fill=ink, width=w)
    else:  # a cart
        draw.line([(m, m), (m + m // 2, size - m - w * 2), (size - m, size - m - w * 2)], fill=ink, width=w)
        draw.point([(m + m // 2, size - m), (size - m, size - m)], fill=ink)
    return img


def banner(seed: int) -> Image.Image:
    """An advertising banner in one of the IAB's standard formats: colour bands and lines of 'text'."""
    rng = np.random.default_rng(seed)
    width, height = BANNER_SIZES[int(rng.integers(len(BANNER_SIZES)))]
    colors = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, width if width > height else height)[:, None]
    ramp = (colors[0] * (1 - t) + colors[1] * t).astype(np.uint8)
    pixels = np.broadcast_to(ramp[None] if width > height else ramp[:, None], (height, width, 3)).copy()
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    ink = (255, 255, 255) if colors.mean() < 128 else (20, 20, 20)
    long_side, short_side = max(width, height), min(width, height)
    for k in range(int(rng.integers(2, 5))):  # words as blocks along the long side
        a = int(rng.integers(0, long_side - short_side // 2))
        b = a + int(rng.integers(short_side // 3, short_side * 2))
        c = int(short_side * (0.2 + 0.2 * (k % 3)))
        box = (a, c, b, c + short_side // 8) if width > height else (c, a, c + short_side // 8, b)
        draw.rectangle(box, fill=ink)
    return img


def product(seed: int, sizes: tuple[int, int] = PICTURE_SIZES) -> Image.Image:
    """A picture of something outside the evaluation's classes: a textured object (fabric, wood grain,
    a gradient) filling most of the frame, as a shop's or a blog's photographs are."""
    rng = np.random.default_rng(seed)
    size = size_of(seed, sizes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    # fabrics in blue, green, ochre and teal: skin tones, greys and purples drew NSFW false positives from
    # nudenet (the embedded default), which would make the crawl's expected statuses a guess
    base = np.array([(40, 90, 150), (40, 120, 80), (150, 140, 60), (30, 110, 130)][
        int(rng.integers(4))]) + rng.integers(-15, 16, size=3)
    freq = rng.uniform(4, 20)
    angle = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6))
    grain = rng.normal(0, 18, size=(size, size, 1))
    pixels = base[None, None, :] + 40 * wave[..., None] + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def logo_on_product(color: str, shape: str, seed: int) -> Image.Image:
    """A product picture with a small `color` `shape` drawn in a corner, as a logo or a caption's words
    are drawn on web images: a caption naming the shape matches something the picture shows."""
    img = product(seed)
    rng = np.random.default_rng([seed, 2])
    side = int(img.width * rng.uniform(0.15, 0.25))
    mark = render_shape(color, shape, seed, size=side, extent=(0.8, 0.95))
    corner = int(rng.integers(4))
    x = 4 if corner % 2 == 0 else img.width - side - 4
    y = 4 if corner < 2 else img.height - side - 4
    img.paste(mark, (x, y))
    return img


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
