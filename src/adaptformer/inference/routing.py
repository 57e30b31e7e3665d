"""The routers of a multi-task trunk: what stands in for a method's module at each adapted site of the shared backbone.

Two kinds, after the two kinds of site the method protocol (:mod:`adaptformer.methods.protocol`) declares:

- :class:`Router` stands in for a module a method adds as a block child (AdaptFormer's ``adaptmlp``): the block calls
  it as it calls the module, and it hands the call to the method's ``BlockModule.route``;
- :class:`ModuleRouter` stands in for a backbone module a method changes per task (LoRA's projections, VPT's block
  sequence): it holds the trunk's own frozen module there (``frozen``, sharing the backbone's tensors, possibly with
  other routers inside) and hands it, with the call, to the method's ``ModuleSite.route``.

Both read which rows of the batch in flight are which task's from one :class:`Rows` shared by a model's routers.
Paths into a trunk pass through module routers (:func:`resolve`): ``blocks.3`` is ``blocks.frozen.3`` once VPT's
router stands in for ``blocks``, so methods attach in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

import torch
import torch.nn as nn

from ..methods.protocol import BlockModule, ModuleSite, TaskRows

__all__ = ["ModuleRouter", "Router", "Rows", "install_module_router", "resolve", "shared_copy"]


class Rows:
    """Which rows of the batch in flight belong to which task (shared by every router of one model)."""

    def __init__(self) -> None:
        self.by_task: dict[str, torch.Tensor] = {}
        self.traced = False  # in a traced graph (ONNX export) the rows are data: every task in by_task is present

    def present(self, tasks: nn.ModuleDict) -> TaskRows:
        """The tasks of ``tasks`` (name -> module at one site) that have rows in the batch: (module, rows) pairs."""
        return [(tasks[n], r) for n, r in self.by_task.items() if n in tasks and (self.traced or r.numel())]


class Router(nn.Module):
    """Stands in for a method's module at one adapted site of the trunk (the block calls it as it calls the module):
    each task's module (``tasks[name]``) applies to that task's rows only, as the method's protocol routes them
    (:attr:`BlockModule.route`); rows of tasks without a module here get the plain block's result."""

    def __init__(self, rows: Rows, site: BlockModule) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict()
        self.site = site
        self._rows = rows

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.site.routed(self._rows.present(self.tasks), inputs)


class ModuleRouter(nn.Module):
    """Stands in for the trunk's frozen module ``frozen`` at a method's module site: with no task of the site in the
    batch it is that module; else the site's route runs the batch through it with each task's module
    (``tasks[name]``, the module at the same path in the task's own model) on the task's rows."""

    def __init__(self, rows: Rows, site: ModuleSite, frozen: nn.Module) -> None:
        super().__init__()
        self.frozen = frozen
        self.tasks = nn.ModuleDict()
        self.site = site
        self._rows = rows

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        present = self._rows.present(self.tasks)
        if not present:
            return self.frozen(*inputs)
        return self.site.route(self.frozen, present, inputs)


def resolve(root: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` below ``root`` as the backbone names it, stepping into every module router on the way
    (the path's last module itself may be a router)."""
    module = root
    for part in path.split(".") if path else ():
        if isinstance(module, ModuleRouter):
            module = module.frozen
        module = module.get_submodule(part)
    return module


def install_module_router(root: nn.Module, path: str, router: ModuleRouter) -> None:
    """Put ``router`` where ``path`` is in ``root`` (its ``frozen`` is the module that was there)."""
    parent_path, _, name = path.rpartition(".")
    parent = resolve(root, parent_path)
    if isinstance(parent, ModuleRouter):
        parent = parent.frozen
    parent.add_module(name, router)


def shared_copy(model: nn.Module, own: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model``'s module tree that shares every parameter and buffer with it, except those of the modules
    named in ``own`` (a task's own copies: loading its adapter writes into them)."""
    private = {id(t) for name in own for t in nn.Module.state_dict(model.get_submodule(name), keep_vars=True).values()}
    shared = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in private}
    return deepcopy(model, memo=shared)
