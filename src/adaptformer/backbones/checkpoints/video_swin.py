"""Checkpoint converters for Video Swin (:mod:`adaptformer.backbones.video_swin`), one pure function per source.

Each is ``fn(state_dict, model) -> state_dict`` and is listed by name in :data:`.load.CONVERTERS`:

    "video-swin"          the official Video Swin release (SwinTransformer/Video-Swin-Transformer, mmaction2:
                          ``swin_base_patch244_window877_kinetics400_22k.pth``, ...): ``backbone.*`` + ``cls_head.*``.
    "inflate-image-swin"  torchvision's image Swin weights (``swin_t``/``swin_s``/``swin_b``) inflated to video as
                          the Video Swin paper initialises its models from ImageNet (its ``inflate_weights``).

torchvision's own Swin3D files need no converter (source "torchvision"): the tv_swin3d models keep its names.

What was checked against the official ``mmaction/models/backbones/swin_transformer.py`` and torchvision's
``models/video/swin_transformer.py`` (so a renamed official tensor computes the same thing here):
- stage ``layers.i`` is ``features.{2i}`` and its ``downsample`` (at the end of the stage in both) ``features.{2i+1}``;
  Mlp's ``fc1``/``fc2`` are torchvision MLP's ``0``/``3`` (GELU and dropout in between have no weights);
- patch merging concatenates the same four neighbours in the same order, (h0,w0), (h1,w0), (h0,w1), (h1,w1), then
  norm (4C) and a bias-free reduction Linear(4C, 2C), in both;
- blocks alternate shift 0 / window // 2 in both; both shrink a window (and drop its shift) along any axis the input
  is not larger than, pad to whole windows at the end, roll by minus the shift and mask with -100 between regions;
- ``relative_position_index`` is the same persistent (Wd*Wh*Ww, Wd*Wh*Ww) buffer built by the same formula (d-major
  offsets); it is derived from the window size, so the file's copy is checked against the model's, not trusted;
- the official patch embedding's LayerNorm (``patch_norm=True`` in every released config) is ``patch_embed.norm``,
  and the final ``backbone.norm`` runs before the average pool, as torchvision's ``norm``.
A checkpoint saved for another window size (e.g. an 8x7x7 Kinetics file into a 16x7x7 SSv2 model) is refused with
the window sizes named rather than resized: which resizing to use is a modelling choice, not a renaming.
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

from ...errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["convert_inflate_image_swin", "convert_video_swin"]

StateDict = dict[str, torch.Tensor]

# official (mmaction2) name -> torchvision Swin3D name; groups: stage, block, rest
_OFFICIAL_BLOCK = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_OFFICIAL_DOWNSAMPLE = re.compile(r"^backbone\.layers\.(\d+)\.downsample\.(.+)$")
_OFFICIAL_MLP = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}
_OFFICIAL_PREFIXES = {"backbone.patch_embed.": "patch_embed.", "backbone.norm.": "norm.", "cls_head.fc_cls.": "head."}

# torchvision image Swin name -> torchvision Swin3D name
_IMAGE_STAGE = re.compile(r"^features\.(\d+)\.(.+)$")
_IMAGE_PATCH_EMBED = {"features.0.0.": "patch_embed.proj.", "features.0.2.": "patch_embed.norm."}


def _rename_official(key: str) -> str:
    block = _OFFICIAL_BLOCK.match(key)
    if block:
        stage, index, rest = block.groups()
        for old, new in _OFFICIAL_MLP.items():
            rest = new + rest[len(old) :] if rest.startswith(old) else rest
        return f"features.{2 * int(stage)}.{index}.{rest}"
    downsample = _OFFICIAL_DOWNSAMPLE.match(key)
    if downsample:
        stage, rest = downsample.groups()
        return f"features.{2 * int(stage) + 1}.{rest}"
    for old, new in _OFFICIAL_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key  # unknown: reaches load_pretrained under its own name and fails there as unexpected


def _window_of(model: nn.Module, key: str) -> list[int] | None:
    """The window size of the attention module owning ``key`` (None if the model has no such module)."""
    try:
        module = model.get_submodule(key.rsplit(".", 1)[0])
    except AttributeError:
        return None
    window = getattr(module, "window_size", None)
    return list(window) if window is not None else None


def _check_windows(state_dict: StateDict, model: nn.Module, original: dict[str, str]) -> None:
    """Refuse relative-position tables/indices of another window size, and indices built another way."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if not key.endswith(("relative_position_bias_table", "relative_position_index")) or key not in own:
            continue
        name = original.get(key, key)
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{name}: shape {tuple(value.shape)} was saved for another attention window than the model's "
                f"window_size {_window_of(model, key)} (expected {tuple(own[key].shape)}); build the model with the "
                "checkpoint's window_size (model kwargs window_size=[T, H, W])"
            )
        if key.endswith("relative_position_index") and not torch.equal(value.to(own[key].dtype), own[key]):
            raise CheckpointError(
                f"{name}: the file's relative position index differs from the one the model derives for its window "
                f"{_window_of(model, key)}; expected the Video Swin (d-major) layout"
            )


