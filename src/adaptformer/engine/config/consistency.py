"""The consistency-regularisation section of a training run (``optim.consistency``): PACE (Ni, Zhang & Koniusz,
"PACE: marrying generalization in PArameter-efficient fine-tuning with Consistency rEgularization", NeurIPS 2024,
arXiv 2409.17137). What it computes is :mod:`adaptformer.engine.consistency`'s; which modules get the noise, each
method declares (``Method.noise_sites``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ...methods import method_names
from ...methods.registry import get_method, method_of
from ...validation import check_choice
from .checks import at_least as _at_least

if TYPE_CHECKING:
    from .sections import TrainConfig

VARIANTS = ("off", "pace", "fast")


@dataclass
class ConsistencyConfig:
    """Consistency regularisation (PACE, NeurIPS 2024): multiplicative Gaussian noise on the adapters' outputs during
    training and a consistency loss on the logits, for methods with adapter modules; off by default.

    Args:
        variant: off; pace (each batch twice, with independent noise: cross-entropy on the first pass plus weight x
            the squared L2 distance between the two passes' logits, about 2x a step's cost); fast (one pass: the
            distance to the logits the same sample got in the previous epoch, kept per sample and in the training
            state; PACE_fast, about 1x).
        weight: lambda, the consistency term's weight, >= 0 (the authors' VTAB-1k command: 1).
        sigma: std of the noise z ~ N(1, sigma^2) per sample and channel on the first noised block's adapters,
            decreasing linearly over the later blocks to sigma / n at the last (the authors' schedule; their VTAB-1k
            command: 1.2).
        first_block: blocks before this one get no noise (the authors: 1 for ViT-B, 0 for Swin-B).
    """

    variant: Literal["off", "pace", "fast"] = "off"
    weight: float = 1.0
    sigma: float = 1.2
    first_block: int = 1

    def __post_init__(self) -> None:
        check_choice("optim.consistency.variant", self.variant, VARIANTS)
        for name in ("weight", "sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"optim.consistency.{name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if isinstance(self.first_block, bool) or not isinstance(self.first_block, int):
            raise ValueError(f"optim.consistency.first_block must be a block index, got {self.first_block!r}")
        _at_least("optim.consistency.first_block", self.first_block, 0)

    @property
    def enabled(self) -> bool:
        return self.variant != "off"


def check_consistency(cfg: TrainConfig) -> None:
    """What spans sections: the method has adapter modules to perturb, the task is classification, and no option
    recomputes the forward pass (its noise would be drawn again)."""
    consistency = cfg.optim.consistency
    if not consistency.enabled:
        return
    method = method_of(cfg.model.method)
    if method.noise_sites is None:
        able = [n for n in method_names() if get_method(n).noise_sites is not None]
        raise ValueError(
            f"optim.consistency.variant {consistency.variant!r} perturbs the outputs of adapter modules; method "
            f"{method.name!r} has none (methods with adapter modules: {', '.join(able)}); set it to 'off'"
        )
    if cfg.data.is_segmentation:
        raise ValueError(f"optim.consistency applies to classification; data.dataset {cfg.data.dataset!r} is not one")
    if cfg.speed.grad_checkpointing:
        raise ValueError(
            "optim.consistency and speed.grad_checkpointing: recomputing a block in the backward pass would draw its "
            "noise again; turn one of them off"
        )
