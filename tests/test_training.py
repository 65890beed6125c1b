"""CLIP training with DataComp's recipe through open_clip's trainer: the arguments per scale, a tiny run on
the CPU, lineage, DataComp's info.pkl, resuming after a kill."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import layout
from datacomp_ops.core.config import ConfigError, PlatformConfig, load_config
from datacomp_ops.core.schema import uids_to_array, write_subset
from datacomp_ops.training import train as training
from datacomp_ops.training.reshard import run_reshard


def _config(tmp_path, **training_keys) -> PlatformConfig:
    overrides = {"storage_root": str(tmp_path / "root"), "training.workers": 1, **training_keys}
    return load_config(overrides=overrides)


def make_run(tmp_path, n: int = 384, version: str = "v0001", baseline: str = "all") -> training.TrainSpec:
    """A resharded subset of synthetic shape pictures with their captions, where a run expects it."""
    import webdataset as wds

    from datacomp_ops.embedded.images import CLASSES, encode, render_shape
    from datacomp_ops.synthetic.crawl import TEMPLATES

    pool = tmp_path / "pool"
    pool.mkdir(parents=True)
    rows, uids = [], []
    with wds.TarWriter(str(pool / "00000000.tar")) as tar:
        for i in range(n):
            label = CLASSES[i % len(CLASSES)]
            color, shape = label.split(" ")
            caption = TEMPLATES[i % len(TEMPLATES)].format(c=label)
            uid = hashlib.md5(f"{i}".encode()).hexdigest()
            tar.write({"__key__": f"{i:09d}", "jpg": encode(render_shape(color, shape, i, size=48)),
                       "txt": caption.encode(), "json": json.dumps({"uid": uid}).encode()})
            rows.append({"key": f"{i:09d}", "uid": uid, "status": "success"})
            uids.append(uid)
    pq.write_table(pa.Table.from_pylist(rows), pool / "00000000.parquet")
    spec = training.TrainSpec.for_subset(str(tmp_path / "root"), version, "tiny", baseline)
    os.makedirs(os.path.dirname(spec.subset), exist_ok=True)
    write_subset(spec.subset, uids_to_array(sorted(uids)))
    run_reshard(spec.subset, [str(pool / "00000000.tar")], spec.shards_dir, shard_size=100, workers=1)
    return spec


def test_datacomps_arguments_for_each_scale(tmp_path):
    config = _config(tmp_path)
    small = training.recipe(config, "small")
    args = training.open_clip_args(small, "/d/{00000000..00000009}.tar", "/logs", config, 8, cuda=True)
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert flag["--model"] == "ViT-B-32" and flag["--batch-size"] == "512" and flag["--lr"] == "0.0005"
    assert flag["--train-num-samples"] == str(12_800_000 // 5) and flag["--epochs"] == "5"
    assert flag["--warmup"] == "500" and flag["--wd"] == "0.2" and flag["--precision"] == "amp"
    assert {"--dataset-resampled", "--save-most-recent", "--local-loss", "--gather-with-grad"} <= set(args)
    assert flag["--resume"] == "latest"
    xlarge = training.recipe(config, "xlarge")
    args = training.open_clip_args(xlarge, "d", "/logs", config, 64, cuda=True)
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert flag["--model"] == "ViT-L-14" and flag["--batch-size"] == str(90112 // 64)
    assert flag["--beta2"] == "0.95" and flag["--lr"] == "0.001" and flag["--warmup"] == "10000"
    assert flag["--train-num-samples"] == str(12_800_000_000 // 5)
    large = training.recipe(config, "large")
    assert (large["model"], large["batch_size"], large["samples_seen"]) == ("ViT-B-16", 8192, 1_280_000_000)
    cpu = training.open_clip_args(training.recipe(config, "tiny"), "d", "/l", config, 1, cuda=False)
    assert cpu[cpu.index("--precision") + 1] == "fp32" and cpu[cpu.index("--device") + 1] == "cpu"
    with pytest.raises(ConfigError, match="num_checkpoints"):
        training.recipe(_config(tmp_path, **{"training.num_checkpoints": 0}), "tiny")


def test_train_data_is_datacomps_brace_pattern(tmp_path):
    spec = make_run(tmp_path, n=250)
    data, count = training.train_data(spec.shards_dir)
    assert data.endswith("/{00000000..00000002}.tar") and count == 250
    with pytest.raises(ConfigError, match="no meta.json"):
        training.train_data(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_a_tiny_run_trains_on_the_cpu_and_records_its_lineage(tmp_path):
    spec = make_run(tmp_path)
    config = _config(tmp_path, **{"training.samples_seen": 1024, "training.num_checkpoints": 2})
    stats = training.run_training(spec, config)
    record = json.loads(open(os.path.join(spec.run_dir, "training.json")).read())
    # 1,024 samples seen in batches of the tiny scale's 16: 32 steps in each of the 2 checkpoints' epochs
    assert record["samples_seen"] == 1024 and record["checkpoints"] == 2 and record["steps"] == 64
    assert os.path.exists(record["checkpoint"]) and record["final_loss"] is not None
    lineage = json.loads(open(os.path.join(spec.run_dir, "lineage.json")).read())
    assert lineage["subset_sha256"] == hashlib.sha256(open(spec.subset, "rb").read()).hexdigest()
    assert lineage["pool_version"] == "v0001" and lineage["baseline"] == "all" and lineage["recipe"]["lr"] == 1e-3
    info = pickle.loads(open(os.path.join(spec.run_dir, "info.pkl"), "rb").read())
    assert str(info["checkpoint"]) == record["checkpoint"] and info["scale_config"]["model"] == "datacomp-tiny"
    # the checkpoint is open_clip's: the model loads from it with weights only
    import open_clip
    import torch

    open_clip.add_model_config(training.MODEL_CONFIGS)
    state = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)
    model = open_clip.create_model("datacomp-tiny")
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["state_dict"].items()})
    assert state["epoch"] == 2
    mtime = os.path.getmtime(record["checkpoint"])
    assert training.run_training(spec, config)["samples_seen"] == 1024  # committed: a no-op
    assert os.path.getmtime(record["checkpoint"]) == mtime and stats.outputs == [record["checkpoint"]]


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    """The task is killed once its first checkpoint is written (perhaps before open_clip's epoch_latest.pt,
    which --resume latest reads); the retry starts at that checkpoint, not at zero."""
    spec = make_run(tmp_path)
    config = _config(tmp_path, **{"training.samples_seen": 3072, "training.num_checkpoints": 3})
    script = ("import pickle, sys; from datacomp_ops.training import train as training; "
              "spec, config = pickle.loads(bytes.fromhex(sys.argv[1])); training.run_training(spec, config)")
    child = subprocess.Popen([sys.executable, "-c", script, pickle.dumps((spec, config)).hex()],
                             start_new_session=True)
    first = os.path.join(spec.run_dir, "train", "checkpoints", "epoch_1.pt")
    deadline = time.monotonic() + 300
    while not training._readable(first) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert training._readable(first), "no first checkpoint"
    os.killpg(child.pid, signal.SIGKILL)  # the worker dies with the trainer it started
    child.wait()
    assert not os.path.exists(os.path.join(spec.run_dir, "training.json"))
    training.run_training(spec, config)
    record = json.loads(open(os.path.join(spec.run_dir, "training.json")).read())
    assert record["resumed_from_checkpoint"] >= 1 and record["checkpoints"] == 3
    log = open(os.path.join(spec.run_dir, "train", "out.log")).read()
    assert "resuming checkpoint" in log or "loaded checkpoint" in log
    assert np.isfinite(record["final_loss"])


def test_resume_points_at_the_last_whole_checkpoint(tmp_path):
    """A kill between epoch_k.pt and epoch_latest.pt, or in the middle of writing either."""
    import zipfile

    folder = tmp_path / "train" / "checkpoints"
    folder.mkdir(parents=True)

    def checkpoint(name: str, epoch: int, whole: bool = True) -> None:
        path = folder / name
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", f"epoch {epoch}")
        if not whole:
            path.write_bytes(path.read_bytes()[:20])

    checkpoint("epoch_1.pt", 1)
    checkpoint("epoch_latest.pt", 1)
    time.sleep(0.01)
    checkpoint("epoch_2.pt", 2)  # killed before epoch_latest.pt was written again
    assert training._point_latest_at_last_checkpoint(str(tmp_path / "train")) == 2
    with zipfile.ZipFile(folder / "epoch_latest.pt") as z:
        assert z.read("archive/data.pkl") == b"epoch 2"
    checkpoint("epoch_3.pt", 3, whole=False)  # killed while writing it
    assert training._point_latest_at_last_checkpoint(str(tmp_path / "train")) == 2
    (folder / "epoch_latest.pt").write_bytes(b"PK\x03\x04 cut")  # killed while writing latest
    assert training._point_latest_at_last_checkpoint(str(tmp_path / "train")) == 2
    assert training._readable(str(folder / "epoch_latest.pt"))


def test_several_gpus_train_under_torchrun_with_the_batch_split(tmp_path, monkeypatch):
    """No GPU here: the worker's GPUs are what torch reports; the command is what the task would run."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    config = _config(tmp_path)
    assert training._devices(config) == (4, True)
    assert training._devices(_config(tmp_path, **{"training.gpus": 2})) == (2, True)
    with pytest.raises(ConfigError, match="has 4 GPU"):
        training._devices(_config(tmp_path, **{"training.gpus": 8}))
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: ran.append((cmd, env)) or
                        subprocess.CompletedProcess(cmd, 0))
    args = training.open_clip_args(training.recipe(config, "medium"), "d", "/l", config, 4, cuda=True)
    training._launch(args, 4, str(tmp_path))
    (command, env), = ran
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert command[5:7] == ["-m", "datacomp_ops.training.entry"] and command[7:] == args
    assert args[args.index("--batch-size") + 1] == str(4096 // 4) and "--device" not in args
    assert env["DATACOMP_MODEL_CONFIGS"] == training.MODEL_CONFIGS


def test_a_datacomp_scale_on_the_cpu_is_refused_unless_a_trial_budget_is_set(tmp_path):
    spec = make_run(tmp_path, n=40)
    spec.scale = "xlarge"
    with pytest.raises(ConfigError, match="ViT-L-14 on 12,800,000,000 samples seen: that needs GPUs"):
        training.run_training(spec, _config(tmp_path))
    assert not os.path.exists(os.path.join(spec.run_dir, "lineage.json"))


def test_subset_events_of_other_scales_are_not_trained(tmp_path):
    """Filtering runs on every published scale; a training run follows the config's scale."""
    from datacomp_ops.training.plan import plan_training

    spec = make_run(tmp_path, n=40, baseline="no_filter")
    manifest = tmp_path / "root" / "pool" / "v0001" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"storage_root": str(tmp_path / "root"), "pool_version": "v0001", "shards": []}))
    events = [{"label": "no_filter", "subset": spec.subset, "pool": {"manifest": str(manifest), "scale": s}}
              for s in ("tiny", "large", "xlarge")]
    params = {"config_overrides": {"storage_root": str(tmp_path / "root")}}
    assert [j["spec"]["scale"] for j in plan_training(params, events)] == ["tiny"]
    params["config_overrides"]["training.baselines"] = ["basic_filter"]
    assert plan_training(params, events) == []
    # a subset removed since its event: the others still train, the run does not fail
    gone = {"label": "basic_filter", "subset": "x", "pool": {"manifest": str(manifest), "scale": "tiny"}}
    params["config_overrides"]["training.baselines"] = []
    assert [j["spec"]["baseline"] for j in plan_training(params, [gone, *events])] == ["no_filter"]


