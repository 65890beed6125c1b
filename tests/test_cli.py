import gzip
import json
import re
from pathlib import Path

import pytest

from datacomp_ops.cli import main


def test_synthetic_command_writes_crawl_and_eval_suite(tmp_path, capsys):
    main(["synthetic", "--out", str(tmp_path), "--n-urls", "60", "--base-url", "http://127.0.0.1:9",
          "--published-rows", "0"])  # test_published.py makes the published pool
    assert "60 URLs in 1 WAT files" in capsys.readouterr().out
    summary = json.loads((tmp_path / "crawl-data" / "CC-SYNTH-2026-47" / "crawl.json").read_text())
    assert summary["base_url"] == "http://127.0.0.1:9" and summary["urls"] == 60
    assert (tmp_path / "eval" / "eval_suite.json").exists()


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ledger", "--pool-version", "v1", "--set", "download.imge_size=3"])
    assert exit_info.value.code == 2
    assert "unknown config key 'download.imge_size'" in capsys.readouterr().err


@pytest.mark.slow
def test_build_command_runs_the_stages_without_airflow(tmp_path, small_crawl, embedded_models, capsys):
    main(["build", "--crawl-id", "CC-CLI", "--input", small_crawl["wat_listing"], "--storage-root", str(tmp_path),
          "--set", "download.timeout=5", "--set", "download.processes_count=1", "--set", "extract.spark_master=local[2]",
          "--set", f"evaluation.sets_dir={small_crawl['eval_dir']}", "--set", f"models.embedded_dir={embedded_models}"])
    out = capsys.readouterr().out
    assert f"this run: 2 new WAT files, {small_crawl['unique_uids']} new URLs" in out
    assert "into pool version v0001 (scale xlarge)" in out
    for stage in ("extract_urls", "download", "nsfw_text", "eval_dedup", "faces", "clip_features"):
        assert f"\n  {stage} " in out
    main(["ledger", "--pool-version", "v0001", "--storage-root", str(tmp_path)])
    counts = json.loads(capsys.readouterr().out)
    assert counts["urls"] == small_crawl["unique_uids"]
    assert counts["statuses"]["kept"] < counts["urls"] and "downloaded" not in counts["statuses"]
    assert counts["statuses"]["nsfw_text"] == small_crawl["kinds"]["unsafe_caption"]
    # one URL's story: where it came from, its statuses, why it left
    from datacomp_ops.core import ledger, versions

    rows = ledger.latest(ledger.history(*versions.ledger_dirs(str(tmp_path), "v0001"))).to_pylist()
    dropped = next(r for r in rows if r["status"] == "nsfw_text")
    main(["ledger", "--url", dropped["url"], "--storage-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "from crawl CC-CLI, WAT file " in out and "not in the pool: nsfw_text" in out
    assert "downloaded" in out and "metadata  nsfw_text" in out
    kept = next(r for r in rows if r["status"] == "kept")
    main(["ledger", "--uid", kept["uid"], "--storage-root", str(tmp_path)])
    assert "in the pool" in capsys.readouterr().out


def test_missing_model_is_a_clean_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-models", "--storage-root", str(tmp_path), "--set", f"models.scrfd={tmp_path}/det_10g.onnx"])
    assert exit_info.value.code == 2
    assert "models.scrfd: model file" in capsys.readouterr().err


def _fails(argv: list[str], capsys) -> str:
    """The command's stderr after its clean exit 2 (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("pair,message", [
    ("download.timeout=inf", "download.timeout: inf is out of range; expected a finite number > 0 and <= 3600"),
    ("download.timeout=1e308", "download.timeout: 1e+308 is out of range"),
    ("download.timeout=nan", "download.timeout: nan is out of range"),
    ("thresholds.nsfw_text=nan", "thresholds.nsfw_text: nan is out of range; expected a finite number >= 0 and <= 1"),
    ("thresholds.eval_dedup_similarity=1.5", "thresholds.eval_dedup_similarity: 1.5 is out of range"),
    ("download.encode_format=exe", "download.encode_format: 'exe' is not one of jpg, png, webp"),
    ("download.number_sample_per_shard=0", "download.number_sample_per_shard: 0 is out of range; expected an integer >= 1"),
    ("download.processes_count=-1", "download.processes_count: -1 is out of range"),
    ("metadata.device=gpu", "metadata.device: 'gpu' is not one of auto, cpu, cuda"),
    ("download.timeout", "--set expects KEY=VALUE, got 'download.timeout'"),
])
def test_bad_set_values_are_clean_errors_naming_the_key(pair, message, capsys):
    assert message in _fails(["ledger", "--pool-version", "v1", "--set", pair], capsys)


def test_build_and_import_read_the_config_file_named_by_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  timout: 5\n")
    for command in (["build", "--crawl-id", "CC-X"], ["import", "--name", "d", "--source", str(tmp_path)]):
        err = _fails(command + ["--config", str(bad), "--storage-root", str(tmp_path / "root")], capsys)
        assert "unknown config key 'download.timout'" in err
    bad.write_text("thresholds:\n  nsfw_text: .nan\n")
    assert "thresholds.nsfw_text: nan is out of range" in _fails(
        ["build", "--crawl-id", "CC-X", "--config", str(bad)], capsys)
    assert not (tmp_path / "root").exists()  # refused before anything is written


def test_the_config_file_reaches_the_build_and_import_specs(tmp_path, monkeypatch, capsys):
    """--config wins over $DATACOMP_CONFIG (the tests' loopback file) for build and import alike."""
    import tarfile

    from datacomp_ops.core.config import ConfigError
    from datacomp_ops.pool import build, byod

    path = tmp_path / "mine.yaml"
    path.write_text("download:\n  timeout: 7\n  allowed_private_addresses: [127.0.0.1:9999]\n"
                    "thresholds:\n  nsfw_text_profanity_check: 0.25\n")
    specs = []

    def capture(real):
        def make(*args, **kwargs):
            specs.append(real(*args, **kwargs))
            raise ConfigError("stopped after the spec")
        return make

    monkeypatch.setattr(build, "make_spec", capture(build.make_spec))
    monkeypatch.setattr(byod, "make_import_spec", capture(byod.make_import_spec))
    shard = tmp_path / "src" / "a.tar"
    shard.parent.mkdir()
    tarfile.open(shard, "w").close()
    root = str(tmp_path / "root")
    _fails(["build", "--crawl-id", "CC-X", "--input", "/nowhere/x.warc.wat.gz", "--config", str(path),
            "--storage-root", root], capsys)
    _fails(["import", "--name", "mine", "--source", str(shard), "--config", str(path), "--storage-root", root], capsys)
    for spec in specs:
        assert spec.config["download"]["timeout"] == 7.0
        assert spec.config["download"]["allowed_private_addresses"] == ["127.0.0.1:9999"]
        assert spec.config["thresholds"]["nsfw_text_profanity_check"] == 0.25
    assert len(specs) == 2


@pytest.mark.parametrize("argv,message", [
    (["build", "--crawl-id", "../x"], "crawl id '../x': use letters, digits"),
    (["build", "--crawl-id", "a/b"], "crawl id 'a/b'"),
    (["build", "--crawl-id", "CC-X", "--pool-version", ".."], "pool version '..'"),
    (["extract", "--crawl-id", ".."], "crawl id '..'"),
    (["import", "--name", "../x", "--source", "s"], "dataset name '../x'"),
    (["ledger", "--dataset", "a/b"], "dataset name 'a/b'"),
    (["metadata", "--pool-version", "../v1"], "pool version '../v1'"),
    (["serve", "--port", "0"], "port '0': expected an integer >= 1 and <= 65535"),
    (["build", "--serve", "70000"], "port '70000'"),
])
def test_bad_names_and_ports_are_refused_by_the_arguments(tmp_path, argv, message, capsys):
    root = ["--storage-root", str(tmp_path / "root")] if argv[0] != "serve" else []
    assert message in _fails(argv + root, capsys)
    assert not (tmp_path / "root").exists()


def test_a_crawl_id_taken_from_the_inputs_is_checked(tmp_path, capsys):
    """crawl-data/../x.warc.wat.gz would name the crawl '..': refused, nothing written outside the root."""
    root = tmp_path / "root"
    err = _fails(["build", "--input", "crawl-data/../x.warc.wat.gz", "--storage-root", str(root)], capsys)
    assert "crawl id '..': use letters, digits" in err and "crawl-data/{id}/ folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert not (root / "crawls").exists() and not (root / "pool").exists()


def test_bad_names_are_refused_by_the_library(tmp_path):
    """The DAGs call make_spec and make_import_spec directly: the same checks, whatever the form let through."""
    from datacomp_ops.core import versions
    from datacomp_ops.core.config import ConfigError
    from datacomp_ops.pool.build import make_spec
    from datacomp_ops.pool.byod import DatasetImportError, make_import_spec

    overrides = {"storage_root": str(tmp_path / "root")}
    for crawl_id in ("../x", "a/b", ".."):
        with pytest.raises(ConfigError, match=f"crawl id '{re.escape(crawl_id)}'"):
            make_spec("run", crawl_id, inputs=["/w/x.warc.wat.gz"], overrides=overrides)
    with pytest.raises(versions.VersionError, match=r"pool version '\.\.': use letters"):
        make_spec("run", "CC-X", "..", ["/w/x.warc.wat.gz"], overrides)
    with pytest.raises(DatasetImportError, match=r"dataset name '\.\./x': use letters"):
        make_import_spec("run", "../x", ["/w/a.tar"], overrides=overrides)
    with pytest.raises(versions.VersionError, match=r"pool version '\.\.': use letters"):
        versions.open_version(str(tmp_path / "root"), "run", "..")
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["root"])
    assert not (tmp_path / "root" / "crawls").exists()


@pytest.mark.slow
def test_a_run_with_the_image_host_down_publishes_nothing_and_the_next_run_publishes_all(tmp_path, embedded_models,
                                                                                        capsys):
    """The host is down for a whole `datacomp build`: every URL is a transient network_error, nothing is
    published (no empty v0001); the next build, with the host up, downloads them again (attempt 2) into
    the still-open v0001 and publishes it."""
    from conftest import _free_port
    from datacomp_ops.core import ledger, versions

    port = _free_port()  # nothing listens there yet
    world, root = tmp_path / "world", tmp_path / "root"
    main(["synthetic", "--out", str(world), "--n-urls", "40", "--base-url", f"http://127.0.0.1:{port}",
          "--published-rows", "0"])
    capsys.readouterr()
    # and a WAT file that arrived empty: pending, then given up, and the summary says so
    listing = world / "crawl-data" / "CC-SYNTH-2026-47" / "wat.paths.gz"
    empty = "crawl-data/CC-SYNTH-2026-47/segments/0/wat/empty.warc.wat.gz"
    (world / empty).write_bytes(b"")
    with gzip.open(listing, "at") as f:
        f.write(empty + "\n")
    args = ["build", "--input", str(listing), "--set", "extract.max_read_attempts=2",
            "--storage-root", str(root), "--set", f"download.allowed_private_addresses=127.0.0.1:{port}",
            "--set", "download.timeout=2", "--set", "download.retries=0", "--set", "download.processes_count=1",
            "--set", "extract.spark_master=local[2]", "--set", f"evaluation.sets_dir={world / 'eval'}",
            "--set", f"models.embedded_dir={embedded_models}"]
    main(args)
    out = capsys.readouterr().out
    assert "nothing new to publish: v0001 stays open for the next run; no pool is published yet" in out
    assert f"not read whole (empty; 1 read so far), read again next run: WAT file {world / empty} is empty" in out
    assert "WAT files of CC-SYNTH-2026-47 by state: empty 1, processed 1" in out
    assert versions.latest(str(root)) is None and not (root / "pool" / "v0001" / "manifest.json").exists()
    history = ledger.history(*versions.ledger_dirs(str(root), "v0001"))
    current = ledger.latest(history)
    assert ledger.counts(current) == {"network_error": current.num_rows} and current.num_rows > 30

    main(args + ["--serve", str(port), "--hang-seconds", "3"])
    out = capsys.readouterr().out
    assert "published v0001" in out and f" 0 new URLs, {current.num_rows} URLs downloaded again" in out
    assert f"given up: empty: WAT file {world / empty} is empty (0 bytes); given up after 2 reads" in out
    assert "WAT files of CC-SYNTH-2026-47 by state: gave_up 1, processed 1" in out
    current = ledger.latest(ledger.history(*versions.ledger_dirs(str(root), "v0001")))
    statuses = ledger.counts(current)
    assert statuses.get("kept", 0) > 0 and "downloaded" not in statuses and "network_error" not in statuses


def test_train_takes_seeds_and_trains_each_subset_once_per_seed(tmp_path, monkeypatch, capsys):
    from datacomp_ops.training import plan as train_plan

    root = tmp_path / "root"
    manifest = root / "pool" / "v0001" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"storage_root": str(root), "pool_version": "v0001", "shards": []}))
    (root / "subsets" / "v0001" / "tiny").mkdir(parents=True)
    (root / "subsets" / "v0001" / "tiny" / "no_filter.npy").write_bytes(b"")
    ran = []
    monkeypatch.setattr(train_plan, "run_reshard_job", lambda job: ran.append(("reshard", job["reshards"])))
    monkeypatch.setattr(train_plan, "run_train_job", lambda job: ran.append(("train", job["spec"]["run_dir"])) or {})
    monkeypatch.setattr(train_plan, "training_record", lambda job: {"run_dir": job["spec"]["run_dir"]})
    main(["train", "--baseline", "no_filter", "--pool-version", "v0001", "--seeds", "0,2",
          "--storage-root", str(root)])
    out = capsys.readouterr().out
    assert "v0001/tiny/no_filter: resharding, then training" in out and "v0001/tiny/no_filter+seed2: training" in out
    runs = root / "runs" / "v0001" / "tiny"
    assert ran == [("reshard", True), ("train", str(runs / "no_filter")), ("reshard", False),
                   ("train", str(runs / "no_filter+seed2"))]
    argv = ["train", "--pool-version", "v0001", "--storage-root", str(root)]
    assert "expected integers separated by commas, e.g. 0,1,2; got '0,x'" in _fails(argv + ["--seeds", "0,x"], capsys)
    assert "training.seeds: 1 is in [1, 1] twice" in _fails(argv + ["--seeds", "1,1"], capsys)
    assert "training.seeds: -1 is out of range" in _fails(argv + ["--seeds=-1"], capsys)


def test_leaderboard_prints_each_subsets_mean_and_spread(tmp_path, capsys):
    from datacomp_ops.core.layout import run_dir
    from datacomp_ops.evaluation.tasks import GROUPS

    root = tmp_path / "root"
    for baseline, seed, avg in (("basic_filter", 0, 0.25), ("basic_filter", 1, 0.27), ("no_filter", 0, 0.2)):
        run = Path(run_dir(str(root), "v0001", "tiny", baseline, seed))
        run.mkdir(parents=True)
        agg = {g: {"score": avg, "tasks": 3, "of": 3, "partial": False} for g in (*GROUPS, "average")}
        (run / "eval_summary.json").write_text(json.dumps({"aggregates": agg, "suite": "own", "model": "m"}))
    main(["leaderboard", "--storage-root", str(root)])
    lines = capsys.readouterr().out.splitlines()
    assert "basic_filter" in lines[0] and "average 0.260 ± 0.014" in lines[0] and "2 seeds" in lines[0]
    assert "no_filter" in lines[1] and "average 0.200 " in lines[1] and "1 seed " in lines[1] and "±" not in lines[1]
    assert "runs.parquet" in lines[2]
