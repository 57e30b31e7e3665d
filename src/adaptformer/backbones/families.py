"""Backbone families: which transformer blocks a model is built of, in forward order, with their stage index.

Methods attach to blocks found here. A family is one :class:`BlockFamily` entry of :func:`families`: a name and the
block class of the library that defines it. Its blocks are the modules of exactly that class, in registration order (the
forward order of every supported model); a block's stage counts how often the block width changed before it (0 for an
isotropic ViT, one stage per resolution for a hierarchical Swin). A method that supports the family adds its own
adapted block class for it (e.g. :data:`adaptformer.methods.adaptformer.ADAPTED_BLOCKS`).

The families of transformers' encoder layers (:mod:`.hf.layers`) join once transformers has been imported: a model
cannot hold transformers layers before, and importing their modeling modules costs every process that never uses them
(`import adaptformer` in 4.4 s instead of 6.4 s here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakSet

import torch
import torch.nn as nn
from timm.models.beit import Block as BeitBlock
from timm.models.eva import EvaBlock
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torchvision.models.swin_transformer import SwinTransformerBlock as TorchvisionSwinBlock
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionViTBlock

from ..errors import UnsupportedModelError


def block_width(block: nn.Module) -> int:
    """The channel count a block's feed-forward branch reads (and an adapter beside it): the input width of the
    first Linear of its ``mlp`` (``fc1`` of timm's Mlp, ``fc1_g`` of its SwiGLU, ``mlp[0]`` of torchvision's MLP), or
    of its ``intermediate`` (the BERT-style layers of transformers, VideoMAE's)."""
    mlp = block.mlp if hasattr(block, "mlp") else getattr(block, "intermediate", None)
    first = next((m for m in mlp.modules() if isinstance(m, nn.Linear)), None) if mlp is not None else None
    if first is None:
        raise UnsupportedModelError(f"{type(block).__name__} has no MLP Linear layer to read the block width from")
    return first.in_features


@dataclass(frozen=True)
class BlockFamily:
    """A kind of transformer block that methods can attach to.

    Args:
        name: the family's short name ("vit", "swin", "eva", ...), what methods key their adapted blocks by.
        block_type: the library's block class; only modules of exactly this class are the family's blocks (a subclass
            computes something else: torchvision's Swin V2 block subclasses the V1 block).
        halves: for a transformers layer, its forward split around the feed-forward branch, ``(block, *args,
            **kwargs) -> (x', LN(x'), h)`` (:mod:`.hf.layers`), from which methods build their adapted layer; None
            for timm's and torchvision's blocks, whose adapted blocks each method writes out.
        projections: where LoRA attaches when q, k, v and o are separate ``nn.Linear`` layers (transformers): target
            name -> path from the block; None: timm's fused ``attn.qkv`` and ``attn.proj``.
        no_prompts: ``model -> why VPT cannot prepend prompt tokens to its blocks`` (None: it can, or the family
            has no prompted block at all).
        tuple_output: whether the block returns ``(tokens, attention weights)`` (transformers' Swin layer) instead of
            the tokens alone.
    """

    name: str
    block_type: type[nn.Module]
    halves: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    projections: Mapping[str, str] | None = None
    no_prompts: Callable[[nn.Module], str | None] | None = None
    tuple_output: bool = False

    def output(self, hidden_states: torch.Tensor) -> Any:
        """What the family's block returns for its output tokens: Swin's transformers layer returns (tokens, attention
        weights), and an adapted layer gives None for the weights (transformers reads them only when asked to)."""
        return (hidden_states, None) if self.tuple_output else hidden_states

    def is_block(self, module: nn.Module) -> bool:
        """Whether ``module`` is a plain block of this family, or one a method already adapted (its class is a
        subclass that :func:`install` swapped in, or a subclass of one: a speed option's variant of it)."""
        cls = type(module)
        return cls is self.block_type or (issubclass(cls, self.block_type) and is_adapted_block(cls))

    def blocks(self, model: nn.Module) -> list[tuple[int, nn.Module]]:
        """``model``'s blocks of this family in forward order, as ``(stage, block)`` pairs."""
        found, stage, width = [], -1, None
        for module in model.modules():
            if self.is_block(module):
                if block_width(module) != width:
                    stage, width = stage + 1, block_width(module)
                found.append((stage, module))
        return found


BUILTIN_FAMILIES: tuple[BlockFamily, ...] = (
    BlockFamily("vit", Block),  # timm ViT, DeiT, MAE; adaptformer's VideoMAE video ViT and shapes ViT
    BlockFamily("swin", SwinTransformerBlock),  # timm Swin
    BlockFamily("eva", EvaBlock),  # timm EVA, EVA-02, the RoPE ViTs (vit_*_rope_*)
    BlockFamily("beit", BeitBlock),  # timm BEiT, BEiT v2
    BlockFamily("tv_vit", TorchvisionViTBlock),  # torchvision ViT (tv_vit_*)
    BlockFamily("tv_swin", TorchvisionSwinBlock),  # torchvision Swin V1 (tv_swin_*) and Swin3D (tv_swin3d_*)
)

_hf_families: tuple[BlockFamily, ...] | None = None


def hf_families() -> tuple[BlockFamily, ...]:
    """transformers' vision encoder layers (``hf:<folder>`` backbones, :mod:`.hf`): ViT, DeiT, DINOv2 (with and without
    registers), CLIP and SigLIP vision towers, BEiT, VideoMAE, Swin. Empty until transformers has been imported (or
    when it is not installed); read from :mod:`.hf.layers` on the first call after."""
    global _hf_families
    if _hf_families is None:
        if "transformers" not in sys.modules:
            return ()
        try:
            from .hf.layers import LAYERS
        except ImportError:  # a transformers without these models: no hf: backbone can be built either
            _hf_families = ()
            return _hf_families
        _hf_families = tuple(
            BlockFamily(name, hf.layer, hf.halves, hf.projections, hf.no_prompts, hf.tuple_output)
            for name, hf in LAYERS.items()
        )
    return _hf_families


def families() -> tuple[BlockFamily, ...]:
    """Every family methods can attach to: timm's and torchvision's, then transformers' (:func:`hf_families`)."""
    return BUILTIN_FAMILIES + hf_families()


class BlockClasses(Mapping[str, type[nn.Module]]):
    """A method's block class per family name: the classes it writes out (timm's and torchvision's blocks), and for
    each transformers family one that ``build`` makes from the family's ``halves`` when first looked up (the families
    join once transformers is imported: :func:`hf_families`). Iterating gives the names supported right now."""

    def __init__(self, written: Mapping[str, type[nn.Module]], build: Callable[[BlockFamily], type[nn.Module]]):
        self._written = dict(written)
        self._build = build
        self._built: dict[str, type[nn.Module]] = {}

    def __getitem__(self, name: str) -> type[nn.Module]:
        if name in self._written:
            return self._written[name]
        if name not in self._built:
            family = next((f for f in hf_families() if f.name == name), None)
            if family is None:
                raise KeyError(name)
            self._built[name] = self._build(family)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._written
        yield from (f.name for f in hf_families())

    def __len__(self) -> int:
        return len(self._written) + len(hf_families())


def adapted_class(family: BlockFamily, prefix: str, forward: Callable[..., Any], module: str) -> type[nn.Module]:
    """A method's adapted subclass ``<prefix><block class>`` of ``family``'s block class with ``forward``, defined for
    the families described by their ``halves`` (one forward serves them all), ``module`` being the method's."""
    name = f"{prefix}{family.block_type.__name__}"
    return type(name, (family.block_type,), {"forward": forward, "__module__": module, "__qualname__": name})


def qualified_name(cls: type) -> str:
    """``module.Class``: timm has several classes named ``Block`` (ViT's, BEiT's, ...), so the module says which."""
    return f"{cls.__module__}.{cls.__qualname__}"


def find_family(model: nn.Module, supported: tuple[str, ...] | None = None, what: str = "a method") -> BlockFamily:
    """The family whose blocks ``model`` is built of (among ``supported`` names, default all); an
    :class:`UnsupportedModelError` naming its block types and ``what`` could not be attached otherwise."""
    candidates = [f for f in families() if supported is None or f.name in supported]
    for family in candidates:
        if any(family.is_block(m) for m in model.modules()):
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
    return family, family.blocks(model)


def chosen_blocks(
    model: nn.Module, supported: tuple[str, ...], layers: tuple[int, ...] | None, what: str
) -> tuple[BlockFamily, list[tuple[int, nn.Module]], list[int]]:
    """What a method attaching per block needs: ``model``'s family (among ``supported``), all its blocks as ``(stage,
    block)`` pairs, and the indices ``layers`` chooses (None: every block), all checked before anything changes: in
    range (ValueError) and each a plain block of its family, not one another method made its own
    (UnsupportedModelError)."""
    family, blocks = family_blocks(model, supported, what)
    wanted = list(range(len(blocks))) if layers is None else list(layers)
    missing = [i for i in wanted if i >= len(blocks)]
    if missing:
        raise ValueError(f"layers {missing} out of range: {type(model).__name__} has {len(blocks)} blocks (0..)")
    for index in wanted:
        block = blocks[index][1]
        if type(block) is not family.block_type:
            name = family.block_type.__name__
            raise UnsupportedModelError(f"block {index} is {type(block).__name__}, a subclass of {name}")
    return family, blocks, wanted


# the block classes methods swapped in with install(): a subclass of a family's block counts as that family's only if
# it is one of these (or derives from one), since a library subclass may compute something else (Swin V2's block)
_ADAPTED_BLOCKS: WeakSet[type] = WeakSet()


def is_adapted_block(cls: type) -> bool:
    """Whether ``cls`` is a block class some method installed (:func:`install`), or a subclass of one."""
    return any(base in _ADAPTED_BLOCKS for base in cls.__mro__)


def install(block: nn.Module, name: str, module: nn.Module, adapted: type[nn.Module]) -> None:
    """Give ``block`` a method's ``module`` as child ``name`` (on the block's device; it keeps its own dtype: the
    trained weights stay fp32 over a low-precision backbone) and make it the method's ``adapted`` subclass of its
    class, whose ``forward`` uses the module. The block's own parameter names do not change; from now on blocks of
    class ``adapted`` count as their family's (:meth:`BlockFamily.is_block`), wherever the class is defined."""
    if not issubclass(adapted, type(block)):
        raise ValueError(f"{qualified_name(adapted)} does not subclass the block's class {qualified_name(type(block))}")
    _ADAPTED_BLOCKS.add(adapted)
    block.add_module(name, module.to(device=next(block.parameters()).device))
    block.__class__ = adapted
