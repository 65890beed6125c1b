"""Unsafe captions: Detoxify's multilingual model as DataComp used it, or the embedded classifier.

A caption's score is the maximum over the model's categories; at or above the
threshold the sample leaves the pool as ``nsfw_text``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..core.config import ConfigError
from .models import ModelChoice

log = logging.getLogger(__name__)


class DetoxifyClassifier:
    """Detoxify from a local checkpoint and a local Hugging Face directory, never the hub.

    Detoxify 0.5 builds the model config from the name stored inside the
    checkpoint (``xlm-roberta-base``), which asks the hub even when
    ``huggingface_config_path`` is given; we point that name at the local
    directory and then use Detoxify's own loading and prediction code.
    """

    def __init__(self, choice: ModelChoice, device: str = "cpu"):
        import torch
        from detoxify.detoxify import Detoxify, get_model_and_tokenizer

        self.name = choice.name
        try:
            loaded = torch.load(choice.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and unpickler errors all mean "not a checkpoint"
            raise ConfigError(f"models.detoxify: {choice.path} is not a loadable checkpoint: {exc}") from exc
        try:
            args = dict(loaded["config"]["arch"]["args"])
            classes = list(loaded["config"]["dataset"]["args"]["classes"])
            state_dict = loaded["state_dict"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"models.detoxify: {choice.path} is not a Detoxify checkpoint "
                              f"(no config.arch.args, config.dataset.args.classes and state_dict: {exc!r})") from exc
        args["model_type"] = choice.arch  # the local directory instead of a hub name
        try:
            model, tokenizer = get_model_and_tokenizer(**args, state_dict=state_dict,
                                                       huggingface_config_path=choice.arch)
        except RuntimeError as exc:  # weights of the wrong shapes
            raise ConfigError(f"models.detoxify: {choice.path} does not match {args.get('model_name')} "
                              f"of {choice.arch}: {str(exc).splitlines()[0]}") from exc
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"models.detoxify_hf_dir: cannot load {args.get('model_name')} from "
                              f"{choice.arch}: {exc}") from exc
        # transformers fills weights missing from a state dict at random, silently
        missing = [k for k in model.state_dict() if k not in state_dict and not k.endswith("position_ids")]
        if missing:
            raise ConfigError(f"models.detoxify: {choice.path} does not match {args.get('model_name')} "
                              f"of {choice.arch}: {len(missing)} weights missing, e.g. {missing[0]}")
        self.detoxify = Detoxify.__new__(Detoxify)
        self.detoxify.model, self.detoxify.tokenizer = model.to(device).eval(), tokenizer
        self.detoxify.class_names = [{"toxic": "toxicity", "identity_hate": "identity_attack",
                                      "severe_toxic": "severe_toxicity"}.get(c, c) for c in classes]
        self.detoxify.device = device

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float32)
        per_class = self.detoxify.predict(list(texts))
        return np.max(np.array([per_class[c] for c in self.detoxify.class_names], np.float32), axis=0)


class ProfanityCheckClassifier:
    """alt-profanity-check: a linear model over word n-grams, trained weights inside its wheel.

    English only, and much weaker than Detoxify; it stands in on the embedded default.
    """

    def __init__(self, choice: ModelChoice):
        from profanity_check import predict_prob

        self.name = choice.name
        self._predict_prob = predict_prob

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float32)
        return np.asarray(self._predict_prob(list(texts)), np.float32)


def load_text_classifier(choice: ModelChoice, device: str = "cpu"):
    if choice.kind == "detoxify":
        return DetoxifyClassifier(choice, device)
    if choice.kind == "profanity_check":
        return ProfanityCheckClassifier(choice)
    raise ConfigError(f"no caption classifier of kind {choice.kind!r}")
