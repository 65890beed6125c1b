"""A zero-shot evaluation suite matching the synthetic crawl: DataComp's task groups in miniature,
in clip_benchmark's layout.

    {out}/wds_synthetic_{task}/classnames.txt, zeroshot_classification_templates.txt
    {out}/wds_synthetic_{task}/test/nshards.txt, 0.tar      ({key}.jpg, {key}.cls)
    {out}/wds_synthetic_shapes/train/nshards.txt, 0.tar     the ImageNet-like training split (image-based filter)
    {out}/wds_synthetic_retrieval/test/nshards.txt, 0.tar   ({key}.jpg, {key}.txt), dataset_type.txt
    {out}/hf_cache/synthetic___association/default/0.0.0/synthetic/association-test.arrow
                                                            WinoGAViL-like, in the Hugging Face cache layout
                                                            DataComp's WinoGAViL comes in
    {out}/eval_suite.json                                   the tasks, as DataComp's registry lists its own

Tasks, each with the aggregate it stands in for:

- ``shapes`` (ImageNet): 12 classes, colour x shape.
- ``shapes_sketch``, ``shapes_background``, ``shapes_scale``, ``shapes_rendering`` (ImageNet
  distribution shifts): the same classes as outlines, on busy backgrounds, tiny, pixelated.
- ``count``, ``position``, ``texture`` (VTAB): how many shapes (1-8, as CLEVR Counts has 8 classes), which
  side (4), which fill pattern (8 of DTD's textures).
- ``retrieval`` (retrieval): images with two captions each.
- ``association`` (retrieval, as WinoGAViL): a cue word (a colour or a shape) and
  5, 6, 10 or 12 candidate images, the ones that share the cue's attribute its
  associations.

Every image has a global index (keys ``s{index:06d}``); the crawl plants
near-duplicates of any of them (``/img/evaldup/{index}/...``), which the
eval-set dedup stage must remove, whichever task they come from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import hf_arrow
from ..embedded.images import (
    CLASSES,
    COLORS,
    COUNTS,
    POSITIONS,
    SHAPES,
    TEXTURES,
    encode,
    eval_image,
    render_shape,
    seed_of,
    train_image,
    variant_image,
)

# Sizes that measure a model, not the draw of its test set: at 48 images a task's accuracy moved by
# +-0.06 with the draw alone (binomial), and the 12-instance association task by +-0.15; these keep
# a chance-level task within about +-0.02 (README "The miniature")
N_CLASSIFICATION, N_RETRIEVAL, N_VARIANT = 1200, 480, 480
N_TRAIN_PER_CLASS = 10
TEMPLATES = ("a photo of a {c}.", "a {c}.", "an image of a {c}.", "a drawing of a {c}.")
SHIFTS = ("shapes_sketch", "shapes_background", "shapes_scale", "shapes_rendering")
VTAB_LIKE = {"count": (COUNTS, ("a photo of {c} shapes.", "{c} shapes.", "an image with {c} shapes.")),
             "position": (POSITIONS, ("a shape on the {c}.", "a photo of a shape at the {c}.", "the {c} side.")),
             "texture": (TEXTURES, ("a {c} shape.", "a photo of a {c} shape.", "a shape with a {c} fill."))}

# (task, first global index, images): the shapes task and retrieval keep the indices they always had
LAYOUT: list[tuple[str, int, int]] = [("shapes", 0, N_CLASSIFICATION), ("retrieval", N_CLASSIFICATION, N_RETRIEVAL)]
for _task in (*SHIFTS, *VTAB_LIKE):
    LAYOUT.append((_task, LAYOUT[-1][1] + LAYOUT[-1][2], N_VARIANT))
# WinoGAViL's candidate counts, each N_ASSOCIATION_PER_SIZE times
ASSOCIATION_SIZES = (5, 6, 10, 12)
N_ASSOCIATION_PER_SIZE = 30
ASSOCIATION_INSTANCES = [ASSOCIATION_SIZES[i % 4] for i in range(4 * N_ASSOCIATION_PER_SIZE)]
LAYOUT.append(("association", LAYOUT[-1][1] + LAYOUT[-1][2], sum(ASSOCIATION_INSTANCES)))
EVAL_IMAGES = LAYOUT[-1][1] + LAYOUT[-1][2]  # image_at(0 .. EVAL_IMAGES-1)


def folder(task: str) -> str:
    """The task's folder under the suite: webdataset folders, the association task in the Hugging Face cache."""
    return hf_arrow.dataset_dir("synthetic/association") if task == "association" else f"wds_synthetic_{task}"


