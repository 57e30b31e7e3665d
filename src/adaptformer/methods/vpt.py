"""Visual Prompt Tuning (Jia et al., ECCV 2022), the paper's prompt baseline.

N learnable tokens (xavier-uniform init) are prepended to the token sequence. VPT-deep gives every block its own
prompts and strips them after the block, so the backbone's pooling (CLS token or mean) never sees them; VPT-shallow
prepends once before the first block and strips after the last. The three roles: :class:`VPTConfig`, :func:`attach`
(a ``vpt`` module in each prompted block, whose class becomes :class:`PromptedViTBlock`; prompts live at
``blocks.{i}.vpt.tokens``, backbone names unchanged) and :func:`prompt_modules` (what trains, found by type).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from ..backbones.families import block_width, chosen_blocks, install, qualified_name
from ..errors import UnsupportedModelError
from ..validation import check_probability
from .registry import Method, MethodConfig


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """Prompt tokens for the VPT baseline.

    Args:
        num_tokens: prompt tokens per prompted layer.
        deep: true for VPT-deep (new prompts at every block), false for VPT-shallow (first block only).
        dropout: dropout on the prompt tokens during training.
    """

    num_tokens: int = 1
    deep: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {self.num_tokens!r}")
        if not isinstance(self.deep, bool):
            raise ValueError(f"deep must be true or false, got {self.deep!r}")
        check_probability("dropout", self.dropout)


class PromptTokens(nn.Module):
    """The prompts of one block: prepends ``num_tokens`` tokens and/or strips them again after the block."""

    def __init__(self, dim: int, num_tokens: int, prepend: bool, strip: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.prepend = prepend
        self.strip = strip
        self.dropout = nn.Dropout(dropout)
        if prepend:
            self.tokens = nn.Parameter(torch.empty(1, num_tokens, dim))
            nn.init.xavier_uniform_(self.tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompts = self.dropout(self.tokens.expand(x.shape[0], -1, -1)).to(x.dtype)  # (B, P, D)
        return torch.cat([prompts, x], dim=1)  # (B, P + N, D)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, prepend={self.prepend}, strip={self.strip}"


class PromptedViTBlock(Block):
    """timm ``vision_transformer.Block`` that prepends its prompts before and/or strips them after itself."""

    vpt: PromptTokens

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.vpt.prepend:
            x = self.vpt(x)  # (B, P + N, D)
        x = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if self.vpt.strip:
            x = x[:, self.vpt.num_tokens :]  # (B, N, D)
        return x


def prompt_modules(model: nn.Module) -> list[nn.Module]:
    """The model's prompt modules, found by type."""
    return [m for m in model.modules() if isinstance(m, PromptTokens)]


def attach(model: nn.Module, config: VPTConfig) -> nn.Module:
    """Attach VPT prompts to a ViT-family model in place (UnsupportedModelError for other block families, or for ViT
    blocks another method adapted already)."""
    if prompt_modules(model):
        raise ValueError(f"{type(model).__name__} already has prompts")
    try:
        _, blocks, _ = chosen_blocks(model, ("vit",), None, what="VPT")
    except UnsupportedModelError as error:
        if any(isinstance(m, Block) for m in model.modules()):
            raise  # ViT blocks that another method made its own: chosen_blocks names the block
        kinds = sorted({qualified_name(type(m)) for m in model.modules() if "block" in type(m).__name__.lower()})
        raise UnsupportedModelError(
            f"VPT supports timm ViT blocks ({qualified_name(Block)}); {type(model).__name__} has {kinds}"
        ) from error
    last = len(blocks) - 1
    for i, (_, block) in enumerate(blocks):
        prepend = config.deep or i == 0
        strip = config.deep or i == last
        if not (prepend or strip):
            continue
        tokens = PromptTokens(block_width(block), config.num_tokens, prepend, strip, config.dropout)
        install(block, "vpt", tokens, PromptedViTBlock)
    return model


METHOD = Method(
    name="vpt",
    config=VPTConfig,
    attach=attach,
    modules=prompt_modules,
    summary="visual prompt tuning: learnable tokens prepended at every block (deep) or the first (Jia et al., 2022)",
    group="prompts",
    weight_decay=False,
    title="VPT",
    batch_refusal="VPT adds tokens, so the sequence length would differ per task",
)
