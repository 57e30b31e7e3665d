"""Backbone families: which transformer blocks a model is built of, in forward order, with their stage index.

Methods attach to blocks found here. A family is one :class:`BlockFamily` entry: the timm block class, a function
that lists a model's blocks as ``(stage, block)`` pairs (stage 0 for an isotropic ViT, one stage per resolution for a
hierarchical Swin), and how wide a block's feature-forward input is. Adding a family is one entry in ``FAMILIES``
plus, for each method that supports it, the adapted block class of that method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch.nn as nn
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage
from timm.models.vision_transformer import Block

from .errors import UnsupportedModelError


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
    """How to find a family's blocks (in forward order, with their stage index)."""

    name: str
    block_type: type[nn.Module]
    blocks: Callable[[nn.Module], Iterator[tuple[int, nn.Module]]]

    def width(self, block: nn.Module) -> int:
        """The channel count the block's MLP reads (and an adapter beside it)."""
        return block.mlp.fc1.in_features


FAMILIES: tuple[BlockFamily, ...] = (
    BlockFamily("vit", Block, _vit_blocks),
    BlockFamily("swin", SwinTransformerBlock, _swin_blocks),
)


def qualified_name(cls: type) -> str:
    """``module.Class``: timm has several classes named ``Block`` (ViT's, BEiT's, ...), and only one is supported."""
    return f"{cls.__module__}.{cls.__qualname__}"


def find_family(model: nn.Module, supported: tuple[str, ...] | None = None, what: str = "a method") -> BlockFamily:
    """The family whose blocks ``model`` is built of (among ``supported`` names, default all); an
    :class:`UnsupportedModelError` naming its block types and ``what`` could not be attached otherwise."""
    candidates = [f for f in FAMILIES if supported is None or f.name in supported]
    for family in candidates:
        if any(isinstance(m, family.block_type) for m in model.modules()):
            return family
    block_types = sorted({qualified_name(type(m)) for m in model.modules() if "block" in type(m).__name__.lower()})
    found = ", ".join(block_types) if block_types else f"no transformer blocks in {type(model).__name__}"
    names = ", ".join(f"{f.name} ({qualified_name(f.block_type)})" for f in candidates)
    raise UnsupportedModelError(
        f"cannot attach {what} to {type(model).__name__} with blocks: {found}; supported: {names}"
    )


def family_blocks(
    model: nn.Module, supported: tuple[str, ...] | None = None, what: str = "a method"
) -> tuple[BlockFamily, list[tuple[int, nn.Module]]]:
    """``model``'s family and its blocks as ``(stage, block)`` pairs in forward order."""
    family = find_family(model, supported, what)
    return family, list(family.blocks(model))
