"""Unsafe images: DataComp's classifier over ViT-L/14 features, or nudenet on the embedded default.

DataComp's classifier is LAION's CLIP-based NSFW detector: a small MLP over
L/14 image embeddings (BatchNorm1d(768), then 64, 512, 256, 1 with ReLU, and a
sigmoid). Weights load from DataComp's state dict (dataset2metadata's key
names) or from LAION's PyTorch port of the same head. nudenet detects exposed body parts with an ONNX model shipped in its
wheel; an image's score is its most confident exposed-part detection.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.config import ConfigError
from .models import L14_WIDTH, ModelChoice

# nudenet's classes that make an image unsafe (its *_COVERED and FACE_* classes do not)
EXPOSED = frozenset({
    "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})


def datacomp_nsfw_mlp(width: int = L14_WIDTH):
    """The classifier as DataComp's dataset2metadata defines it (its state dict's key names)."""
    from collections import OrderedDict

    import torch.nn as nn

    return nn.Sequential(OrderedDict([
        ("norm", nn.BatchNorm1d(width, eps=0.0)),
        ("dense", nn.Linear(width, 64)), ("relu", nn.ReLU()),
        ("dense1", nn.Linear(64, 512)), ("relu1", nn.ReLU()),
        ("dense2", nn.Linear(512, 256)), ("relu2", nn.ReLU()),
        ("dense3", nn.Linear(256, 1)), ("sigmoid", nn.Sigmoid()),
    ]))


def _from_laion_keys(state: dict) -> dict:
    """LAION's PyTorch port of the same head: a (mean, variance) layer and linear_1..4."""
    import torch

    if "norm.variance" not in state:
        return state
    out = {"norm.running_mean": state["norm.mean"].reshape(-1), "norm.running_var": state["norm.variance"].reshape(-1)}
    out["norm.weight"] = torch.ones_like(out["norm.running_mean"])
    out["norm.bias"] = torch.zeros_like(out["norm.running_mean"])
    for i, name in enumerate(("dense", "dense1", "dense2", "dense3"), start=1):
        out[f"{name}.weight"], out[f"{name}.bias"] = state[f"linear_{i}.weight"], state[f"linear_{i}.bias"]
    return out


class MLPImageClassifier:
    """Reads the L/14 image features the pass computes anyway: no second look at the pixels."""

    needs = "l14_img"

    def __init__(self, choice: ModelChoice, device: str = "cpu"):
        import torch

        self.name = choice.name
        self.device = device
        try:
            state = torch.load(choice.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"models.nsfw_image_mlp: {choice.path} is not a loadable state dict: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        self.model = datacomp_nsfw_mlp()
        try:
            self.model.load_state_dict(_from_laion_keys(state))
        except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
            raise ConfigError(f"models.nsfw_image_mlp: {choice.path} does not hold DataComp's NSFW MLP "
                              f"(BatchNorm1d({L14_WIDTH}) -> 64 -> 512 -> 256 -> 1): {exc}") from exc
        self.model.to(device).eval()

    def score(self, l14_img: np.ndarray) -> np.ndarray:
        import torch

        if len(l14_img) == 0:
            return np.zeros(0, np.float32)
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(l14_img, np.float32)).to(self.device)
            return self.model(x)[:, 0].cpu().numpy()


# skin in YCrCb (Chai and Ngan, 1999): Cr 133-173, Cb 77-127
_SKIN_LOW, _SKIN_HIGH = np.array([0, 133, 77], np.uint8), np.array([255, 173, 127], np.uint8)
# an image whose most colourful pixels (95th percentile) are this close to grey holds no colour to
# judge skin by: a greyscale or sepia photograph
_COLOURLESS = 10.0


def may_show_skin(image_bgr: np.ndarray, min_skin: float) -> bool:
    """Whether at least `min_skin` of the image's pixels are skin-toned, or it has too little colour to tell
    (a greyscale photograph); judged on a 64-pixel thumbnail."""
    import cv2

    if min_skin <= 0:
        return True
    h, w = image_bgr.shape[:2]
    scale = 64 / max(h, w)
    small = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else image_bgr
    ycrcb = cv2.cvtColor(small, cv2.COLOR_BGR2YCrCb)
    chroma = np.abs(ycrcb[..., 1:].astype(np.int16) - 128).max(axis=-1)
    if np.percentile(chroma, 95) < _COLOURLESS:
        return True
    return cv2.inRange(ycrcb, _SKIN_LOW, _SKIN_HIGH).mean() / 255 >= min_skin


class NudeNetClassifier:
    needs = "bgr"

    def __init__(self, choice: ModelChoice):
        from nudenet import NudeDetector

        self.name = choice.name
        self.min_skin = choice.min_skin
        self.detector = NudeDetector()
        self.skipped = 0  # images scored 0 without the detector: no skin-toned pixels

    def score(self, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros(len(images_bgr), np.float32)
        run = [i for i, image in enumerate(images_bgr) if may_show_skin(image, self.min_skin)]
        self.skipped += len(images_bgr) - len(run)
        found = self.detector.detect_batch([images_bgr[i] for i in run], batch_size=8) if run else []
        for i, detections in zip(run, found):
            out[i] = max((d["score"] for d in detections if d["class"] in EXPOSED), default=0.0)
        return out


def load_image_classifier(choice: ModelChoice, device: str = "cpu"):
    if choice.kind == "mlp":
        return MLPImageClassifier(choice, device)
    if choice.kind == "nudenet":
        return NudeNetClassifier(choice)
    raise ConfigError(f"no image classifier of kind {choice.kind!r}")
