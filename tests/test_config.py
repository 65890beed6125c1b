import dataclasses
import os
import re
import typing

import pytest
import yaml

from datacomp_ops.core.config import (
    SCALES,
    ConfigError,
    PlatformConfig,
    allowed,
    config_from_dict,
    get_scale,
    load_config,
)


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
    from pathlib import Path

    import yaml

    from datacomp_ops.core.config import PlatformConfig

    path = Path(__file__).resolve().parents[1] / "config" / "example.yaml"
    example = yaml.safe_load(path.read_text())
    defaults = PlatformConfig().to_dict()
    example["storage_root"] = defaults["storage_root"]  # made absolute on load
    assert example == defaults
    assert load_config(path).download == PlatformConfig().download


# -- ranges and choices: one check for the file, overrides (--set, forms, config_overrides) and config_from_dict --

INF, NAN = float("inf"), float("nan")
BAD_VALUES = [
    ("download.timeout", INF, "inf is out of range; expected a finite number > 0 and <= 3600"),
    ("download.timeout", "inf", "inf is out of range; expected a finite number > 0 and <= 3600"),
    ("download.timeout", 1e308, "1e+308 is out of range; expected a finite number > 0 and <= 3600"),
    ("download.timeout", NAN, "nan is out of range"),
    ("download.timeout", 0, "0.0 is out of range; expected a finite number > 0"),
    ("thresholds.nsfw_text", NAN, "nan is out of range; expected a finite number >= 0 and <= 1"),
    ("thresholds.nsfw_text", 1.5, "1.5 is out of range; expected a finite number >= 0 and <= 1"),
    ("thresholds.nsfw_image", -0.1, "-0.1 is out of range"),
    ("thresholds.nsfw_image_nudenet", INF, "inf is out of range"),
    ("thresholds.nsfw_text_profanity_check", 2, "2.0 is out of range"),
    ("thresholds.face_detection", NAN, "nan is out of range"),
    ("thresholds.eval_dedup_similarity", NAN, "nan is out of range; expected a finite number >= -1 and <= 1"),
    ("thresholds.eval_dedup_similarity", 1.5, "1.5 is out of range"),
    ("thresholds.eval_dedup_similarity_thumbnail", -2, "-2.0 is out of range"),
    ("download.encode_format", "exe", "'exe' is not one of jpg, png, webp"),
    ("download.resize_mode", "stretch", "'stretch' is not one of no, border, keep_ratio, keep_ratio_largest"),
    ("download.number_sample_per_shard", 0, "0 is out of range; expected an integer >= 1"),
    ("download.number_sample_per_shard", -1, "-1 is out of range; expected an integer >= 1"),
    ("download.processes_count", 0, "expected an integer >= 1"),
    ("download.thread_count", -1, "expected an integer >= 1"),
    ("download.retries", -1, "expected an integer >= 0"),
    ("download.max_attempts", 0, "expected an integer >= 1"),
    ("download.image_size", 0, "expected an integer >= 16 and <= 8192"),
    ("download.image_size", 100_000, "expected an integer >= 16 and <= 8192"),
    ("download.encode_quality", 101, "expected an integer >= 0 and <= 100"),
    ("download.max_transient_fraction", 1.5, "expected a finite number >= 0 and <= 1"),
    ("download.max_image_area", 0, "expected an integer >= 1"),
    ("download.user_agent_token", "bot\r\nX-Evil: 1", "is not a token of letters, digits"),
    ("extract.urls_per_partition", 0, "expected an integer >= 1"),
    ("extract.max_wat_files", -1, "expected an integer >= 0"),
    ("extract.max_url_length", 0, "expected an integer >= 1"),
    ("metadata.device", "gpu", "'gpu' is not one of auto, cpu, cuda"),
    ("metadata.batch_size", 0, "expected an integer >= 1"),
    ("metadata.loader_threads", 0, "expected an integer >= 1"),
    ("metadata.shards_per_task", 0, "expected an integer >= 1"),
    ("metadata.face_input_size", 100, "expected an integer >= 32 and <= 4096, a multiple of 32"),
    ("metadata.cascade_scale_factor", 1.0, "expected a finite number > 1 and <= 2"),
    ("metadata.cascade_min_neighbors", -1, "expected an integer >= 0"),
    ("metadata.embedded_clip_steps", 0, "expected an integer >= 1"),
    ("evaluation.device", "tpu", "'tpu' is not one of auto, cpu, cuda"),
    ("evaluation.batch_size", 0, "expected an integer >= 1"),
    ("publish.tiny_pool_size", 0, "expected an integer >= 1"),
    ("publish.expected_yield", 0, "expected a finite number > 0 and <= 1"),
    ("publish.scale_margin", 0.5, "expected a finite number >= 1 and <= 100"),
    ("filtering.seed", 2**32, "expected an integer >= 0 and <= 4294967295"),
    ("training.precision", "fp64", "'fp64' is not one of auto, amp, amp_bf16"),
    ("training.num_checkpoints", 0, "expected an integer >= 1"),
    ("training.samples_seen", -1, "expected an integer >= 0"),
    ("training.workers", -1, "expected an integer >= 0"),
    ("training.gpus", -1, "expected an integer >= 0"),
    ("training.seeds", [0, -1], "-1 is out of range; expected an integer >= 0 and <= 4294967295"),
    ("training.seeds", [2**32], "4294967296 is out of range"),
    ("training.seeds", [], "[] has 0 values; expected at least 1"),
    ("training.seeds", "", "[] has 0 values; expected at least 1"),  # --set training.seeds=
    ("training.seeds", [1, 0, 1], "1 is in [1, 0, 1] twice; expected each value once"),
    ("training.log_every_n_steps", 0, "expected an integer >= 1"),
    ("training.accum_freq", 0, "expected an integer >= 1"),
]
BAD_IDS = [f"{key}={value!r}" for key, value, _ in BAD_VALUES]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=BAD_IDS)
def test_out_of_range_override_names_key_value_and_range(key, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: .*{re.escape(message)}"):
        load_config(overrides={key: value})


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=BAD_IDS)
def test_out_of_range_value_in_the_file_names_key_value_and_range(tmp_path, key, value, message):
    section, name = key.split(".")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: {name: value}}))  # nan and inf as YAML's .nan and .inf
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: .*{re.escape(message)}"):
        load_config(path)


