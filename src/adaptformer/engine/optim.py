"""Optimizers of the recipe: SGD with momentum (the paper's) or AdamW, with the MAE learning-rate scaling rule.

Weight decay is never applied to parameters that should not shrink towards zero: 1-D tensors (norm weights, biases,
a learnable adapter scale), the model's own ``no_weight_decay()`` names (timm: position embeddings, class token) and
the parameters of a method registered with ``weight_decay=False`` (VPT's prompt tokens; found by module type).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ..methods.state import get_spec
from ..model import method_parameters

logger = logging.getLogger(__name__)

REFERENCE_BATCH = 256


def scaled_lr(blr: float, effective_batch: int) -> float:
    """The linear scaling rule: ``lr = blr * effective_batch / 256`` (0.1 at 1024 gives 0.4)."""
    return blr * effective_batch / REFERENCE_BATCH


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups, with and without weight decay (empty groups are left out)."""
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    spec = get_spec(model)
    no_decay_method = spec is not None and not spec.registered.weight_decay
    exempt = {id(p) for p in method_parameters(model)} if no_decay_method else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in skip_names or id(param) in exempt:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters; was a method applied?")
    return groups


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW (with ``betas``) over the model's trainable parameters.

    The lr given here is the peak; the schedule scales it per iteration.
    """
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")
    counts = ", ".join(f"{sum(p.numel() for p in g['params']):,} (wd {g['weight_decay']})" for g in groups)
    logger.info("optimizer %s, peak lr %.6g, parameter groups: %s", name, lr, counts)
    return optimizer
