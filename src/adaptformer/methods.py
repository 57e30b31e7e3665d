"""Adaptation methods, freezing and parameter accounting.

Freezing is decided by an explicit rule per method, over modules found by structure (AdaptMLP modules by type, the
head by timm's ``get_classifier()``), never by which keys a checkpoint happened to lack:

    full        everything trains
    linear      the head trains
    adaptformer adapters + head train
    vpt         prompts + head train

``ModelSpec`` records what was applied; it is stored on the model (``model.adaptformer_spec``) and written next to
the adapter weights so a saved adapter can be re-applied to a fresh backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch.nn as nn

from .adapter import AdaptFormerConfig
from .backbones import adapt, adapter_modules
from .heads import HEADS, classifier_path, set_head
from .prompts import VPTConfig, add_prompts, prompt_modules

METHODS = ("adaptformer", "linear", "full", "vpt")
SPEC_ATTR = "adaptformer_spec"


@dataclass(frozen=True)
class ModelSpec:
    """What was done to a backbone: enough to rebuild the same trainable structure on a fresh copy of it.

    Args:
        backbone: the timm model name (with pretrained tag, if any) the adapter was trained on.
        method: one of ``METHODS``.
        num_classes: classes of the task head.
        head: "paper" (BatchNorm1d without affine + Linear) or "linear".
        adapter: the AdaptMLP configuration (method "adaptformer" only).
        vpt: the prompt configuration (method "vpt" only).
        extra_trainable: further module names that are new for the task and train with the head (e.g. a video
            model's ``fc_norm``).
    """

    backbone: str
    method: str = "adaptformer"
    num_classes: int = 1000
    head: str = "paper"
    adapter: AdaptFormerConfig | None = None
    vpt: VPTConfig | None = None
    extra_trainable: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if self.method == "adaptformer" and self.adapter is None:
            object.__setattr__(self, "adapter", AdaptFormerConfig())
        if self.method != "adaptformer" and self.adapter is not None:
            raise ValueError(f"an adapter config was given for method {self.method!r}; it applies to 'adaptformer'")
        if self.method == "vpt" and self.vpt is None:
            object.__setattr__(self, "vpt", VPTConfig())
        if self.method != "vpt" and self.vpt is not None:
            raise ValueError(f"a VPT config was given for method {self.method!r}; it applies to 'vpt'")
        object.__setattr__(self, "extra_trainable", tuple(self.extra_trainable))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "method": self.method,
            "num_classes": self.num_classes,
            "head": self.head,
            "adapter": self.adapter.to_dict() if self.adapter else None,
            "vpt": self.vpt.to_dict() if self.vpt else None,
            "extra_trainable": list(self.extra_trainable),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model spec fields {unknown}; expected some of {sorted(known)}")
        data = dict(data)
        if data.get("adapter") is not None:
            data["adapter"] = AdaptFormerConfig.from_dict(data["adapter"])
        if data.get("vpt") is not None:
            data["vpt"] = VPTConfig.from_dict(data["vpt"])
        return cls(**data)


def get_spec(model: nn.Module) -> ModelSpec | None:
    return getattr(model, SPEC_ATTR, None)


def apply_method(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Give ``model`` the task head and method of ``spec`` in place, freeze by the method's rule, return it."""
    if get_spec(model) is not None:
        raise ValueError(f"{type(model).__name__} already has a method applied ({get_spec(model)}); build a new model")
    for name in spec.extra_trainable:
        model.get_submodule(name)  # fails early, naming the module, if it does not exist
    # A backbone may ask for its own head init scale (the paper's video head uses 0.001) via `head_init_std`.
    set_head(model, spec.head, spec.num_classes, init_std=getattr(model, "head_init_std", 0.01))
    if spec.method == "adaptformer":
        adapt(model, spec.adapter)
    elif spec.method == "vpt":
        add_prompts(model, spec.vpt)
    setattr(model, SPEC_ATTR, spec)
    freeze(model)
    return model


def trainable_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The task-specific modules by group ("adapters", "prompts", "head"), each as (dotted name, module)."""
    spec = get_spec(model)
    names = {id(m): n for n, m in model.named_modules()}
    head_names = [classifier_path(model), *(spec.extra_trainable if spec else ())]
    return {
        "adapters": [(names[id(m)], m) for m in adapter_modules(model)],
        "prompts": [(names[id(m)], m) for m in prompt_modules(model)],
        "head": [(n, model.get_submodule(n)) for n in head_names],
    }


def freeze(model: nn.Module) -> None:
    """Set ``requires_grad`` by the rule of the model's method (see the module docstring)."""
    spec = get_spec(model)
    if spec is None:
        raise ValueError("the model has no method applied; call apply_method() or create_model() first")
    full = spec.method == "full"
    for p in model.parameters():
        p.requires_grad_(full)
    if full:
        return
    for group, modules in trainable_groups(model).items():
        if (group == "adapters" and spec.method != "adaptformer") or (group == "prompts" and spec.method != "vpt"):
            continue
        for _, module in modules:
            for p in module.parameters():
                p.requires_grad_(True)


def task_state_dict(model: nn.Module) -> dict[str, Any]:
    """The tensors that make the task: everything for "full", else the trainable groups with their buffers."""
    spec = get_spec(model)
    if spec is None:
        raise ValueError("the model has no method applied; nothing task-specific to save")
    if spec.method == "full":
        return model.state_dict()
    state: dict[str, Any] = {}
    for modules in trainable_groups(model).values():
        for name, module in modules:
            state.update(module.state_dict(prefix=f"{name}."))
    return state


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (the paper's "trainable parameters")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class ParameterReport:
    """Trainable and total parameter counts per group (adapters, prompts, head, backbone)."""

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
