"""Before the metadata pass: every model loadable, the embedded stand-ins trained, the eval index built.

Runs once per build, ahead of the mapped metadata tasks, so that a missing or
wrong model file fails one task in seconds with a message naming its config
key, instead of every mapped task after hours of downloading; and so that the
mapped tasks never race to train the same stand-in or index the same sets.
"""

from __future__ import annotations

import logging
import time

from ..core.config import PlatformConfig
from ..core.stats import StageStats
from .dedup import index_dir, run_eval_index
from .models import choose_models, resolve_device

log = logging.getLogger(__name__)

STAGE = "prepare_models"


def run_prepare_models(config: PlatformConfig) -> StageStats:
    from ..embedded.clip_models import ensure_trained, stand_ins_dir
    from .metadata import PassModels

    start = time.monotonic()
    stats = StageStats(STAGE)
    choices = choose_models(config)
    if any(c.embedded for role, c in choices.items() if role.startswith("clip_")):
        for name, report in ensure_trained(stand_ins_dir(config), config.metadata.embedded_clip_steps).items():
            log.info("embedded CLIP stand-in %s: %s", name, report)
        stats.add("embedded_clip_models", 2)
    device = resolve_device(config.metadata.device)
    where = index_dir(config, choices["dedup"])
    index_stats = run_eval_index(config.eval_sets_dir, where, config, choices["dedup"], device)
    stats.add("eval_images", index_stats["eval_images"])
    models = PassModels.load(config, device)  # every model once: fail here, not in the mapped tasks
    stats.add("models_loaded", len(models.choices))
    stats.outputs = [where]
    stats.seconds = time.monotonic() - start
    return stats
