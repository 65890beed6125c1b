"""DataComp's evaluation tasks (its ``tasklist.yml``), their main metrics, and the aggregates it reports.

The 38 scored tasks, in DataComp's order, with the metric that scores each
and the groups its ``aggregate_scores.py`` averages: ImageNet (ImageNet 1k),
ImageNet distribution shifts (6), VTAB (13), retrieval (Flickr, MSCOCO,
WinoGAViL) and the average over all 38. Each dataset is read from a local
folder in clip_benchmark's webdataset layout, named as DataComp's
``download_evalsets.py`` saves it: ``wds_{key with / as -}_test`` (the
``fairness/`` prefix dropped); the retrieval sets and WinoGAViL from the
Hugging Face cache it fills (``hf_cache/nlphuji___{name}``).

An evaluation suite of its own (the synthetic one of the embedded default)
lists its tasks in ``eval_suite.json`` with the same fields, each task in one
of these groups, so it goes through the same code and aggregates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..core import hf_arrow

GROUPS = ("imagenet", "imagenet_dist_shifts", "vtab", "retrieval")
GROUP_TITLES = {"imagenet": "ImageNet", "imagenet_dist_shifts": "ImageNet dist. shifts", "vtab": "VTAB",
                "retrieval": "Retrieval", "average": "Average over 38"}


@dataclass(frozen=True)
class EvalTask:
    key: str  # DataComp's task key, the first field of each eval_results.jsonl line
    name: str  # its dataset name, the second
    kind: str  # zeroshot_classification | retrieval | wilds | fairness | winogavil
    main_metric: str
    groups: tuple[str, ...] = ()
    classes: int = 0
    size: int = 0
    folder: str = ""  # the dataset's folder under the evaluation data dir
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self) | {"groups": list(self.groups)}


def _folder(key: str) -> str:
    if key.startswith(("retrieval/", "misc/")):  # download_evalsets.py keeps these in the Hugging Face cache
        return hf_arrow.dataset_dir("nlphuji/" + key.split("/", 1)[1])
    return f"wds_{key.removeprefix('fairness/').replace('/', '-')}_test"


def _task(key, name, main="acc1", classes=0, size=0, groups=(), kind="zeroshot_classification",
          worst=()) -> EvalTask:
    """`worst`: (metric name, per-sample measure "acc" or "acc_top5", column of the sample's .npy metadata)
    for each worst-group metric, the minimum over the groups that have samples (DataComp's WILDS and
    fairness evaluators)."""
    return EvalTask(key, name, kind, main, tuple(groups), classes, size, _folder(key),
                    {"worst": [list(w) for w in worst]} if worst else {})


_SHIFT = ("imagenet_dist_shifts",)
_VTAB = ("vtab",)
_RET = ("retrieval",)
MPCR = "mean_per_class_recall"

DATACOMP_TASKS: tuple[EvalTask, ...] = (
    _task("vtab/caltech101", "Caltech-101", MPCR, 102, 6085, _VTAB),
    _task("cifar10", "CIFAR-10", classes=10, size=10000),
    _task("vtab/cifar100", "CIFAR-100", classes=100, size=10000, groups=_VTAB),
    _task("vtab/clevr_count_all", "CLEVR Counts", classes=8, size=15000, groups=_VTAB),
    _task("vtab/clevr_closest_object_distance", "CLEVR Distance", classes=6, size=15000, groups=_VTAB),
    _task("country211", "Country211", classes=211, size=21100),
    _task("vtab/dtd", "Describable Textures", classes=47, size=1880, groups=_VTAB),
    _task("vtab/eurosat", "EuroSAT", classes=10, size=5400, groups=_VTAB),
    _task("fgvc_aircraft", "FGVC Aircraft", MPCR, 100, 3333),
    _task("food101", "Food-101", classes=101, size=25250),
    _task("gtsrb", "GTSRB", classes=43, size=12630),
    _task("imagenet1k", "ImageNet 1k", classes=1000, size=50000, groups=("imagenet",)),
    _task("imagenet_sketch", "ImageNet Sketch", classes=1000, size=50889, groups=_SHIFT),
    _task("imagenetv2", "ImageNet v2", classes=1000, size=10000, groups=_SHIFT),
    _task("imagenet-a", "ImageNet-A", classes=200, size=7500, groups=_SHIFT),
    _task("imagenet-o", "ImageNet-O", classes=200, size=2000, groups=_SHIFT),
    _task("imagenet-r", "ImageNet-R", classes=200, size=30000, groups=_SHIFT),
    _task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", classes=4, size=711, groups=_VTAB),
    _task("mnist", "MNIST", classes=10, size=10000),
    _task("objectnet", "ObjectNet", classes=113, size=18574, groups=_SHIFT),
    _task("vtab/flowers", "Oxford Flowers-102", MPCR, 102, 6149, _VTAB),
    _task("vtab/pets", "Oxford-IIIT Pet", MPCR, 37, 3669, _VTAB),
    _task("voc2007", "Pascal VOC 2007", classes=20, size=14976),
    _task("vtab/pcam", "PatchCamelyon", classes=2, size=32768, groups=_VTAB),
    _task("renderedsst2", "Rendered SST2", classes=2, size=1821),
    _task("vtab/resisc45", "RESISC45", classes=45, size=6300, groups=_VTAB),
    _task("cars", "Stanford Cars", classes=196, size=8041),
    _task("stl10", "STL-10", classes=10, size=8000),
    _task("sun397", "SUN397", classes=397, size=108754, groups=_VTAB),
    _task("vtab/svhn", "SVHN", classes=10, size=26032, groups=_VTAB),
    _task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", "mean_recall@1", size=1000, groups=_RET,
          kind="retrieval"),
    _task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", "mean_recall@1", size=5000,
          groups=_RET, kind="retrieval"),
    _task("misc/winogavil", "WinoGAViL", "jaccard_score_10-12", size=3563, groups=_RET, kind="winogavil"),
    # metadata columns, as WILDS and DataComp order them: iWildCam (location, sequence, ...), Camelyon17
    # (hospital, slide, y), FMoW (region, year, y), Dollar Street (income_ds, income_meta, region), GeoDE
    # (region, country)
    _task("wilds/iwildcam", "iWildCam", "F1-macro_all", 182, 42791, kind="wilds"),
    _task("wilds/camelyon17", "Camelyon17", classes=2, size=85054, kind="wilds", worst=[("acc_wg", "acc", 1)]),
    _task("wilds/fmow", "FMoW", "acc_worst_region", 62, 22108, kind="wilds",
          worst=[("acc_worst_region", "acc", 0), ("acc_worst_year", "acc", 1)]),
    _task("fairness/dollar_street", "Dollar Street", "acc_top5_wg", 58, 3503, kind="fairness",
          worst=[("acc_top5_wg", "acc_top5", 0)]),
    _task("fairness/geode", "GeoDE", "acc_wg", 40, 12488, kind="fairness", worst=[("acc_wg", "acc", 0)]),
)
assert len(DATACOMP_TASKS) == 38


def tasks_from_suite(suite: dict, suite_dir: str) -> tuple[EvalTask, ...]:
    """An evaluation suite's own task list (``eval_suite.json``: key, name, kind, main_metric, groups, folder)."""
    out = []
    for t in suite["tasks"]:
        unknown = set(t.get("groups", ())) - set(GROUPS)
        if unknown:
            raise ValueError(f"{suite_dir}/eval_suite.json: task {t['key']}: unknown groups {sorted(unknown)}")
        out.append(EvalTask(t["key"], t["name"], t["kind"], t["main_metric"], tuple(t.get("groups", ())),
                            int(t.get("classes", 0)), int(t.get("size", 0)), t["folder"]))
    return tuple(out)


def aggregate(tasks: tuple[EvalTask, ...], scores: dict[str, float]) -> dict[str, dict]:
    """DataComp's aggregates over the tasks' main metrics (`scores`: task key -> main metric).

    Each aggregate is the plain mean over its group's tasks, as ``aggregate_scores.py`` computes it, with
    how many of the group's tasks were scored; a group with missing tasks is marked partial, not padded.
    """
    out = {}
    for group in (*GROUPS, "average"):
        members = [t for t in tasks if group == "average" or group in t.groups]
        present = [scores[t.key] for t in members if scores.get(t.key) is not None]
        out[group] = {"score": sum(present) / len(present) if present else None, "tasks": len(present),
                      "of": len(members), "partial": len(present) < len(members)}
    return out