def association(instance: int) -> tuple[str, list[str]]:
    """Instance `instance` of the association task: its cue (a colour or a shape) and its candidates' classes,
    the first 2 to half of them sharing the cue's attribute (the associations), shuffled."""
    size = ASSOCIATION_INSTANCES[instance]
    rng = np.random.default_rng(seed_of("association", instance))
    by_color = instance % 2 == 0
    cue = str(rng.choice(list(COLORS) if by_color else list(SHAPES)))
    n_assoc = int(rng.integers(2, size // 2 + 1))
    matching = [c for c in CLASSES if c.split(" ")[0 if by_color else 1] == cue]
    others = [c for c in CLASSES if c not in matching]
    classes = [str(rng.choice(matching)) for _ in range(n_assoc)] + \
        [str(rng.choice(others)) for _ in range(size - n_assoc)]
    order = rng.permutation(size)
    return cue, [classes[i] for i in order]


def _association_slot(local: int) -> tuple[int, int]:
    for instance, size in enumerate(ASSOCIATION_INSTANCES):
        if local < size:
            return instance, local
        local -= size
    raise IndexError(local)


def dedup_key(index: int) -> str:
    """How the eval-set dedup names evaluation image `index`: ``{dataset folder}/{sample key}``."""
    task, local = _locate(index)
    if task == "association":  # a cached split's images are named {row}/{position}
        return "{}/{}/{}".format(folder(task), *_association_slot(local))
    return f"{folder(task)}/s{index:06d}"


def _locate(index: int) -> tuple[str, int]:
    for task, first, count in LAYOUT:
        if first <= index < first + count:
            return task, index - first
    raise IndexError(f"evaluation image {index} of {EVAL_IMAGES}")


def class_at(index: int) -> str:
    """The class name of evaluation image `index` (global), without drawing it."""
    task, local = _locate(index)
    if task in ("shapes", "retrieval"):
        return CLASSES[index % len(CLASSES)]
    if task == "association":
        instance, position = _association_slot(local)
        return association(instance)[1][position]
    names = VTAB_LIKE[task][0] if task in VTAB_LIKE else CLASSES
    return names[local % len(names)]


def image_at(index: int) -> tuple[object, str, str]:
    """Evaluation image `index` (global): (PIL image, its task, its class name)."""
    task, local = _locate(index)
    name = class_at(index)
    if task == "association":  # unique like the other evaluation images: a small shape on a scene of its own
        color, shape = name.split(" ")
        img = render_shape(color, shape, seed_of("association", index), size=128, extent=(0.3, 0.5),
                           scene=seed_of("association-scene", index))
    elif task in ("shapes", "retrieval"):
        img = eval_image(index)[0]
    else:
        img = variant_image(task.removeprefix("shapes_"), local)[0]
    return img, task, name


def _write_shard(path: Path, samples: list[dict]) -> None:
    import webdataset as wds  # imports torch: keep it out of the crawl generator's imports

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    (path.parent / "nshards.txt").write_text("1\n")


def _classification(out: Path, task: str, first: int, n: int, classnames, templates) -> None:
    base = out / folder(task)
    base.mkdir(parents=True, exist_ok=True)
    (base / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (base / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    samples = []
    for i in range(first, first + n):
        img, _, name = image_at(i)
        samples.append({"__key__": f"s{i:06d}", "jpg": encode(img, quality=95),
                        "cls": str(list(classnames).index(name)).encode()})
    _write_shard(base / "test" / "0.tar", samples)


def _association_set(out: Path, first: int) -> None:
    """The association task as a cached ``datasets`` split with WinoGAViL's columns."""
    import pyarrow as pa

    rows, index = [], first
    for instance, size in enumerate(ASSOCIATION_INSTANCES):
        cue, classes = association(instance)
        attribute = 0 if cue in COLORS else 1
        names = [f"s{i:06d}" for i in range(index, index + size)]
        associations = [n for n, c in zip(names, classes) if c.split(" ")[attribute] == cue]
        rows.append({"cue": cue, "candidates": names, "num_associations": len(associations),
                     "associations": associations,
                     "candidate_images": [{"bytes": encode(image_at(i)[0], quality=95), "path": None}
                                          for i in range(index, index + size)]})
        index += size
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("cue", pa.string()), ("candidates", pa.list_(pa.string())),
                        ("num_associations", pa.int64()), ("associations", pa.list_(pa.string())),
                        ("candidate_images", pa.list_(image))])
    target = out / folder("association") / "default" / "0.0.0" / "synthetic" / "association-test.arrow"
    target.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema))


