"""CLIP training on a subset with DataComp's fixed recipe for its scale, through open_clip's trainer.

A run is a subset (pool version, scale, baseline) trained with one seed. Its
folder is ``{root}/runs/{version}/{scale}/{baseline}/`` for seed 0 and
``.../{baseline}+seed{k}/`` for seed k > 0 (`core.layout.run_name`; an imported dataset's
runs live under its own root)::

    shards/                  the subset's samples, resharded (meta.json: DataComp's layout); the seed-0
                             folder's only: every seed of a subset trains on these
    train/out.log, params.txt, checkpoints/epoch_{k}.pt, epoch_latest.pt   open_clip's own
    lineage.json             what was trained on what: pool version, scale, baseline, the subset
                             file's sha256, the recipe, the arguments given to open_clip
    info.pkl                 DataComp's record of a training run (its evaluate.py reads it)
    training.json            the commit: final checkpoint, samples seen, steps, seconds

The arguments are DataComp's ``train.py``'s: the samples-seen budget split
into ``training.num_checkpoints`` epochs of ``--dataset-resampled`` data, a
checkpoint after each, ``--resume latest``, so a retried task carries on from
the last checkpoint and a killed one loses at most one epoch. Several GPUs on
the worker: one process each under ``torchrun``, the global batch split
between them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import storage
from ..core.config import ConfigError, PlatformConfig, Scale, get_scale
from ..core.layout import SubsetsLayout, run_dir
from ..core.stats import StageStats

log = logging.getLogger(__name__)

STAGE = "train"
EXPERIMENT = "train"  # open_clip's --name: the run folder's train/
MODEL_CONFIGS = str(Path(__file__).parent / "model_configs")


class TrainingError(RuntimeError):
    """open_clip's trainer failed or left no checkpoint; the message says where its log is."""


@dataclass
class TrainSpec:
    """One training run: a subset of a pool version at a scale, trained with one seed."""

    run_dir: str  # run_dir(root, version, scale, baseline, seed)
    subset: str  # the DataComp subset file
    shards_dir: str  # its resharded samples (meta.json): the seed-0 run folder's, shared by every seed
    scale: str
    baseline: str
    pool_version: str
    dataset: str = ""  # an imported dataset's name; "" for the CommonPool
    seed: int = 0  # open_clip's --seed

    @classmethod
    def for_subset(cls, root: str, version: str, scale: str, baseline: str, dataset: str = "",
                   seed: int = 0) -> "TrainSpec":
        # the seeds of a subset train on the same samples: one reshard, in the seed-0 folder
        return cls(run_dir(root, version, scale, baseline, seed),
                   SubsetsLayout(root, version, scale).subset(baseline),
                   storage.join(run_dir(root, version, scale, baseline), "shards"), scale, baseline, version,
                   dataset, seed)


def recipe(config: PlatformConfig, scale: str) -> dict:
    """DataComp's recipe for `scale`, with the budget of `training.samples_seen` where set."""
    from ..core.config import pool_sizes

    spec: Scale = get_scale(scale)
    # DataComp's compute rule: a scale's training sees as many samples as its pool holds
    scale_samples_seen = pool_sizes(config)[scale]
    samples_seen = config.training.samples_seen or scale_samples_seen
    checkpoints = config.training.num_checkpoints
    if checkpoints < 1 or samples_seen < checkpoints:
        raise ConfigError(f"training.num_checkpoints={checkpoints} does not split {samples_seen} samples seen")
    return {"model": spec.model, "samples_seen": samples_seen, "batch_size": spec.batch_size, "lr": spec.lr,
            "warmup": spec.warmup, "beta2": spec.beta2, "weight_decay": spec.weight_decay,
            "num_checkpoints": checkpoints, "scale_samples_seen": scale_samples_seen}


def train_data(shards_dir: str) -> tuple[str, int]:
    """open_clip's --train-data for a resharded folder (DataComp's brace pattern from meta.json), and its
    sample count."""
    meta_url = storage.join(shards_dir, "meta.json")
    if not storage.exists(meta_url):
        raise ConfigError(f"{shards_dir}: no meta.json; reshard the subset first")
    meta = storage.read_json(meta_url)
    count, fmt = int(meta["output_shard_count"]), meta["output_shard_format"]
    if count == 0 or meta.get("output_count", 1) == 0:
        raise ConfigError(f"{shards_dir}: the subset has no samples in the pool's shards")
    first, last = fmt.format(0).removesuffix(".tar"), fmt.format(count - 1).removesuffix(".tar")
    pattern = f"{first}.tar" if count == 1 else f"{{{first}..{last}}}.tar"
    return storage.join(shards_dir, pattern), int(meta.get("output_count", 0))


