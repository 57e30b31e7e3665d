"""Adapter-scale interpolation (``adaptformer robustness --interpolate``): the trained model with its method's
contribution scaled by alpha, from the frozen backbone (alpha = 0) to the trained model (alpha = 1), the head being the
trained head at every alpha. How a method scales its contribution it declares itself (``Method.interpolation``,
:mod:`adaptformer.methods.protocol`): AdaptFormer's and Adapter+'s output scales, LoRA's update scaling, full
fine-tuning's weights ``(1 - alpha) * pre-trained + alpha * fine-tuned`` (WiSE-FT, Wortsman et al., CVPR 2022). A
method that declares none (VPT) is refused with its reason.

An alpha outside [0, 1] is refused: it extrapolates past the trained model or the frozen backbone, which answers no
question the curve asks (between keeping the backbone's robustness and fitting the task), and for full fine-tuning it
leaves the segment between two trained weight sets altogether.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ...factory import BackboneSource, build_backbone, missing_checkpoint
from ...methods import method_names
from ...methods.registry import Method, get_method
from ...methods.state import require_spec
from ...saving import AdapterInfo

__all__ = [
    "alpha_label",
    "check_alphas",
    "interpolated",
    "interpolating_methods",
    "interpolation_of",
    "pretrained_state",
]


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """``alphas`` as floats, each finite in [0, 1] and given once; ValueError naming the offending values otherwise."""
    values = tuple(float(a) for a in alphas)
    if not values:
        raise ValueError("--interpolate needs at least one alpha in [0, 1], e.g. 0,0.25,0.5,0.75,1")
    outside = [a for a in values if not math.isfinite(a) or not 0.0 <= a <= 1.0]
    if outside:
        raise ValueError(
            f"--interpolate: alpha must be in [0, 1] (0: the frozen backbone with the trained head, 1: the trained "
            f"model); got {outside}: extrapolation is refused"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"--interpolate names an alpha twice: {list(values)}")
    return values


def alpha_label(alpha: float) -> str:
    """The report's label of one alpha: ``alpha=0.25``."""
    return f"alpha={alpha:g}"


def interpolation_of(method: Method) -> None:
    """Nothing if ``method`` declares an interpolation; ValueError with its reason and the methods that can
    otherwise."""
    if method.interpolation is None:
        raise ValueError(
            f"--interpolate: {method.title} cannot be interpolated: {method.interpolation_refusal}; methods that can: "
            f"{', '.join(interpolating_methods())}"
        )


def interpolated(model: nn.Module, alpha: float, pretrained: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` (a model with a method applied) with the method's contribution scaled by ``alpha``, in
    eval mode; ``model`` is not changed. ``pretrained``: the pre-trained backbone's state dict, for a method whose
    interpolation needs it (:func:`pretrained_state`)."""
    (alpha,) = check_alphas([alpha])
    method = require_spec(model).registered
    interpolation_of(method)
    assert method.interpolation is not None
    if method.interpolation.pretrained and pretrained is None:
        raise ValueError(f"{method.title} interpolates towards the pre-trained weights: pass pretrained=")
    scaled = copy.deepcopy(model)
    method.interpolation.apply(scaled, alpha, pretrained if method.interpolation.pretrained else None)
    return scaled.eval()


def pretrained_state(adapter: str, info: AdapterInfo, source: BackboneSource) -> dict[str, torch.Tensor]:
    """The state dict of the pre-trained backbone ``adapter`` was fine-tuned from, rebuilt as ``source`` says (the
    recorded source with the command's overrides). Refused when it cannot be rebuilt: no checkpoint and no initial
    seed recorded, or a checkpoint file that is not there."""
    if source.checkpoint is None and source.init_seed is None:
        raise ValueError(
            f"--interpolate: {adapter} records no pre-trained checkpoint and no initial seed, so the weights it was "
            "fine-tuned from cannot be rebuilt; pass them with --model.checkpoint PATH (and --model.checkpoint_source)"
        )
    if missing_checkpoint(source.checkpoint):
        raise FileNotFoundError(
            f"--interpolate: the pre-trained checkpoint {source.checkpoint} that {adapter} records does not exist; "
            "pass the same weights with --model.checkpoint PATH"
        )
    backbone = build_backbone(
        info.spec.backbone, info.spec.num_classes, source.checkpoint, source.checkpoint_source,
        init_seed=source.init_seed, **source.kwargs,
    )  # fmt: skip
    return backbone.state_dict()


def interpolating_methods() -> list[str]:
    """The registered methods that declare an interpolation (for help texts)."""
    return [n for n in method_names() if get_method(n).interpolation is not None]
