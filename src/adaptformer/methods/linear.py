"""Linear probing: only the task head trains; the backbone is used as it is (the paper's "linear" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .registry import Method, MethodConfig


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """The linear probe has no knobs: the task head (see ``head``) is all that trains."""


def attach(model: nn.Module, config: LinearConfig) -> nn.Module:
    """Nothing to add: the head is the engine's, for every method."""
    return model


def no_modules(model: nn.Module) -> list[nn.Module]:
    return []


METHOD = Method(
    name="linear",
    config=LinearConfig,
    attach=attach,
    modules=no_modules,
    summary="linear probe: only the task head trains",
    batch_refusal=None,  # only the head differs per task
)