def convert_video_swin(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Official Video Swin checkpoints (mmaction2 ``Recognizer3D``: ``backbone.*``, I3D head ``cls_head.fc_cls``)
    -> torchvision Swin3D names (see the module docstring for the mapping and what was checked)."""
    renamed = {_rename_official(k): k for k in state_dict}
    if len(renamed) != len(state_dict):
        raise CheckpointError("two official keys map to one Swin3D name; is this a Video Swin checkpoint?")
    out = {new: state_dict[old] for new, old in renamed.items()}
    _check_windows(out, model, renamed)
    return out


def _rename_image(key: str) -> str:
    for old, new in _IMAGE_PATCH_EMBED.items():
        if key.startswith(old):
            return new + key[len(old) :]
    stage = _IMAGE_STAGE.match(key)
    if stage and int(stage.group(1)) > 0:
        # image: features.0 patch embed, stage i at 2i+1, its merging at 2i+2; video: stage i at 2i, merging 2i+1
        return f"features.{int(stage.group(1)) - 1}.{stage.group(2)}"
    return key


def convert_inflate_image_swin(state_dict: StateDict, model: nn.Module) -> StateDict:
    """torchvision image Swin weights -> Swin3D, inflated over time as the Video Swin paper does.

    - patch embedding: the Conv2d kernel (D, C, ph, pw) is repeated over the temporal patch and divided by its
      length pt, (D, C, pt, ph, pw): a clip of identical frames gets exactly the image's patch embeddings;
    - relative-position tables: the image table ((2Wh-1)(2Ww-1), heads) is repeated for each of the 2Wd-1 temporal
      offsets (the 3D index is d-major), so attention ignores the temporal offset at first;
    - ``relative_position_index``: the image file's (flattened 2D) index is derived, so the model's own 3D index
      is used;
    - everything else keeps its shape; an image window other than the model's spatial window is refused.
    """
    own = model.state_dict()
    kernel = own.get("patch_embed.proj.weight")
    if kernel is None or kernel.ndim != 5:
        raise CheckpointError(
            f"inflate-image-swin inflates onto a video Swin (tv_swin3d_*), whose patch embedding is a Conv3d; "
            f"{type(model).__name__} has none (an image Swin's file loads into tv_swin_* with source torchvision)"
        )
    out: StateDict = {}
    for key, value in state_dict.items():
        new = _rename_image(key)
        if new.endswith("relative_position_index") and new in own:
            out[new] = own[new].clone()
        elif new == "patch_embed.proj.weight" and value.ndim == 4 and new in own:
            frames = own[new].shape[2]
            out[new] = value.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames  # (D, C, pt, ph, pw)
        elif new.endswith("relative_position_bias_table") and new in own:
            window = _window_of(model, new) or [1, 1, 1]
            spatial = (2 * window[1] - 1) * (2 * window[2] - 1)
            if value.shape != (spatial, own[new].shape[1]):
                raise CheckpointError(
                    f"{key}: shape {tuple(value.shape)} does not fit the model's spatial window {window[1:]} "
                    f"(expected ({spatial}, {own[new].shape[1]})); build the model with the image Swin's window"
                )
            out[new] = value.repeat(2 * window[0] - 1, 1)  # ((2Wd-1)(2Wh-1)(2Ww-1), heads), d-major
        else:
            out[new] = value
    logger.info("inflated an image Swin to Swin3D (patch embedding over %s frames)", kernel.shape[2])
    return out
