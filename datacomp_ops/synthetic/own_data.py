"""An example dataset of "your own" for the import DAG's defaults: webdataset shards as img2dataset writes them.

Rendered shapes captioned by what they show, a few captioned wrongly (the
noise CLIP-score filtering removes), and one sample without a caption (a
counted skip of the import's scan). No URLs: the import gives each sample
``{shard}#{key}`` in the url column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embedded.images import COLORS, SHAPES, encode, render_shape, seed_of


def write_own_data(out_dir: str | Path, n_shards: int = 2, per_shard: int = 40, mismatched: float = 0.2) -> list[str]:
    """The example shards under `out_dir`; returns their paths."""
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    colors, paths = list(COLORS), []
    for s in range(n_shards):
        path = out / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as tar:
            for i in range(per_shard):
                n = s * per_shard + i
                color, shape = colors[n % len(colors)], SHAPES[(n // len(colors)) % len(SHAPES)]
                said_color, said_shape = color, shape
                if rng.random() < mismatched:  # a caption about something else
                    said_color = colors[(colors.index(color) + 1) % len(colors)]
                    said_shape = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
                sample = {"__key__": f"{n:06d}", "jpg": encode(render_shape(color, shape, seed_of("own", n)))}
                if n != 3:  # one sample without a caption
                    sample["txt"] = f"a photo of a {said_color} {said_shape}"
                tar.write(sample)
        paths.append(str(path))
    return paths