def open_clip_args(rec: dict, data: str, logs_dir: str, config: PlatformConfig, world_size: int,
                   cuda: bool, seed: int = 0) -> list[str]:
    """The arguments DataComp's train.py gives open_clip's main, for this recipe and seed."""
    t = config.training
    per_process = rec["batch_size"] // (world_size * t.accum_freq)
    if per_process < 1:
        raise ConfigError(f"batch {rec['batch_size']} cannot be split over {world_size} processes "
                          f"x accum_freq {t.accum_freq}")
    precision = t.precision if t.precision != "auto" else ("amp" if cuda else "fp32")
    args = ["--save-frequency", "1", "--ddp-static-graph", "--local-loss", "--gather-with-grad",
            "--grad-checkpointing", "--train-data", data,
            "--train-num-samples", str(rec["samples_seen"] // rec["num_checkpoints"]),
            "--warmup", str(rec["warmup"]), "--dataset-type", "webdataset", "--precision", precision,
            "--workers", str(t.workers), "--model", rec["model"], "--batch-size", str(per_process),
            "--epochs", str(rec["num_checkpoints"]), "--lr", str(rec["lr"]), "--wd", str(rec["weight_decay"]),
            "--beta2", str(rec["beta2"]), "--logs", logs_dir, "--name", EXPERIMENT, "--seed", str(seed),
            "--accum-freq", str(t.accum_freq), "--log-every-n-steps", str(t.log_every_n_steps),
            "--save-most-recent", "--resume", "latest", "--dataset-resampled"]
    if not cuda:
        args += ["--device", "cpu"]
    return args


def _devices(config: PlatformConfig) -> tuple[int, bool]:
    """(processes, cuda): one process per GPU used, or one on the CPU."""
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        return 1, False
    wanted = config.training.gpus or available
    if wanted > available:
        raise ConfigError(f"training.gpus={wanted}: this worker has {available} GPU(s)")
    return wanted, True


def _sha256(url: str) -> str:
    digest = hashlib.sha256()
    with storage.open_file(url) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_run_dir(spec: TrainSpec, config: PlatformConfig) -> tuple[str, bool]:
    """Where open_clip writes: the run folder when it is local, else a local folder mirrored to it."""
    fs, path = storage.get_fs(spec.run_dir)
    if fs.protocol in ("file", "local") or fs.protocol == ("file", "local"):
        return path, False
    base = config.training.local_dir or os.path.join(tempfile.gettempdir(), "datacomp-training")
    local = os.path.join(base, hashlib.sha256(spec.run_dir.encode()).hexdigest()[:16])
    remote_train = storage.join(spec.run_dir, EXPERIMENT)
    if storage.exists(remote_train) and not os.path.exists(os.path.join(local, EXPERIMENT)):
        fs.get(storage.get_fs(remote_train)[1], os.path.join(local, EXPERIMENT), recursive=True)  # resume
    return local, True


def _checkpoints(train_dir: str) -> list[int]:
    folder = os.path.join(train_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n[len("epoch_"):-3]) for n in os.listdir(folder)
                  if n.startswith("epoch_") and n.endswith(".pt") and n[len("epoch_"):-3].isdigit())


def _readable(path: str) -> bool:
    """A torch checkpoint (a zip file) whose end was written: a kill mid-save leaves one that is not."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _point_latest_at_last_checkpoint(train_dir: str) -> int:
    """Make epoch_latest.pt (what --resume latest loads) the last whole checkpoint; returns its epoch.

    open_clip writes epoch_{k}.pt, then epoch_latest.pt: a task killed between the two would otherwise
    restart from the epoch before, or from zero.
    """
    folder = os.path.join(train_dir, "checkpoints")
    whole = [k for k in _checkpoints(train_dir) if _readable(os.path.join(folder, f"epoch_{k}.pt"))]
    latest = os.path.join(folder, "epoch_latest.pt")
    if not whole:
        if os.path.exists(latest) and not _readable(latest):
            os.remove(latest)
        return 0
    last = os.path.join(folder, f"epoch_{whole[-1]}.pt")
    if not _readable(latest) or os.path.getmtime(latest) < os.path.getmtime(last):
        tmp = latest + ".tmp"
        shutil.copyfile(last, tmp)
        os.replace(tmp, latest)
    return whole[-1]


def _last_loss(log_path: str) -> float | None:
    """The last 'Loss:' figure of open_clip's log (its running average)."""
    if not os.path.exists(log_path):
        return None
    loss = None
    with open(log_path, errors="replace") as f:
        for line in f:
            if " Loss: " in line:
                try:
                    loss = float(line.split(" Loss: ")[1].split()[0])
                except (IndexError, ValueError):
                    pass
    return loss


