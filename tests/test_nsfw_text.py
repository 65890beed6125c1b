"""Caption classifiers: Detoxify's real loading code on a small XLM-RoBERTa, offline; the embedded default."""

import socket

import numpy as np
import pytest
import torch

from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.pool.models import choose_models
from datacomp_ops.pool.nsfw_text import load_text_classifier
from datacomp_ops.synthetic.crawl import UNSAFE_CAPTIONS
from fixture_models import DETOXIFY_CLASSES, detoxify_checkpoint

SAFE = ["a photo of a red circle.", "un cercle rouge", "a cup of coffee", "portrait of an astronaut in a space suit"]
UNSAFE = [u.format(c="blue square") for u in UNSAFE_CAPTIONS]


@pytest.fixture(scope="module")
def detoxify_files(tmp_path_factory):
    return detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"))


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (a hub download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def detoxify_config(ckpt, hf_dir, **extra):
    return load_config(overrides={"models.detoxify": ckpt, "models.detoxify_hf_dir": hf_dir, **extra})


def test_detoxify_loads_offline_and_scores_the_max_over_categories(detoxify_files, no_network):
    ckpt, hf_dir = detoxify_files
    choice = choose_models(detoxify_config(ckpt, hf_dir))["nsfw_text"]
    assert choice.kind == "detoxify" and choice.threshold == 0.1 and "multilingual_fixture.ckpt" in choice.name
    classifier = load_text_classifier(choice)
    scores = classifier.score(SAFE + UNSAFE)
    # the same numbers straight from the model: sigmoid, then the maximum over Detoxify's categories
    model, tokenizer = classifier.detoxify.model, classifier.detoxify.tokenizer
    with torch.no_grad():
        logits = model(**tokenizer(SAFE + UNSAFE, return_tensors="pt", padding=True, truncation=True)).logits
    assert np.allclose(scores, torch.sigmoid(logits).max(dim=1).values.numpy(), atol=1e-6)
    assert classifier.detoxify.class_names[0] == "toxicity" and len(classifier.detoxify.class_names) == len(DETOXIFY_CLASSES)
    # the fixture was fine-tuned for seconds to tell the crawl's unsafe captions apart
    assert scores[len(SAFE):].min() > 0.5 > scores[: len(SAFE)].max()
    assert np.allclose(classifier.score(UNSAFE[:1]), scores[len(SAFE)], atol=1e-5)  # batching changes nothing
    assert classifier.score([]).shape == (0,)


def test_detoxify_errors_name_the_key_and_the_file(detoxify_files, tmp_path):
    ckpt, hf_dir = detoxify_files
    with pytest.raises(ConfigError, match="models.detoxify_hf_dir is not set"):
        choose_models(load_config(overrides={"models.detoxify": ckpt}))
    with pytest.raises(ConfigError, match="models.detoxify: .*missing.ckpt does not exist"):
        choose_models(detoxify_config(str(tmp_path / "missing.ckpt"), hf_dir))
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ConfigError, match="is not a loadable checkpoint"):
        load_text_classifier(choose_models(detoxify_config(str(not_a_checkpoint), hf_dir))["nsfw_text"])
    wrong = tmp_path / "wrong.ckpt"
    loaded = torch.load(ckpt, weights_only=True)
    torch.save({"config": loaded["config"], "state_dict": {"classifier.dense.weight": torch.zeros(2, 2)}}, wrong)
    with pytest.raises(ConfigError, match="does not match XLMRobertaForSequenceClassification"):
        load_text_classifier(choose_models(detoxify_config(str(wrong), hf_dir))["nsfw_text"])
    torch.save({"state_dict": loaded["state_dict"]}, wrong)
    with pytest.raises(ConfigError, match="is not a Detoxify checkpoint"):
        load_text_classifier(choose_models(detoxify_config(str(wrong), hf_dir))["nsfw_text"])


def test_embedded_default_flags_the_planted_unsafe_captions():
    choice = choose_models(load_config())["nsfw_text"]
    assert choice.embedded and choice.name.startswith("alt-profanity-check")
    scores = load_text_classifier(choice).score(SAFE + UNSAFE + ["ein Kreis, rot"])
    assert (scores[len(SAFE): len(SAFE) + len(UNSAFE)] >= choice.threshold).all()
    assert (scores[: len(SAFE)] < choice.threshold).all()
    assert scores[-1] < choice.threshold  # German "rot" (red) sits just below its boundary
