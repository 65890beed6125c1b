"""Which model fills each role of the metadata pass, decided from the config alone.

A configured path selects the model DataComp used; an empty one selects the
embedded default for that role, whose weights ship inside an installed package
(alt-profanity-check, nudenet, OpenCV's cascades) or are trained here on a
synthetic set (the CLIP stand-ins). Nothing heavy is imported, so DAG tasks,
the command line and the summary can all ask which model runs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata

from ..core.config import ConfigError, PlatformConfig

ROLES = ("nsfw_text", "nsfw_image", "faces", "dedup", "clip_b32", "clip_l14")

# The embedded CLIP stand-ins: small open_clip towers trained on synthetic
# shapes (synthetic/clip_models.py). Their names say what they stand in for.
EMBEDDED_CLIP = {"clip_b32": "embedded-clip-b32", "clip_l14": "embedded-clip-l14"}
L14_WIDTH = 768  # ViT-L/14's embedding size, the input of DataComp's NSFW MLP
# Each threshold key belongs to one model (config.Thresholds): the kind of model that reads it.
THRESHOLD_KEYS = {
    "detoxify": ("thresholds.nsfw_text",),
    "profanity_check": ("thresholds.nsfw_text_profanity_check",),
    "mlp": ("thresholds.nsfw_image",),
    "nudenet": ("thresholds.nsfw_image_nudenet", "thresholds.nsfw_image_nudenet_min_skin"),
    "scrfd": ("thresholds.face_detection",),
    "isc": ("thresholds.eval_dedup_similarity",),
    "thumbnail": ("thresholds.eval_dedup_similarity_thumbnail",),
}
KIND_NAMES = {"detoxify": "Detoxify's", "profanity_check": "alt-profanity-check's", "mlp": "DataComp's NSFW MLP's",
              "nudenet": "nudenet's", "scrfd": "SCRFD's", "isc": "the ISC21 descriptor's",
              "thumbnail": "the thumbnail descriptor's"}
THRESHOLD_ROLE = {"detoxify": "nsfw_text", "profanity_check": "nsfw_text", "mlp": "nsfw_image",
                  "nudenet": "nsfw_image", "scrfd": "faces", "isc": "dedup", "thumbnail": "dedup"}
# what selects the model that reads a threshold, for the error that names it
SELECTED_BY = {"detoxify": "models.detoxify", "mlp": "models.nsfw_image_mlp", "scrfd": "models.scrfd",
               "isc": "models.dedup_descriptor"}


@dataclass(frozen=True)
class ModelChoice:
    """One role's model: what every output names as the model that ran."""

    role: str
    kind: str  # which loader: detoxify, profanity_check, mlp, nudenet, scrfd, cascade, ...
    name: str
    path: str = ""  # local file or directory; "" for weights inside an installed package
    arch: str = ""
    embedded: bool = False
    threshold: float | None = None
    # nudenet only: images with less than this fraction of skin-toned pixels are scored 0 without it
    min_skin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def choose_models(config: PlatformConfig) -> dict[str, ModelChoice]:
    """The model of every role; a configured path that does not exist is an error naming its key."""
    m, t = config.models, config.thresholds
    out: dict[str, ModelChoice] = {}

    if m.detoxify:
        if not m.detoxify_hf_dir:
            raise ConfigError("models.detoxify_hf_dir is not set: Detoxify needs the config and tokenizer "
                              "of xlm-roberta-base in a local directory (save_pretrained of both)")
        out["nsfw_text"] = ModelChoice("nsfw_text", "detoxify", f"detoxify {_version('detoxify')} "
                                       f"{os.path.basename(m.detoxify)}", config.model_path("detoxify"),
                                       arch=config.model_path("detoxify_hf_dir"), threshold=t.nsfw_text)
    else:
        out["nsfw_text"] = ModelChoice("nsfw_text", "profanity_check",
                                       f"alt-profanity-check {_version('alt-profanity-check')}",
                                       embedded=True, threshold=t.nsfw_text_profanity_check)

    if m.clip_l14:
        out["clip_l14"] = ModelChoice("clip_l14", "open_clip", f"{m.clip_l14_arch} {os.path.basename(m.clip_l14)}",
                                      config.model_path("clip_l14"), arch=m.clip_l14_arch)
    else:
        out["clip_l14"] = _embedded_clip(config, "clip_l14")
    if m.clip_b32:
        out["clip_b32"] = ModelChoice("clip_b32", "open_clip", f"{m.clip_b32_arch} {os.path.basename(m.clip_b32)}",
                                      config.model_path("clip_b32"), arch=m.clip_b32_arch)
    else:
        out["clip_b32"] = _embedded_clip(config, "clip_b32")

    if m.nsfw_image_mlp:
        if out["clip_l14"].embedded:
            raise ConfigError("models.nsfw_image_mlp needs models.clip_l14: DataComp's NSFW classifier "
                              "reads ViT-L/14 image features, not the embedded stand-in's")
        out["nsfw_image"] = ModelChoice("nsfw_image", "mlp", f"datacomp-nsfw-mlp {os.path.basename(m.nsfw_image_mlp)}",
                                        config.model_path("nsfw_image_mlp"), threshold=t.nsfw_image)
    else:
        out["nsfw_image"] = ModelChoice("nsfw_image", "nudenet", f"nudenet {_version('nudenet')} 320n.onnx",
                                        embedded=True, threshold=t.nsfw_image_nudenet,
                                        min_skin=t.nsfw_image_nudenet_min_skin)

    if m.scrfd:
        out["faces"] = ModelChoice("faces", "scrfd", f"scrfd {os.path.basename(m.scrfd)} "
                                   f"(insightface {_version('insightface')})", config.model_path("scrfd"),
                                   threshold=t.face_detection)
    else:
        out["faces"] = ModelChoice("faces", "cascade", "opencv haarcascade_frontalface_default "
                                   f"(opencv {_version('opencv-python-headless')})", embedded=True)

    if m.dedup_descriptor:
        out["dedup"] = ModelChoice("dedup", "isc", f"isc21 {os.path.basename(m.dedup_descriptor)}",
                                   config.model_path("dedup_descriptor"), arch=m.dedup_backbone,
                                   threshold=t.eval_dedup_similarity)
    else:
        out["dedup"] = ModelChoice("dedup", "thumbnail", "thumbnail-16px-rgb", embedded=True,
                                   threshold=t.eval_dedup_similarity_thumbnail)
    return {role: out[role] for role in ROLES}


