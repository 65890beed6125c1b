"""Zero-shot evaluation of a trained CLIP on DataComp's tasks, written as DataComp writes it.

``run_evaluation`` reads a training run's checkpoint, evaluates every task of
the registry (DataComp's 38, or an evaluation suite's own list) whose dataset
is present in the evaluation data dir, and writes into the run's folder:

- ``eval_results.jsonl``: one line per task, DataComp's format
  (``{"key", "dataset", "metrics": {..., "main_metric"}}``), readable by its
  ``aggregate_scores.py``; tasks already there are not evaluated again.
- ``eval_summary.json``: the aggregates (ImageNet, distribution shifts, VTAB,
  retrieval, average), and every task that was not scored with the reason
  (its dataset missing, or a metric this evaluator does not compute): a
  missing task is reported, never counted as zero.

Zero-shot classification follows clip_benchmark as DataComp runs it: one
classifier weight per class, the normalised mean of the normalised text
embeddings of the task's templates; top-1 and top-5 accuracy (top-5 from five
classes on) and the mean per-class recall. Retrieval: recall@k of the images
for each caption and of the captions for each image, ``mean_recall@1`` their
mean. WinoGAViL as DataComp's ``wino_eval.py``: for each cue ("A cue" / "An
cue"), the k candidate images most similar to it, k the number of true
associations, scored by the Jaccard index with the true ones, averaged by
candidate count (5, 6, 10, 12; the main metric over 10-12).

A dataset is read from clip_benchmark's webdataset folders (``{folder}/test/*.tar``)
or, for the sets DataComp keeps in the Hugging Face cache (retrieval,
WinoGAViL), from that cache's Arrow files (``hf_arrow``).
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np

from ..core import hf_arrow, storage
from ..core.config import ConfigError, PlatformConfig
from ..core.shard_io import decode_image
from ..core.stats import StageStats
from . import tasks as eval_tasks
from .tasks import EvalTask

log = logging.getLogger(__name__)

STAGE = "evaluate"
RESULTS = "eval_results.jsonl"
SUMMARY = "eval_summary.json"
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


def registry(sets_dir: str) -> tuple[EvalTask, ...]:
    """The tasks to evaluate: the suite's own list when the data dir has one (eval_suite.json), else
    DataComp's 38."""
    suite = storage.join(sets_dir, "eval_suite.json")
    if storage.exists(suite):
        return eval_tasks.tasks_from_suite(storage.read_json(suite), sets_dir)
    return eval_tasks.DATACOMP_TASKS


# -- the model ------------------------------------------------------------------


