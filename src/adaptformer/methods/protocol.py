"""The method protocol: how a method behaves in every mode besides training, declared in the method's own file.

A :class:`~adaptformer.methods.registry.Method` may declare, beside its three roles (config, attach, modules):

    block_modules    the modules it installs as children of the blocks it adapts, each a :class:`BlockModule`: what
                     the block computes without it (``bypass``), how one task's module applies to that task's rows of
                     a mixed-task batch (``route``) and what ``inspect`` measures (``measure``);
    module_sites     the backbone modules it changes per task that are not block children, each a :class:`ModuleSite`
                     (LoRA: the attention projections it class-swaps; VPT: the block sequence whose token count its
                     prompts change): where they are in a task's model (``find``) and how one mixed-task batch runs
                     through the trunk's frozen module there with each task's module on its rows (``route``);
    own_backbone     its tasks hold a backbone of their own (full fine-tuning): in a mixed-task batch their rows run
                     through their own model, not the shared trunk;
    batch_refusal    why its tasks cannot share a frozen backbone in one mixed-task batch (None: they can);
    merge, unmerge   folding its updates into the frozen weights before inference or export, and back;
    interpolation    how its contribution is scaled by alpha in [0, 1] (an :class:`Interpolation`: alpha = 1 the
                     trained model, alpha = 0 the frozen backbone with the trained head), for ``robustness
                     --interpolate``; None refuses, with ``interpolation_refusal`` as the reason;
    noise_sites      the modules whose output is its contribution (up to a fixed factor), where consistency
                     regularisation (PACE) multiplies in its noise during training; None: it has none, and is refused.

The multi-task model, the ONNX export and ``inspect`` read these and never name a method. A block's ``forward`` calls
its module like any child (``self.adaptmlp(x, normed, h)``); in the multi-task trunk a router stands in for that module
with the same call and hands the call's tensors to ``route``. At a module site the router stands in for the trunk's own
(frozen, shared) module and hands that module to the route too, which calls it for the frozen function: a module site
composes with every other method's modules inside it (AdaptFormer's routers inside the blocks VPT's route runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = [
    "BlockModule",
    "Interpolation",
    "Measure",
    "Measurement",
    "ModuleRoute",
    "ModuleSite",
    "NoiseSites",
    "Route",
    "TaskRows",
    "route_rows",
]

# the tasks present at one site of a mixed-task batch: each task's module there and that task's rows, (n,) int64
TaskRows = Sequence[tuple[nn.Module, torch.Tensor]]
# (tasks present, the block's call arguments for the whole batch) -> the call's result for the whole batch
Route = Callable[[TaskRows, tuple[torch.Tensor, ...]], torch.Tensor]
# (the trunk's frozen module at the site, tasks present, the call's arguments for the whole batch) -> the call's result
ModuleRoute = Callable[[nn.Module, TaskRows, tuple[torch.Tensor, ...]], torch.Tensor]


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


@dataclass(frozen=True)
class ModuleSite:
    """Backbone modules a method changes per task where they are not children it adds to a block: a task's model holds
    its own module at a path where the frozen backbone holds the plain one (LoRA's class-swapped projections; VPT's
    block sequence, whose token count its prompts change). In the multi-task trunk a router stands in for the plain
    module at each such path, with the same call.

    Args:
        find: a task's model -> the paths (in that model, the same in the backbone) of its modules at this site.
        route: how one mixed-task batch runs there (:data:`ModuleRoute`): given the trunk's frozen module (which may
            hold other methods' routers, and computes the frozen function for rows of other tasks), the tasks present
            with their modules and rows, and the call's arguments. Rows of tasks absent from the site never reach it:
            with no task present the router calls the frozen module itself.
        label: what the site is, in errors ("attention projection", "block sequence").
    """

    find: Callable[[nn.Module], list[str]]
    route: ModuleRoute
    label: str = "module"


# (a model with the method applied, alpha, the pre-trained backbone's state dict or None) -> None: scales in place
Interpolate = Callable[[nn.Module, float, Mapping[str, torch.Tensor] | None], None]
# a model with the method applied -> the modules whose output is the method's contribution, times a fixed factor
NoiseSites = Callable[[nn.Module], list[nn.Module]]


@dataclass(frozen=True)
class Interpolation:
    """How a method's contribution to the frozen backbone is scaled by alpha (``robustness --interpolate``).

    Args:
        apply: scales the contribution of a model (a copy the caller owns) by alpha, in place: at alpha = 1 it must
            leave the model's function exactly as trained, at alpha = 0 exactly the frozen backbone's (the head stays
            the trained head at every alpha).
        pretrained: ``apply`` needs the pre-trained backbone's tensors (full fine-tuning: a weight interpolation);
            the caller rebuilds the backbone the adapter records and passes its state dict.
        how: one line for help texts and reports ("output scale s times alpha").
    """

    apply: Interpolate
    pretrained: bool = False
    how: str = ""
