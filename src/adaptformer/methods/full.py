"""Full fine-tuning: every parameter of the backbone trains with the head (the paper's upper-bound baseline)."""

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
    batch_refusal="full fine-tuning has its own backbone",
)
