"""The method protocol: how a method behaves in every mode besides training, declared in the method's own file.

A :class:`~adaptformer.methods.registry.Method` may declare, beside its three roles (config, attach, modules):

    block_modules    the modules it installs as children of the blocks it adapts, each a :class:`BlockModule`: what
                     the block computes without it (``bypass``), how one task's module applies to that task's rows of
                     a mixed-task batch (``route``) and what ``inspect`` measures (``measure``);
    batch_refusal    why its tasks cannot share a frozen backbone in one mixed-task batch (None: they can);
    merge, unmerge   folding its updates into the frozen weights before inference or export, and back.

The multi-task model, the ONNX export and ``inspect`` read these and never name a method. A block's ``forward`` calls
its module like any child (``self.adaptmlp(x, normed, h)``); in the multi-task trunk a router stands in for that module
with the same call and hands the call's tensors to ``route``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["BlockModule", "Measure", "Measurement", "Route", "TaskRows", "route_rows"]

# the tasks present at one site of a mixed-task batch: each task's module there and that task's rows, (n,) int64
TaskRows = Sequence[tuple[nn.Module, torch.Tensor]]
# (tasks present, the block's call arguments for the whole batch) -> the call's result for the whole batch
Route = Callable[[TaskRows, tuple[torch.Tensor, ...]], torch.Tensor]


@dataclass(frozen=True)
class Measurement:
    """What ``inspect`` compares at one adapted block, every tensor (..., C) over the same tokens.

    Args:
        output: what the module adds to the residual stream (AdaptFormer: ``s * A(.)``).
        residual: the residual stream it adds to (AdaptFormer: x', the stream after attention).
        mlp: the frozen MLP branch beside it, for a module that sits beside the MLP; None otherwise.
        form: how the module is wired, for the report ("parallel", "sequential", "post-block", ...).
    """

    output: torch.Tensor
    residual: torch.Tensor
    mlp: torch.Tensor | None = None
    form: str = ""


# (the module, its call's arguments, its call's result) as a forward hook records them -> what inspect compares
Measure = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], Measurement]


def route_rows(bypass: Callable[..., torch.Tensor]) -> Route:
    """The routing of a module that computes each sample on its own: every row gets ``bypass`` of its tensors (the
    plain block's result), then each present task's rows are replaced by its module's call on those rows only. Every
    argument and the result have the batch on dimension 0."""

    def route(present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = bypass(*inputs)
        if not present:
            return out
        if any(out is t for t in inputs):  # written in place below: never into the caller's tensor
            out = out.clone()
        for module, rows in present:
            picked = tuple(t.index_select(0, rows) for t in inputs)
            out.index_copy_(0, rows, module(*picked).to(out.dtype))
        return out

    return route


@dataclass(frozen=True)
class BlockModule:
    """A module a method installs as a child of each block it adapts, and how it behaves outside training.

    Args:
        attribute: the child's name in the block ("adaptmlp"): the block calls ``self.<attribute>(...)``.
        bypass: what that call computes without the module, from the same arguments (AdaptFormer: ``x + h``;
            Adapter+: ``y``): the frozen backbone's function, for rows of other tasks in a mixed-task batch and for
            the frozen reference of ``inspect``.
        route: how the tasks' modules at one block share a mixed-task batch (:data:`Route`); default
            :func:`route_rows` (each task's module on its own rows, ``bypass`` elsewhere). A module that needs all of
            a task's rows at once, or changes the token count, gives its own.
        measure: what ``inspect`` reports for the module (:data:`Measure`); None: inspect refuses the method.
    """

    attribute: str
    bypass: Callable[..., torch.Tensor]
    route: Route | None = None
    measure: Measure | None = None

    def __post_init__(self) -> None:
        if not self.attribute.isidentifier():
            raise ValueError(f"a block module's attribute must be a Python identifier, got {self.attribute!r}")
        if self.route is None:
            object.__setattr__(self, "route", route_rows(self.bypass))

    def routed(self, present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``route`` (always set after construction) applied to one call."""
        assert self.route is not None
        return self.route(present, inputs)
