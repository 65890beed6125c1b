"""Faces: SCRFD boxes (DataComp's detector and settings), or OpenCV's cascade, then blurring.

Boxes are ``[x1, y1, x2, y2]`` normalised to [0, 1] of the image, DataComp's
``face_bboxes``. The blur is the one DataComp's downloads applied (img2dataset's
``BoundingBoxBlurrer`` of that time): each box grown by 10% of its larger side,
a Gaussian with sigma 0.1 x the largest box side, blended through a mask that
is blurred the same way. img2dataset 1.47 changed that blurrer's kernel and
sigma, so it is written out here instead of imported.
"""

from __future__ import annotations

import numpy as np

from ..core.config import ConfigError, MetadataConfig
from .models import ModelChoice


def _normalise(boxes: np.ndarray, width: int, height: int) -> list[list[float]]:
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        box = [min(max(x1 / width, 0.0), 1.0), min(max(y1 / height, 0.0), 1.0),
               min(max(x2 / width, 0.0), 1.0), min(max(y2 / height, 0.0), 1.0)]
        if box[2] > box[0] and box[3] > box[1]:
            out.append([round(float(v), 6) for v in box])
    return out


class SCRFDDetector:
    """insightface's SCRFD (``det_10g.onnx``) through ``insightface.model_zoo.get_model``."""

    def __init__(self, choice: ModelChoice, settings: MetadataConfig, device: str = "cpu"):
        from insightface.model_zoo import get_model

        self.name = choice.name
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
        try:
            model = get_model(choice.path, providers=providers)
        except Exception as exc:  # onnx parse errors have no common base class
            raise ConfigError(f"models.scrfd: {choice.path} is not a loadable ONNX model: {exc}") from exc
        if type(model).__name__ != "SCRFD":
            raise ConfigError(f"models.scrfd: {choice.path} is not an SCRFD detector "
                              f"(insightface sees a {type(model).__name__})")
        size = (settings.face_input_size, settings.face_input_size)
        model.prepare(ctx_id=0 if device == "cuda" else -1, det_thresh=choice.threshold, input_size=size)
        self.model, self.input_size = model, size

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        found, _ = self.model.detect(bgr, input_size=self.input_size)
        return _normalise(found[:, :4], rgb.shape[1], rgb.shape[0])


class CascadeDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python 4.x.

    It finds frontal faces only (no profiles) and has no score to threshold:
    the fallback that lets the embedded default still blur real faces.
    """

    def __init__(self, choice: ModelChoice, settings: MetadataConfig):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ConfigError(f"OpenCV's face cascade {path} is missing: install opencv-python-headless 4.x "
                              "(OpenCV 5 ships no cascades) or set models.scrfd")
        self.name = choice.name
        self.scale_factor, self.min_neighbors = settings.cascade_scale_factor, settings.cascade_min_neighbors

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(20, 20))
        if len(found) == 0:
            return []
        xywh = np.asarray(found, np.float64)
        return _normalise(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], rgb.shape[1], rgb.shape[0])


def load_face_detector(choice: ModelChoice, settings: MetadataConfig, device: str = "cpu"):
    if choice.kind == "scrfd":
        return SCRFDDetector(choice, settings, device)
    if choice.kind == "cascade":
        return CascadeDetector(choice, settings)
    raise ConfigError(f"no face detector of kind {choice.kind!r}")


def blur_faces(rgb: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """DataComp's face blur; `rgb` is HxWx3 uint8 and is not modified."""
    import cv2

    if not boxes:
        return rgb
    height, width = rgb.shape[:2]
    img = rgb.astype(np.float32) / 255.0
    mask = np.zeros_like(img)
    largest = 0
    for box in boxes:
        x1, y1, x2, y2 = int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height)
        side = max(x2 - x1, y2 - y1)
        largest = max(largest, side)
        grow = 0.1 * side  # as princetonvisualai/imagenet-face-obfuscation does
        x1, y1 = int(np.clip(int(x1 - grow), 0, width - 1)), int(np.clip(int(y1 - grow), 0, height - 1))
        x2, y2 = int(np.clip(int(x2 + grow), 0, width - 1)), int(np.clip(int(y2 + grow), 0, height - 1))
        mask[y1:y2, x1:x2, :] = 1.0
    sigma = 0.1 * largest
    if sigma <= 0:
        return rgb
    ksize = int(2 * np.ceil(4 * sigma)) + 1
    blurred = cv2.GaussianBlur(img, (ksize, ksize), sigma)
    soft_mask = cv2.GaussianBlur(mask, (ksize, ksize), sigma)
    out = img * (1 - soft_mask) + blurred * soft_mask
    # rounded, not truncated as in DataComp's code: truncation moves pixels far
    # from any face down by one level (x / 255 * 255 falls just below x)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
