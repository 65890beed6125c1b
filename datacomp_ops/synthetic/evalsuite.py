"""A zero-shot evaluation suite matching the synthetic crawl, in clip_benchmark's layout.

    {out}/wds_synthetic_shapes/classnames.txt
    {out}/wds_synthetic_shapes/zeroshot_classification_templates.txt
    {out}/wds_synthetic_shapes/test/nshards.txt, 0.tar   ({key}.jpg, {key}.cls)
    {out}/wds_synthetic_shapes/train/nshards.txt, 0.tar  the ImageNet-like training split (image-based filter)
    {out}/wds_synthetic_retrieval/test/nshards.txt, 0.tar ({key}.jpg, {key}.txt)
    {out}/eval_suite.json                                  the tasks, as DataComp lists them

The same images (``images.eval_image``) appear in the crawl as near-duplicates,
which the eval-set dedup stage must remove.
"""

from __future__ import annotations

import json
from pathlib import Path

from .images import CLASSES, encode, eval_image, train_image

N_CLASSIFICATION, N_RETRIEVAL = 240, 96
N_TRAIN_PER_CLASS = 10
EVAL_IMAGES = N_CLASSIFICATION + N_RETRIEVAL  # eval_image(0 .. EVAL_IMAGES-1)
TEMPLATES = ("a photo of a {c}.", "a {c}.", "an image of a {c}.", "a drawing of a {c}.")


def _write_shard(path: Path, samples: list[dict]) -> None:
    import webdataset as wds  # imports torch: keep it out of the crawl generator's imports

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    (path.parent / "nshards.txt").write_text("1\n")


def generate_eval_suite(out_dir: str | Path, n_classification: int = N_CLASSIFICATION, n_retrieval: int = N_RETRIEVAL) -> dict:
    out = Path(out_dir)
    cls_dir = out / "wds_synthetic_shapes"
    cls_dir.mkdir(parents=True, exist_ok=True)
    (cls_dir / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (cls_dir / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    samples = []
    for i in range(n_classification):
        img, label = eval_image(i)
        samples.append({"__key__": f"s{i:06d}", "jpg": encode(img, quality=95), "cls": str(label).encode()})
    _write_shard(cls_dir / "test" / "0.tar", samples)
    samples = []
    for i in range(N_TRAIN_PER_CLASS * len(CLASSES)):
        img, label = train_image(i)
        samples.append({"__key__": f"t{i:06d}", "jpg": encode(img, quality=95), "cls": str(label).encode()})
    _write_shard(cls_dir / "train" / "0.tar", samples)

    ret_dir = out / "wds_synthetic_retrieval"
    samples = []
    for j in range(n_retrieval):
        i = n_classification + j
        img, label = eval_image(i)
        captions = [t.format(c=CLASSES[label]) for t in TEMPLATES[:2]]
        samples.append({"__key__": f"s{i:06d}", "jpg": encode(img, quality=95), "txt": "\n".join(captions).encode()})
    _write_shard(ret_dir / "test" / "0.tar", samples)

    suite = {
        "tasks": [
            {"name": "synthetic_shapes", "type": "zeroshot_classification", "path": str(cls_dir),
             "size": n_classification, "classes": len(CLASSES), "chance": 1 / len(CLASSES)},
            {"name": "synthetic_retrieval", "type": "zeroshot_retrieval", "path": str(ret_dir),
             "size": n_retrieval},
        ],
        # evaluation image indices, for the eval-set dedup stage
        "eval_indices": [0, n_classification + n_retrieval],
    }
    (out / "eval_suite.json").write_text(json.dumps(suite, indent=2))
    return suite
