"""Linear probing: only the task head trains; the backbone is used as it is (the paper's "linear" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .protocol import Interpolation
from .registry import Method, MethodConfig


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """The linear probe has no knobs: the task head (see ``head``) is all that trains."""


def attach(model: nn.Module, config: LinearConfig) -> nn.Module:
    """Nothing to add: the head is the engine's, for every method."""
    return model


def no_modules(model: nn.Module) -> list[nn.Module]:
    return []


def unchanged(model: nn.Module, alpha: float, pretrained: object = None) -> None:
    """The interpolation of a linear probe: it adds nothing to the frozen backbone and the head is the trained head at
    every alpha, so every alpha is the same model (a flat line: the frozen backbone's reference in a comparison)."""


METHOD = Method(
    name="linear",
    config=LinearConfig,
    attach=attach,
    modules=no_modules,
    summary="linear probe: only the task head trains",
    batch_refusal=None,  # only the head differs per task
    interpolation=Interpolation(unchanged, how="nothing to scale: every alpha is the trained probe"),
)
