"""Image classifiers: DataComp's NSFW head over L/14 features, and nudenet on the embedded default."""

import numpy as np
import pytest
import torch
from skimage import data

from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.embedded.images import CLASSES, render_shape, seed_of
from datacomp_ops.pool.models import choose_models
from datacomp_ops.pool.nsfw_image import datacomp_nsfw_mlp, load_image_classifier
from fixture_models import nsfw_mlp_state_dict


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


def test_nudenet_runs_only_where_skin_could_show(monkeypatch):
    """Every class nudenet counts is exposed skin: images without skin-toned pixels are scored 0 unseen,
    the others (and colourless ones, whose skin cannot be told by colour) go to the detector."""
    from datacomp_ops.pool.nsfw_image import may_show_skin

    astronaut = np.ascontiguousarray(data.astronaut()[..., ::-1])
    grey = np.repeat(data.camera()[..., None], 3, axis=2)
    blue_square = np.asarray(render_shape("blue", "square", 1, size=300))[..., ::-1].copy()
    blue_square[:] = np.where(blue_square.sum(-1, keepdims=True) > 600, [255, 255, 255], blue_square)  # white ground
    assert may_show_skin(astronaut, 0.02) and may_show_skin(grey, 0.02)
    assert not may_show_skin(blue_square, 0.02) and may_show_skin(blue_square, 0.0)

    choice = choose_models(load_config())["nsfw_image"]
    assert choice.min_skin == load_config().thresholds.nsfw_image_nudenet_min_skin > 0
    classifier = load_image_classifier(choice)
    seen = []
    monkeypatch.setattr(classifier.detector, "detect_batch", lambda images, batch_size: seen.extend(images) or
                        [[{"class": "BUTTOCKS_EXPOSED", "score": 0.9}] for _ in images])
    scores = classifier.score([blue_square, astronaut, grey])
    assert scores.tolist() == pytest.approx([0.0, 0.9, 0.9]) and len(seen) == 2 and classifier.skipped == 1
