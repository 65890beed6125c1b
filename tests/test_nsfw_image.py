"""Image classifiers: DataComp's NSFW head over L/14 features, and nudenet on the embedded default."""

import numpy as np
import pytest
import torch
from skimage import data

from datacomp_ops.config import ConfigError, load_config
from datacomp_ops.models import choose_models
from datacomp_ops.nsfw_image import datacomp_nsfw_mlp, load_image_classifier
from datacomp_ops.synthetic.fixture_models import nsfw_mlp_state_dict
from datacomp_ops.synthetic.images import CLASSES, render_shape, seed_of


def _mlp_choice(path, tmp_path):
    l14 = tmp_path / "l14"
    l14.mkdir(exist_ok=True)  # any existing path: the MLP needs the real L/14 configured, not the stand-in
    return choose_models(load_config(overrides={"models.nsfw_image_mlp": str(path), "models.clip_l14": str(l14)}))["nsfw_image"]


@pytest.mark.parametrize("laion_keys", [False, True])
def test_datacomp_mlp_scores_l14_features(tmp_path, laion_keys):
    path = nsfw_mlp_state_dict(tmp_path / "nsfw.pth", laion_keys=laion_keys)
    classifier = load_image_classifier(_mlp_choice(path, tmp_path))
    features = np.random.default_rng(0).normal(size=(5, 768)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    scores = classifier.score(features)
    # by hand: (x - mean) / sqrt(var) (BatchNorm, eps 0, unit weight), three ReLU layers, a sigmoid
    ref = datacomp_nsfw_mlp()
    ref.load_state_dict(torch.load(nsfw_mlp_state_dict(tmp_path / "ref.pth"), weights_only=True))
    s = {k: v.numpy() for k, v in ref.state_dict().items()}
    x = (features - s["norm.running_mean"]) / np.sqrt(s["norm.running_var"])
    for name in ("dense", "dense1", "dense2"):
        x = np.maximum(x @ s[f"{name}.weight"].T + s[f"{name}.bias"], 0)
    expected = 1 / (1 + np.exp(-(x @ s["dense3.weight"].T + s["dense3.bias"])[:, 0]))
    assert np.allclose(scores, expected, atol=1e-5)
    assert classifier.score(np.zeros((0, 768), np.float32)).shape == (0,)


def test_mlp_errors_name_the_key(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"dense.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ConfigError, match="models.nsfw_image_mlp: .*does not hold DataComp's NSFW MLP"):
        load_image_classifier(_mlp_choice(wrong, tmp_path))
    with pytest.raises(ConfigError, match="needs models.clip_l14"):
        choose_models(load_config(overrides={"models.nsfw_image_mlp": str(wrong)}))


def test_nudenet_flags_nothing_in_the_synthetic_crawl_s_images():
    choice = choose_models(load_config())["nsfw_image"]
    assert choice.embedded and choice.name.startswith("nudenet")
    classifier = load_image_classifier(choice)
    images = [np.asarray(render_shape(*c.split(" "), seed_of("nudenet", c, k)))[..., ::-1].copy()
              for c in CLASSES for k in range(6)]
    images += [np.ascontiguousarray(getattr(data, name)()[..., :3][..., ::-1]) for name in ("astronaut", "coffee", "chelsea")]
    scores = classifier.score(images)
    assert scores.shape == (len(images),) and (scores >= 0).all()
    assert scores.max() < choice.threshold
