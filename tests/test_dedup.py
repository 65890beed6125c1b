"""Eval-set dedup: descriptors, the evaluation index, exact search."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from datacomp_ops.core import storage
from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.embedded.images import CLASSES, EVAL_VARIANTS, eval_image, near_duplicate, render_shape, seed_of
from datacomp_ops.pool.dedup import index_dir, load_descriptor, load_eval_index, run_eval_index
from datacomp_ops.pool.models import choose_models
from datacomp_ops.synthetic.evalsuite import EVAL_IMAGES, LAYOUT, dedup_key, folder, image_at
from fixture_models import isc_checkpoint


def jpeg(img, quality=95):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, eval_suite):
    config = load_config(overrides={"storage_root": str(tmp_path_factory.mktemp("root")),
                                    "evaluation.sets_dir": eval_suite})
    choice = choose_models(config)["dedup"]
    where = index_dir(config, choice)
    stats = run_eval_index(config.eval_sets_dir, where, config, choice)
    return config, choice, where, stats


def test_eval_index_holds_every_evaluation_image_once(built_index):
    config, choice, where, stats = built_index
    assert stats["eval_images"] == EVAL_IMAGES and stats["eval_shards"] == len(LAYOUT)
    assert storage.is_committed(where)
    assert run_eval_index(config.eval_sets_dir, where, config, choice).counters == stats.counters  # no-op rerun
    index = load_eval_index(where)
    assert index.descriptors.shape == (3 * EVAL_IMAGES, 769)  # whole, 90% and 80% views
    assert sorted(set(index.datasets)) == sorted(folder(task) for task, _, _ in LAYOUT)


def test_thumbnail_finds_planted_near_duplicates_and_only_them(built_index):
    config, choice, where, _ = built_index
    assert choice.threshold == config.thresholds.eval_dedup_similarity_thumbnail
    descriptor = load_descriptor(choice)
    index = load_eval_index(where)
    queries, targets = [], []
    for i in range(0, EVAL_IMAGES, 7):
        for variant in EVAL_VARIANTS:
            quality = 40 if variant == "reencoded" else 92
            queries.append(jpeg(jpeg(near_duplicate(image_at(i)[0], variant), quality)))
            targets.append(i)
    sims, idx = index.nearest(descriptor.describe([descriptor.preprocess(q) for q in queries]))
    assert (sims >= choice.threshold).all()
    # the association task's images come from its Hugging Face cache split, the others from shards
    assert [index.describe(int(j)) for j in idx] == [dedup_key(t) for t in targets]
    assert any("hf_cache/" in index.describe(int(j)) for j in idx)
    others = [jpeg(render_shape(*c.split(" "), seed_of("/img/shape", c, k))) for c in CLASSES for k in range(40)]
    sims, _ = index.nearest(descriptor.describe([descriptor.preprocess(o) for o in others]))
    assert sims.max() < choice.threshold


def test_missing_evaluation_sets_are_a_clear_error(tmp_path):
    config = load_config(overrides={"storage_root": str(tmp_path), "evaluation.sets_dir": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="evaluation.sets_dir: no evaluation sets under .*none"):
        index_dir(config, choose_models(config)["dedup"])


def test_isc_descriptor_loads_the_isc21_checkpoint_format(tmp_path):
    path = isc_checkpoint(tmp_path / "isc_ft_fixture.pth.tar", input_size=96)
    config = load_config(overrides={"models.dedup_descriptor": path})
    choice = choose_models(config)["dedup"]
    assert choice.kind == "isc" and choice.threshold == 0.604169
    descriptor = load_descriptor(choice)
    assert descriptor.input_size == 96
    a, b = eval_image(3)[0], eval_image(4)[0]
    out = descriptor.describe([descriptor.preprocess(x) for x in (a, a, b)])
    assert out.shape == (3, 256)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert out[0] @ out[1] == pytest.approx(1, abs=1e-5)

    wrong = tmp_path / "wrong.pth.tar"
    torch.save({"arch": "resnet10t", "state_dict": {"module.fc.weight": torch.zeros(3, 3)}}, wrong)
    with pytest.raises(ConfigError, match="models.dedup_descriptor: .*does not match an ISCNet over resnet10t"):
        load_descriptor(choose_models(load_config(overrides={"models.dedup_descriptor": str(wrong)}))["dedup"])
