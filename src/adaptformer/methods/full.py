"""Full fine-tuning: every parameter of the backbone trains with the head (the paper's upper-bound baseline).

In a multi-task model a full fine-tuning task holds its own backbone (``own_backbone``): its rows of a mixed-task batch
run through its own model, and its parameters count as the task's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..heads import classifier_paths
from .linear import attach, no_modules
from .protocol import Interpolation
from .registry import Method, MethodConfig
from .state import require_spec


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning has no knobs: every backbone parameter trains (its saved adapter is the whole model)."""


@torch.no_grad()
def interpolate(model: nn.Module, alpha: float, pretrained: Mapping[str, torch.Tensor] | None) -> None:
    """Every backbone tensor becomes ``(1 - alpha) * pre-trained + alpha * fine-tuned``, in place (WiSE-FT's weight
    interpolation, Wortsman et al. 2022); the head and the other task modules (``extra_trainable``) stay as trained.
    Written so that alpha = 1 gives the fine-tuned tensor and alpha = 0 the pre-trained one bit for bit."""
    if pretrained is None:
        raise ValueError("full fine-tuning interpolates towards the pre-trained weights: give their state dict")
    spec = require_spec(model)
    task = tuple(f"{path}." for path in (*classifier_paths(model), *spec.extra_trainable))
    for name, tensor in model.state_dict().items():
        if name.startswith(task) or not tensor.is_floating_point():
            continue
        if name not in pretrained or pretrained[name].shape != tensor.shape:
            raise ValueError(
                f"the pre-trained backbone has no tensor {name} of shape {tuple(tensor.shape)}: it is not the backbone "
                "this model was fine-tuned from"
            )
        start = pretrained[name].to(device=tensor.device, dtype=tensor.dtype)
        tensor.copy_((1.0 - alpha) * start + alpha * tensor)


METHOD = Method(
    name="full",
    config=FullConfig,
    attach=attach,
    modules=no_modules,
    summary="full fine-tuning: every parameter trains",
    trains_backbone=True,
    own_backbone=True,
    batch_refusal=None,
    interpolation=Interpolation(
        interpolate, pretrained=True, how="the weights (1 - alpha) * pre-trained + alpha * fine-tuned"
    ),
)
