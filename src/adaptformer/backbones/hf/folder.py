"""Building an :class:`~.model.HFBackbone` from a local ``transformers`` model folder, with no download.

``hf:<folder>`` names a backbone by its folder (``config.json`` + ``model.safetensors``, what ``save_pretrained``
writes), or by a Hub id already in the local Hugging Face cache (``hf:facebook/dinov2-small``); nothing is fetched
(``local_files_only``). The architecture comes from ``config.json``'s ``model_type`` (one of :data:`ARCHITECTURES`; a
two-tower ``clip`` or ``siglip`` folder gives its vision tower);
the weights from the same folder, or from ``checkpoint`` (another transformers folder of the same architecture, e.g.
one fine-tuned elsewhere). transformers reads the weights (its own key renames of older files included); the keys it
reports are then checked here: nothing may be missing (transformers would initialise it randomly and only warn), and
only the checkpoint's own heads and a two-tower model's text side may be left over (``HEAD_PREFIXES``,
``OTHER_TOWER``; dropped with a log line).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from ...errors import CheckpointError
from ..checkpoints.load import first_line
from .model import ARCHITECTURES, HFArchitecture, HFBackbone
from .names import HF_PREFIX

logger = logging.getLogger(__name__)

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# what a checkpoint may hold beyond the model: its task heads, and a two-tower CLIP / SigLIP's text side
HEAD_PREFIXES = ("pooler.", "classifier.", "fc_norm.", "distillation_classifier.", "cls_classifier.")
OTHER_TOWER = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "logit_bias")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes in preprocessor_config.json


def read_config(where: str) -> Any:
    """The transformers config of folder (or cached Hub id) ``where``, checked to be a supported architecture; of a
    two-tower CLIP or SigLIP, its vision tower's."""
    folder = Path(where)
    if folder.is_file() or (folder.exists() and not (folder / "config.json").is_file()):
        raise FileNotFoundError(f"hf:{where}: no config.json (expected a transformers model folder: save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"hf:{where}: no such folder, and not a Hub model in the local Hugging Face cache (nothing is downloaded; "
            "save it with save_pretrained and give its folder)"
        ) from e
    except (ValueError, KeyError) as e:  # a model_type transformers itself does not know
        raise CheckpointError(f"hf:{where}: config.json: {first_line(e)}; supported: {', '.join(ARCHITECTURES)}") from e
    if config.model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"hf:{where}: model_type {config.model_type!r} is not a supported transformers vision backbone; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    tower = ARCHITECTURES[config.model_type].model_class.config_class
    return config if isinstance(config, tower) else tower.from_pretrained(where, local_files_only=True)


def _weights_folder(where: str) -> str:
    """``where`` itself, checked to hold weights when it is a local folder (a Hub id's cache is transformers')."""
    folder = Path(where)
    if folder.is_dir() and not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise CheckpointError(f"{folder}: no weights; expected one of {', '.join(WEIGHTS_FILES)} (save_pretrained)")
    return where


def _override(config: Any, kwargs: dict[str, Any]) -> None:
    """Model kwargs as config values: ``drop_path_rate`` (0 is accepted by every model: timm's default) and any
    attribute the config has (``num_frames``, ``image_size``, dropouts, ...); ValueError naming any other."""
    for key, value in kwargs.items():
        if key == "drop_path_rate" and not hasattr(config, key):
            if value:
                raise ValueError(f"drop_path_rate {value}: the transformers {config.model_type} has no drop path")
            continue
        if not hasattr(config, key):
            raise ValueError(f"model kwarg {key!r} is not a field of the transformers {config.model_type} config")
        setattr(config, key, value)


def _pretrained_cfg(name: str, where: str, config: Any, architecture: HFArchitecture) -> dict[str, Any]:
    """timm's pretrained config of the model: the input size of its config, the normalisation of the folder's
    ``preprocessor_config.json`` (ImageNet's when it has none), the clip length of a video model."""
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    cfg: dict[str, Any] = {"architecture": name, "input_size": (3, size, size), "mean": IMAGENET_MEAN,
                           "std": IMAGENET_STD, "interpolation": "bicubic", "crop_pct": 0.875,
                           "classifier": "classifier"}  # fmt: skip
    processor = Path(where) / "preprocessor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text())
        cfg["mean"] = tuple(data.get("image_mean", cfg["mean"]))
        cfg["std"] = tuple(data.get("image_std", cfg["std"]))
        cfg["interpolation"] = _RESAMPLE.get(data.get("resample"), cfg["interpolation"])
        cfg["crop_pct"] = _crop_pct(data)
    else:
        logger.info("%s: no preprocessor_config.json; normalising with ImageNet's mean and std", where)
    if architecture.video:
        cfg["num_frames"] = int(config.num_frames)
    return cfg


def _crop_pct(processor: dict[str, Any]) -> float:
    """timm's ``crop_pct`` of an image processor: the centre crop over the resized short side (DINOv2's 224 of 256),
    or 1.0 where it resizes to the input size without cropping (ViT's)."""
    crop, size = processor.get("crop_size"), processor.get("size")
    if not processor.get("do_center_crop") or crop is None or size is None:
        return 1.0
    crop_side = crop["height"] if isinstance(crop, dict) else int(crop)
    short_side = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else int(size)
    return min(1.0, crop_side / short_side) if short_side else 1.0


def build_hf_backbone(
    name: str, num_classes: int, checkpoint: str | Path | None = None, **kwargs: Any
) -> tuple[HFBackbone, str]:
    """The backbone ``name`` (``hf:<folder or cached Hub id>``) with the weights of ``checkpoint`` (a transformers
    folder; None: the named folder's own) and a head for ``num_classes``; returns it and where its weights came from.
    ``kwargs`` set config values (:func:`_override`)."""
    where = name[len(HF_PREFIX) :]
    config = read_config(where)
    _override(config, kwargs)
    architecture = ARCHITECTURES[config.model_type]
    cfg = _pretrained_cfg(name, where, config, architecture)
    if torch.empty(0).is_meta:  # shapes only (`params`, an architecture comparison): the config alone, no weights
        model = architecture.model_class(config, **dict(architecture.model_kwargs))
        return HFBackbone(model, architecture, num_classes, cfg), str(checkpoint or where)
    weights = _weights_folder(str(checkpoint) if checkpoint is not None else where)
    try:
        model, info = architecture.model_class.from_pretrained(
            weights, config=config, local_files_only=True, output_loading_info=True, **dict(architecture.model_kwargs)
        )
    except (OSError, RuntimeError, ValueError) as e:
        loader = architecture.model_class.__name__
        raise CheckpointError(f"{weights}: transformers cannot load it as {loader}: {first_line(e)}") from e
    _check_keys(weights, info)
    model.eval()
    backbone = HFBackbone(model, architecture, num_classes, cfg)
    return backbone, str(Path(weights).resolve()) if Path(weights).exists() else weights


def _check_keys(weights: str, info: dict[str, Any]) -> None:
    """CheckpointError unless every tensor of the model was in the file and nothing but heads was left over."""
    missing = sorted(info.get("missing_keys", ()))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith((*HEAD_PREFIXES, *OTHER_TOWER)))
    mismatched = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in info.get("mismatched_keys", ())]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{weights} does not fit the model its config describes: missing keys {missing[:20]} ({len(missing)}), "
            f"unexpected keys {unexpected[:20]} ({len(unexpected)}), shape mismatches {mismatched[:20]}"
        )
    dropped = sorted(k for k in info.get("unexpected_keys", ()) if k.startswith((*HEAD_PREFIXES, *OTHER_TOWER)))
    if dropped:
        logger.info("%s: left out %d keys of its heads or text tower: %s", weights, len(dropped), dropped[:10])
