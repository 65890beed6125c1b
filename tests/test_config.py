import os

import pytest

from datacomp_ops.config import SCALES, ConfigError, config_from_dict, get_scale, load_config


def test_datacomp_scales_are_the_benchmarks():
    # DataComp, Table 2 and training/params.py
    expected = {
        "small": ("ViT-B-32", 12_800_000, 12_800_000, 4096, 5e-4, 500, 0.98),
        "medium": ("ViT-B-32", 128_000_000, 128_000_000, 4096, 5e-4, 500, 0.98),
        "large": ("ViT-B-16", 1_280_000_000, 1_280_000_000, 8192, 5e-4, 500, 0.98),
        "xlarge": ("ViT-L-14", 12_800_000_000, 12_800_000_000, 90112, 1e-3, 10_000, 0.95),
    }
    for name, values in expected.items():
        s = SCALES[name]
        assert (s.model, s.pool_size, s.samples_seen, s.batch_size, s.lr, s.warmup, s.beta2) == values
    assert "tiny" in SCALES and SCALES["tiny"].pool_size < SCALES["small"].pool_size


def test_unknown_scale_names_the_choices():
    with pytest.raises(ConfigError, match="unknown scale 'huge'.*small, medium"):
        get_scale("huge")
    with pytest.raises(ConfigError, match="unknown scale"):
        load_config(overrides={"scale": "huge"})


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scale: small\nstorage_root: /data\ndownload:\n  timeout: 3\n  thread_count: 8\n")
    cfg = load_config(path, {"download.timeout": "7.5", "thresholds.nsfw_text": 0.2})
    assert cfg.scale_spec.name == "small"
    assert cfg.storage_root == "/data"
    assert cfg.download.timeout == 7.5 and cfg.download.thread_count == 8
    assert cfg.thresholds.nsfw_text == 0.2
    assert cfg.thresholds.eval_dedup_similarity == 0.604169
    assert config_from_dict(cfg.to_dict()) == cfg


def test_malformed_keys_and_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'download.imge_size'"):
        load_config(overrides={"download.imge_size": 256})
    with pytest.raises(ConfigError, match="'download.thread_count' expects int"):
        load_config(overrides={"download.thread_count": "many"})
    with pytest.raises(ConfigError, match="'download' must be a mapping"):
        load_config(overrides={"download": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_missing_model_names_key_and_file(tmp_path):
    cfg = load_config(overrides={"models.scrfd": str(tmp_path / "scrfd.onnx")})
    with pytest.raises(ConfigError, match=r"models.scrfd: model file .*scrfd.onnx does not exist"):
        cfg.model_path("scrfd")
    with pytest.raises(ConfigError, match="models.detoxify is not set"):
        cfg.model_path("detoxify")


def test_storage_root_from_environment(monkeypatch):
    monkeypatch.setenv("DATACOMP_STORAGE_ROOT", "/env/root")
    assert load_config().storage_root == "/env/root"
    assert load_config(overrides={"storage_root": "s3://bucket/pool"}).storage_root == "s3://bucket/pool"
    assert load_config(overrides={"storage_root": "rel/dir"}).storage_root == os.path.abspath("rel/dir")
    assert load_config(overrides={"storage_root": "/explicit"}).storage_root == "/explicit"


def test_example_config_lists_every_key_with_its_default():
    import yaml
    from pathlib import Path

    from datacomp_ops.config import PlatformConfig

    path = Path(__file__).resolve().parents[1] / "config" / "example.yaml"
    example = yaml.safe_load(path.read_text())
    defaults = PlatformConfig().to_dict()
    example["storage_root"] = defaults["storage_root"]  # made absolute on load
    assert example == defaults
    assert load_config(path).download == PlatformConfig().download