def test_a_config_travelling_between_processes_is_checked_again():
    data = PlatformConfig().to_dict()
    assert config_from_dict(data) == PlatformConfig()  # every default passes its own check
    data["download"]["timeout"] = INF
    with pytest.raises(ConfigError, match=r"^download.timeout: inf is out of range"):
        config_from_dict(data)


def test_the_ends_of_each_range_are_allowed():
    cfg = load_config(overrides={
        "download.timeout": 3600, "thresholds.nsfw_text": 0, "thresholds.nsfw_image": 1,
        "thresholds.eval_dedup_similarity": -1, "download.number_sample_per_shard": 1, "extract.max_wat_files": 0,
        "download.retries": "0", "download.image_size": 16, "metadata.face_input_size": 32,
        "metadata.device": "cpu", "evaluation.device": "cuda", "training.precision": "amp_bf16",
        "download.encode_format": "webp", "download.resize_mode": "center_crop", "training.seeds": [0, 2**32 - 1]})
    assert cfg.download.timeout == 3600.0 and cfg.thresholds.eval_dedup_similarity == -1.0
    assert cfg.training.seeds == [0, 2**32 - 1]


def test_training_seeds_default_to_one_and_take_a_list_from_text():
    assert PlatformConfig().training.seeds == [0] and load_config().training.seeds == [0]
    assert load_config(overrides={"training.seeds": "0, 1,2"}).training.seeds == [0, 1, 2]  # --set's text
    assert load_config(overrides={"training.seeds": [7]}).training.seeds == [7]
    with pytest.raises(ConfigError, match="'training.seeds' expects int, got 'x'"):
        load_config(overrides={"training.seeds": "0,x"})
    with pytest.raises(ConfigError, match="unknown config key 'training.seed'"):  # the old key is gone
        load_config(overrides={"training.seed": 1})


def test_png_takes_a_compression_level_not_a_jpeg_quality():
    with pytest.raises(ConfigError, match=r"^download.encode_quality: 95 is out of range for encode_format png; "
                                          r"expected png's compression level, an integer >= 0 and <= 9"):
        load_config(overrides={"download.encode_format": "png"})
    assert load_config(overrides={"download.encode_format": "png", "download.encode_quality": 9}).download.encode_quality == 9


def test_integer_text_is_parsed_strictly():
    assert load_config(overrides={"download.thread_count": " 8 "}).download.thread_count == 8
    for text in ("²", "1" * 5000, "1.5", "0x10"):
        with pytest.raises(ConfigError, match="'download.thread_count' expects int"):
            load_config(overrides={"download.thread_count": text})


def test_every_number_has_a_range_and_every_enumerated_key_its_choices():
    """Declared once next to the field: a new numeric key without a range fails here."""
    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, hints[f.name]

    keys = dict(walk(PlatformConfig))
    numbers = [k for k, hint in keys.items() if hint in (int, float, list[int], list[float])]
    assert len(numbers) > 40
    for key in numbers:
        rule = allowed(key)
        assert rule.ge is not None or rule.gt is not None, key
    for key in ("download.encode_format", "download.resize_mode", "metadata.device", "evaluation.device",
                "training.precision"):
        assert allowed(key).choices, key


def test_forms_take_their_ranges_from_the_config():
    import jsonschema

    schema = {"type": "number", **allowed("download.timeout").json_schema()}
    assert schema == {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}
    jsonschema.validate(10, schema)
    for bad in (0, 1e308):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert allowed("training.precision").json_schema()["enum"][0] == "auto"
    assert allowed("metadata.face_input_size").json_schema()["multipleOf"] == 32
    seeds = {"type": "array", **allowed("training.seeds").json_schema()}
    assert seeds == {"type": "array", "items": {"minimum": 0, "maximum": 2**32 - 1}, "minItems": 1,
                     "uniqueItems": True}
    jsonschema.validate([0, 1, 2], seeds)
    for bad in ([], [0, 0], [-1], [2**32]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, seeds)


