"""An adapted model: a backbone, a task head and one adaptation method, frozen by the method's rule.

Freezing is decided by the registered method (:mod:`adaptformer.methods`) over modules found by structure (the
method's modules by type, the head by timm's ``get_classifier()`` or torchvision's conventions, :mod:`.heads`), never
by which keys a checkpoint happened to lack.
``ModelSpec`` records what was applied; it is stored on the model and written into the adapter file, so a saved
adapter can be re-applied to a fresh backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from .heads import HEADS, classifier_linear, classifier_paths, classifiers, set_head
from .methods import Method, MethodConfig, get_method, method_of, resolve_method
from .methods.state import SPEC_ATTR, get_spec, require_spec, task_state_dict, trainable_groups
from .validation import check_choice, from_mapping


@dataclass(frozen=True)
class ModelSpec:
    """What was done to a backbone: enough to rebuild the same trainable structure on a fresh copy of it.

    Args:
        backbone: the timm model name (with pretrained tag, if any) the adapter was trained on.
        method: a registered method name (``adaptformer.methods.method_names()``).
        method_config: that method's config (None: its defaults).
        num_classes: classes of the task head.
        head: "paper" (BatchNorm1d without affine + Linear) or "linear".
        extra_trainable: further module names that are new for the task and train with the head (e.g. a video
            model's ``fc_norm``).
    """

    backbone: str
    method: str = "adaptformer"
    method_config: MethodConfig | None = None
    num_classes: int = 1000
    head: str = "paper"
    extra_trainable: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.method_config is None:
            object.__setattr__(self, "method_config", method.config())
        elif type(self.method_config) is not method.config:
            raise ValueError(
                f"method {self.method!r} takes a {method.config.__name__}, got {type(self.method_config).__name__}"
            )
        check_choice("head", self.head, HEADS)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        object.__setattr__(self, "extra_trainable", tuple(self.extra_trainable))

    @classmethod
    def for_method(cls, backbone: str, method: str | MethodConfig, **kwargs: Any) -> ModelSpec:
        """A spec from a method name (default config) or a method config object."""
        found, config = resolve_method(method)
        return cls(backbone, found.name, config, **kwargs)

    @property
    def registered(self) -> Method:
        """The registered :class:`~adaptformer.methods.Method`."""
        return get_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        assert self.method_config is not None  # set in __post_init__
        return {
            "backbone": self.backbone,
            "method": self.method,
            "method_config": self.method_config.to_dict(),
            "num_classes": self.num_classes,
            "head": self.head,
            "extra_trainable": list(self.extra_trainable),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Read :meth:`to_dict`'s form, or 0.1's (``adapter`` / ``vpt`` sections beside the method name)."""
        data = dict(data)
        if "adapter" in data or "vpt" in data:  # adaptformer 0.1: one optional section per built-in method
            sections = {"adapter": data.pop("adapter", None), "vpt": data.pop("vpt", None)}
            given = [v for v in sections.values() if v is not None]
            data.setdefault("method_config", given[0] if given else None)
        method = get_method(data.get("method", "adaptformer"))
        if data.get("method_config") is not None:
            data["method_config"] = method.config.from_dict(data["method_config"])
        return from_mapping(cls, data, "model spec")


def apply_method(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Give ``model`` the task head and method of ``spec`` in place, freeze by the method's rule, return it."""
    if get_spec(model) is not None:
        raise ValueError(f"{type(model).__name__} already has a method applied ({get_spec(model)}); build a new model")
    for name in spec.extra_trainable:
        model.get_submodule(name)  # fails early, naming the module, if it does not exist
    old_heads = {path: model.get_submodule(path) for path in classifier_paths(model)}  # no head: raises, naming why
    old_classes = getattr(model, "num_classes", None)
    # A backbone may ask for its own head init scale (the paper's video head uses 0.001) via `head_init_std`.
    set_head(model, spec.head, spec.num_classes, init_std=getattr(model, "head_init_std", 0.01))
    try:
        spec.registered.attach(model, spec.method_config)  # checks the blocks before it changes any
    except Exception:  # UnsupportedModelError, a ValueError of its config (layers the model lacks), ...
        _put_back(model, old_heads, old_classes)  # a model the method cannot adapt is left as it was passed in
        raise
    setattr(model, SPEC_ATTR, spec)
    freeze(model)
    return model


def _put_back(model: nn.Module, heads: dict[str, nn.Module], num_classes: Any) -> None:
    for path, head in heads.items():
        parent_name, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, head)
    if num_classes is not None:
        model.num_classes = num_classes


def adapt(
    model: nn.Module,
    method: str | MethodConfig = "adaptformer",
    num_classes: int | None = None,
    head: str = "paper",
    backbone: str | None = None,
) -> nn.Module:
    """Apply ``method`` (a config, or a registered name for its defaults) with a new ``head`` for ``num_classes``
    (default: the model's own count) to ``model`` in place; freeze by the method's rule.

    ``model`` is any module whose blocks are of a known family (:mod:`adaptformer.backbones.families`: timm's ViT,
    Swin, EVA, BEiT; torchvision's ViT and Swin; the library's video models) and whose classifier can be found: timm's
    ``get_classifier()``, else torchvision's ``heads`` / ``head`` / ``fc`` (:func:`adaptformer.heads.classifiers`).
    Otherwise an :class:`~adaptformer.errors.UnsupportedModelError` names the module's type and what can be passed,
    and ``model`` is left as it was. ``backbone`` is the name the spec records (default: the model's timm
    architecture, else its class name); modules the backbone names in ``task_modules`` (a video model's fc_norm)
    train with the head."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = backbone or cfg.get("architecture") or type(model).__name__
    classes = num_classes if num_classes is not None else _own_classes(model)
    spec = ModelSpec.for_method(name, method, num_classes=classes, head=head)
    return apply_method(model, replace(spec, extra_trainable=tuple(getattr(model, "task_modules", ()))))


def _own_classes(model: nn.Module) -> int:
    """The class count of ``model``'s head: its ``num_classes`` (timm, torchvision ViT), else its classifier's
    outputs; 0 (refused by :class:`ModelSpec`, naming num_classes) when neither tells."""
    if getattr(model, "num_classes", None):
        return int(model.num_classes)
    linear = classifier_linear(classifiers(model)[0])
    return linear.out_features if linear is not None else 0


def method_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the modules the model's method added (adapters, prompts, ...)."""
    return [p for m in require_spec(model).registered.modules(model) for p in m.parameters()]


def freeze(model: nn.Module) -> None:
    """Set ``requires_grad`` by the rule of the model's method: everything for a method that trains the backbone,
    else only the method's modules and the head."""
    spec = require_spec(model)
    trains_all = spec.registered.trains_backbone
    for p in model.parameters():
        p.requires_grad_(trains_all)
    if trains_all:
        return
    for modules in trainable_groups(model).values():
        for _, module in modules:
            for p in module.parameters():
                p.requires_grad_(True)


def task_tensor_mismatch(tensors: dict[str, Any], own: dict[str, torch.Tensor]) -> str | None:
    """What differs between saved task ``tensors`` and the model's ``own`` (:func:`task_state_dict`): the exact key
    set, then every value's shape; None when they fit. Callers raise it as their file's error."""
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        return f"missing keys {missing[:20]}, unexpected keys {unexpected[:20]}"
    wrong = [
        f"{k}: file {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} "
        f"vs model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape
    ]
    return f"shape mismatch: {'; '.join(wrong[:20])}" if wrong else None


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (the paper's "trainable parameters")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class ParameterReport:
    """Trainable and total parameter counts per group (the method's, head, backbone)."""

    rows: tuple[tuple[str, int, int], ...]

    @property
    def trainable(self) -> int:
        return sum(r[1] for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r[2] for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        groups = {name: {"trainable": t, "total": n} for name, t, n in self.rows}
        return {"groups": groups, "trainable": self.trainable, "total": self.total}

    def format(self) -> str:
        lines = [f"{'group':<10} {'trainable':>14} {'total':>14}"]
        lines += [f"{name:<10} {t:>14,} {n:>14,}" for name, t, n in self.rows]
        pct = 100.0 * self.trainable / max(self.total, 1)
        lines.append(f"{'all':<10} {self.trainable:>14,} {self.total:>14,}  ({pct:.2f}% trainable)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count parameters per group; every parameter is counted exactly once."""
    seen: set[int] = set()
    rows = []
    groups = trainable_groups(model) if get_spec(model) is not None else {}
    for group, modules in groups.items():
        params = [p for _, m in modules for p in m.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        rows.append((group, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    rest = [p for p in model.parameters() if id(p) not in seen]
    rows.append(("backbone", sum(p.numel() for p in rest if p.requires_grad), sum(p.numel() for p in rest)))
    return ParameterReport(tuple(rows))


__all__ = [
    "ModelSpec",
    "ParameterReport",
    "adapt",
    "apply_method",
    "count_trainable",
    "freeze",
    "get_spec",
    "method_of",
    "method_parameters",
    "parameter_report",
    "task_state_dict",
    "trainable_groups",
]