def test_run_names_keep_seed_0_where_runs_were_and_parse_back():
    assert layout.run_name("no_filter") == layout.run_name("no_filter", 0) == "no_filter"
    assert layout.run_name("clip_score_l14_30", 3) == "clip_score_l14_30+seed3"
    for baseline in ("no_filter", "clip_score_b32_30", "my.set-v2", "x"):
        for seed in (0, 1, 17, 2**32 - 1):
            name = layout.run_name(baseline, seed)
            assert layout.parse_run_name(name) == (baseline, seed)
            place = layout.parse_run_dir(layout.run_dir("s3://b/root", "v0002", "small", baseline, seed))
            assert (place.root, place.pool_version, place.scale, place.baseline, place.seed) == (
                "s3://b/root", "v0002", "small", baseline, seed)
    imported = layout.parse_run_dir("/r/datasets/cc3m/runs/v0001/tiny/basic_filter+seed2/")
    assert (imported.root, imported.baseline, imported.seed) == ("/r/datasets/cc3m", "basic_filter", 2)
    for bad in ("a+seed", "a+seed0", "a+seed01", "+seed1", "a+seedx", "a+seed1+seed2", "a+seed-1"):
        with pytest.raises(ConfigError, match="run folder"):
            layout.parse_run_name(bad)
    for baseline, seed in (("a+b", 1), ("a/b", 0), ("", 0), ("a", -1), ("a", True)):
        with pytest.raises(ConfigError, match="run of"):
            layout.run_name(baseline, seed)
    with pytest.raises(ConfigError, match="not a run folder"):
        layout.parse_run_dir("/r/subsets/v0001/tiny/no_filter")