# -- names: crawl ids, dataset names and pool versions are folders under the storage root --------------------

BAD_NAMES = ["..", "../x", "a/b", "a\\b", ".hidden", "a..b", "x\n", "", "a b", "x" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_by_the_layout(tmp_path, name):
    from datacomp_ops.core.layout import CrawlLayout, PoolLayout, check_name, dataset_root

    rule = re.escape(f"{name!r}: use letters, digits, '.', '_' and '-'")
    with pytest.raises(ConfigError, match=f"crawl id {rule}"):
        CrawlLayout(str(tmp_path), name)
    with pytest.raises(ConfigError, match=f"pool version {rule}"):
        PoolLayout(str(tmp_path), name)
    with pytest.raises(ConfigError, match=f"dataset name {rule}"):
        dataset_root(str(tmp_path), name)
    with pytest.raises(ConfigError, match=f"crawl id {rule}"):
        check_name("crawl id", name)


def test_good_names_pass():
    from datacomp_ops.core.layout import CrawlLayout, check_name

    for name in ("CC-MAIN-2024-33", "CC-SYNTH-2026-47", "v0001", "laion-like", "my_set.v2", "x" * 128):
        assert check_name("crawl id", name) == name
    assert CrawlLayout("/r", "CC-MAIN-2024-33").base == "/r/crawls/CC-MAIN-2024-33"


def test_a_threshold_of_a_model_that_will_not_run_is_refused_naming_the_key_and_the_model(tmp_path):
    """On the embedded default alt-profanity-check, nudenet, the thumbnail descriptor and OpenCV's cascade
    run: DataComp's thresholds for Detoxify, the NSFW MLP, ISC21 and SCRFD would be accepted and ignored."""
    from datacomp_ops.pool.models import check_thresholds_apply

    check_thresholds_apply(load_config(overrides={"thresholds.nsfw_text_profanity_check": 0.3}))
    check_thresholds_apply(load_config(overrides={"thresholds.nsfw_text": 0.1}))  # the default: nothing set
    for key, runs, fix in (
            ("thresholds.nsfw_text", "alt-profanity-check", "set thresholds.nsfw_text_profanity_check"),
            ("thresholds.nsfw_image", "nudenet", "set thresholds.nsfw_image_nudenet"),
            ("thresholds.eval_dedup_similarity", "thumbnail-16px-rgb", "set thresholds.eval_dedup_similarity_thumbnail"),
            ("thresholds.face_detection", "opencv haarcascade", "it takes no threshold, or give models.scrfd")):
        with pytest.raises(ConfigError, match=rf"{key} = 0.42 .* runs {runs}.*{fix}"):
            check_thresholds_apply(load_config(overrides={key: 0.42}))
    # with DataComp's model given, its threshold applies and the embedded model's does not
    ckpt, hf = tmp_path / "detoxify.ckpt", tmp_path / "xlmr"
    ckpt.write_bytes(b"")
    hf.mkdir()
    with_detoxify = {"models.detoxify": str(ckpt), "models.detoxify_hf_dir": str(hf)}
    check_thresholds_apply(load_config(overrides=with_detoxify | {"thresholds.nsfw_text": 0.42}))
    with pytest.raises(ConfigError, match="thresholds.nsfw_text_profanity_check = 0.42 .* runs detoxify"):
        check_thresholds_apply(load_config(overrides=with_detoxify | {"thresholds.nsfw_text_profanity_check": 0.42}))


def test_a_build_forms_fields_set_the_running_models_threshold_and_never_race_config_overrides(tmp_path):
    from datacomp_ops.pool.build import form_overrides

    fields = {"download_timeout": ("download.timeout", 7.0)}
    thresholds = {"threshold_nsfw_text": ("nsfw_text", 0.2), "threshold_eval_dedup": ("dedup", 0.9)}
    # the embedded default: the threshold fields set the embedded models' keys
    assert form_overrides(fields, thresholds, {"download.retries": 1}) == {
        "download.timeout": 7.0, "thresholds.nsfw_text_profanity_check": 0.2,
        "thresholds.eval_dedup_similarity_thumbnail": 0.9, "download.retries": 1}
    with pytest.raises(ConfigError, match=r"config_overrides sets download.timeout \(the form field "
                                          r"download_timeout sets it too\): keep one"):
        form_overrides(fields, {}, {"download.timeout": 9})
    with pytest.raises(ConfigError, match="threshold_nsfw_text sets it too"):
        form_overrides({}, thresholds, {"thresholds.nsfw_text_profanity_check": 0.3})
    with pytest.raises(ConfigError, match="form field threshold_face_detection: faces runs opencv .* takes no "
                                          "threshold: give models.scrfd"):
        form_overrides({}, {"threshold_face_detection": ("faces", 0.5)}, {})
