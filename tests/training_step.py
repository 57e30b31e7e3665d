"""One seeded forward/backward of a model, a comparison of two of them, and moving trainable tensors off their init:
shared by the speed-option, saving and CUDA tests, with their tolerances and a tiny trainable model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.conftest import VIT, tiny_kwargs

from adaptformer import AdaptFormerConfig, create_model
from adaptformer.precision import Precision

Step = tuple[torch.Tensor, dict[str, torch.Tensor]]
BF16_TOL = {"atol": 5e-2, "rtol": 5e-2}  # bf16 keeps 8 bits of mantissa; a 3-block network stays well within this
FP32_TOL = {"atol": 1e-5, "rtol": 1e-4}  # fp32, summation order may differ between kernels


def move_trainable(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every trainable tensor away from its init (as training would), so gradients reach everything and a
    zero-initialised adapter or head does not hide a difference; returns the model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model


def train_step(model: torch.nn.Module, x: torch.Tensor, precision: str = "fp32") -> Step:
    """Logits and the trainable parameters' gradients of one forward/backward (5 classes), on ``x``'s device; both
    returned on the CPU."""
    torch.manual_seed(2)  # the same dropout / drop-path draws in both paths
    model.zero_grad(set_to_none=True)
    with Precision(precision, x.device.type).autocast():
        logits = model(x)
    F.cross_entropy(logits.float(), torch.arange(x.shape[0], device=x.device) % 5).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach().float().cpu(), {n: g.cpu() for n, g in grads.items()}


def assert_same_step(a: Step, b: Step, tol: dict, every_gradient_nonzero: bool = False) -> None:
    """Equal logits and equal gradients (same parameter names), within ``tol``."""
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        if every_gradient_nonzero:
            assert a[1][name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(a[1][name], b[1][name], **tol, msg=lambda m, n=name: f"{n}: {m}")


def trainable_model(method: object = "adaptformer", name: str = VIT, **kwargs: object) -> torch.nn.Module:
    """A tiny model in training mode whose trainable tensors are moved away from their init (so gradients reach
    everything); method "adaptformer" means AdaptFormer without dropout."""
    torch.manual_seed(1)
    method = AdaptFormerConfig(dropout=0.0) if method == "adaptformer" else method
    model = create_model(name, 5, method=method, **tiny_kwargs(name), **kwargs)
    move_trainable(model)
    return model.train()
