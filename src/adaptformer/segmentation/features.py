"""Dense feature maps of an adapted backbone: the outputs of chosen blocks (ViT family) or stages (Swin), as
(B, C, H / stride, W / stride) maps, computed through the method's adapted blocks.

Plain ViTs (timm ViT/DeiT/DINOv2/EVA/BEiT, torchvision ViT, transformers' ViT/DeiT/DINOv2/CLIP/SigLIP/BEiT) keep one
token sequence at the patch stride. Every prefix
token (class, register and distillation tokens, and VPT's prompts, which are prepended in front of those) sits before
the patch tokens, so a block's patch tokens are always its last (H / p) * (W / p) tokens; they are reshaped into a
map. Swin's stage outputs are maps already (timm and torchvision keep them NHWC; they become NCHW).

timm's ``forward_intermediates`` computes them where the model has it: it runs the stem and the blocks (the adapted
ones: a method swaps each block's class, or its projections, in place) as ``forward_features`` does, and stops after
the last block asked for. It strips ``num_prefix_tokens`` itself, which leaves VPT-shallow's prompts (inside every
block but the last) in front of the patches: taking the last tokens handles those too. A backbone without it
(torchvision's and transformers' models) is read with forward hooks on the same blocks during its
``forward_features``; transformers' Swin layers give their stage's grid as tokens, reshaped here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import to_2tuple

from ..backbones.families import block_width, find_family
from ..errors import UnsupportedModelError
from ..preprocessing import clip_frames

__all__ = ["FeatureLayout", "check_input_size", "feature_layout", "patch_features"]

# block families whose blocks keep one token sequence at the patch stride; the others (Swin) are hierarchical
TOKEN_FAMILIES = (
    "vit", "eva", "beit", "tv_vit",
    "hf_vit", "hf_deit", "hf_dinov2", "hf_dinov2_registers", "hf_clip", "hf_siglip", "hf_beit",
)  # fmt: skip
STAGE_FAMILIES = ("swin", "tv_swin", "hf_swin")


@dataclass(frozen=True)
class FeatureLayout:
    """Which feature maps a backbone offers and their shapes.

    Args:
        family: the backbone's block family (:mod:`adaptformer.backbones.families`).
        hierarchical: True for a backbone of stages (Swin: one map per stage, its stride doubling each stage); False
            for a plain ViT (one map per block, all at the patch stride).
        widths: the channels of each block's (plain) or stage's (hierarchical) map, in forward order.
        patch: (height, width) of a patch: the stride of the first map.
        fixed_size: the only (height, width) the backbone takes, or None when it takes any multiple of
            :attr:`divisor` (timm's ``dynamic_img_size=True`` or ``strict_img_size=False``, torchvision's Swin).
    """

    family: str
    hierarchical: bool
    widths: tuple[int, ...]
    patch: tuple[int, int]
    fixed_size: tuple[int, int] | None = None

    @property
    def count(self) -> int:
        """How many maps there are to choose from (blocks or stages)."""
        return len(self.widths)

    def stride(self, index: int) -> tuple[int, int]:
        """(height, width) of the input pixels one cell of map ``index`` covers."""
        factor = 2**index if self.hierarchical else 1
        return self.patch[0] * factor, self.patch[1] * factor

    @property
    def divisor(self) -> tuple[int, int]:
        """What the input height and width must be multiples of: the coarsest map's stride."""
        return self.stride(self.count - 1)


def _patch_size(backbone: nn.Module) -> tuple[int, int]:
    """timm's ``patch_embed.patch_size``; else (torchvision) the stride of the first convolution, its patch
    embedding."""
    embed = getattr(backbone, "patch_embed", None)
    if embed is not None and getattr(embed, "patch_size", None) is not None:
        return to_2tuple(embed.patch_size)
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UnsupportedModelError(f"cannot tell the patch size of {type(backbone).__name__}: no patch embedding")
    return to_2tuple(conv.stride)


def _fixed_size(backbone: nn.Module) -> tuple[int, int] | None:
    embed = getattr(backbone, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False):
        return to_2tuple(embed.img_size)
    if hasattr(backbone, "fixed_image_size"):  # a transformers backbone says (HFBackbone; None: any multiple)
        return backbone.fixed_image_size
    size = getattr(backbone, "image_size", None)  # torchvision's ViT: its position table fits one size only
    return to_2tuple(size) if isinstance(size, int) else None


def _map_modules(backbone: nn.Module, family: str, hierarchical: bool) -> list[nn.Module]:
    """The module whose output is each map: every block (plain), the last block of every stage (hierarchical)."""
    blocks = find_family(backbone, (family,)).blocks(backbone)
    if not hierarchical:
        return [block for _, block in blocks]
    last = dict(blocks)  # stage -> its last block
    return [last[stage] for stage in sorted(last)]


