"""Faces: SCRFD's loading and decoding through insightface on an ONNX fixture, the cascade, DataComp's blur."""

import numpy as np
import pytest
from skimage import data

from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.pool.faces import blur_faces, load_face_detector
from datacomp_ops.pool.models import choose_models
from fixture_models import scrfd_onnx


def _detector(**overrides):
    config = load_config(overrides=overrides)
    return load_face_detector(choose_models(config)["faces"], config.metadata)


def test_blur_changes_the_face_and_nothing_else_on_a_real_photograph():
    photo = data.astronaut()  # Eileen Collins, a frontal face
    detector = _detector()
    assert "haarcascade_frontalface_default" in detector.name
    boxes = detector.detect(photo)
    assert len(boxes) == 1
    x1, y1, x2, y2 = boxes[0]
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert 0.3 < x1 < 0.4 and 0.1 < y1 < 0.15 and 0.15 < x2 - x1 < 0.25  # her face, not the flag or the suit

    blurred = blur_faces(photo, boxes)
    assert blurred.shape == photo.shape and blurred.dtype == np.uint8
    h, w = photo.shape[:2]
    px = [int(x1 * w), int(y1 * h), int(x2 * w), int(y2 * h)]
    diff = np.abs(blurred.astype(int) - photo.astype(int)).max(axis=2)
    face = diff[px[1]:px[3], px[0]:px[2]]
    assert face.mean() > 8 and (face > 0).mean() > 0.9  # the face is blurred through
    # beyond the box grown by 10% of its side and the kernel's reach (4 sigma), not one pixel changes
    side = max(px[2] - px[0], px[3] - px[1])
    reach = int(0.1 * side) + int(np.ceil(4 * 0.1 * side)) + 1
    outside = np.ones_like(diff, bool)
    outside[max(0, px[1] - reach):px[3] + reach, max(0, px[0] - reach):px[2] + reach] = False
    assert outside.mean() > 0.8
    assert diff[outside].max() == 0
    assert blur_faces(photo, []) is photo


def test_cascade_finds_no_face_in_photos_without_one():
    detector = _detector()
    for name in ("coffee", "chelsea", "rocket"):
        assert detector.detect(getattr(data, name)()) == []


def test_scrfd_through_insightface_finds_the_fixture_s_bright_square(tmp_path):
    path = scrfd_onnx(tmp_path / "det_fixture.onnx")
    detector = _detector(**{"models.scrfd": path})
    assert type(detector.model).__name__ == "SCRFD" and detector.model.use_kps and detector.model.fmc == 3
    assert detector.model.det_thresh == 0.3  # DataComp's threshold
    img = np.zeros((400, 600, 3), np.uint8)
    img[96:192, 288:384] = 255
    boxes = detector.detect(img)
    assert boxes
    for x1, y1, x2, y2 in boxes:  # every box overlaps the square, normalised to the original image
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert x1 < 384 / 600 and x2 > 288 / 600 and y1 < 192 / 400 and y2 > 96 / 400
    assert detector.detect(np.zeros((300, 300, 3), np.uint8)) == []


def test_face_model_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="models.scrfd: model file .*nope.onnx does not exist"):
        _detector(**{"models.scrfd": str(tmp_path / "nope.onnx")})
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ConfigError, match="models.scrfd: .*garbage.onnx is not a loadable ONNX model"):
        _detector(**{"models.scrfd": str(garbage)})
