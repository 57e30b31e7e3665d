"""The task-specific state of a model with a method applied, found through the spec it carries: which modules train
(the method's, found by structure, and the head), their tensors, and the fingerprint of everything else (the frozen
backbone), which adapter files record so an adapter is never loaded onto other weights.

Below :mod:`adaptformer.model` (which builds and freezes) so that a method can keep the fingerprint itself when it
changes frozen tensors on purpose (LoRA's merge).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..heads import classifier_paths

if TYPE_CHECKING:
    from ..model import ModelSpec

SPEC_ATTR = "adaptformer_spec"
TASK_ATTR = "adaptformer_task"  # a model's task record, e.g. {"type": "segmentation", ...}; none: classification
HEAD_GROUP = "head"
FINGERPRINT_ATTR = "adaptformer_fingerprint"


def get_spec(model: nn.Module) -> ModelSpec | None:
    return getattr(model, SPEC_ATTR, None)


def get_task(model: nn.Module) -> dict[str, Any] | None:
    """The task record of a model that is not a classifier (adapter files keep it); None for a classifier."""
    return getattr(model, TASK_ATTR, None)


def require_spec(model: nn.Module) -> ModelSpec:
    spec = get_spec(model)
    if spec is None:
        raise ValueError("the model has no method applied; build it with create_model() or apply_method()")
    return spec


def trainable_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The task-specific modules, as (dotted name, module), by group: the method's (e.g. "adapters") and "head"."""
    spec = require_spec(model)
    names = {id(m): n for n, m in model.named_modules()}
    head_names = [*classifier_paths(model), *spec.extra_trainable]
    groups = {HEAD_GROUP: [(n, model.get_submodule(n)) for n in head_names]}
    method_modules = spec.registered.modules(model)
    if method_modules:
        groups = {spec.registered.group: [(names[id(m)], m) for m in method_modules], **groups}
    return groups


def task_state_dict(model: nn.Module) -> dict[str, Any]:
    """The tensors that make the task: everything when the backbone trains, else the trainable groups' tensors
    (with their buffers, e.g. the head's BatchNorm statistics)."""
    spec = require_spec(model)
    if spec.registered.trains_backbone:
        return model.state_dict()
    state: dict[str, Any] = {}
    for modules in trainable_groups(model).values():
        for name, module in modules:
            state.update(module.state_dict(prefix=f"{name}."))
    return state


def remember_fingerprint(model: nn.Module, known: str | None = None) -> str | None:
    """Compute the backbone fingerprint now and keep it on the model, for code that is about to change the frozen
    tensors' storage without changing what they mean (e.g. keeping the frozen backbone in bf16 for speed).
    ``known``: keep this fingerprint instead of computing it (one computed before over the very same frozen tensors,
    e.g. those a multi-task model's tasks share)."""
    setattr(model, FINGERPRINT_ATTR, None)
    fingerprint = known if known is not None else backbone_fingerprint(model)
    setattr(model, FINGERPRINT_ATTR, fingerprint)
    return fingerprint


def backbone_fingerprint(model: nn.Module) -> str | None:
    """SHA-256 over the names, dtypes, shapes and bytes of every frozen (non-task) tensor; None if there is none.

    A fingerprint remembered by ``remember_fingerprint`` is returned as it was.
    """
    remembered = getattr(model, FINGERPRINT_ATTR, None)
    if remembered is not None:
        return remembered
    task_keys = set(task_state_dict(model)) if get_spec(model) is not None else set()
    digest = hashlib.sha256()
    count = 0
    for name, tensor in sorted(model.state_dict().items()):
        if name in task_keys:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        count += 1
    return f"sha256:{digest.hexdigest()}" if count else None