def feature_layout(backbone: nn.Module) -> FeatureLayout:
    """The :class:`FeatureLayout` of an image backbone of a known block family (UnsupportedModelError otherwise)."""
    if clip_frames(backbone) is not None:
        raise UnsupportedModelError(f"{type(backbone).__name__} takes video clips; segmentation takes image backbones")
    family = find_family(backbone, (*TOKEN_FAMILIES, *STAGE_FAMILIES), what="a segmentation head").name
    hierarchical = family in STAGE_FAMILIES
    widths = tuple(block_width(m) for m in _map_modules(backbone, family, hierarchical))
    return FeatureLayout(family, hierarchical, widths, _patch_size(backbone), _fixed_size(backbone))


def check_input_size(x: torch.Tensor, layout: FeatureLayout) -> None:
    """ValueError unless ``x`` is a batch of images whose size the backbone takes (:class:`FeatureLayout`)."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    height, width = int(x.shape[-2]), int(x.shape[-1])
    dh, dw = layout.divisor
    if height % dh or width % dw:
        what = "patch size" if not layout.hierarchical else "total stride: patch size x 2 per later stage"
        fit = (-(-height // dh) * dh, -(-width // dw) * dw)
        raise ValueError(
            f"input {height}x{width} is not a multiple of {dh}x{dw} (the backbone's {what}); pad or crop it to a "
            f"multiple, e.g. {fit[0]}x{fit[1]}"
        )
    if layout.fixed_size is not None and (height, width) != layout.fixed_size:
        fh, fw = layout.fixed_size
        raise ValueError(
            f"the backbone takes {fh}x{fw} inputs only, got {height}x{width}; build it with dynamic_img_size=True "
            "(timm ViT, EVA) or strict_img_size=False (timm Swin) to take other multiples of the patch size (a "
            "transformers backbone other than DINOv2 and Swin: the image_size of its config)"
        )


def _hooked(backbone: nn.Module, x: torch.Tensor, wanted: list[int], layout: FeatureLayout) -> list[torch.Tensor]:
    """The outputs of maps ``wanted``, caught by forward hooks during ``forward_features`` (tokens (B, N, C), or
    stage maps (B, C, h, w))."""
    modules = _map_modules(backbone, layout.family, layout.hierarchical)
    taken: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            taken[index] = output

        return hook

    handles = [modules[i].register_forward_hook(keep(i)) for i in wanted]
    try:
        forward = getattr(backbone, "forward_features", backbone)
        forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return [_hooked_map(taken[i], i, x, layout) for i in wanted]


def _hooked_map(
    output: torch.Tensor | tuple[torch.Tensor, ...], index: int, x: torch.Tensor, layout: FeatureLayout
) -> torch.Tensor:
    """A hooked block's output as the features of map ``index``: tokens (B, N, C) of a plain ViT as they are; a stage
    map as (B, C, h, w), from timm's and torchvision's NHWC maps or transformers' Swin tokens (B, h * w, C), which its
    layer returns with its attention weights."""
    if isinstance(output, tuple):
        output = output[0]
    if not layout.hierarchical:
        return output
    if output.dim() == 3:  # transformers' Swin: the stage's grid as a token sequence, row by row
        sh, sw = layout.stride(index)
        grid = (x.shape[-2] // sh, x.shape[-1] // sw)
        return output.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)
    return output.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)


def patch_features(
    backbone: nn.Module, x: torch.Tensor, layers: Sequence[int], layout: FeatureLayout
) -> list[torch.Tensor]:
    """The maps of blocks / stages ``layers`` (indices >= 0, repeats allowed) of ``backbone`` for images ``x``
    (B, 3, H, W), each (B, C_i, H / s_i, W / s_i) in the order asked for; see the module docstring."""
    check_input_size(x, layout)
    wanted = sorted(set(layers))
    if callable(getattr(backbone, "forward_intermediates", None)):
        fmt = "NCHW" if layout.hierarchical else "NLC"  # timm's Swin gives NCHW maps, its plain ViTs tokens
        raw = backbone.forward_intermediates(
            x, indices=wanted, output_fmt=fmt, stop_early=True, intermediates_only=True
        )  # each (B, C, h, w) or (B, prompts + N, C)
    else:
        raw = _hooked(backbone, x, wanted, layout)
    if not layout.hierarchical:
        grid = (x.shape[-2] // layout.patch[0], x.shape[-1] // layout.patch[1])
        raw = [_token_map(tokens, grid) for tokens in raw]
    maps = dict(zip(wanted, raw, strict=True))
    return [maps[i] for i in layers]


def _token_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The last ``h * w`` tokens (the patches, after every prefix token) of (B, T, C) as a (B, C, h, w) map."""
    patches = tokens[:, tokens.shape[1] - grid[0] * grid[1] :]  # (B, h * w, C)
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)  # (B, C, h, w)
