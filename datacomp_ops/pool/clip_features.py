"""CLIP features with open_clip: L2-normalised image and text embeddings, loaded from local files.

A model is either a weights file with its open_clip architecture name
(OpenAI's ViT-B/32 and ViT-L/14 are ``ViT-B-32-quickgelu`` and
``ViT-L-14-quickgelu``), or a directory holding ``open_clip_config.json`` and
the weights (open_clip's ``local-dir:`` models, as Hugging Face's
``timm/vit_base_patch32_clip_224.openai`` ships them, and as the embedded
default's stand-ins are saved). On a GPU the towers run under bf16 autocast.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from ..core.config import ConfigError
from .models import ModelChoice

log = logging.getLogger(__name__)


class ClipEncoder:
    def __init__(self, choice: ModelChoice, device: str = "cpu"):
        import open_clip

        self.name, self.role, self.device = choice.name, choice.role, device
        key = f"models.{choice.role}"
        if choice.embedded and not os.path.isdir(choice.path):
            raise ConfigError(f"{key}: the embedded CLIP stand-in {choice.path} is not trained yet; "
                              "run the prepare_models stage (datacomp prepare-models) first")
        try:
            if os.path.isdir(choice.path):
                spec = f"local-dir:{choice.path}"
                model, _, preprocess = open_clip.create_model_and_transforms(spec, device=device)
                tokenizer = open_clip.get_tokenizer(spec)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    choice.arch, pretrained=choice.path, device=device)
                tokenizer = open_clip.get_tokenizer(choice.arch)
        # open_clip's "Error(s) in loading state_dict", its shape assertions, unknown architectures
        except (RuntimeError, AssertionError, KeyError) as exc:
            raise ConfigError(f"{key}: cannot load {choice.path} as open_clip {choice.arch or 'model'}: "
                              f"{str(exc).splitlines()[0]}") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot read {choice.path}: {exc}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        # models with the same transform share one preprocessed batch
        self.preprocess_key = repr(preprocess)
        self.dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(self.encode_texts(["a"]).shape[1])

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_images(self, batch) -> np.ndarray:
        import torch

        with torch.no_grad(), self._autocast():
            x = batch if torch.is_tensor(batch) else torch.stack(list(batch))
            features = self.model.encode_image(x.to(self.device, non_blocking=True), normalize=True)
        return features.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        with torch.no_grad(), self._autocast():
            tokens = self.tokenizer(list(texts)).to(self.device)
            features = self.model.encode_text(tokens, normalize=True)
        return features.float().cpu().numpy()


def similarity(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """DataComp's CLIP score: the cosine similarity of a sample's own image and caption."""
    return np.einsum("ij,ij->i", image_features.astype(np.float32), text_features.astype(np.float32))
