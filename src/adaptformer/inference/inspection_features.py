"""The features :mod:`.inspection` compares between an adapted model and its frozen backbone: what each block outputs
(the class token, the mean over tokens, or every patch token of a segmentation model) and what the head reads, read
through forward hooks (:func:`trace_features`), and the batches a model's evaluation feeds its backbone
(:func:`model_inputs`: a segmentation model's images cut into the windows a fixed-size backbone takes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.families import find_family
from ..engine.segmentation import window_starts
from ..heads import classifiers
from ..segmentation import SegmentationModel
from .inspection_files import PATCH_TOKENS

__all__ = ["CLASS_TOKEN", "MEAN_OVER_TOKENS", "FeatureTrace", "block_list", "feature_kind", "model_inputs",
           "recording", "trace_features"]  # fmt: skip

CLASS_TOKEN, MEAN_OVER_TOKENS = "class token", "mean over tokens"  # what the drift compares (or PATCH_TOKENS)


@contextmanager
def recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[tuple[Any, ...], Any]]]:
    """Forward hooks keeping each named module's arguments and output of its latest call, removed on exit."""
    seen: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def keeper(name: str) -> Any:
        return lambda module, args, output: seen.__setitem__(name, (args, output))

    handles = [m.register_forward_hook(keeper(name)) for name, m in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def block_list(model: nn.Module) -> list[nn.Module]:
    """``model``'s blocks in forward order."""
    return [block for _, block in find_family(model, what="inspection hooks").blocks(model)]


def _has_class_token(model: nn.Module) -> bool:
    # timm ViT/EVA/BEiT keep it as cls_token (None when built without one), torchvision's ViT as class_token
    return any(getattr(model, name, None) is not None for name in ("cls_token", "class_token"))


def feature_kind(model: nn.Module) -> str:
    """What the drift compares: a segmentation model's patch tokens, else the class token or the mean over tokens."""
    if isinstance(model, SegmentationModel):
        return PATCH_TOKENS
    return CLASS_TOKEN if _has_class_token(model) else MEAN_OVER_TOKENS


def _feature(tokens: torch.Tensor, kind: str, patches: int | None = None) -> torch.Tensor:
    """(B, ..., C) block output -> the rows the drift compares: (B, C), the class token (index 0) or the mean over all
    tokens; or (B * patches, C), every patch token (the last ``patches`` tokens, after any prefix token; None: every
    token, as in a Swin stage's (B, h, w, C) map)."""
    if kind == CLASS_TOKEN:
        return tokens[:, 0]
    flat = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])  # (B, N, C)
    if kind == MEAN_OVER_TOKENS:
        return flat.mean(dim=1)
    patches = flat.shape[1] if patches is None else patches
    return flat[:, flat.shape[1] - patches :].reshape(-1, flat.shape[-1])  # (B * patches, C)


def _head_rows(head_input: Any) -> torch.Tensor:
    """What the head reads as rows to compare: a classifier's (B, ...) input flattened to (B, D); a decode head's maps
    (B, C_i, h_i, w_i) as one row per token, all maps' rows stacked, zero-padded to the widest map (zeros change
    neither a row's L2 norm nor its dot products, so each token's drift is exactly its own)."""
    if isinstance(head_input, torch.Tensor):
        return head_input.flatten(1)
    rows = [m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in head_input]  # (B * h_i * w_i, C_i) per map
    width = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, width - r.shape[1])) for r in rows])


def _patch_count(model: nn.Module, inputs: torch.Tensor) -> int | None:
    """How many patch tokens a plain ViT block of a segmentation model outputs for ``inputs``; None for every token (a
    hierarchical backbone's stage maps, or a classifier, whose drift does not compare patch tokens)."""
    if not isinstance(model, SegmentationModel) or model.layout.hierarchical:
        return None
    return (inputs.shape[-2] // model.layout.patch[0]) * (inputs.shape[-1] // model.layout.patch[1])


@dataclass(frozen=True)
class FeatureTrace:
    """The features the drift compares: after each block (class token, mean over tokens or patch tokens) and the
    head's input.

    Args:
        blocks: one (B, C) tensor per block that ran, in forward order ((B * patches, C) for a segmentation model).
        pooled: (B, D), what the (first) classifier reads; a segmentation model: (tokens, C), every token of the maps
            its decode head reads.
    """

    blocks: tuple[torch.Tensor, ...]
    pooled: torch.Tensor


@torch.no_grad()
def trace_features(model: nn.Module, inputs: torch.Tensor) -> FeatureTrace:
    """Run ``model`` on ``inputs`` and keep :class:`FeatureTrace`'s features (wrap in :func:`adapters_off` for the
    frozen backbone's). A segmentation model that reads an early block only stops there: the blocks after it did
    not run and have no feature."""
    blocks = block_list(model)
    head = classifiers(model)[0]
    kind, patches = feature_kind(model), _patch_count(model, inputs)
    watched = {**{f"block{i}": b for i, b in enumerate(blocks)}, "head": head}
    with recording(watched) as seen:
        model(inputs)
    ran = [i for i in range(len(blocks)) if f"block{i}" in seen]  # forward order: the blocks before an early stop
    return FeatureTrace(
        tuple(_feature(seen[f"block{i}"][1], kind, patches) for i in ran), _head_rows(seen["head"][0][0])
    )


def model_inputs(model: nn.Module, inputs: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """The batches ``model`` reads of ``inputs`` (a batch, or a list of (C, H, W) images of different sizes, as a
    segmentation dataset's evaluation gives them): the batch itself for a classifier; for a segmentation model each
    image padded to a multiple of what its backbone takes and, for a backbone built for one input size, cut into
    windows of that size as sliding-window evaluation reads it (here without overlap: the last window at the border),
    the windows of a batch stacked on its batch dimension."""
    if not isinstance(model, SegmentationModel):
        return [inputs if isinstance(inputs, torch.Tensor) else torch.stack(inputs)]
    batches = [inputs] if isinstance(inputs, torch.Tensor) else [image[None] for image in inputs]
    fixed, (step_h, step_w) = model.layout.fixed_size, model.layout.divisor
    views = []
    for x in batches:
        height, width = x.shape[-2:]
        crop_h, crop_w = fixed or (-(-height // step_h) * step_h, -(-width // step_w) * step_w)
        x = F.pad(x, (0, max(0, crop_w - width), 0, max(0, crop_h - height)))  # zeros: the normalised mean colour
        windows = [x[..., top : top + crop_h, left : left + crop_w]
                   for top in window_starts(x.shape[-2], crop_h, crop_h)
                   for left in window_starts(x.shape[-1], crop_w, crop_w)]  # fmt: skip
        views.append(torch.cat(windows))  # (B * windows, C, crop_h, crop_w)
    return views