def test_the_seeds_of_a_subset_share_its_shards_and_give_open_clip_their_seed(tmp_path):
    first = training.TrainSpec.for_subset("/r", "v0001", "tiny", "no_filter")
    other = training.TrainSpec.for_subset("/r", "v0001", "tiny", "no_filter", seed=5)
    assert first.run_dir == "/r/runs/v0001/tiny/no_filter" and first.seed == 0  # the folder of runs before seeds
    assert other.run_dir == "/r/runs/v0001/tiny/no_filter+seed5" and other.seed == 5
    assert other.shards_dir == first.shards_dir == "/r/runs/v0001/tiny/no_filter/shards"
    assert other.subset == first.subset == "/r/subsets/v0001/tiny/no_filter.npy"
    config = _config(tmp_path)
    args = training.open_clip_args(training.recipe(config, "tiny"), "d", "/l", config, 1, cuda=False, seed=5)
    assert args[args.index("--seed") + 1] == "5"


def _published(tmp_path, baselines: list[str]) -> dict:
    """A pool version's manifest and the subsets of `baselines` (empty files: planning only looks)."""
    root = tmp_path / "root"
    manifest = root / "pool" / "v0001" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"storage_root": str(root), "pool_version": "v0001", "shards": []}))
    subsets = root / "subsets" / "v0001" / "tiny"
    subsets.mkdir(parents=True)
    for b in baselines:
        (subsets / f"{b}.npy").write_bytes(b"")
        (subsets / f"{b}.json").write_text("{}")
    return {"storage_root": str(root)}


