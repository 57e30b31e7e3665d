"""The last block of a ViT computed for the class token only, when the head reads nothing else.

A timm ViT with ``global_pool="token"`` (the paper's image setting: the head reads the class token after the final
norm) uses one row of its last block's output. Everything in a pre-norm block works token by token except the mixing
inside attention, so that row needs the layer norm and the key/value projection of every token, and the query, the
attention, the output projection, the MLP (and the adapter) of the class token alone (for VPT, the class token sits
after the prompts until the last block strips them): 2 of the block's 12 d^2 multiply-adds per token instead of 12,
in the forward and in the backward. For ViT-B/16 at 224 that removes about 1/15 of the model's matrix products, in
training (every method) and in inference.

The result is the same function: the same operations on the same rows. Only the query/key/value GEMMs are split into
two products of other shapes, which may round differently in the last bit (tests/speed/test_class_token_tail.py compares
logits and gradients with the full block). Two things differ by construction: the adapter's dropout draws masks for
the class token only (same distribution, other random numbers), and the model's ``forward`` is the only caller that
gets it: ``forward_features`` still returns every token (``adaptformer.speed`` arms the tail only while
``model.forward`` runs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from ..methods.adaptformer import AdaptedViTBlock
from ..methods.vpt import PromptedViTBlock

__all__ = ["class_token_forward", "class_token_tail_reason"]


def class_token_tail_reason(model: nn.Module) -> str | None:
    """None when ``model``'s last block may run for the class token only; else why it may not."""
    if not isinstance(model, VisionTransformer):
        return f"{type(model).__name__} is not a timm VisionTransformer"
    if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
        return (
            f"its head pools {model.global_pool!r} (attention pool: {model.attn_pool is not None}), not the class token"
        )
    if getattr(model, "cls_token", None) is None:
        return "it has no class token"
    if getattr(model, "dist_token", None) is not None:
        return "its head also reads the distillation token"
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        return "it has no blocks sequence"
    last = blocks[-1]
    if _tail_of(last) is None:
        return f"its last block is {type(last).__name__}, which has no class-token tail (see {__name__})"
    if isinstance(last, PromptedViTBlock) and not last.vpt.strip:
        return "its last block keeps VPT prompts in its output"
    if type(last.attn) is not Attention or last.attn.gate is not None:
        return f"its last attention is {type(last.attn).__name__}{' with a gate' if last.attn.gate is not None else ''}"
    projections = (type(last.attn.qkv), type(last.attn.proj))
    if projections != (nn.Linear, nn.Linear):  # the tail reads qkv.weight itself: a subclass computes more than that
        return f"its last attention's qkv/proj are {projections[0].__name__}/{projections[1].__name__}, not nn.Linear"
    return None


def _class_token_attention(attn: nn.Module, normed: torch.Tensor, row: int, fused: bool) -> torch.Tensor:
    """timm ``Attention.forward`` for the query of token ``row`` only: ``(B, N, C) -> (B, 1, C_out)``."""
    b, n, _ = normed.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(normed[:, row : row + 1], weight[:width], None if bias is None else bias[:width])
    kv = F.linear(normed, weight[width:], None if bias is None else bias[width:])
    q = q.reshape(b, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        out = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(b, 1, width))
    return attn.proj_drop(attn.proj(out))


def _plain_tail(block: nn.Module, x: torch.Tensor, fused: bool, row: int = 0) -> torch.Tensor:
    """timm ``Block.forward`` for the token at ``row`` only: ``(B, N, C) -> (B, 1, C)``."""
    attended = _class_token_attention(block.attn, block.norm1(x), row, fused)
    x = x[:, row : row + 1] + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _adapted_tail(block: nn.Module, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """``AdaptedViTBlock.forward`` for the class token only."""
    attended = _class_token_attention(block.attn, block.norm1(x), 0, fused)
    x = x[:, :1] + block.drop_path1(block.ls1(attended))
    normed = block.norm2(x)
    return block.adaptmlp(x, normed, block.drop_path2(block.ls2(block.mlp(normed))))


def _prompted_tail(block: nn.Module, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """``PromptedViTBlock.forward`` for the class token only (it sits after the prompts until this block strips
    them)."""
    x = block.vpt(x) if block.vpt.prepend else x
    return _plain_tail(block, x, fused, row=block.vpt.num_tokens)


# block class -> its forward for the class token only; a speed option's subclass uses its base's entry
TAILS: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]] = {
    Block: _plain_tail,
    AdaptedViTBlock: _adapted_tail,
    PromptedViTBlock: _prompted_tail,
}


def _tail_of(block: nn.Module) -> Callable[[nn.Module, torch.Tensor, bool], torch.Tensor] | None:
    """The tail of the block's class. A subclass from this package (a speed option's) computes its base's function
    and uses its base's entry; any other subclass (a method's block, adding a module after the block, say) computes
    something else and has a tail only if it is listed itself."""
    for cls in type(block).__mro__:
        if cls in TAILS:
            return TAILS[cls]
        if not cls.__module__.startswith(f"{__package__}."):
            return None
    return None


def class_token_forward(block: nn.Module, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """``block(x)[:, :1]`` for the block classes in ``TAILS``, computing only what the class token needs; ``fused``
    picks the attention kernel (the one the block's attention would use now)."""
    tail = _tail_of(block)
    if tail is None:
        raise ValueError(f"{type(block).__name__} has no class-token tail")
    return tail(block, x, fused)
