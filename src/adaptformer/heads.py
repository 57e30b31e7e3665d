"""Task heads. The paper trains MAE's linear-probe head: BatchNorm1d(affine=False) then Linear, on the pooled feature.

Pooling is left to the backbone (CLS token after the final norm, or its global average pool): only the classifier
module is replaced, wherever the backbone keeps it (``head`` for ViT, ``head.fc`` for Swin). It is what timm's
``get_classifier()`` returns; a module without that method (a plain torchvision model) is read by torchvision's
conventions: the last module of ``heads`` (ViT), else ``head`` (Swin, Swin3D, MViT), else ``fc`` (the CNNs). The
paper head is an ``nn.Sequential`` so its keys are MAE's (``head.0.running_mean``, ``head.1.weight``).

A model with more than one classifier (DeiT's distilled ViTs: ``get_classifier()`` returns ``head`` and
``head_dist``, for the class and the distillation token) gets a new head of the same kind in each place; all of them
are task heads (trained, saved, counted). timm's distilled model averages the two heads' logits unless
``distilled_training`` is set, which the library never does: without a teacher there is nothing for the distillation
head to learn from apart from the labels, so training and evaluation both use the average.
"""

from __future__ import annotations

import torch.nn as nn
from timm.layers import trunc_normal_

from .errors import UnsupportedModelError
from .validation import check_choice

HEADS = ("paper", "linear")
# Where torchvision models keep their classifier, in the order tried (module docstring).
TORCHVISION_HEADS = ("heads", "head", "fc")


def paper_head(in_features: int, num_classes: int, init_std: float = 0.01) -> nn.Sequential:
    """MAE linear-probe head: BatchNorm1d(d, affine=False, eps=1e-6) + Linear(d, classes), weight ~ TN(0, std)."""
    linear = nn.Linear(in_features, num_classes)
    trunc_normal_(linear.weight, std=init_std)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), linear)


def classifiers(model: nn.Module) -> tuple[nn.Module, ...]:
    """The model's classifier modules: what ``get_classifier()`` returns (one module, or a tuple of them), else the
    module at torchvision's place for it (:data:`TORCHVISION_HEADS`); an :class:`UnsupportedModelError` naming the
    model's type and what can be passed when there is neither."""
    if callable(getattr(model, "get_classifier", None)):
        found = model.get_classifier()
        return tuple(found) if isinstance(found, tuple | list) else (found,)
    for name in TORCHVISION_HEADS:
        module = getattr(model, name, None)
        if name == "heads" and isinstance(module, nn.Sequential) and len(module) > 0:
            return (module[-1],)  # torchvision ViT: [pre_logits, act,] head
        if name != "heads" and isinstance(module, nn.Module):
            return (module,)
    raise UnsupportedModelError(
        f"cannot find the classifier of {type(model).__name__}: it has no get_classifier() (timm's API) and none of "
        f"torchvision's attributes {list(TORCHVISION_HEADS)}; pass a timm model, a torchvision ViT or Swin, a model "
        "of adaptformer.create_model, or a module whose get_classifier() returns its classifier module(s)"
    )


def classifier_paths(model: nn.Module) -> tuple[str, ...]:
    """The dotted names of the model's classifier modules, in ``get_classifier()``'s order."""
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False) if name}
    paths = []
    for classifier in classifiers(model):
        if id(classifier) not in names:
            raise UnsupportedModelError(
                f"the classifier of {type(model).__name__} (get_classifier() or torchvision's place for it) is a "
                f"{type(classifier).__name__} that is not inside the model"
            )
        paths.append(names[id(classifier)])
    return tuple(paths)


def classifier_linear(classifier: nn.Module) -> nn.Linear | None:
    """The Linear layer of a classifier: itself, or the first one of a Sequential (the paper head, MViT's
    Dropout + Linear); None for one without (an Identity: a model built with ``num_classes=0``)."""
    if isinstance(classifier, nn.Sequential):
        return next((m for m in classifier if isinstance(m, nn.Linear)), None)
    return classifier if isinstance(classifier, nn.Linear) else None


def classifier_in_features(classifier: nn.Module, model: nn.Module) -> int:
    """The feature width ``classifier`` reads (the model's ``num_features`` if it has no Linear, e.g. Identity)."""
    linear = classifier_linear(classifier)
    if linear is not None:
        return linear.in_features
    if not hasattr(model, "num_features"):
        raise UnsupportedModelError(
            f"the classifier of {type(model).__name__} is a {type(classifier).__name__} with no Linear layer, and the "
            "model has no num_features: cannot tell the width of the feature a new head reads"
        )
    return int(model.num_features)


def set_head(model: nn.Module, kind: str, num_classes: int, init_std: float = 0.01) -> tuple[nn.Module, ...]:
    """Replace each classifier by a ``kind`` head for ``num_classes`` classes and return the new heads.

    "linear" keeps the model's own Linear when it already has the right shape (for example one just loaded from a
    fine-tuned checkpoint); "paper" always starts a fresh head, as in the paper.
    """
    check_choice("head", kind, HEADS)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    device = next(model.parameters()).device
    heads = []
    for path, current in zip(classifier_paths(model), classifiers(model), strict=True):
        in_features = classifier_in_features(current, model)
        if kind == "linear" and isinstance(current, nn.Linear) and current.out_features == num_classes:
            heads.append(current)
            continue
        head = (
            nn.Linear(in_features, num_classes) if kind == "linear" else paper_head(in_features, num_classes, init_std)
        )
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, head.to(device))
        heads.append(head)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    if len(heads) > 1 and hasattr(model, "set_distilled_training"):
        model.set_distilled_training(False)  # the output is the heads' average, in training too (module docstring)
    return tuple(heads)
