"""The recipe's learning-rate schedule: linear warmup from 0, then half a cosine down to ``min_lr``, per iteration (or
the polynomial decay of the segmentation recipes, ``(1 - progress) ** power``).

One "iteration" is one optimizer step (after gradient accumulation). Its state is just the step counter, so a
resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class WarmupCosine:
    """Sets every param group's lr to ``peak_lr * lr_at(step)`` before each optimizer step.

    Args:
        optimizer: whose groups' ``lr`` is set (a group's ``lr_scale``, if present, multiplies it).
        peak_lr: lr reached at the end of the warmup.
        warmup_steps: steps of linear warmup from 0.
        total_steps: steps of the whole run; the cosine reaches ``min_lr`` here.
        min_lr: final lr.
        decay: after the warmup, "cosine" (half a cosine) or "poly" (``(1 - progress) ** power``; power 1 is linear).
        power: the poly decay's exponent.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
        decay: str = "cosine",
        power: float = 1.0,
    ) -> None:
        if decay not in ("cosine", "poly"):
            raise ValueError(f"decay must be 'cosine' or 'poly', got {decay!r}")
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(
                f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {warmup_steps}, {total_steps}"
            )
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        self.decay = decay
        self.power = power
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        if self.decay == "poly":
            return self.min_lr + (self.peak_lr - self.min_lr) * (1.0 - progress) ** self.power
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self) -> float:
        """Set the lr for the next optimizer step and return it (call before ``optimizer.step()``)."""
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        """Advance to the next iteration (call after ``optimizer.step()``)."""
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
