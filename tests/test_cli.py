import json

import pytest

from datacomp_ops.cli import main


def test_synthetic_command_writes_crawl_and_eval_suite(tmp_path, capsys):
    main(["synthetic", "--out", str(tmp_path), "--n-urls", "60", "--base-url", "http://127.0.0.1:9"])
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
    from datacomp_ops import ledger, versions

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
