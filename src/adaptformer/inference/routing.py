"""The routers of a multi-task trunk: what stands in for a method's module at each adapted site of the shared backbone.

Two kinds, after the two kinds of site the method protocol (:mod:`adaptformer.methods.protocol`) declares:

- :class:`Router` stands in for a module a method adds as a block child (AdaptFormer's ``adaptmlp``): the block calls
  it as it calls the module, and it hands the call to the method's ``BlockModule.route``;
- :class:`ModuleRouter` stands in for a backbone module a method changes per task (LoRA's projections, VPT's block
  sequence): it holds the trunk's own frozen module there (``frozen``, sharing the backbone's tensors, possibly with
  other routers inside) and hands it, with the call, to the method's ``ModuleSite.route``.

How the built-in methods route:

- a method's block children (``block_modules``: AdaptFormer in any bottleneck, layers, form, input and scale;
  Adapter+): a :class:`Router` at each hands the call to the method's ``route``;
- backbone modules a method changes per task (``module_sites``): a :class:`ModuleRouter` stands in for the
  trunk's frozen module there and hands it to the method's route: LoRA adds each task's low-rank update to its own rows
  of the shared projection (any rank, targets, layers per task); VPT runs the trunk's blocks with each task's prompts
  on its rows (different prompt counts and deep/shallow tasks in one batch, unused prompt slots masked out).

Where two methods' modules meet on one block: module sites compose with everything (LoRA's projections and VPT's
block sequence leave the block's class alone, so AdaptFormer, Adapter+, LoRA and VPT tasks adapt the same blocks and
share a batch); two methods that each make a block their own class (AdaptFormer and Adapter+ on the same block) are
refused by :func:`attach_task`, naming both methods and the adapter.

Both read which rows of the batch in flight are which task's from one :class:`Rows` shared by a model's routers.
Paths into a trunk pass through module routers (:func:`resolve`): ``blocks.3`` is ``blocks.frozen.3`` once VPT's
router stands in for ``blocks``, so methods attach in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

from ..backbones.families import find_family
from ..errors import UnsupportedModelError
from ..methods.protocol import BlockModule, ModuleSite, TaskRows
from ..methods.registry import Method

__all__ = ["ModuleRouter", "Router", "Rows", "attach_task", "install_module_router", "resolve", "shared_copy"]


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


def attach_task(
    trunk: nn.Module,
    plain: nn.Module,
    routers: nn.ModuleDict,
    owners: dict[str, str],
    rows: Rows,
    name: str,
    task_model: nn.Module,
    method: Method,
    directory: Path,
) -> None:
    """Give task ``name`` its module at every site ``task_model`` adapts: the router there (``routers``, keyed by site;
    created the first time a site is adapted, the trunk's block then made the method's class) gets it. ``plain``: the
    backbone the trunk copies; ``owners``: block path -> the title of the method that owns its class. A trunk block
    holds one block-class-changing method's modules: every site is checked before any router changes."""
    paths = {id(m): p for p, m in task_model.named_modules()}
    sites = []
    blocks = find_family(task_model, what=method.title).blocks(task_model) if method.block_modules else []
    for _, block in blocks:
        path = paths[id(block)]
        for site in method.block_modules:
            module = getattr(block, site.attribute, None)
            if not isinstance(module, nn.Module):
                continue
            trunk_block = resolve(trunk, path)
            if type(trunk_block) not in (type(plain.get_submodule(path)), type(block)):
                owner = owners.get(path, type(trunk_block).__name__)
                raise UnsupportedModelError(
                    f"{directory}: block {path} holds another method's modules ({type(trunk_block).__name__}); "
                    f"{owner} and {method.title} tasks cannot adapt the same blocks"
                )
            sites.append((f"{path}/{site.attribute}", path, site, module))
    for module_site in method.module_sites:
        for path in module_site.find(task_model):
            there = resolve(trunk, path)
            if not isinstance(there, ModuleRouter) and type(there) is not type(plain.get_submodule(path)):
                raise UnsupportedModelError(
                    f"{directory}: the {module_site.label} {path} of the trunk is {type(there).__name__}, not the "
                    f"backbone's {type(plain.get_submodule(path)).__name__}: {owners.get(path, 'another')} "
                    f"and {method.title} tasks cannot both change it"
                )
            sites.append((path, path, module_site, task_model.get_submodule(path)))
    for key, path, site, module in sites:
        key = key.replace(".", "/")
        if key not in routers:
            if isinstance(site, ModuleSite):
                router: nn.Module = ModuleRouter(rows, site, resolve(trunk, path))
                install_module_router(trunk, path, router)
            else:
                trunk_block = resolve(trunk, path)
                trunk_block.__class__ = type(task_model.get_submodule(path))
                router = Router(rows, site)
                trunk_block.add_module(site.attribute, router)
            routers[key] = router
            owners[path] = method.title
        routers[key].tasks[name] = module
