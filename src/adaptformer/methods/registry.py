"""The method registry: one table that maps a method's name to what it is (PEFT's ``register_peft_method`` idea).

A method has three roles, each in its own module of this package:

    config     a frozen dataclass (a :class:`MethodConfig`) that says WHAT: every knob, validated on construction;
    attach     adds the method's modules to a backbone in place, WHERE they go (backbone names never change);
    modules    finds those modules again by structure (module type), so WHAT TRAINS never depends on key names.

How it behaves in every other mode (a mixed-task batch, a merge before export, what ``inspect`` measures) it declares
through the protocol fields of :class:`Method` (see :mod:`.protocol`). Everything else (freezing, the parameter report,
saving adapters, optimizer groups, the command line, recipes, the study, the multi-task model, export, inspect) reads
:func:`get_method` / :func:`method_names` and never names a method. A method defined outside the package becomes known
everywhere with one :func:`register_method` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.nn as nn

from ..validation import from_mapping, to_plain
from .protocol import BlockModule, Interpolation, ModuleSite, NoiseSites

C = TypeVar("C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """Base class of every method's configuration (a frozen dataclass; subclasses validate in ``__post_init__``)."""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return from_mapping(cls, data)


@dataclass(frozen=True)
class Method:
    """One adaptation method.

    Args:
        name: the registry key, e.g. "adaptformer" (what the command line, recipes and adapter files say).
        config: its config class; ``config()`` must be a valid default.
        attach: ``attach(model, config)`` adds the method's modules to ``model`` in place (raises
            ``UnsupportedModelError`` for backbones it cannot adapt).
        modules: ``modules(model)`` returns the modules ``attach`` added, found by type.
        summary: one line for listings and help texts.
        group: the name of its row in the parameter report ("adapters", "prompts", ...).
        trains_backbone: True if every backbone parameter trains too (full fine-tuning).
        weight_decay: whether its matrices take weight decay (VPT's prompt tokens do not; biases and norms never do).
        title: its name in prose and reports ("AdaptFormer"); default: ``name``.
        block_modules: the modules it installs as children of the blocks it adapts, and how each serves a mixed-task
            batch and ``inspect`` (:class:`~adaptformer.methods.protocol.BlockModule`); empty: none (head only).
        module_sites: the backbone modules it changes per task outside block children, and how each serves a
            mixed-task batch (:class:`~adaptformer.methods.protocol.ModuleSite`: LoRA's projections, VPT's blocks).
        own_backbone: its tasks hold their own backbone (full fine-tuning): a mixed-task batch runs their rows through
            their own model, and the multi-task model counts that backbone as theirs. Needed with ``trains_backbone``
            for a method whose tasks join a mixed-task batch.
        batch_refusal: why its tasks cannot share a frozen backbone in one mixed-task batch, as the refusal prints it;
            None: they can (the multi-task trunk routes its ``block_modules``). The default refuses a method that has
            not said: its trained tensors might be frozen backbone tensors that every task shares.
        merge: ``merge(model)`` folds its updates into the frozen weights, in place, before inference or export (LoRA);
            None: nothing to merge.
        unmerge: undoes ``merge`` (training works again); given exactly when ``merge`` is.
        interpolation: how its contribution is scaled by alpha (:class:`~adaptformer.methods.protocol.Interpolation`);
            None: ``robustness --interpolate`` refuses it, saying ``interpolation_refusal``.
        interpolation_refusal: why it cannot be interpolated, as the refusal prints it.
        noise_sites: ``noise_sites(model)`` returns the modules whose output is its contribution up to a fixed
            factor, in forward order, where consistency regularisation multiplies in its noise; None: it has no
            adapter modules and ``--optim.consistency`` refuses it.
    """

    name: str
    config: type[MethodConfig]
    attach: Callable[[nn.Module, Any], Any]
    modules: Callable[[nn.Module], list[nn.Module]]
    summary: str = ""
    group: str = "method"
    trains_backbone: bool = False
    weight_decay: bool = True
    title: str = ""
    block_modules: tuple[BlockModule, ...] = ()
    module_sites: tuple[ModuleSite, ...] = ()
    own_backbone: bool = False
    batch_refusal: str | None = "it declares no mixed-batch behaviour (Method.batch_refusal=None and block_modules)"
    merge: Callable[[nn.Module], nn.Module] | None = None
    unmerge: Callable[[nn.Module], nn.Module] | None = None
    interpolation: Interpolation | None = None
    interpolation_refusal: str = "it declares no interpolation (Method.interpolation)"
    noise_sites: NoiseSites | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a method name is letters, digits, '-' and '_', got {self.name!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, MethodConfig)):
            raise ValueError(f"method {self.name!r}: config must be a MethodConfig subclass, got {self.config!r}")
        object.__setattr__(self, "block_modules", tuple(self.block_modules))
        if not all(isinstance(b, BlockModule) for b in self.block_modules):
            raise ValueError(f"method {self.name!r}: block_modules must be BlockModule entries: {self.block_modules!r}")
        object.__setattr__(self, "module_sites", tuple(self.module_sites))
        if not all(isinstance(m, ModuleSite) for m in self.module_sites):
            raise ValueError(f"method {self.name!r}: module_sites must be ModuleSite entries: {self.module_sites!r}")
        if self.trains_backbone and self.batch_refusal is None and not self.own_backbone:
            raise ValueError(
                f"method {self.name!r} trains the backbone: its tasks can join a mixed-task batch only with "
                "own_backbone=True (each task's rows through its own model), or give a batch_refusal"
            )
        attributes = [b.attribute for b in self.block_modules]
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"method {self.name!r}: block_modules name an attribute twice: {attributes}")
        if (self.merge is None) != (self.unmerge is None):
            raise ValueError(f"method {self.name!r}: give merge and unmerge together, or neither")
        if self.interpolation is not None and not isinstance(self.interpolation, Interpolation):
            raise ValueError(f"method {self.name!r}: interpolation must be an Interpolation: {self.interpolation!r}")
        if not self.title:
            object.__setattr__(self, "title", self.name)


