"""The "frozen_backward" option: adapted and VPT-prompted ViT blocks whose frozen halves run through the hand-written
backward of :mod:`.frozen_backward`.

Each block class the option knows gets a subclass here with the same computation, written as its base's ``forward``
with ``attn(norm1(x))`` and ``mlp(norm2(x))`` routed through :func:`_attention_half` / :func:`_mlp_half`;
:func:`set_frozen_backward` swaps a model's blocks to these subclasses (no parameter is renamed) or back. Per call,
each half still checks that the fast path computes exactly its module's function and falls back otherwise. A method
whose blocks are not listed in ``FAST_BLOCKS`` simply runs its own forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..methods.adaptformer import AdaptedViTBlock
from ..methods.vpt import PromptedViTBlock
from .frozen_backward import frozen_attention, frozen_mlp, recording, supports_attention, supports_mlp


def _attention_half(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """``block.attn(block.norm1(x))``, through :func:`frozen_attention` when the block allows it now."""
    if (
        block.frozen_attention
        and attn_mask is None
        and not is_causal
        and recording(x)
        and supports_attention(block.norm1, block.attn, x)
    ):
        return frozen_attention(block.norm1, block.attn, x)
    return block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal)


def _mlp_half(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(block.mlp(block.norm2(x)), block.norm2(x))``, through :func:`frozen_mlp` when the block allows it now."""
    if recording(x) and supports_mlp(block.norm2, block.mlp, x):
        return frozen_mlp(block.norm2, block.mlp, x)
    normed = block.norm2(x)
    return block.mlp(normed), normed


class FrozenBackwardAdaptedViTBlock(AdaptedViTBlock):
    """:class:`~adaptformer.methods.adaptformer.AdaptedViTBlock` with its frozen halves through the hand-written
    backward."""

    frozen_attention: bool = True  # also the attention half (False: the MLP half only)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(_attention_half(self, x, attn_mask, is_causal)))
        h, normed = _mlp_half(self, x)
        return self.adaptmlp(x, normed, self.drop_path2(self.ls2(h)))


class FrozenBackwardPromptedViTBlock(PromptedViTBlock):
    """:class:`~adaptformer.methods.vpt.PromptedViTBlock` with its frozen halves through the hand-written backward."""

    frozen_attention: bool = True

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.vpt.prepend:
            x = self.vpt(x)  # (B, P + N, D)
        x = x + self.drop_path1(self.ls1(_attention_half(self, x, attn_mask, is_causal)))
        x = x + self.drop_path2(self.ls2(_mlp_half(self, x)[0]))
        if self.vpt.strip:
            x = x[:, self.vpt.num_tokens :]  # (B, N, D)
        return x


# a method's block class -> its subclass with the hand-written frozen backward
FAST_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    AdaptedViTBlock: FrozenBackwardAdaptedViTBlock,
    PromptedViTBlock: FrozenBackwardPromptedViTBlock,
}


def set_frozen_backward(model: nn.Module, enable: bool, attention: bool) -> int:
    """Swap the model's blocks listed in ``FAST_BLOCKS`` to their hand-written-backward subclass (MLP half, and the
    attention half too if ``attention``), or back when not ``enable``; returns the number of blocks that now use it."""
    base_of = {fast: base for base, fast in FAST_BLOCKS.items()}
    count = 0
    for module in model.modules():
        base = base_of.get(type(module), type(module))
        if base not in FAST_BLOCKS:
            continue
        module.__class__ = FAST_BLOCKS[base] if enable else base
        if enable:
            module.frozen_attention = attention
            count += 1
        else:
            module.__dict__.pop("frozen_attention", None)
    return count
