"""The image-based baseline's targets on the embedded default: the synthetic suite's training split.

DataComp embeds ImageNet-1k's training images with OpenAI's L/14. Without
ImageNet, the synthetic evaluation suite's classification task has a
training split of its own (``wds_synthetic_shapes/train``); its images are
embedded with the pool's L/14 model (the embedded stand-in, or the L/14 the
config names), so targets and pool features share one space.
"""

from __future__ import annotations

import io
import logging
import tarfile

from ..core import storage
from ..core.config import ConfigError, PlatformConfig

log = logging.getLogger(__name__)

TRAIN_SPLIT = "wds_synthetic_shapes/train"


def target_images(config: PlatformConfig) -> list:
    """The suite's training images (PIL, RGB); filtering.image_based embeds them with the pool's L/14."""
    from PIL import Image

    tars = storage.ls(storage.join(config.eval_sets_dir, TRAIN_SPLIT), "*.tar")
    if not tars:
        raise ConfigError(f"filtering.imagenet1k_embeddings is not set and {config.eval_sets_dir}/{TRAIN_SPLIT} "
                          f"holds no shards: give L/14 embeddings of ImageNet-1k's training images")
    images = []
    for tar in tars:
        with storage.open_file(tar) as f, tarfile.open(fileobj=f) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".jpg"):
                    images.append(Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB"))
    log.info("image-based targets: %d training images of the synthetic suite", len(images))
    return images
