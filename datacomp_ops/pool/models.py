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


@dataclass(frozen=True)
class ThresholdOwner:
    """The model that reads a threshold: its role, its name in messages, its keys (the threshold first)
    and the model key that selects it ("" for the embedded default of its role)."""

    role: str
    name: str
    keys: tuple[str, ...]
    selected_by: str = ""


# Each threshold key belongs to one model (config.Thresholds), by the kind of ModelChoice that reads it.
# choose_models takes each model's threshold from here, so the key a model reads is written once.
THRESHOLDS = {
    "detoxify": ThresholdOwner("nsfw_text", "Detoxify's", ("thresholds.nsfw_text",), "models.detoxify"),
    "profanity_check": ThresholdOwner("nsfw_text", "alt-profanity-check's", ("thresholds.nsfw_text_profanity_check",)),
    "mlp": ThresholdOwner("nsfw_image", "DataComp's NSFW MLP's", ("thresholds.nsfw_image",), "models.nsfw_image_mlp"),
    "nudenet": ThresholdOwner("nsfw_image", "nudenet's",
                              ("thresholds.nsfw_image_nudenet", "thresholds.nsfw_image_nudenet_min_skin")),
    "scrfd": ThresholdOwner("faces", "SCRFD's", ("thresholds.face_detection",), "models.scrfd"),
    "isc": ThresholdOwner("dedup", "the ISC21 descriptor's", ("thresholds.eval_dedup_similarity",),
                          "models.dedup_descriptor"),
    "thumbnail": ThresholdOwner("dedup", "the thumbnail descriptor's", ("thresholds.eval_dedup_similarity_thumbnail",)),
}


def _value(config: PlatformConfig, key: str) -> float:
    return getattr(config.thresholds, key.split(".", 1)[1])


def _threshold(config: PlatformConfig, kind: str) -> float:
    """The threshold the model of `kind` runs with."""
    return _value(config, THRESHOLDS[kind].keys[0])


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
    m = config.models
    out: dict[str, ModelChoice] = {}

    if m.detoxify:
        if not m.detoxify_hf_dir:
            raise ConfigError("models.detoxify_hf_dir is not set: Detoxify needs the config and tokenizer "
                              "of xlm-roberta-base in a local directory (save_pretrained of both)")
        out["nsfw_text"] = ModelChoice("nsfw_text", "detoxify", f"detoxify {_version('detoxify')} "
                                       f"{os.path.basename(m.detoxify)}", config.model_path("detoxify"),
                                       arch=config.model_path("detoxify_hf_dir"), threshold=_threshold(config, "detoxify"))
    else:
        out["nsfw_text"] = ModelChoice("nsfw_text", "profanity_check",
                                       f"alt-profanity-check {_version('alt-profanity-check')}",
                                       embedded=True, threshold=_threshold(config, "profanity_check"))

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
                                        config.model_path("nsfw_image_mlp"), threshold=_threshold(config, "mlp"))
    else:
        out["nsfw_image"] = ModelChoice("nsfw_image", "nudenet", f"nudenet {_version('nudenet')} 320n.onnx",
                                        embedded=True, threshold=_threshold(config, "nudenet"),
                                        min_skin=_value(config, THRESHOLDS["nudenet"].keys[1]))

    if m.scrfd:
        out["faces"] = ModelChoice("faces", "scrfd", f"scrfd {os.path.basename(m.scrfd)} "
                                   f"(insightface {_version('insightface')})", config.model_path("scrfd"),
                                   threshold=_threshold(config, "scrfd"))
    else:
        out["faces"] = ModelChoice("faces", "cascade", "opencv haarcascade_frontalface_default "
                                   f"(opencv {_version('opencv-python-headless')})", embedded=True)

    if m.dedup_descriptor:
        out["dedup"] = ModelChoice("dedup", "isc", f"isc21 {os.path.basename(m.dedup_descriptor)}",
                                   config.model_path("dedup_descriptor"), arch=m.dedup_backbone,
                                   threshold=_threshold(config, "isc"))
    else:
        out["dedup"] = ModelChoice("dedup", "thumbnail", "thumbnail-16px-rgb", embedded=True,
                                   threshold=_threshold(config, "thumbnail"))
    return {role: out[role] for role in ROLES}


def _embedded_clip(config: PlatformConfig, role: str) -> ModelChoice:
    from ..embedded.clip_models import stand_ins_dir

    name = EMBEDDED_CLIP[role]
    stands_for = {"clip_b32": "ViT-B/32", "clip_l14": "ViT-L/14"}[role]
    return ModelChoice(role, "open_clip", f"{name} (fixture trained on synthetic shapes, stands in for {stands_for})",
                       os.path.join(stand_ins_dir(config), name), arch=name, embedded=True)


def threshold_key(choice: ModelChoice) -> str:
    """The config key of the threshold `choice` runs with ("" for a model without one)."""
    owner = THRESHOLDS.get(choice.kind)
    return owner.keys[0] if owner else ""


def running_threshold_key(config: PlatformConfig, role: str) -> str:
    """The threshold key of the model that fills `role` on this config: what a form's per-role threshold
    field sets. A role whose model takes no threshold is an error naming the model."""
    choice = choose_models(config)[role]
    key = threshold_key(choice)
    if not key:
        select = next((o.selected_by for o in THRESHOLDS.values() if o.role == role and o.selected_by), "")
        raise ConfigError(f"{role} runs {choice.name} on this config, which takes no threshold"
                          + (f": give {select} to run the model that does" if select else ""))
    return key


def check_thresholds_apply(config: PlatformConfig) -> dict[str, ModelChoice]:
    """The models of the run, after checking that every threshold set away from its default belongs to a
    model that will run: one that does not would be accepted and ignored. The error names the key, the
    model it belongs to, and the model of that role that runs with its own key."""
    from ..core.config import default

    choices = choose_models(config)
    running = {key for c in choices.values() for key in getattr(THRESHOLDS.get(c.kind), "keys", ())}
    for owner in THRESHOLDS.values():
        for key in owner.keys:
            value = _value(config, key)
            if key in running or value == default(key):
                continue
            ran = choices[owner.role]
            fix = f"set {threshold_key(ran)} for it" if threshold_key(ran) else "it takes no threshold"
            select = f", or give {owner.selected_by} to run the model the key is for" if owner.selected_by else ""
            raise ConfigError(f"{key} = {value} is {owner.name} threshold, but {owner.role} runs {ran.name} on "
                              f"this config: {fix}{select}")
    return choices


def resolve_device(requested: str) -> str:
    """`auto` is CUDA when a GPU is there; call inside the task body only (it initialises CUDA)."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("metadata.device is cuda but no GPU is visible to this process")
    return requested