class Model:
    """A CLIP checkpoint with its preprocessing and tokenizer (open_clip), loaded with weights only."""

    def __init__(self, name: str, checkpoint: str, device: str = "auto"):
        import open_clip
        import torch

        from ..training.train import MODEL_CONFIGS

        open_clip.add_model_config(MODEL_CONFIGS)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        if checkpoint:  # else a model whose weights come with its name (open_clip's local-dir:PATH)
            with storage.open_file(checkpoint) as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.name, self.checkpoint = name, checkpoint

    def images(self, pictures: list, batch_size: int) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(pictures), batch_size):
                batch = torch.stack([self.preprocess(p) for p in pictures[i:i + batch_size]]).to(self.device)
                out.append(self.model.encode_image(batch, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def texts(self, captions: list[str], batch_size: int) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(captions), batch_size):
                tokens = self.tokenizer(captions[i:i + batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# -- datasets in clip_benchmark's webdataset layout -----------------------------------


def _samples(folder: str) -> list[dict]:
    """The test split's samples: {key, image (PIL), cls?, captions?}, in shard order."""
    tars = storage.ls(storage.join(folder, "test"), "*.tar")
    if not tars:
        raise FileNotFoundError(f"{folder}/test: no .tar shards")
    import tarfile

    samples: dict[str, dict] = {}
    for tar_url in tars:
        with storage.open_file(tar_url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                data = tar.extractfile(member).read()
                sample = samples.setdefault(f"{tar_url}/{key}", {"key": key})
                if ext.lower() in IMAGE_EXTS:
                    sample["image"] = decode_image(data)
                elif ext == "cls":
                    sample["cls"] = int(data.decode().strip())
                elif ext == "npy":  # WILDS and fairness sets: the sample's metadata vector
                    sample["meta"] = np.load(io.BytesIO(data), allow_pickle=False)
                elif ext == "txt":
                    sample["captions"] = [c for c in data.decode().splitlines() if c.strip()]
    return [s for s in samples.values() if "image" in s]


def _has_shards(folder: str) -> bool:
    return storage.exists(storage.join(folder, "test"))


def available(folder: str) -> bool:
    """Whether a dataset is there: webdataset test shards, or a cached test split."""
    if _has_shards(folder):
        return True
    return folder.rstrip("/").rsplit("/", 2)[-2] == hf_arrow.HF_CACHE and bool(hf_arrow.split_files(folder))


def _cached_retrieval(folder: str) -> list[dict]:
    """A retrieval set from the Hugging Face cache: DataComp's evaluator reads its ``image`` and ``caption``
    (a list of captions, or one) columns."""
    table = hf_arrow.read_table(hf_arrow.split_files(folder), ["image", "caption"])
    out = []
    for row, (cell, captions) in enumerate(zip(table.column("image").to_pylist(),
                                               table.column("caption").to_pylist())):
        captions = [captions] if isinstance(captions, str) else list(captions or [])
        out.append({"key": str(row), "image": decode_image(hf_arrow.image_bytes(cell, folder)), "captions": captions})
    return out


def _lines(url: str) -> list[str]:
    with storage.open_file(url, "rb") as f:
        return [line.strip() for line in f.read().decode().splitlines() if line.strip()]


# -- metrics ------------------------------------------------------------------


def classification_metrics(logits: np.ndarray, target: np.ndarray) -> dict:
    """acc1, acc5 (from 5 classes on, else None) and the mean per-class recall (sklearn's balanced
    accuracy: the mean over the classes present of the fraction of each predicted right)."""
    pred = logits.argmax(axis=1)
    metrics = {"acc1": float((pred == target).mean())}
    if logits.shape[1] >= 5:
        top5 = np.argpartition(-logits, 4, axis=1)[:, :5]
        metrics["acc5"] = float((top5 == target[:, None]).any(axis=1).mean())
    else:
        metrics["acc5"] = None
    classes = np.unique(target)
    metrics["mean_per_class_recall"] = float(np.mean([(pred[target == c] == c).mean() for c in classes]))
    return metrics


def macro_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """WILDS' F1-macro_all: sklearn's f1_score(average="macro", labels=the classes present in the target);
    a class only predicted counts against the true ones, not as a class of its own."""
    labels = np.unique(target)
    scores = []
    for c in labels:
        tp = float(((pred == c) & (target == c)).sum())
        denominator = float((pred == c).sum() + (target == c).sum())
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def worst_group(per_sample: np.ndarray, groups: np.ndarray) -> tuple[float, dict[int, tuple[float, int]]]:
    """The lowest mean of `per_sample` over the groups that have samples, and every group's (mean, count)."""
    groups = groups.astype(np.int64)
    by_group = {int(g): (float(per_sample[groups == g].mean()), int((groups == g).sum())) for g in np.unique(groups)}
    return min(mean for mean, _ in by_group.values()), by_group


def group_metrics(task: EvalTask, logits: np.ndarray, target: np.ndarray, meta: np.ndarray | None) -> dict:
    """The task's worst-group metrics from each sample's metadata vector (its .npy), as DataComp's WILDS and
    fairness evaluators compute them; none without metadata."""
    out = {}
    if meta is None:
        return out
    measures = {"acc": logits.argmax(axis=1) == target,
                "acc_top5": (np.argpartition(-logits, min(4, logits.shape[1] - 1), axis=1)[:, :5]
                             == target[:, None]).any(axis=1)}
    for name, measure, column in task.extra.get("worst", []):
        worst, by_group = worst_group(measures[measure].astype(float), meta[:, column])
        out[name] = worst
        for group, (mean, count) in by_group.items():
            out[f"{measure}_{column}:{group}"], out[f"count_{column}:{group}"] = mean, count
    return out


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray, text_image: np.ndarray,
                      ks=(1, 5, 10)) -> dict:
    """clip_benchmark's: image_retrieval_recall@k (for each caption, its image among the top k images),
    text_retrieval_recall@k (for each image, one of its captions among the top k captions)."""
    scores = text_features @ image_features.T  # captions x images
    metrics = {}
    for k in ks:
        top_images = np.argsort(-scores, axis=1)[:, :k]
        metrics[f"image_retrieval_recall@{k}"] = float((top_images == text_image[:, None]).any(axis=1).mean())
        top_texts = np.argsort(-scores.T, axis=1)[:, :k]
        metrics[f"text_retrieval_recall@{k}"] = float((text_image[top_texts] == np.arange(len(image_features))[:, None])
                                                      .any(axis=1).mean())
    metrics["mean_recall@1"] = 0.5 * (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"])
    return metrics


# -- tasks --------------------------------------------------------------------


def jaccard(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's binary jaccard_score: |true and predicted| / |true or predicted|, 0 when both are empty."""
    union = int((y_true | y_pred).sum())
    return int((y_true & y_pred).sum()) / union if union else 0.0


def winogavil_prompt(cue: str) -> str:
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"


def winogavil_metrics(scores: list[float], sizes: list[int]) -> dict:
    """DataComp's: the mean Jaccard index overall and by candidate count (None where no instance has it)."""
    scores_a, sizes_a = np.asarray(scores, float), np.asarray(sizes)

    def mean(mask):
        return float(scores_a[mask].mean()) if mask.any() else None

    return {"avg_jaccard_score": mean(np.ones(len(scores_a), bool)),
            **{f"jaccard_score_{n}": mean(sizes_a == n) for n in (5, 6, 10, 12)},
            "jaccard_score_5-6": mean(sizes_a <= 6), "jaccard_score_10-12": mean(sizes_a >= 10)}


def evaluate_winogavil(model: Model, folder: str, batch_size: int) -> dict:
    """Each instance: the cue's prompt against its candidate images; the top k (k = the number of true
    associations, ranked as DataComp ranks them, ``argsort(similarity)[-k:]``) are the prediction."""
    table = hf_arrow.read_table(hf_arrow.split_files(folder), ["cue", "candidates", "associations",
                                                                "candidate_images"])
    rows = table.to_pylist()
    cues = model.texts([winogavil_prompt(r["cue"]) for r in rows], batch_size)
    scores, sizes = [], []
    for row, cue in zip(rows, cues):
        images = model.images([decode_image(hf_arrow.image_bytes(c, folder)) for c in row["candidate_images"]],
                              batch_size)
        y_true = np.isin(row["candidates"], row["associations"])
        n_assoc = int(y_true.sum())
        top = np.argsort(images @ cue)[-n_assoc:]
        y_pred = np.isin(np.arange(len(images)), top)
        scores.append(jaccard(y_true, y_pred))
        sizes.append(len(images))
    return winogavil_metrics(scores, sizes)


def zero_shot_classifier(model: Model, classnames: list[str], templates: list[str], batch_size: int) -> np.ndarray:
    weights = []
    for name in classnames:
        emb = model.texts([t.replace("{c}", name) for t in templates], batch_size)
        mean = emb.mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
    return np.stack(weights, axis=1)


def evaluate_task(model: Model, task: EvalTask, folder: str, batch_size: int) -> dict:
    """The task's metrics, with ``main_metric`` (None when this evaluator does not compute it)."""
    if task.kind == "winogavil":
        metrics = evaluate_winogavil(model, folder, batch_size)
        metrics["main_metric"] = metrics.get(task.main_metric)
        return metrics
    samples = _samples(folder) if _has_shards(folder) else _cached_retrieval(folder)
    if task.kind in ("zeroshot_classification", "wilds", "fairness"):
        classnames = _lines(storage.join(folder, "classnames.txt"))
        templates = _lines(storage.join(folder, "zeroshot_classification_templates.txt"))
        weights = zero_shot_classifier(model, classnames, templates, batch_size)
        images = model.images([s["image"] for s in samples], batch_size)
        target = np.array([s["cls"] for s in samples])
        logits = 100.0 * images @ weights
        metrics = classification_metrics(logits, target)
        if task.kind == "wilds":
            metrics["F1-macro_all"] = macro_f1(logits.argmax(axis=1), target)
        meta = np.stack([s["meta"] for s in samples]) if samples and all("meta" in s for s in samples) else None
        metrics |= group_metrics(task, logits, target, meta)
    elif task.kind == "retrieval":
        images = model.images([s["image"] for s in samples], batch_size)
        captions = [(i, c) for i, s in enumerate(samples) for c in s.get("captions", [])]
        texts = model.texts([c for _, c in captions], batch_size)
        metrics = retrieval_metrics(images, texts, np.array([i for i, _ in captions]))
    else:
        raise NotImplementedError(task.kind)
    metrics["main_metric"] = metrics.get(task.main_metric)
    return metrics


def _existing(url: str) -> dict[str, dict]:
    if not storage.exists(url):
        return {}
    out = {}
    for line in storage.read_bytes(url).decode().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["key"]] = row
    return out


def run_evaluation(run_dir: str, config: PlatformConfig, model_name: str = "", checkpoint: str = "") -> StageStats:
    """Evaluate a training run's final checkpoint (or the model given: an open_clip name with a checkpoint,
    or ``local-dir:PATH``) on the registry's tasks; results go into `run_dir`."""
    stats = StageStats(STAGE)
    start = time.perf_counter()
    if not model_name:
        trained = storage.join(run_dir, "training.json")
        if not storage.exists(trained):
            raise ConfigError(f"{run_dir}: no training.json; train the run first (or name a model and checkpoint)")
        record = storage.read_json(trained)
        model_name, checkpoint = record["model"], record["checkpoint"]
    sets_dir = config.eval_sets_dir
    tasks = registry(sets_dir)
    results_url = storage.join(run_dir, RESULTS)
    results = _existing(results_url)
    model = None
    not_scored = {}
    for task in tasks:
        if task.key in results:
            stats.add("already_evaluated")
            continue
        folder = storage.join(sets_dir, task.folder)
        if not available(folder):
            not_scored[task.key] = f"missing: no dataset at {folder}"
            stats.add("missing")
            continue
        model = model or Model(model_name, checkpoint, config.evaluation.device)
        t0 = time.perf_counter()
        metrics = evaluate_task(model, task, folder, config.evaluation.batch_size)
        if metrics["main_metric"] is None:
            not_scored[task.key] = f"not computed: {task.main_metric} needs each sample's metadata (.npy)"
            stats.add("not_computed")
        else:
            stats.add("evaluated")
        results[task.key] = {"key": task.key, "dataset": task.name, "metrics": metrics}
        # written after every task: a retried evaluation goes on from the next one
        storage.write_bytes(results_url, "".join(json.dumps(results[t.key]) + "\n" for t in tasks
                                                 if t.key in results).encode())
        log.info("%s: %s = %s (%.1f s)", task.name, task.main_metric, metrics["main_metric"], time.perf_counter() - t0)
    scores = {k: r["metrics"].get("main_metric") for k, r in results.items()}
    summary = {"model": model_name, "checkpoint": checkpoint, "sets_dir": sets_dir,
               "suite": "datacomp" if tasks is eval_tasks.DATACOMP_TASKS else "own",
               "aggregates": eval_tasks.aggregate(tasks, scores),
               "tasks": {t.key: {"name": t.name, "main_metric": t.main_metric, "score": scores.get(t.key),
                                 "groups": list(t.groups), "not_scored": not_scored.get(t.key)} for t in tasks},
               "seconds": round(time.perf_counter() - start, 1)}
    storage.write_json(storage.join(run_dir, SUMMARY), summary)
    stats.seconds = time.perf_counter() - start
    stats.outputs.append(results_url)
    return stats
