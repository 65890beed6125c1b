"""Zero-shot evaluation as DataComp scores it: the metrics on hand-made cases, the registry and its
aggregates, a run end to end on the synthetic suite, missing datasets reported, and the leaderboard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from datacomp_ops.core.config import load_config
from datacomp_ops.evaluation import leaderboard
from datacomp_ops.evaluation import tasks as eval_tasks
from datacomp_ops.evaluation import zero_shot as evaluation


def test_classification_metrics_by_hand():
    # 3 classes, 6 samples: class 0 has 4 samples (3 right), class 1 one (right), class 2 one (wrong)
    target = np.array([0, 0, 0, 0, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0])
    logits = np.eye(3)[pred]
    m = evaluation.classification_metrics(logits, target)
    assert m["acc1"] == pytest.approx(4 / 6) and m["acc5"] is None  # fewer than 5 classes: no top-5
    assert m["mean_per_class_recall"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    logits = np.tile(np.arange(6.0), (2, 1))  # class 5 first, then 4, 3, 2, 1
    m = evaluation.classification_metrics(logits, np.array([1, 0]))
    assert m["acc1"] == 0 and m["acc5"] == 0.5
    assert evaluation.macro_f1(np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx((2 / 3 + 2 / 3) / 2)
    # WILDS counts only the classes of the target: class 2, only predicted, has no F1 of its own
    assert evaluation.macro_f1(np.array([0, 2, 1]), np.array([0, 1, 1])) == pytest.approx((1 + 2 / 3) / 2)


def test_worst_group_metrics_from_each_samples_metadata():
    """FMoW's acc_worst_region and acc_worst_year, Dollar Street's top-5 worst income group, by hand."""
    fmow = next(t for t in eval_tasks.DATACOMP_TASKS if t.key == "wilds/fmow")
    target = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 0, 0, 0, 2])  # wrong: samples 2 and 4
    logits = np.eye(6)[pred]
    meta = np.array([[0, 10], [0, 11], [1, 10], [1, 11], [5, 11], [5, 10]])  # region, year
    m = evaluation.group_metrics(fmow, logits, target, meta)
    # regions 0: 2/2, 1: 1/2, 5 ("Other", counted as DataComp counts it): 1/2
    assert m["acc_worst_region"] == 0.5 and m["count_0:5"] == 2
    assert m["acc_worst_year"] == pytest.approx(2 / 3)  # year 10: 2 of 3 right; year 11: 2 of 3
    street = next(t for t in eval_tasks.DATACOMP_TASKS if t.key == "fairness/dollar_street")
    logits = np.tile(np.arange(8.0), (4, 1))  # top 5: classes 7..3
    m = evaluation.group_metrics(street, logits, np.array([7, 3, 0, 1]), np.array([[0], [0], [1], [1]]))
    assert m["acc_top5_wg"] == 0.0 and m["acc_top5_0:0"] == 1.0
    assert evaluation.group_metrics(street, logits, np.array([7, 3, 0, 1]), None) == {}


def test_retrieval_metrics_by_hand():
    images = np.eye(3)
    # captions 0, 1 belong to image 0; caption 2 to image 1; caption 3 to image 2 but points at image 1
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2]])
    m = evaluation.retrieval_metrics(images, texts, np.array([0, 0, 1, 2]), ks=(1,))
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)  # caption 3 finds image 1
    # image 2's best caption is caption 3 (0.2), its own: right; images 0 and 1 find their own
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)
    assert m["mean_recall@1"] == pytest.approx(0.5 * (3 / 4 + 1))


def test_datacomps_registry_and_aggregates():
    tasks = eval_tasks.DATACOMP_TASKS
    groups = {g: [t.name for t in tasks if g in t.groups] for g in eval_tasks.GROUPS}
    assert groups["imagenet"] == ["ImageNet 1k"]
    assert sorted(groups["imagenet_dist_shifts"]) == sorted(
        ["ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"])
    assert len(groups["vtab"]) == 13 and sorted(groups["retrieval"]) == ["Flickr", "MSCOCO", "WinoGAViL"]
    main = {t.key: t.main_metric for t in tasks}
    assert main["vtab/pets"] == "mean_per_class_recall" and main["wilds/fmow"] == "acc_worst_region"
    assert next(t for t in tasks if t.key == "vtab/cifar100").folder == "wds_vtab-cifar100_test"
    assert next(t for t in tasks if t.key == "fairness/geode").folder == "wds_geode_test"
    assert next(t for t in tasks if t.key == "misc/winogavil").folder == "hf_cache/nlphuji___winogavil"
    scores = {t.key: 0.5 for t in tasks}
    scores["imagenet1k"] = 0.8
    agg = eval_tasks.aggregate(tasks, scores)
    assert agg["imagenet"]["score"] == 0.8 and agg["vtab"]["score"] == 0.5 and not agg["average"]["partial"]
    assert agg["average"]["score"] == pytest.approx((0.5 * 37 + 0.8) / 38)
    del scores["vtab/svhn"]
    agg = eval_tasks.aggregate(tasks, scores)
    assert agg["vtab"] == {"score": 0.5, "tasks": 12, "of": 13, "partial": True}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    out = tmp_path_factory.mktemp("suite")
    generate_eval_suite(out, n_classification=96, n_retrieval=24, n_variant=24)
    return str(out)


@pytest.mark.slow
def test_the_embedded_clip_scores_above_chance_and_results_are_datacomps_format(tmp_path, suite, embedded_models):
    """The metadata pass's B/32 stand-in (trained on shapes) through the evaluation: the shapes task well
    above chance; every line as DataComp's evaluate.py writes it; a second run evaluates nothing."""
    config = load_config(overrides={"storage_root": str(tmp_path / "root"), "evaluation.sets_dir": suite})
    run = tmp_path / "run"
    model = f"local-dir:{os.path.join(embedded_models, 'embedded-clip-b32')}"
    stats = evaluation.run_evaluation(str(run), config, model_name=model)
    lines = [json.loads(line) for line in (run / "eval_results.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == [t.key for t in evaluation.registry(suite)]
    assert all(set(line) == {"key", "dataset", "metrics"} and "main_metric" in line["metrics"] for line in lines)
    by_key = {line["key"]: line["metrics"] for line in lines}
    assert by_key["synthetic/shapes"]["acc1"] > 3 / 12  # chance is 1/12
    assert by_key["synthetic/retrieval"]["mean_recall@1"] > 2 / 24
    summary = json.loads((run / "eval_summary.json").read_text())
    assert summary["aggregates"]["imagenet"]["score"] == by_key["synthetic/shapes"]["acc1"]
    assert summary["aggregates"]["average"]["tasks"] == len(lines) == stats["evaluated"]
    again = evaluation.run_evaluation(str(run), config, model_name=model)
    assert again["already_evaluated"] == len(lines) and again["evaluated"] == 0


def datacomp_winogavil(model, preprocess, tokenizer, folder: str) -> dict:
    """DataComp's wino_eval.py loop, on the split read with pyarrow: one instance at a time, its prompt,
    torch similarities, argsort's top k and sklearn's jaccard_score."""
    import glob
    import io

    import pyarrow as pa
    import torch
    from PIL import Image
    from sklearn.metrics import jaccard_score

    (path,) = glob.glob(f"{folder}/*/*/*/*-test.arrow")
    rows = pa.ipc.open_stream(pa.memory_map(path)).read_all().to_pylist()
    scores, groups = [], []
    for row in rows:
        images = torch.stack([preprocess(Image.open(io.BytesIO(c["bytes"])).convert("RGB"))
                              for c in row["candidate_images"]])
        cue = row["cue"].lower()
        text = tokenizer([f"An {cue}" if cue[0] in "aeiou" else f"A {cue}"])
        y_true = np.isin(row["candidates"], row["associations"])
        with torch.no_grad():
            logits = (model.encode_text(text, normalize=True) @ model.encode_image(images, normalize=True).T)
        top = np.argsort(logits.squeeze(0).numpy())[-y_true.sum():]
        scores.append(jaccard_score(y_true, np.isin(np.arange(len(images)), top)))
        groups.append(len(images))
    scores, groups = np.array(scores), np.array(groups)
    return {"avg_jaccard_score": scores.mean(), "jaccard_score_5": scores[groups == 5].mean(),
            "jaccard_score_12": scores[groups == 12].mean(), "jaccard_score_10-12": scores[groups >= 10].mean()}


@pytest.mark.slow
def test_a_trained_tiny_checkpoint_scores_as_clip_benchmark_scores_it(tmp_path, suite):
    """Independent check: clip_benchmark (what DataComp evaluates with) on the same local folders and the
    same checkpoint gives the same accuracy, top-5, mean per-class recall and retrieval recalls; DataComp's
    WinoGAViL loop the same Jaccard scores."""
    import open_clip
    import torch
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.metrics import zeroshot_retrieval as zsr
    from sklearn.metrics import balanced_accuracy_score
    from test_training import make_run

    from datacomp_ops.training import train as training

    spec = make_run(tmp_path, n=384)
    config = load_config(overrides={"storage_root": str(tmp_path / "root"), "evaluation.sets_dir": suite,
                                    "training.samples_seen": 1024, "training.num_checkpoints": 1,
                                    "training.workers": 1})
    training.run_training(spec, config)
    evaluation.run_evaluation(spec.run_dir, config)
    ours = {json.loads(x)["key"]: json.loads(x)["metrics"]
            for x in open(os.path.join(spec.run_dir, "eval_results.jsonl")).read().splitlines()}
    record = json.load(open(os.path.join(spec.run_dir, "training.json")))
    open_clip.add_model_config(training.MODEL_CONFIGS)
    model, _, preprocess = open_clip.create_model_and_transforms(record["model"])
    state = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer(record["model"])
    for task in evaluation.registry(suite):
        folder = os.path.join(suite, task.folder)
        if task.kind == "winogavil":
            theirs = datacomp_winogavil(model, preprocess, tokenizer, folder)
            for key, value in theirs.items():
                assert ours[task.key][key] == pytest.approx(value, abs=1e-9), (task.key, key, theirs)
            continue
        dataset = build_wds_dataset(task.key, preprocess, split="test", data_dir=folder)
        if task.kind == "retrieval":
            loader = torch.utils.data.DataLoader(dataset.batched(16, collation_fn=lambda b: (
                torch.stack([x for x, _ in b]), [t for _, t in b])), batch_size=None)
            theirs = zsr.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5])
            # each caption ranks the images: compared exactly. Ranking the captions for an image is not:
            # the suite's captions repeat (two images of a class share them), so equal scores tie and
            # which caption wins depends on the sort (numpy's here, torch.topk's there)
            for k in (1, 5):
                key = f"image_retrieval_recall@{k}"
                assert ours[task.key][key] == pytest.approx(theirs[key], abs=1e-6), (task.key, key)
            continue
        loader = torch.utils.data.DataLoader(dataset.batched(32), batch_size=None)
        # clip_benchmark's classifier and logits (its zsc.evaluate's own accuracy() calls float() on a
        # 1-element array, which numpy 2 refuses), scored here with torch and sklearn
        classifier = zsc.zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False)
        logits, target = zsc.run_classification(model, classifier, loader, "cpu", amp=False)
        theirs = {"acc1": float((logits.argmax(1) == target).float().mean()),
                  "mean_per_class_recall": balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy())}
        if logits.shape[1] >= 5:
            theirs["acc5"] = float((logits.topk(5, 1).indices == target[:, None]).any(1).float().mean())
        for key, value in theirs.items():
            assert ours[task.key][key] == pytest.approx(value, abs=1e-6), (task.key, key, theirs)


