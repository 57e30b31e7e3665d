"""The attention kernel of timm-style attention modules: fused (``scaled_dot_product_attention``), math (explicit
matmul-softmax) or "split" (math while autograd records, fused otherwise), chosen from outside through each module's
own ``fused_attn`` flag; and :func:`attention_tokens`, the sequence length one attention call sees."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..validation import check_choice
from .config import ATTENTIONS

_HOOK_ATTR = "_adaptformer_attention_hook"


def attention_tokens(model: nn.Module) -> int | None:
    """The sequence length one attention call sees: patches + prefix tokens (+ VPT prompts) for a ViT, the window
    area for Swin; None if it cannot be told from the model."""
    from timm.models.swin_transformer import WindowAttention

    from ..methods.vpt import prompt_modules

    windows = [m.window_area for m in model.modules() if isinstance(m, WindowAttention)]
    if windows:
        return max(windows)
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if not isinstance(patches, int):
        return None
    prompts = max((m.num_tokens for m in prompt_modules(model)), default=0)
    return patches + int(getattr(model, "num_prefix_tokens", 0)) + prompts


def _records(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd records ``module``'s call on ``x``: grad mode, and ``x`` or a parameter needs a gradient."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _split_attention(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of "split" attention: the math path while autograd records, the fused kernel otherwise
    (no-grad forwards, and blocks whose input and weights need no gradient, like the first of a frozen backbone)."""
    module.fused_attn = not _records(module, args[0])


def fused_now(attn: nn.Module, x: torch.Tensor) -> bool:
    """The kernel ``attn(x)`` would use now: its ``fused_attn`` flag, or the "split" choice if it has that hook."""
    return not _records(attn, x) if _HOOK_ATTR in attn.__dict__ else bool(attn.fused_attn)


def set_attention(model: nn.Module, kind: str) -> int:
    """Choose the attention kernel of every timm-style attention module (those with a ``fused_attn`` flag):
    "fused", "math", or "split" (math while autograd records, e.g. training steps; fused for no-grad forwards).
    Returns the number of attention modules."""
    check_choice("attention", kind, ATTENTIONS)
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for m in modules:
        handle = m.__dict__.pop(_HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
        m.fused_attn = kind == "fused"
        if kind == "split":
            setattr(m, _HOOK_ATTR, m.register_forward_pre_hook(_split_attention))
    return len(modules)
