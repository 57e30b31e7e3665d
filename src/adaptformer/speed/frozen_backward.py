"""Hand-written backward passes for the frozen halves of a ViT block.

AdaptFormer trains adapters beside a frozen backbone, so in every block the attention half
``proj(attention(norm1(x)))`` and the MLP half ``fc2(gelu(fc1(norm2(x))))`` have no trainable weight: their backward
only has to carry the gradient to their input. Plain autograd handles that correctly but pays for generality: timm's
math attention copies q, k and v apart and scales q in a separate pass, the backward of ``unbind`` concatenates the
three gradients, and every GEMM re-packs its weight into oneDNN's blocked layout on every call. The two
``torch.autograd.Function`` s here compute the same function with the same ATen/oneDNN kernels (layer norm, GEMMs,
softmax, GELU and their backward kernels), but:

- q (pre-scaled, rounded exactly as timm's math path does), k and v are written by one strided copy into one
  ``(3, B * heads, N, head_dim)`` buffer, and their gradients straight into one buffer of the same layout, so the
  attention backward needs one copy in and one copy out;
- on CPU in bf16 every frozen weight and its transpose (for the input gradient) are packed for oneDNN once and kept
  while the weight's storage and version counter are unchanged (an in-place change re-packs). That costs memory: two
  packed copies of each frozen linear weight (about 2 x 170 MB for ViT-B in bf16), see :func:`packed_weights`.

Measured on the project's CPU (ViT-B/16, bf16, batch 8; BENCHMARKS.md, option group "frozen_backward"): 6-18% off
the AdaptFormer training step over three runs. :mod:`.frozen_blocks` installs block forwards that route an adapted or
VPT-prompted block's frozen halves here. They engage only where they give the same function as the module
(``supports_*``): a timm-style block whose norms are ``LayerNorm``, whose attention has no q/k norm, no output norm,
no gate and no active dropout, whose MLP is ``Linear -> exact GELU -> Linear`` without active dropout, every parameter
frozen and stored in the dtype the block computes in (the input's dtype: bf16/fp16 frozen storage under autocast, or
fp32 without autocast), and only while autograd records a graph that needs the input's gradient. Anything else falls
back to the module's own forward. Logits and gradients match plain autograd's within rounding
(tests/speed/test_frozen_backward.py).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "frozen_attention",
    "frozen_mlp",
    "packed_weights",
    "recording",
    "supports_attention",
    "supports_mlp",
]


def _inactive(dropout: nn.Module | None, training: bool) -> bool:
    return dropout is None or isinstance(dropout, nn.Identity) or (getattr(dropout, "p", 0.0) == 0 or not training)


def _frozen_in(module: nn.Module, dtype: torch.dtype) -> bool:
    return all(not p.requires_grad and p.dtype == dtype for p in module.parameters())


def _computes_in(x: torch.Tensor) -> bool:
    """True when ops on ``x`` run in ``x.dtype``: autocast is off for its device, or casts to ``x.dtype`` anyway."""
    if not torch.is_autocast_enabled(x.device.type):
        return True
    return torch.get_autocast_dtype(x.device.type) == x.dtype


def _layer_norm_ok(norm: nn.Module) -> bool:
    """torch's LayerNorm or timm's subclass (its forward is ``F.layer_norm`` unless timm's fast-norm is on)."""
    plain = type(norm) is nn.LayerNorm or (
        type(norm).__module__ == "timm.layers.norm" and type(norm).__name__ == "LayerNorm" and not norm._fast_norm
    )
    return plain and norm.elementwise_affine and norm.bias is not None and len(norm.normalized_shape) == 1


def supports_attention(norm: nn.Module, attn: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`frozen_attention` computes ``attn(norm(x))`` for this block and input."""
    identity = (nn.Identity,)
    return (
        x.dim() == 3
        and _layer_norm_ok(norm)
        and type(getattr(attn, "qkv", None)) is nn.Linear  # exactly: a subclass (LoRA's) computes more than W x + b
        and type(getattr(attn, "proj", None)) is nn.Linear
        and isinstance(getattr(attn, "q_norm", None), identity)
        and isinstance(getattr(attn, "k_norm", None), identity)
        and isinstance(getattr(attn, "norm", nn.Identity()), identity)
        and getattr(attn, "gate", None) is None
        and _inactive(getattr(attn, "attn_drop", None), attn.training)
        and _inactive(getattr(attn, "proj_drop", None), attn.training)
        and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
        and _frozen_in(norm, x.dtype)
        and _frozen_in(attn, x.dtype)
        and _computes_in(x)
    )


def supports_mlp(norm: nn.Module, mlp: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`frozen_mlp` computes ``mlp(norm(x))`` for this block and input."""
    act = getattr(mlp, "act", None)
    return (
        x.dim() == 3
        and _layer_norm_ok(norm)
        and isinstance(getattr(mlp, "fc1", None), nn.Linear)
        and isinstance(getattr(mlp, "fc2", None), nn.Linear)
        and type(act) is nn.GELU
        and act.approximate == "none"
        and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity)
        and _inactive(getattr(mlp, "drop1", None), mlp.training)
        and _inactive(getattr(mlp, "drop2", None), mlp.training)
        and _frozen_in(norm, x.dtype)
        and _frozen_in(mlp, x.dtype)
        and _computes_in(x)
    )


# (id(frozen weight), transposed) -> (source, version, rows, packed weight); entries leave with their weight. The
# source is a detached view of the weight: it keeps the packed storage alive, so a different storage can never reuse
# its address, and it shares the weight's version counter, which in-place changes (load_state_dict, p.mul_) bump.
_PACKED: dict[tuple[int, bool], tuple[torch.Tensor, int, int, torch.Tensor]] = {}


def _packable(x: torch.Tensor) -> bool:
    """oneDNN runs bf16 GEMMs with pre-packed weights on this CPU (AVX-512 bf16 or AMX)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _packed(weight: torch.Tensor, rows: int, transposed: bool) -> torch.Tensor:
    """``weight`` (or its transpose) in oneDNN's blocked layout for GEMMs of ``rows`` rows, packed once and packed
    again only when the weight's storage, its version counter (in-place changes) or ``rows`` change."""
    key = (id(weight), transposed)
    hit = _PACKED.get(key)
    if hit is None:
        weakref.finalize(weight, _PACKED.pop, key, None)
    fresh = hit is not None and hit[0].data_ptr() == weight.data_ptr() and hit[1:3] == (weight._version, rows)
    if not fresh:
        source = weight.detach()
        packed = torch.ops.mkldnn._reorder_linear_weight(source.t().contiguous() if transposed else source, rows)
        hit = (source, weight._version, rows, packed)
        _PACKED[key] = hit
    return hit[3]


def packed_weights(module: nn.Module) -> list[torch.Tensor]:
    """The pre-packed copies (oneDNN opaque tensors) held for ``module``'s parameters: memory that training with the
    hand-written backward keeps beside the weights (each counts ``numel() * element_size()`` bytes)."""
    ids = {id(p) for p in module.parameters()}
    return [hit[3] for (key, _), hit in _PACKED.items() if key in ids]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for 2-D ``x``; on CPU in bf16 through the pre-packed weight (~10-15% faster GEMMs
    than packing on every call, for one packed copy of each frozen weight in memory)."""
    if not _packable(x):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, _packed(weight, x.shape[0], False), bias, "none", [], "")


def _linear_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight``, the gradient of ``F.linear``'s input, via the pre-packed transpose like :func:`_linear`."""
    grad = grad.to(weight.dtype)
    if not _packable(grad):
        return torch.mm(grad, weight)
    return torch.ops.mkldnn._linear_pointwise(grad, _packed(weight, grad.shape[0], True), None, "none", [], "")


def _qkv_bias(attn: nn.Module) -> torch.Tensor | None:
    """The qkv projection's bias: the Linear's own, or VideoMAE's separate q and v biases with a zero k part."""
    q_bias, v_bias = getattr(attn, "q_bias", None), getattr(attn, "v_bias", None)
    if q_bias is not None and v_bias is not None:
        return torch.cat((q_bias, torch.zeros_like(q_bias), v_bias))
    return attn.qkv.bias


def _layer_norm_rows(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` as rows ``(B * N, C)``, their layer norm, and the mean / rstd its backward needs."""
    rows = x.reshape(-1, x.shape[-1])
    normed, mean, rstd = torch.native_layer_norm(rows, (rows.shape[1],), weight, bias, eps)
    return rows, normed, mean, rstd


def _layer_norm_input_grad(
    grad: torch.Tensor,
    rows: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """The gradient of :func:`_layer_norm_rows`'s input only (frozen affine parameters)."""
    mask = (True, False, False)
    return torch.ops.aten.native_layer_norm_backward(grad, rows, (rows.shape[1],), mean, rstd, weight, bias, mask)[0]


class _FrozenAttention(torch.autograd.Function):
    """``proj(softmax(q k^T * scale) v)`` with ``q, k, v = qkv(layer_norm(x))``; gradient to ``x`` only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        eps: float,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor | None,
        proj_weight: torch.Tensor,
        proj_bias: torch.Tensor | None,
        heads: int,
        scale: float,
    ) -> torch.Tensor:
        b, n, c = x.shape
        head_dim = qkv_weight.shape[0] // (3 * heads)
        rows, normed, mean, rstd = _layer_norm_rows(x, norm_weight, norm_bias, eps)
        qkv = _linear(normed, qkv_weight, qkv_bias).view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        # one strided pass lays q (scaled, exactly as timm's math path rounds it), k and v out per head
        qkv_heads = torch.empty((3, b, heads, n, head_dim), dtype=x.dtype, device=x.device)
        torch.mul(qkv[:1], scale, out=qkv_heads[:1])
        qkv_heads[1:].copy_(qkv[1:])
        q, k, v = qkv_heads.view(3, b * heads, n, head_dim).unbind(0)
        probs = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)
        out = torch.bmm(probs, v).view(b, heads, n, head_dim).transpose(1, 2).reshape(b * n, heads * head_dim)
        y = _linear(out, proj_weight, proj_bias)
        ctx.save_for_backward(rows, mean, rstd, norm_weight, norm_bias, qkv_weight, proj_weight, qkv_heads, probs)
        ctx.shape = (b, n, c, heads, head_dim)
        ctx.scale = scale
        return y.view(b, n, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        rows, mean, rstd, norm_weight, norm_bias, qkv_weight, proj_weight, qkv_heads, probs = ctx.saved_tensors
        b, n, c, heads, head_dim = ctx.shape
        bh = b * heads
        grad_out = _linear_input_grad(grad.reshape(b * n, -1), proj_weight)
        grad_out = grad_out.view(b, n, heads, head_dim).transpose(1, 2).reshape(bh, n, head_dim)
        q, k, v = qkv_heads.view(3, bh, n, head_dim).unbind(0)
        grad_heads = torch.empty_like(qkv_heads)
        grad_q, grad_k, grad_v = grad_heads.view(3, bh, n, head_dim).unbind(0)
        torch.bmm(probs.transpose(1, 2), grad_out, out=grad_v)
        grad_probs = torch.bmm(grad_out, v.transpose(1, 2))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        torch.bmm(grad_scores, k, out=grad_q)
        grad_q.mul_(ctx.scale)
        torch.bmm(grad_scores.transpose(1, 2), q, out=grad_k)
        grad_qkv = grad_heads.permute(1, 3, 0, 2, 4).reshape(b * n, 3 * heads * head_dim)
        grad_normed = _linear_input_grad(grad_qkv, qkv_weight)
        grad_x = _layer_norm_input_grad(grad_normed, rows, mean, rstd, norm_weight, norm_bias)
        return grad_x.view(b, n, c), None, None, None, None, None, None, None, None, None


class _FrozenMlp(torch.autograd.Function):
    """``(fc2(gelu(fc1(layer_norm(x)))), layer_norm(x))``; gradient to ``x`` only, from both outputs."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        eps: float,
        fc1_weight: torch.Tensor,
        fc1_bias: torch.Tensor | None,
        fc2_weight: torch.Tensor,
        fc2_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        rows, normed, mean, rstd = _layer_norm_rows(x, norm_weight, norm_bias, eps)
        hidden = _linear(normed, fc1_weight, fc1_bias)
        y = _linear(F.gelu(hidden), fc2_weight, fc2_bias)
        ctx.save_for_backward(rows, mean, rstd, norm_weight, norm_bias, fc1_weight, fc2_weight, hidden)
        return y.view(b, n, -1), normed.view(b, n, c)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor, grad_normed: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        rows, mean, rstd, norm_weight, norm_bias, fc1_weight, fc2_weight, hidden = ctx.saved_tensors
        b, n, c = grad.shape[0], grad.shape[1], rows.shape[1]
        grad_act = _linear_input_grad(grad.reshape(b * n, -1), fc2_weight)
        grad_hidden = torch.ops.aten.gelu_backward(grad_act, hidden)
        grad_rows = _linear_input_grad(grad_hidden, fc1_weight)
        if grad_normed is not None:
            grad_rows += grad_normed.reshape(b * n, c)
        grad_x = _layer_norm_input_grad(grad_rows, rows, mean, rstd, norm_weight, norm_bias)
        return grad_x.view(b, n, c), None, None, None, None, None, None, None


def frozen_attention(norm: nn.LayerNorm, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``attn(norm(x))`` through :class:`_FrozenAttention`; check :func:`supports_attention` first."""
    with torch.autocast(x.device.type, enabled=False):
        return _FrozenAttention.apply(
            x,
            norm.weight,
            norm.bias,
            norm.eps,
            attn.qkv.weight,
            _qkv_bias(attn),
            attn.proj.weight,
            attn.proj.bias,
            attn.num_heads,
            float(attn.scale),
        )


def frozen_mlp(norm: nn.LayerNorm, mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mlp(norm(x)), norm(x))`` through :class:`_FrozenMlp`; check :func:`supports_mlp` first."""
    with torch.autocast(x.device.type, enabled=False):
        return _FrozenMlp.apply(
            x, norm.weight, norm.bias, norm.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
        )


def recording(x: torch.Tensor) -> bool:
    """Autograd records a graph that needs ``x``'s gradient; the hand-written backward is eager-only (under
    torch.compile the compiler fuses the plain path itself)."""
    return torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()
