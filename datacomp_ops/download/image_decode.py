"""The download's image decode: 8-bit samples scaled from what the file holds, upright as a browser shows it.

img2dataset's resizer decodes with ``cv2.imdecode(buf, IMREAD_UNCHANGED)``, which keeps
each file's own sample type, and encodes the result with ``cv2.imencode(".jpg", ...)``.
JPEG holds 8 bits, so imencode converts a deeper array with a saturating cast: every
16-bit sample above 255 became 255, and a 16-bit gray gradient of mean 32768 (128 in
8 bits) was published at 254 (measured with img2dataset 1.47, OpenCV 4.14). 16-bit RGB
and RGBA PNGs, 16-bit TIFF, PNM and JPEG 2000 were as white; 10- and 12-bit AVIF nearly
so; 32-bit float TIFF and PFM (samples in [0, 1]) came out black; the alpha matting of a
16-bit RGBA image divided by 255 where 65535 was meant.

`decode` replaces that one call (`install` puts it in the resizer; img2dataset's code is
unchanged on disk):

- 8-bit images (nearly all of them: JPEG, PNG, WebP, GIF, BMP; 1-bit and palette PNGs,
  which OpenCV expands to 8 bits) come back as OpenCV decoded them, at no extra cost.
- Deeper integer images are decoded again by their codec with 8-bit output
  (``IMREAD_ANYCOLOR``): the codec knows the samples' bit depth (16 in a PNG, 10 or 12
  in an AVIF), where the array alone does not. An alpha channel, which that output
  drops, is scaled by the same factor and put back.
- Float images with samples in [0, 1] (float TIFF, PFM) are scaled by 255. Any other
  float, or signed or 32-bit integer samples the codec cannot reduce to 8 bits, has no
  display mapping: it is refused as ``unsupported_image: ...``, a permanent status.
- The EXIF orientation (JPEG, PNG's eXIf, WebP, AVIF) is applied, as browsers do since
  2020 (CSS ``image-orientation: from-image`` is the default): the published image is
  the one a person saw on the page. img2dataset's ``original_width`` and
  ``original_height`` are then those of the upright image; its ``exif`` column still
  describes the source file (it reads the bytes, not the image).

Colour profiles (ICC, CICP) are not applied, as img2dataset never did.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

# the prefix classify_failure reads back (img2dataset records the exception's text)
UNSUPPORTED = "unsupported_image"
_ORIENTATION_TAG = 0x0112


class UnsupportedImage(ValueError):
    def __init__(self, why: str):
        super().__init__(f"{UNSUPPORTED}: {why}")


def decode(buf: np.ndarray) -> np.ndarray | None:
    """The image in `buf` as 8-bit samples (gray, BGR or BGRA), upright; None if it does not decode."""
    img, kinds, blobs = cv2.imdecodeWithMetadata(buf, flags=cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.dtype != np.uint8:
        img = _to_8bit(img, buf)
    exif = next((b for k, b in zip(kinds, blobs) if k == cv2.IMAGE_METADATA_EXIF), None)
    return orient(img, exif_orientation(np.asarray(exif).tobytes()) if exif is not None else 1)


def _to_8bit(img: np.ndarray, buf: np.ndarray) -> np.ndarray:
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype.kind == "f":
        finite = np.isfinite(img).all()
        if finite and img.size and img.min() >= 0 and img.max() <= 1:
            return np.rint(img * 255).astype(np.uint8)
    eight = cv2.imdecode(buf, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if eight is None or eight.dtype != np.uint8 or eight.shape[:2] != img.shape[:2] or channels not in (1, 3, 4):
        bits = img.dtype.itemsize * 8
        kind = {"f": "float", "i": "signed integer", "u": "unsigned integer"}[img.dtype.kind]
        raise UnsupportedImage(f"{channels}-channel {bits}-bit {kind} samples"
                               + (" outside [0, 1]" if img.dtype.kind == "f" else "")
                               + " have no 8-bit display mapping")
    if channels != 4:
        return eight
    # the 8-bit decode dropped the alpha: scale it as the codec scaled the colour (by 257 for a
    # 16-bit PNG, 1023/255 for a 10-bit AVIF); the factor is read off the two decodes and snapped
    # to a whole bit depth
    colour = cv2.cvtColor(eight, cv2.COLOR_GRAY2BGR) if eight.ndim == 2 else eight
    deep, shallow = float(img[..., :3].sum()), float(colour.sum())
    bits = int(np.clip(np.rint(np.log2(deep / shallow * 255 + 1)), 9, 16)) if shallow and deep else 16
    alpha = np.rint(img[..., 3].astype(np.float64) * (255 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    return np.dstack([colour, alpha])


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (1 to 8) of an EXIF block (a TIFF header and IFD0); 1 where it has none."""
    try:
        if tiff.startswith(b"Exif\0\0"):
            tiff = tiff[6:]
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI2s", tiff, ifd + 2 + 12 * i)
            if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
                (orientation,) = struct.unpack(order + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """`img` as EXIF `orientation` says to show it (TIFF 6.0's 1 to 8: where row 0 and column 0 lie)."""
    if orientation == 1:
        return img
    if orientation in (5, 6, 7, 8):  # the stored rows are the shown columns
        img = img.swapaxes(0, 1)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    return np.ascontiguousarray(img)


class _ResizerCv2:
    """OpenCV as img2dataset's resizer sees it: the same module, but with `decode` for its one decode call."""

    def __getattr__(self, name: str):
        return getattr(cv2, name)

    @staticmethod
    def imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
        return decode(buf) if flags == cv2.IMREAD_UNCHANGED else cv2.imdecode(buf, flags)


def install() -> None:
    """Make img2dataset's resizer decode with `decode` (in this process and the ones it forks)."""
    from img2dataset import resizer

    if not isinstance(resizer.cv2, _ResizerCv2):
        resizer.cv2 = _ResizerCv2()
