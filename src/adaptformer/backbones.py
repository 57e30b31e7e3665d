"""Attaching AdaptMLP modules to backbone families, in place.

A family is the pair (timm block class, adapted subclass). The adapted subclass only overrides ``forward`` so that the
feed-forward half goes through :func:`adaptformer.adapter.adapted_ffn`; it keeps every submodule, buffer and
parameter name of the original block, so timm/MAE checkpoints load unchanged and the adapter lives under its own
``adaptmlp.`` prefix (``blocks.3.adaptmlp.down_proj.weight``, the authors' naming). Swapping ``__class__`` rather than
wrapping the block is deliberate: a wrapper would rename every backbone parameter.

Adding a backbone family is one :class:`BlockFamily` entry in ``FAMILIES`` plus its adapted block class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage
from timm.models.vision_transformer import Block

from .adapter import AdaptFormerConfig, AdaptMLP, adapted_ffn, adapted_sum
from .errors import UnsupportedModelError
from .frozen_backward import block_attention, block_mlp


class AdaptedViTBlock(Block):
    """timm ``vision_transformer.Block`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP
    # set by adaptformer.speed.set_frozen_backward: run the frozen halves through adaptformer.frozen_backward
    frozen_backward_attention: bool = False
    frozen_backward_mlp: bool = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        # the frozen halves go through adaptformer.frozen_backward where set_frozen_backward allowed it
        x = x + self.drop_path1(self.ls1(block_attention(self, x, attn_mask, is_causal)))
        h, normed = block_mlp(self, x)
        return adapted_sum(x, normed, self.drop_path2(self.ls2(h)), self.adaptmlp)


class AdaptedSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)  # (B, H*W, C)
        x = adapted_ffn(x, self.norm2, self.mlp, self.drop_path2, self.adaptmlp)
        return x.reshape(B, H, W, C)


def _vit_blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    for module in model.modules():
        if isinstance(module, Block):
            yield 0, module


def _swin_blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    stages = [m for m in model.modules() if isinstance(m, SwinTransformerStage)]
    for stage, layer in enumerate(stages):
        for module in layer.modules():
            if isinstance(module, SwinTransformerBlock):
                yield stage, module


@dataclass(frozen=True)
class BlockFamily:
    """How to find a family's blocks (in forward order, with their stage index) and what to turn them into."""

    name: str
    block_type: type[nn.Module]
    adapted_type: type[nn.Module]
    blocks: Callable[[nn.Module], Iterator[tuple[int, nn.Module]]]

    def width(self, block: nn.Module) -> int:
        return block.mlp.fc1.in_features


FAMILIES: tuple[BlockFamily, ...] = (
    BlockFamily("vit", Block, AdaptedViTBlock, _vit_blocks),
    BlockFamily("swin", SwinTransformerBlock, AdaptedSwinBlock, _swin_blocks),
)


def find_family(model: nn.Module) -> BlockFamily:
    """The family whose blocks the model is built of; an UnsupportedModelError naming its block types otherwise."""
    for family in FAMILIES:
        if any(isinstance(m, family.block_type) for m in model.modules()):
            return family
    block_types = sorted({type(m).__name__ for m in model.modules() if "block" in type(m).__name__.lower()})
    found = ", ".join(block_types) if block_types else f"no transformer blocks in {type(model).__name__}"
    supported = ", ".join(f"{f.name} ({f.block_type.__module__}.{f.block_type.__name__})" for f in FAMILIES)
    raise UnsupportedModelError(
        f"cannot attach adapters to {type(model).__name__} with blocks: {found}; supported: {supported}"
    )


def adapter_modules(model: nn.Module) -> list[AdaptMLP]:
    """The model's AdaptMLP modules, found by type."""
    return [m for m in model.modules() if isinstance(m, AdaptMLP)]


def adapt(model: nn.Module, config: AdaptFormerConfig | None = None) -> nn.Module:
    """Attach AdaptMLP modules to ``model``'s blocks in place and return it.

    Only attaching happens here; freezing is decided by :func:`adaptformer.methods.apply_method` (or
    :func:`adaptformer.create_model`). Raises UnsupportedModelError (a TypeError) for an unsupported backbone and
    ValueError when ``layers`` names blocks the model does not have or the model already carries adapters.
    """
    config = config or AdaptFormerConfig()
    if adapter_modules(model):
        raise ValueError(f"{type(model).__name__} already has AdaptMLP modules; adapt() it only once")
    family = find_family(model)
    blocks = list(family.blocks(model))
    wanted = range(len(blocks)) if config.layers is None else config.layers
    missing = [i for i in wanted if i >= len(blocks)]
    if missing:
        raise ValueError(f"layers {missing} out of range: {type(model).__name__} has {len(blocks)} blocks (0..)")
    num_stages = blocks[-1][0] + 1
    if isinstance(config.bottleneck, tuple) and len(config.bottleneck) != num_stages:
        raise ValueError(
            f"bottleneck lists {len(config.bottleneck)} stage widths, the backbone has {num_stages} stages"
        )
    for index in wanted:
        stage, block = blocks[index]
        if type(block) is not family.block_type:
            raise UnsupportedModelError(
                f"block {index} is {type(block).__name__}, a subclass of {family.block_type.__name__}"
            )
        width = family.width(block)
        adapter = AdaptMLP(width, config.bottleneck_for(width, stage), config)
        # Adapters stay fp32 even over a low-precision backbone: they are the trained weights.
        block.add_module("adaptmlp", adapter.to(device=next(block.parameters()).device))
        block.__class__ = family.adapted_type
    return model
