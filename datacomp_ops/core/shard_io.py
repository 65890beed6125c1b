"""Reading and writing webdataset shards through fsspec, with webdataset's own tar iterators.

A shard that breaks off part-way (a truncated upload, a bad disk) yields the
samples before the break and then reports the break instead of raising, so
the caller can give every missing sample a status.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Iterator

from . import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class TarReadResult:
    """Filled while iterating: the error that ended the shard early, if any."""

    error: str | None = None
    samples: int = 0


def iter_tar(url: str, result: TarReadResult | None = None) -> Iterator[dict]:
    """Samples of a webdataset tar (``__key__`` plus one entry per extension)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator  # webdataset imports torch

    result = result if result is not None else TarReadResult()
    try:
        with storage.open_file(url) as f:
            files = ({**entry, "__url__": url} for entry in tar_file_iterator(f))
            for sample in group_by_keys(files):
                result.samples += 1
                yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"


def image_bytes(sample: dict) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    return None


def sample_json(sample: dict) -> dict:
    raw = sample.get("json")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def write_tar(url: str) -> Iterator["webdataset.TarWriter"]:  # noqa: F821
    """A webdataset tar written under a temporary name and renamed into place on success."""
    import webdataset as wds

    with storage.atomic_write(url) as f:
        with wds.TarWriter(f) as tar:  # closes its tar stream, not our file
            yield tar


class UnreadableImage(ValueError):
    """Image bytes that do not decode; the message says why."""


def decode_image(data: bytes | None):
    """The RGB image in `data` (a PIL image), or UnreadableImage."""
    from PIL import Image

    if not data:
        raise UnreadableImage("no image in the sample")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError...
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from exc


def encode_jpeg(rgb, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