def run_training(spec: TrainSpec, config: PlatformConfig) -> StageStats:
    """Train CLIP on the spec's resharded subset with the scale's recipe; a committed run is a no-op."""
    stats = StageStats(STAGE)
    done_url = storage.join(spec.run_dir, "training.json")
    if storage.exists(done_url):
        record = storage.read_json(done_url)
        stats.add("samples_seen", record["samples_seen"])
        stats.outputs.append(record["checkpoint"])
        return stats
    start = time.perf_counter()
    rec = recipe(config, spec.scale)
    data, subset_samples = train_data(spec.shards_dir)
    processes, cuda = _devices(config)
    if not cuda and spec.scale != "tiny" and not config.training.samples_seen:
        raise ConfigError(f"scale {spec.scale} trains {rec['model']} on {rec['samples_seen']:,} samples seen: that "
                          f"needs GPUs (the gpu queue's workers); this worker has none. For a trial on the CPU set "
                          f"training.samples_seen")
    local, mirrored = _local_run_dir(spec, config)
    os.makedirs(local, exist_ok=True)
    args = open_clip_args(rec, data, local, config, processes, cuda, spec.seed)
    lineage = {"pool_version": spec.pool_version, "dataset": spec.dataset, "scale": spec.scale,
               "baseline": spec.baseline, "seed": spec.seed, "subset_file": spec.subset,
               "subset_sha256": _sha256(spec.subset), "subset_samples_in_shards": subset_samples,
               "shards": spec.shards_dir, "recipe": rec,
               "processes": processes, "device": "cuda" if cuda else "cpu", "open_clip_args": args,
               "open_clip_version": _version("open_clip_torch"), "torch_version": _version("torch"),
               "training_config": asdict(config.training)}
    storage.write_json(storage.join(spec.run_dir, "lineage.json"), lineage)
    train_dir = os.path.join(local, EXPERIMENT)
    resumed_from = _point_latest_at_last_checkpoint(train_dir)
    _launch(args, processes, train_dir)
    epochs = _checkpoints(train_dir)
    if not epochs or max(epochs) < rec["num_checkpoints"]:
        raise TrainingError(f"open_clip stopped at checkpoint {max(epochs, default=0)} of "
                            f"{rec['num_checkpoints']}; its log: {os.path.join(train_dir, 'out.log')}")
    checkpoint = os.path.join(train_dir, "checkpoints", f"epoch_{rec['num_checkpoints']}.pt")
    if mirrored:
        fs, remote = storage.get_fs(storage.join(spec.run_dir, EXPERIMENT))
        fs.put(train_dir, remote, recursive=True)
        checkpoint = storage.join(spec.run_dir, EXPERIMENT, "checkpoints", f"epoch_{rec['num_checkpoints']}.pt")
    steps_per_epoch = -(-(rec["samples_seen"] // rec["num_checkpoints"]) // rec["batch_size"])
    record = {"checkpoint": checkpoint, "model": rec["model"], "samples_seen": rec["samples_seen"],
              "steps": steps_per_epoch * rec["num_checkpoints"], "checkpoints": rec["num_checkpoints"],
              "resumed_from_checkpoint": resumed_from, "final_loss": _last_loss(os.path.join(train_dir, "out.log")),
              "seconds": round(time.perf_counter() - start, 1), "device": lineage["device"],
              "processes": processes, "scale": spec.scale, "baseline": spec.baseline, "seed": spec.seed,
              "pool_version": spec.pool_version, "dataset": spec.dataset}
    # DataComp's evaluate.py finds the model through this record
    info = {"scale": spec.scale, "checkpoint": Path(checkpoint), "data_dir": spec.shards_dir,
            "scale_config": {"model": rec["model"], "batch_size": rec["batch_size"], "learning_rate": rec["lr"],
                             "train_num_samples": rec["samples_seen"], "warmup": rec["warmup"],
                             "beta2": rec["beta2"] if spec.scale == "xlarge" else None}}
    storage.write_bytes(storage.join(spec.run_dir, "info.pkl"), pickle.dumps(info))
    storage.write_json(done_url, record)
    stats.add("samples_seen", rec["samples_seen"])
    stats.seconds = time.perf_counter() - start
    stats.outputs.append(checkpoint)
    log.info("trained %s: %s", spec.run_dir, record)
    return stats


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def _launch(args: list[str], processes: int, train_dir: str) -> None:
    """open_clip's main in a child process (one per GPU under torchrun), with our model configs known."""
    entry = ["-m", "datacomp_ops.training.entry", *args]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", *entry]
    else:
        command = [sys.executable, *entry]
    env = dict(os.environ, DATACOMP_MODEL_CONFIGS=MODEL_CONFIGS, PYTHONUNBUFFERED="1")
    log.info("training: %s", " ".join(command))
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise TrainingError(f"open_clip's trainer exited with status {result.returncode}; its log: "
                            f"{os.path.join(train_dir, 'out.log')}")
