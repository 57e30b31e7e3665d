"""Full fine-tuning: every parameter of the backbone trains with the head (the paper's upper-bound baseline).

In a multi-task model a full fine-tuning task holds its own backbone (``own_backbone``): its rows of a mixed-task batch
run through its own model, and its parameters count as the task's."""

from __future__ import annotations

from dataclasses import dataclass

from .linear import attach, no_modules
from .registry import Method, MethodConfig


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning has no knobs: every backbone parameter trains (its saved adapter is the whole model)."""


METHOD = Method(
    name="full",
    config=FullConfig,
    attach=attach,
    modules=no_modules,
    summary="full fine-tuning: every parameter trains",
    trains_backbone=True,
    own_backbone=True,
    batch_refusal=None,
)