@pytest.mark.slow
def test_missing_datasets_are_reported_not_scored(tmp_path, suite, embedded_models):
    import shutil

    partial = tmp_path / "suite"
    shutil.copytree(suite, partial)
    shutil.rmtree(partial / "wds_synthetic_count")
    config = load_config(overrides={"storage_root": str(tmp_path / "root"), "evaluation.sets_dir": str(partial)})
    model = f"local-dir:{os.path.join(embedded_models, 'embedded-clip-b32')}"
    stats = evaluation.run_evaluation(str(tmp_path / "run"), config, model_name=model)
    summary = json.loads((tmp_path / "run" / "eval_summary.json").read_text())
    assert stats["missing"] == 1 and summary["tasks"]["synthetic/count"]["not_scored"].startswith("missing")
    assert summary["tasks"]["synthetic/count"]["score"] is None
    assert summary["aggregates"]["vtab"]["tasks"] == 2 and summary["aggregates"]["vtab"]["partial"]
    # DataComp's own registry on a folder that holds one of its datasets (FMoW's layout: images, labels and
    # each sample's metadata vector, region first): that one scored by its worst region, 37 reported missing
    import io

    import webdataset as wds

    from datacomp_ops.embedded.images import CLASSES, encode, eval_image

    fmow = tmp_path / "datacomp" / "wds_wilds-fmow_test"
    (fmow / "test").mkdir(parents=True)
    (fmow / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (fmow / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    with wds.TarWriter(str(fmow / "test" / "0.tar")) as tar:
        for i in range(36):
            img, label = eval_image(i)
            buf = io.BytesIO()
            np.save(buf, np.array([i % 3, i % 2, label]))
            tar.write({"__key__": f"s{i:07d}", "jpg": encode(img), "cls": str(label).encode(), "npy": buf.getvalue()})
    datacomp = load_config(overrides={"storage_root": str(tmp_path / "root"),
                                      "evaluation.sets_dir": str(tmp_path / "datacomp")})
    stats = evaluation.run_evaluation(str(tmp_path / "run2"), datacomp, model_name=model)
    summary = json.loads((tmp_path / "run2" / "eval_summary.json").read_text())
    assert stats["missing"] == 37 and stats["evaluated"] == 1
    (line,) = [json.loads(x) for x in (tmp_path / "run2" / "eval_results.jsonl").read_text().splitlines()]
    assert line["key"] == "wilds/fmow" and line["dataset"] == "FMoW"
    per_region = [line["metrics"][f"acc_0:{r}"] for r in range(3)]
    assert line["metrics"]["main_metric"] == line["metrics"]["acc_worst_region"] == min(per_region)
    assert summary["aggregates"]["average"] == {"score": min(per_region), "tasks": 1, "of": 38, "partial": True}
    assert summary["tasks"]["imagenet1k"]["not_scored"].startswith("missing")

    # Flickr and WinoGAViL where DataComp's download_evalsets.py leaves them, in the Hugging Face cache; the
    # Flickr images as the loading script leaves them, files under downloads/extracted named by absolute
    # path, and the cache moved since (the path is found again under the cache's own downloads/)
    import pyarrow as pa

    cache = tmp_path / "datacomp" / "hf_cache"
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    extracted = cache / "downloads" / "extracted" / "abc123" / "flickr"
    extracted.mkdir(parents=True)
    flickr = []
    for i in range(12):
        img, label = eval_image(i)
        (extracted / f"{i}.jpg").write_bytes(encode(img))
        flickr.append({"image": {"bytes": None, "path": f"/elsewhere/hf_cache/downloads/extracted/abc123/flickr/{i}.jpg"},
                       "caption": [f"a photo of a {CLASSES[label]}.", f"a {CLASSES[label]}."], "img_id": str(i)})
    write_arrow(cache / "nlphuji___flickr_1k_test_image_text_retrieval" / "TEST" / "0.0.0" / "f00d"
                / "flickr_1k_test_image_text_retrieval-test.arrow", flickr,
                pa.schema([("image", image), ("caption", pa.list_(pa.string())), ("img_id", pa.string())]))
    wino = [{"cue": CLASSES[k].split(" ")[1], "candidates": [f"c{i}" for i in range(n)],
             "associations": [f"c{i}" for i in range(n) if eval_image(k + i)[1] % 3 == k % 3],
             "candidate_images": [{"bytes": encode(eval_image(k + i)[0]), "path": None} for i in range(n)]}
            for k, n in ((0, 5), (1, 6), (2, 10), (3, 12))]
    write_arrow(cache / "nlphuji___winogavil" / "TEST" / "0.0.0" / "beef" / "winogavil-test.arrow", wino,
                pa.schema([("cue", pa.string()), ("candidates", pa.list_(pa.string())),
                           ("associations", pa.list_(pa.string())), ("candidate_images", pa.list_(image))]))
    stats = evaluation.run_evaluation(str(tmp_path / "run3"), datacomp, model_name=model)
    assert stats["missing"] == 35 and stats["evaluated"] == 3
    lines = {x["key"]: x["metrics"] for x in map(json.loads, (tmp_path / "run3" / "eval_results.jsonl").read_text()
                                                  .splitlines())}
    assert lines["retrieval/flickr_1k_test_image_text_retrieval"]["image_retrieval_recall@1"] > 1 / 12
    wino_metrics = lines["misc/winogavil"]
    assert wino_metrics["main_metric"] == wino_metrics["jaccard_score_10-12"] == pytest.approx(
        (wino_metrics["jaccard_score_10"] + wino_metrics["jaccard_score_12"]) / 2)
    summary = json.loads((tmp_path / "run3" / "eval_summary.json").read_text())
    assert summary["aggregates"]["retrieval"]["tasks"] == 2 and summary["aggregates"]["retrieval"]["partial"]


def write_arrow(path, rows: list[dict], schema) -> None:
    """A split as `datasets` caches it: one Arrow stream file."""
    import pyarrow as pa

    path.parent.mkdir(parents=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema))


def test_winogavil_scoring_by_hand():
    """DataComp's: k = the true associations' count, the top k by similarity, Jaccard with the truth."""
    y_true = np.array([True, False, True, False, False])
    assert evaluation.jaccard(y_true, np.array([True, True, False, False, False])) == pytest.approx(1 / 3)
    assert evaluation.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    assert evaluation.winogavil_prompt("Owl") == "An owl" and evaluation.winogavil_prompt("moon") == "A moon"
    m = evaluation.winogavil_metrics([1.0, 0.5, 0.0, 0.25], [5, 6, 10, 12])
    assert m["jaccard_score_5-6"] == 0.75 and m["jaccard_score_10-12"] == 0.125 and m["jaccard_score_12"] == 0.25
    assert m["avg_jaccard_score"] == pytest.approx(1.75 / 4)
    assert evaluation.winogavil_metrics([1.0], [5])["jaccard_score_10"] is None


def test_leaderboard_from_results_alone(tmp_path):
    root = tmp_path / "root"
    for baseline, avg, size in (("no_filter", 0.30, 10000), ("clip_score_l14_30", 0.42, 3000)):
        run = root / "runs" / "v0001" / "tiny" / baseline
        run.mkdir(parents=True)
        agg = {g: {"score": avg, "tasks": 1, "of": 1, "partial": False} for g in (*eval_tasks.GROUPS, "average")}
        (run / "eval_summary.json").write_text(json.dumps({"aggregates": agg, "suite": "own", "model": "m"}))
        (run / "training.json").write_text(json.dumps({"samples_seen": 25600}))
        (run / "lineage.json").write_text(json.dumps({"subset_samples_in_shards": size}))
    imported = root / "datasets" / "cc3m" / "runs" / "v0001" / "tiny" / "no_filter"
    imported.mkdir(parents=True)
    agg = {g: {"score": None, "tasks": 0, "of": 1, "partial": True} for g in (*eval_tasks.GROUPS, "average")}
    (imported / "eval_summary.json").write_text(json.dumps({"aggregates": agg}))
    paths = leaderboard.write_leaderboard(str(root))
    rows = leaderboard.collect(str(root))
    assert [(r["dataset"], r["baseline"]) for r in rows] == [
        ("cc3m", "no_filter"), ("commonpool", "clip_score_l14_30"), ("commonpool", "no_filter")]
    assert rows[1]["dataset_size"] == 3000 and rows[1]["samples_seen"] == 25600 and rows[1]["average"] == 0.42
    assert {r["seed"] for r in rows} == {0} and [r["seeds"] for r in leaderboard.aggregate(rows)] == [1, 1, 1]
    import pyarrow.parquet as pq

    assert pq.read_table(paths["parquet"]).num_rows == 3
    page = open(paths["html"]).read()
    assert page.count("<tr>") == 4 and "clip_score_l14_30" in page and page.count("<svg") == 2
    assert "0.420" in page and "–" in page  # the unscored run shows no number


def test_leaderboard_gives_each_subset_the_mean_and_spread_of_its_seeds(tmp_path):
    """Two baselines, one trained with three seeds and one with one: a row each, each score the mean over
    the seeds ± their sample standard deviation (computed here with statistics.stdev), the runs kept apart."""
    import statistics

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from datacomp_ops.core.layout import run_dir

    root = tmp_path / "root"
    scores = {("clip_score_l14_30", 0): 0.40, ("clip_score_l14_30", 1): 0.43, ("clip_score_l14_30", 2): 0.47,
              ("no_filter", 0): 0.30}
    groups = (*eval_tasks.GROUPS, "average")
    offset = {g: i / 100 for i, g in enumerate(groups)}  # every score column its own values
    for (baseline, seed), avg in scores.items():
        run = Path(run_dir(str(root), "v0001", "tiny", baseline, seed))
        run.mkdir(parents=True)
        agg = {g: {"score": avg + offset[g], "tasks": 2, "of": 2, "partial": False} for g in groups}
        (run / "eval_summary.json").write_text(json.dumps({"aggregates": agg, "suite": "own", "model": "m"}))
        # seed 2's training.json predates seeds: its seed comes from the folder's name
        record = {"samples_seen": 25600} | ({"seed": seed} if seed != 2 else {})
        (run / "training.json").write_text(json.dumps(record))
        (run / "lineage.json").write_text(json.dumps({"subset_samples_in_shards": 3000 if seed != 0 or
                                                      baseline != "no_filter" else 10000}))
    assert sorted(p.name for p in (root / "runs" / "v0001" / "tiny").iterdir()) == [
        "clip_score_l14_30", "clip_score_l14_30+seed1", "clip_score_l14_30+seed2", "no_filter"]
    runs = leaderboard.collect(str(root))
    assert [(r["baseline"], r["seed"]) for r in runs] == [
        ("clip_score_l14_30", 0), ("clip_score_l14_30", 1), ("clip_score_l14_30", 2), ("no_filter", 0)]
    rows = leaderboard.aggregate(runs)
    assert [(r["baseline"], r["seeds"]) for r in rows] == [("clip_score_l14_30", 3), ("no_filter", 1)]
    best, single = rows
    for g in groups:
        values = [scores["clip_score_l14_30", s] + offset[g] for s in (0, 1, 2)]
        assert best[g] == pytest.approx(sum(values) / 3)
        assert best[f"{g}_std"] == pytest.approx(statistics.stdev(values))
        assert single[g] == pytest.approx(0.30 + offset[g]) and single[f"{g}_std"] is None
    assert best["average_std"] == pytest.approx(0.035118845842842)  # by hand: sqrt(((.0333)^2+(.0033)^2+(.0367)^2)/2)
    assert best["dataset_size"] == 3000 and best["samples_seen"] == 25600 and best["tasks_scored"] == 2

    paths = leaderboard.write_leaderboard(str(root))
    table = pq.read_table(paths["parquet"])
    assert table.num_rows == 2 and table.column("seeds").to_pylist() == [3, 1]
    assert {"average", "average_std", "imagenet_std", "retrieval_std", "seeds"} <= set(table.column_names)
    assert "run_dir" not in table.column_names and "seed" not in table.column_names
    assert table.column("average").to_pylist() == pytest.approx([best["average"], 0.30 + offset["average"]])
    csv = pacsv.read_csv(paths["csv"])
    assert csv.column_names == table.column_names and csv.num_rows == 2
    per_run = pq.read_table(paths["runs_parquet"]).to_pylist()
    assert [(r["baseline"], r["seed"]) for r in per_run] == [(r["baseline"], r["seed"]) for r in runs]
    assert per_run[1]["run_dir"].endswith("/clip_score_l14_30+seed1") and per_run[1]["average"] == pytest.approx(0.47)
    page = open(paths["html"]).read()
    assert f"{best['average']:.3f} ± {best['average_std']:.3f}" == "0.473 ± 0.035"
    assert "0.473 ± 0.035</td>" in page and "0.473 ± 0.035</text>" in page  # the table and the bar chart
    assert "<th>Seeds</th>" in page and page.count("<tr>") == 3  # the head and a row per subset
    assert "2 subsets, 4 evaluated runs" in page
    cells = page.split("<tbody>")[1]
    assert "0.340</td>" in cells and "0.340 ±" not in cells  # one seed: the score alone