def _embedded_clip(config: PlatformConfig, role: str) -> ModelChoice:
    from ..embedded.clip_models import stand_ins_dir

    name = EMBEDDED_CLIP[role]
    stands_for = {"clip_b32": "ViT-B/32", "clip_l14": "ViT-L/14"}[role]
    return ModelChoice(role, "open_clip", f"{name} (fixture trained on synthetic shapes, stands in for {stands_for})",
                       os.path.join(stand_ins_dir(config), name), arch=name, embedded=True)


def threshold_key(choice: ModelChoice) -> str:
    """The config key of the threshold `choice` runs with ("" for a model without one)."""
    return THRESHOLD_KEYS.get(choice.kind, ("",))[0]


def running_threshold_key(config: PlatformConfig, role: str) -> str:
    """The threshold key of the model that fills `role` on this config: what a form's per-role threshold
    field sets. A role whose model takes no threshold is an error naming the model."""
    choice = choose_models(config)[role]
    key = threshold_key(choice)
    if not key:
        select = next((SELECTED_BY[k] for k, r in THRESHOLD_ROLE.items() if r == role and k in SELECTED_BY), "")
        raise ConfigError(f"{role} runs {choice.name} on this config, which takes no threshold"
                          + (f": give {select} to run the model that does" if select else ""))
    return key


def check_thresholds_apply(config: PlatformConfig) -> dict[str, ModelChoice]:
    """The models of the run, after checking that every threshold set away from its default belongs to a
    model that will run: one that does not would be accepted and ignored. The error names the key, the
    model it belongs to, and the model of that role that runs with its own key."""
    from ..core.config import default

    choices = choose_models(config)
    running = {key for c in choices.values() for key in THRESHOLD_KEYS.get(c.kind, ())}
    for kind, keys in THRESHOLD_KEYS.items():
        for key in keys:
            value = getattr(config.thresholds, key.split(".", 1)[1])
            if key in running or value == default(key):
                continue
            role = THRESHOLD_ROLE[kind]
            ran = choices[role]
            fix = f"set {threshold_key(ran)} for it" if threshold_key(ran) else "it takes no threshold"
            select = f", or give {SELECTED_BY[kind]} to run the model the key is for" if kind in SELECTED_BY else ""
            raise ConfigError(f"{key} = {value} is {KIND_NAMES[kind]} threshold, but {role} runs {ran.name} on this "
                              f"config: {fix}{select}")
    return choices


def resolve_device(requested: str) -> str:
    """`auto` is CUDA when a GPU is there; call inside the task body only (it initialises CUDA)."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("metadata.device is cuda but no GPU is visible to this process")
    return requested