def _builtin_methods() -> tuple[Method, ...]:
    from . import adapter_plus, adaptformer, full, linear, lora, vpt

    return (adaptformer.METHOD, linear.METHOD, full.METHOD, vpt.METHOD, lora.METHOD, adapter_plus.METHOD)


_methods: dict[str, Method] = {}


def _table() -> dict[str, Method]:
    if not _methods:
        _methods.update({m.name: m for m in _builtin_methods()})
    return _methods


def register_method(method: Method) -> Method:
    """Make ``method`` known to the whole library (CLI, configs, adapter files, ...); returns it. A name or config
    class that is already registered is an error."""
    table = _table()
    if method.name in table:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if any(m.config is method.config for m in table.values()):
        raise ValueError(f"{method.config.__name__} is already the config of another method")
    table[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Forget a method registered with :func:`register_method` (built-in methods stay)."""
    if name in {m.name for m in _builtin_methods()}:
        raise ValueError(f"{name!r} is a built-in method")
    _table().pop(name, None)


def method_names() -> tuple[str, ...]:
    """The registered method names, built-in ones first."""
    return tuple(_table())


def get_method(name: str) -> Method:
    """The method registered as ``name``; ValueError listing the known names otherwise."""
    table = _table()
    if name not in table:
        raise ValueError(f"unknown method {name!r}; registered methods: {list(table)}")
    return table[name]


def method_of(config: MethodConfig) -> Method:
    """The registered method whose config class is ``type(config)``."""
    for method in _table().values():
        if type(config) is method.config:
            return method
    raise ValueError(f"{type(config).__name__} is not the config of a registered method; register_method() it first")


def resolve_method(method: str | MethodConfig) -> tuple[Method, MethodConfig]:
    """A method name (its default config) or a config object, as (method, config)."""
    if isinstance(method, MethodConfig):
        return method_of(method), method
    if isinstance(method, str):
        found = get_method(method)
        return found, found.config()
    raise ValueError(f"method must be a method name or a MethodConfig, got {method!r}")