def generate_eval_suite(out_dir: str | Path, n_classification: int = N_CLASSIFICATION, n_retrieval: int = N_RETRIEVAL,
                        n_variant: int = N_VARIANT) -> dict:
    out = Path(out_dir)
    sizes = {"shapes": min(n_classification, N_CLASSIFICATION), "retrieval": min(n_retrieval, N_RETRIEVAL)}
    tasks = []
    for task, first, count in LAYOUT:
        n = sizes.get(task, min(n_variant, count))
        if task == "association":
            _association_set(out, first)
            tasks.append({"key": "synthetic/association", "name": "Synthetic association", "kind": "winogavil",
                          "main_metric": "jaccard_score_10-12", "groups": ["retrieval"],
                          "size": len(ASSOCIATION_INSTANCES), "folder": folder(task)})
            continue
        if task == "retrieval":
            samples = []
            for i in range(first, first + n):
                img, _, name = image_at(i)
                captions = [t.format(c=name) for t in TEMPLATES[:2]]
                samples.append({"__key__": f"s{i:06d}", "jpg": encode(img, quality=95),
                                "txt": "\n".join(captions).encode()})
            _write_shard(out / folder(task) / "test" / "0.tar", samples)
            (out / folder(task) / "dataset_type.txt").write_text("retrieval\n")  # as clip_benchmark marks them
            tasks.append({"key": "synthetic/retrieval", "name": "Synthetic retrieval", "kind": "retrieval",
                          "main_metric": "mean_recall@1", "groups": ["retrieval"], "size": n,
                          "folder": folder(task)})
            continue
        classnames, templates = VTAB_LIKE.get(task, (CLASSES, TEMPLATES))
        _classification(out, task, first, n, classnames, templates)
        group = "imagenet" if task == "shapes" else "vtab" if task in VTAB_LIKE else "imagenet_dist_shifts"
        tasks.append({"key": f"synthetic/{task}", "name": f"Synthetic {task.replace('_', ' ')}",
                      "kind": "zeroshot_classification", "main_metric": "acc1", "groups": [group],
                      "size": n, "classes": len(classnames), "folder": folder(task)})
    train = []
    for i in range(N_TRAIN_PER_CLASS * len(CLASSES)):
        img, label = train_image(i)
        train.append({"__key__": f"t{i:06d}", "jpg": encode(img, quality=95), "cls": str(label).encode()})
    _write_shard(out / folder("shapes") / "train" / "0.tar", train)
    suite = {"tasks": tasks, "eval_images": EVAL_IMAGES,
             "note": "synthetic miniature of DataComp's task groups; scores are not comparable to DataComp's"}
    (out / "eval_suite.json").write_text(json.dumps(suite, indent=2))
    return suite
