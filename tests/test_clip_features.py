"""CLIP features: open_clip from local files; the embedded stand-ins carry signal."""

import json
import os
import shutil

import numpy as np
import pytest

from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.embedded.images import CLASSES, render_shape, seed_of
from datacomp_ops.pool.clip_features import ClipEncoder, similarity
from datacomp_ops.pool.models import choose_models
from datacomp_ops.synthetic.crawl import TEMPLATES


def encoders(models_dir, **overrides):
    choices = choose_models(load_config(overrides={"models.embedded_dir": models_dir, **overrides}))
    return {role: ClipEncoder(choices[role]) for role in ("clip_b32", "clip_l14")}


def test_embedded_stand_ins_score_matching_captions_higher(embedded_models):
    rng = np.random.default_rng(123)  # images and captions the stand-ins never saw
    labels = [CLASSES[i % len(CLASSES)] for i in range(96)]
    images = [render_shape(*label.split(" "), seed_of("clip-test", i), size=int(rng.integers(96, 257)))
              for i, label in enumerate(labels)]
    captions = [str(rng.choice(TEMPLATES)).format(c=label) for label in labels]
    wrong = [str(rng.choice(TEMPLATES)).format(c=CLASSES[(CLASSES.index(label) + 1 + int(rng.integers(11))) % 12])
             for label in labels]
    for role, encoder in encoders(embedded_models).items():
        assert "fixture" in encoder.name
        img = encoder.encode_images([encoder.preprocess(i) for i in images])
        txt, bad = encoder.encode_texts(captions), encoder.encode_texts(wrong)
        assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-4)
        assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-4)
        matched, mismatched = similarity(img, txt), similarity(img, bad)
        assert (matched > mismatched).mean() > 0.9, role
        assert matched.mean() - mismatched.mean() > 0.3, role


def test_stand_ins_differ_as_b32_and_l14_do(embedded_models):
    enc = encoders(embedded_models)
    assert enc["clip_b32"].dim == 64 and enc["clip_l14"].dim == 96


def test_a_weights_file_with_its_architecture_loads(embedded_models, tmp_path):
    import open_clip

    # a user's own architecture: an open_clip model config registered by file, weights beside it
    cfg = json.loads(open(f"{embedded_models}/embedded-clip-b32/open_clip_config.json").read())
    (tmp_path / "my-clip.json").write_text(json.dumps(cfg["model_cfg"]))
    open_clip.add_model_config(str(tmp_path / "my-clip.json"))
    weights = shutil.copy(f"{embedded_models}/embedded-clip-b32/open_clip_model.safetensors", tmp_path / "w.safetensors")
    enc = encoders(embedded_models, **{"models.clip_b32": str(weights), "models.clip_b32_arch": "my-clip"})["clip_b32"]
    assert not choose_models(load_config(overrides={"models.clip_b32": str(weights)}))["clip_b32"].embedded
    assert enc.encode_texts(["a red circle"]).shape == (1, 64)
    # the L/14 stand-in's weights are not a "my-clip": a clear error, not a random model
    wrong = shutil.copy(f"{embedded_models}/embedded-clip-l14/open_clip_model.safetensors", tmp_path / "l.safetensors")
    with pytest.raises(ConfigError, match="models.clip_b32: cannot load .*l.safetensors as open_clip my-clip"):
        encoders(embedded_models, **{"models.clip_b32": str(wrong), "models.clip_b32_arch": "my-clip"})


def test_untrained_stand_in_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="not trained yet; run the prepare_models stage"):
        encoders(str(tmp_path / "empty"))


def test_a_stand_in_takes_every_core_once_the_ones_beside_it_are_trained(tmp_path):
    """Two stand-ins train side by side, a core each; the one still training when the other is saved
    takes the machine's cores, rather than finish alone on one core."""
    import torch

    from datacomp_ops.embedded.clip_models import train_clip

    sibling = tmp_path / "embedded-clip-b32"
    sibling.mkdir()
    (sibling / "training.json").write_text(json.dumps({"recipe": "r1"}))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train_clip("embedded-clip-l14", str(tmp_path / "other-recipe"), steps=1, n_pairs=32, batch_size=8,
                   fingerprint="r2", siblings=(str(sibling),))
        assert torch.get_num_threads() == 1  # the sibling holds another recipe's model: still training
        train_clip("embedded-clip-l14", str(tmp_path / "l14"), steps=1, n_pairs=32, batch_size=8,
                   fingerprint="r1", siblings=(str(sibling),))
        assert torch.get_num_threads() == (os.cpu_count() or 1)
        assert json.loads((tmp_path / "l14" / "training.json").read_text())["recipe"] == "r1"
    finally:
        torch.set_num_threads(threads)
