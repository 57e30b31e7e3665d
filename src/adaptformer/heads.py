"""Task heads. The paper trains MAE's linear-probe head: BatchNorm1d(affine=False) then Linear, on the pooled feature.

Pooling is left to the backbone (CLS token after the final norm, or its global average pool): only the classifier
module that timm's ``get_classifier()`` returns is replaced, wherever the backbone keeps it (``head`` for ViT,
``head.fc`` for Swin). The paper head is an ``nn.Sequential`` so its keys are MAE's (``head.0.running_mean``,
``head.1.weight``).
"""

from __future__ import annotations

import torch.nn as nn
from timm.layers import trunc_normal_

from .errors import UnsupportedModelError
from .validation import check_choice

HEADS = ("paper", "linear")


def paper_head(in_features: int, num_classes: int, init_std: float = 0.01) -> nn.Sequential:
    """MAE linear-probe head: BatchNorm1d(d, affine=False, eps=1e-6) + Linear(d, classes), weight ~ TN(0, std)."""
    linear = nn.Linear(in_features, num_classes)
    trunc_normal_(linear.weight, std=init_std)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), linear)


def classifier_path(model: nn.Module) -> str:
    """The dotted name of the model's classifier module (the one ``get_classifier()`` returns)."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    raise UnsupportedModelError(
        f"{type(model).__name__}.get_classifier() returned a module that is not inside the model"
    )


def classifier_in_features(model: nn.Module) -> int:
    classifier = model.get_classifier()
    linear = classifier if isinstance(classifier, nn.Linear) else None
    if isinstance(classifier, nn.Sequential):
        linear = next((m for m in classifier if isinstance(m, nn.Linear)), None)
    if linear is not None:
        return linear.in_features
    return int(model.num_features)


def set_head(model: nn.Module, kind: str, num_classes: int, init_std: float = 0.01) -> nn.Module:
    """Replace the classifier by a ``kind`` head for ``num_classes`` classes and return the new head.

    "linear" keeps the model's own Linear when it already has the right shape (for example one just loaded from a
    fine-tuned checkpoint); "paper" always starts a fresh head, as in the paper.
    """
    check_choice("head", kind, HEADS)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    path = classifier_path(model)
    in_features = classifier_in_features(model)
    current = model.get_classifier()
    if kind == "linear":
        if isinstance(current, nn.Linear) and current.out_features == num_classes:
            return current
        head: nn.Module = nn.Linear(in_features, num_classes)
    else:
        head = paper_head(in_features, num_classes, init_std)
    device = next(model.parameters()).device
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, head.to(device))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return head