def test_each_subset_is_planned_once_per_seed(tmp_path, monkeypatch):
    from datacomp_ops.training.plan import plan_training, run_reshard_job

    overrides = _published(tmp_path, ["basic_filter", "no_filter"])
    config_file = tmp_path / "seeds.yaml"
    config_file.write_text("training:\n  seeds: [0, 1]\n")
    monkeypatch.setenv("DATACOMP_CONFIG", str(config_file))  # the config's seeds
    params = {"pool_version": "v0001", "scale": "tiny", "config_overrides": overrides}
    jobs = plan_training(params, [])
    assert [j["name"] for j in jobs] == ["v0001/tiny/basic_filter", "v0001/tiny/basic_filter+seed1",
                                         "v0001/tiny/no_filter", "v0001/tiny/no_filter+seed1"]
    assert [(j["spec"]["baseline"], j["spec"]["seed"]) for j in jobs] == [
        ("basic_filter", 0), ("basic_filter", 1), ("no_filter", 0), ("no_filter", 1)]
    runs = [j["spec"]["run_dir"] for j in jobs]
    assert len(set(runs)) == 4 and runs[1] == str(tmp_path / "root" / "runs" / "v0001" / "tiny" / "basic_filter+seed1")
    # one reshard per subset, into the folder both seeds read
    assert [j["reshards"] for j in jobs] == [True, False, True, False]
    assert jobs[0]["spec"]["shards_dir"] == jobs[1]["spec"]["shards_dir"] != jobs[2]["spec"]["shards_dir"]
    skipped = run_reshard_job(jobs[1])
    assert not skipped.counters and not skipped.outputs and not os.path.exists(jobs[1]["spec"]["shards_dir"])
    # the form's (and the command line's) seeds replace the config's, under the config's rule
    jobs = plan_training(params | {"baselines": ["no_filter"], "seeds": [3, 1, 2]}, [])
    assert [j["name"] for j in jobs] == ["v0001/tiny/no_filter+seed3", "v0001/tiny/no_filter+seed1",
                                         "v0001/tiny/no_filter+seed2"]
    assert jobs[0]["reshards"] and jobs[0]["config"]["training"]["seeds"] == [3, 1, 2]
    assert [j["spec"]["seed"] for j in plan_training(params | {"seeds": []}, [])] == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match=r"^training.seeds: 1 is in \[1, 1\] twice"):
        plan_training(params | {"seeds": [1, 1]}, [])
    # the form's seeds and config_overrides' training.seeds together: neither silently wins
    with pytest.raises(ConfigError, match="config_overrides sets training.seeds .*: keep one"):
        plan_training(params | {"seeds": [3], "config_overrides": overrides | {"training.seeds": [0]}}, [])
    # Asset events: the same jobs per subset; the untrained subsets written beside the events' are
    # trained too (Airflow hands a deferred run only the events up to its trigger), committed runs are not
    manifest = str(tmp_path / "root" / "pool" / "v0001" / "manifest.json")
    events = [{"label": "no_filter", "subset": "s", "pool": {"manifest": manifest, "scale": "tiny"}}]
    assert [j["name"] for j in plan_training(params, events)] == [
        "v0001/tiny/basic_filter", "v0001/tiny/basic_filter+seed1", "v0001/tiny/no_filter", "v0001/tiny/no_filter+seed1"]
    for run in ("basic_filter", "no_filter+seed1"):  # committed by an earlier run of the DAG
        os.makedirs(tmp_path / "root" / "runs" / "v0001" / "tiny" / run)
        (tmp_path / "root" / "runs" / "v0001" / "tiny" / run / "training.json").write_text("{}")
    assert [j["name"] for j in plan_training(params, events)] == ["v0001/tiny/no_filter"]
    assert [j["name"] for j in plan_training(params | {"baselines": ["basic_filter"]}, events)] == []


def test_the_tiny_scale_reshards_into_many_small_shards(tmp_path):
    """Training draws shards with replacement: the tiny pool comes in 10-sample shards (hundreds of
    them, as small's pool is 1,280), not in the two 10,000-sample shards that would hold all of it."""
    import dataclasses
    import shutil

    from datacomp_ops.core.config import SCALES
    from datacomp_ops.training.plan import run_reshard_job

    spec = make_run(tmp_path, n=95)
    shutil.rmtree(spec.shards_dir)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"shards": [str(tmp_path / "pool" / "00000000.tar")]}))
    run_reshard_job({"spec": dataclasses.asdict(spec), "manifest": str(manifest), "name": "all"})
    meta = json.loads(open(os.path.join(spec.shards_dir, "meta.json")).read())
    assert SCALES["tiny"].shard_size == 10 and SCALES["small"].shard_size == 10_000
    assert meta["output_count"] == 95 and meta["output_shard_count"] == 10 and meta["shard_size"] == 10
