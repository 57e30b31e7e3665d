"""AdaptFormer's mixed-task batch at one block (the method protocol's ``BlockModule.route``; the method itself:
:mod:`.adaptformer`): ``x + h`` for every row, plus on each task's rows its adapter's contribution ``s * A(read)``.

One task at a time, each on its own rows. A version batched over rows as LoRA's route is (each row gathering its
task's stacked down and up projections, one batched matmul per projection) measured slower on the CPU, not faster:
ViT-B/16's first 2 blocks, 64 AdaptFormer-16 tasks, batch 64, bf16, mixed / single-task forward 1.16x (uniform) and
1.15x (Zipf) batched against 1.01x and 0.95x looped; on all 12 blocks 1.02x against 0.97-1.08x (BENCHMARKS.md). An
AdaptMLP is small next to the block; gathering a (C x b) matrix per row costs more than a Linear over a task's rows.
"""

from __future__ import annotations

import torch

from .protocol import TaskRows

__all__ = ["route", "without_adapter"]


def without_adapter(x: torch.Tensor, normed: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The feed-forward half of the plain block, from the arguments an adapted block gives its AdaptMLP."""
    return x + h


def route(present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A mixed-task batch at one block: ``x + h`` for every row, plus on each task's rows its adapter's contribution.
    A parallel adapter gathers only what it reads and adds its branch in place (the generic route would gather x,
    normed and h and recompute ``x + h`` per task: 10% more time for one task on ViT-B/16 here, BENCHMARKS.md)."""
    x, normed, h = inputs  # (B, ..., C) each
    out = x + h  # a fresh tensor: written in place below
    for module, rows in present:
        if module.form == "parallel":
            out.index_add_(0, rows, module.branch(module.reads(x, normed).index_select(0, rows)).to(out.dtype))
        else:  # sequential: x + (h + s * A(h)), in that order
            out.index_copy_(0, rows, module(*(t.index_select(0, rows) for t in inputs)).to(out.dtype))
    return out
