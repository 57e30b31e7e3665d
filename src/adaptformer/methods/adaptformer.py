"""AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535): AdaptMLP bottlenecks beside each block's frozen MLP.

A trainable down-projection, ReLU, dropout and up-projection, scaled by ``s``, runs beside the frozen MLP of a
transformer block. The defaults reproduce the authors' released code (which they state is the reference, not the
paper figure): the adapter reads the residual stream x' itself (no LayerNorm on its input), ``s = 0.1`` is fixed,
dropout 0.1, and the "lora" initialisation makes the up-projection output exactly zero, so an adapted model computes
exactly the frozen backbone's function at initialisation.

    parallel:   x = x' + DropPath(MLP(LN(x'))) + s * A(x')        (A(LN(x')) with input="normed", the paper's Eq. 3)
    sequential: h = DropPath(MLP(LN(x')));  x = x' + (h + s * A(h))

The three roles: :class:`AdaptFormerConfig` (what), :func:`attach` (an ``adaptmlp`` module in each chosen block, whose
class becomes its family's adapted subclass below; backbone names unchanged, adapters under
``blocks.N.adaptmlp.``, the authors' naming) and :func:`adapter_modules` (what trains, found by type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
import torch.nn as nn
from timm.models.beit import Block as BeitBlock
from timm.models.eva import EvaBlock
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torchvision.models.swin_transformer import SwinTransformerBlock as TorchvisionSwinBlock
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionViTBlock

from ..backbones.families import BlockClasses, BlockFamily, adapted_class, block_width, chosen_blocks, install
from ..validation import check_block_indices, check_choice, check_probability
from .adaptformer_route import route, without_adapter
from .protocol import BlockModule, Interpolation, Measurement
from .registry import Method, MethodConfig

SCALE_LEARNABLE = "learnable"
INPUTS = ("residual", "normed")
LAYERNORMS = ("none", "in", "out")
INITS = ("lora", "bert")
FORMS = ("parallel", "sequential")


@dataclass(frozen=True)
class AdaptFormerConfig(MethodConfig):
    """AdaptMLP modules beside each block's MLP (defaults: the authors' code, AdaptFormer-64).

    Args:
        bottleneck: hidden width d^ of every adapter (int), a fraction of each block's width (in (0, 1), a number or
            written 1/12 as the authors suggest for Swin; floored like dim // 12), or one int per stage of a
            hierarchical backbone (list, e.g. [10, 21, 42, 85] for Swin-B).
        scale: the fixed output scale s (number), or "learnable" for a trainable scalar initialised to 1.0.
        input: what the parallel adapter reads: residual (the block's residual stream x', authors' code) or normed
            (LN(x'), the paper's Eq. 3).
        layernorm: an adapter-owned LayerNorm: none, in (before the down projection) or out (after scaling).
        dropout: dropout probability after the adapter's ReLU (paper: 0.1 for images, 0.0 for video).
        init: lora (kaiming-uniform down, zero up and biases: exact identity at init) or bert (normal std 0.02
            weights: NOT function-preserving at init).
        form: parallel (beside the MLP) or sequential (applied to the MLP branch's output).
        layers: the blocks that get an adapter, as a list of indices in forward order over all blocks (e.g. [10, 11]
            for the last two of a 12-block ViT); null: every block.
    """

    bottleneck: int | float | tuple[int, ...] | str = 64
    scale: float | Literal["learnable"] = 0.1
    input: Literal["residual", "normed"] = "residual"
    layernorm: Literal["none", "in", "out"] = "none"
    dropout: float = 0.1
    init: Literal["lora", "bert"] = "lora"
    form: Literal["parallel", "sequential"] = "parallel"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        b = self.bottleneck
        if isinstance(b, str):  # a fraction as written, "1/12" (the paper's and the README's form)
            b = _fraction(b)
            object.__setattr__(self, "bottleneck", b)
        if isinstance(b, list | tuple):
            object.__setattr__(self, "bottleneck", tuple(b))
            if not b or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b):
                raise ValueError(f"bottleneck per stage must be a non-empty list of positive ints, got {b!r}")
        elif isinstance(b, bool) or not isinstance(b, int | float):
            raise ValueError(f"bottleneck must be an int, a float ratio or a list of ints per stage, got {b!r}")
        elif isinstance(b, int) and b < 1:
            raise ValueError(f"bottleneck must be >= 1, got {b}")
        elif isinstance(b, float) and not 0.0 < b < 1.0:
            raise ValueError(f"bottleneck as a ratio of the block width must be in (0, 1), got {b}")
        s = self.scale
        if isinstance(s, str):
            if s != SCALE_LEARNABLE:
                raise ValueError(f"scale must be a number or {SCALE_LEARNABLE!r}, got {s!r}")
        elif isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise ValueError(f"scale must be a finite number or {SCALE_LEARNABLE!r}, got {s!r}")
        else:
            object.__setattr__(self, "scale", float(s))
        check_choice("input", self.input, INPUTS)
        check_choice("layernorm", self.layernorm, LAYERNORMS)
        check_choice("init", self.init, INITS)
        check_choice("form", self.form, FORMS)
        if self.form == "sequential" and self.input != "residual":
            raise ValueError(
                'input="normed" applies to the parallel form only: the sequential adapter reads the MLP branch output'
            )
        check_probability("dropout", self.dropout)
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "layers", check_block_indices("layers", self.layers))

    def bottleneck_for(self, width: int, stage: int) -> int:
        """The hidden width of the adapter of a block of ``width`` channels in ``stage``."""
        b = self.bottleneck
        if isinstance(b, tuple):
            if stage >= len(b):
                raise ValueError(f"bottleneck gives {len(b)} stage widths {b}, but the backbone has a stage {stage}")
            return b[stage]
        if isinstance(b, float):
            return max(1, int(width * b + 1e-6))
        return b


def _fraction(text: str) -> float:
    """``"1/12"`` (a fraction as the paper writes it) as the float 1/12; ValueError naming the text otherwise (a
    number written as a string, "64", is not one: numbers are numbers)."""
    try:
        if "/" not in text:
            raise ValueError(text)
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"bottleneck must be an int, a ratio (0.0833 or 1/12) or a list of ints per stage, got {text!r}"
        ) from None


__all__ = ["AdaptFormerConfig", "AdaptMLP", "AdaptedSwinBlock", "AdaptedViTBlock", "adapter_modules", "attach"]


class AdaptMLP(nn.Module):
    """The AdaptFormer bottleneck: ``s * up(dropout(relu(down(x))))``, with optional LayerNorm in or out.

    ``forward(x, normed, h)`` is the block's feed-forward half with the adapter in it (what an adapted block calls);
    :meth:`branch` is the adapter's contribution alone.
    """

    def __init__(self, dim: int, bottleneck: int, config: AdaptFormerConfig) -> None:
        super().__init__()
        self.form = config.form
        self.input = config.input
        self.layernorm = config.layernorm
        self.norm = nn.LayerNorm(dim) if config.layernorm != "none" else nn.Identity()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.up_proj = nn.Linear(bottleneck, dim)
        if config.scale == SCALE_LEARNABLE:
            self.scale: nn.Parameter | float = nn.Parameter(torch.ones(1))
        else:
            self.scale = float(config.scale)
        self.reset_parameters(config.init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "lora") -> None:
        if init == "lora":
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
        else:  # "bert"
            nn.init.normal_(self.down_proj.weight, std=0.02)
            nn.init.normal_(self.up_proj.weight, std=0.02)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)
        if isinstance(self.scale, nn.Parameter):
            self.scale.fill_(1.0)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution ``s * A(x)`` for what it reads, (..., C) -> (..., C)."""
        if self.layernorm == "in":
            x = self.norm(x)
        out = self.up_proj(self.dropout(self.act(self.down_proj(x)))) * self.scale
        if self.layernorm == "out":
            out = self.norm(out)
        return out

    def forward(self, x: torch.Tensor, normed: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The feed-forward half's output given the residual stream ``x`` (x'), ``normed = norm2(x)`` and the
        (drop-path'ed) MLP branch ``h``. Ordered so that a zero adapter output gives exactly ``x + h``."""
        # the contribution in the residual stream's dtype: under autocast a learnable fp32 scale, an adapter norm or
        # an fp32 LayerNorm output read as input would otherwise promote the stream to fp32 (more memory, and a
        # bf16-stored frozen LayerNorm downstream refuses it)
        if self.form == "sequential":
            return x + (h + self.branch(h).to(x.dtype))
        return x + h + self.branch(self.reads(x, normed)).to(x.dtype)

    def reads(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """What the parallel adapter reads: the residual stream x' or its LayerNorm."""
        return normed if self.input == "normed" else x

    def extra_repr(self) -> str:
        scale = "learnable" if isinstance(self.scale, nn.Parameter) else self.scale
        return f"form={self.form}, input={self.input}, scale={scale}"


# The adapted block of each backbone family: the family's own ``forward`` with the feed-forward half put together by
# the block's ``adaptmlp`` (AdaptMLP.forward). Each subclasses the library's block, so parameter names, the attention
# half and everything the block owns stay the library's; only the class of an existing block is swapped.
# ``adaptmlp(x, normed, h)`` returns exactly ``x + h`` while the adapter outputs zero, so each ``forward`` computes bit
# for bit what the plain block computes at init.


class AdaptedViTBlock(Block):
    """timm ``vision_transformer.Block`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        normed = self.norm2(x)
        return self.adaptmlp(x, normed, self.drop_path2(self.ls2(self.mlp(normed))))


class AdaptedSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)  # (B, H*W, C)
        normed = self.norm2(x)
        x = self.adaptmlp(x, normed, self.drop_path2(self.mlp(normed)))
        return x.reshape(B, H, W, C)


class AdaptedEvaBlock(EvaBlock):
    """timm ``EvaBlock`` (EVA, EVA-02, RoPE ViTs: rotary attention, SwiGLU or GELU MLP, optional ``gamma`` layer
    scale) with an AdaptMLP beside its MLP."""

    adaptmlp: AdaptMLP

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x_attn = self.attn(self.norm1(x), rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        if self.gamma_1 is not None:
            x_attn = self.gamma_1 * x_attn
        x = x + self.drop_path1(x_attn)
        normed = self.norm2(x)
        x_mlp = self.mlp(normed)
        if self.gamma_2 is not None:
            x_mlp = self.gamma_2 * x_mlp
        return self.adaptmlp(x, normed, self.drop_path2(x_mlp))


class AdaptedBeitBlock(BeitBlock):
    """timm BEiT ``Block`` (relative position bias, optional ``gamma`` layer scale) with an AdaptMLP beside its MLP."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        x_attn = self.attn(self.norm1(x), shared_rel_pos_bias=shared_rel_pos_bias)
        x = x + self.drop_path1(x_attn if self.gamma_1 is None else self.gamma_1 * x_attn)
        normed = self.norm2(x)
        x_mlp = self.mlp(normed)
        return self.adaptmlp(x, normed, self.drop_path2(x_mlp if self.gamma_2 is None else self.gamma_2 * x_mlp))


class AdaptedTorchvisionViTBlock(TorchvisionViTBlock):
    """torchvision ``vision_transformer.EncoderBlock`` (``vit_b_16`` and kin) with an AdaptMLP beside its MLP."""

    adaptmlp: AdaptMLP

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + input  # x': the residual stream after attention
        normed = self.ln_2(x)
        return self.adaptmlp(x, normed, self.mlp(normed))


class AdaptedTorchvisionSwinBlock(TorchvisionSwinBlock):
    """torchvision ``swin_transformer.SwinTransformerBlock`` (image Swin V1 and the video Swin3D, whose blocks are
    this class with 3D window attention) with an AdaptMLP beside its MLP. Tokens are (B, H, W, C) or (B, T, H, W, C);
    the adapter acts on the last dimension."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        normed = self.norm2(x)
        return self.adaptmlp(x, normed, self.stochastic_depth(self.mlp(normed)))


def _adapted_layer(family: BlockFamily) -> type[nn.Module]:
    """A transformers encoder layer with an AdaptMLP beside its MLP: the layer's own computation split by its family
    (:mod:`adaptformer.backbones.hf.layers`), the feed-forward half put together by ``self.adaptmlp``."""
    assert family.halves is not None

    def forward(self: nn.Module, *args: object, **kwargs: object) -> object:
        return family.output(self.adaptmlp(*family.halves(self, *args, **kwargs)))

    return adapted_class(family, "Adapted", forward, __name__)


# backbone family name (backbones.families.families()) -> its adapted block class (a subclass of the family's block)
ADAPTED_BLOCKS = BlockClasses(
    {
        "vit": AdaptedViTBlock,
        "swin": AdaptedSwinBlock,
        "eva": AdaptedEvaBlock,
        "beit": AdaptedBeitBlock,
        "tv_vit": AdaptedTorchvisionViTBlock,
        "tv_swin": AdaptedTorchvisionSwinBlock,
    },
    _adapted_layer,
)


def adapter_modules(model: nn.Module) -> list[nn.Module]:
    """The model's AdaptMLP modules, found by type."""
    return [m for m in model.modules() if isinstance(m, AdaptMLP)]


def attach(model: nn.Module, config: AdaptFormerConfig) -> nn.Module:
    """Attach AdaptMLP modules to ``model``'s blocks in place and return it (freezing is not done here).

    Raises UnsupportedModelError for a backbone family without an adapted block, ValueError when ``layers`` names
    blocks the model does not have, the per-stage bottleneck list does not match, or the model already has adapters.
    """
    if adapter_modules(model):
        raise ValueError(f"{type(model).__name__} already has AdaptMLP modules; attach them only once")
    family, blocks, wanted = chosen_blocks(model, tuple(ADAPTED_BLOCKS), config.layers, what="adapters")
    num_stages = blocks[-1][0] + 1
    if isinstance(config.bottleneck, tuple) and len(config.bottleneck) != num_stages:
        raise ValueError(
            f"bottleneck lists {len(config.bottleneck)} stage widths, the backbone has {num_stages} stages"
        )
    for index in wanted:
        stage, block = blocks[index]
        width = block_width(block)
        install(
            block, "adaptmlp", AdaptMLP(width, config.bottleneck_for(width, stage), config), ADAPTED_BLOCKS[family.name]
        )
    return model


# ------------------------------------------------------------------------------------------------ the protocol


def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> Measurement:
    """``inspect``'s view of one AdaptMLP call: ``s * A(.)`` against the MLP branch h and the residual stream x'."""
    assert isinstance(module, AdaptMLP)
    x, normed, h = inputs
    read = h if module.form == "sequential" else module.reads(x, normed)
    return Measurement(output=module.branch(read), residual=x, mlp=h, form=module.form)


@torch.no_grad()
def interpolate(model: nn.Module, alpha: float, pretrained: object = None) -> None:
    """Every AdaptMLP's contribution times ``alpha``, in place: its output scale s (fixed or learnable) times alpha;
    with the adapter LayerNorm after the scaling (layernorm "out", which normalises s away) that norm's affine weight
    and bias instead, since they make the contribution then. alpha = 0 adds exact zeros: ``x + h``."""
    for module in adapter_modules(model):
        assert isinstance(module, AdaptMLP)
        if module.layernorm == "out":
            module.norm.weight.mul_(alpha)
            module.norm.bias.mul_(alpha)
        elif isinstance(module.scale, nn.Parameter):
            module.scale.mul_(alpha)
        else:
            module.scale = module.scale * alpha


def noise_sites(model: nn.Module) -> list[nn.Module]:
    """Where PACE's noise multiplies each AdaptMLP's contribution: its up-projection (the scale s is a constant
    factor after it), or the adapter LayerNorm after the scaling (layernorm "out")."""
    return [m.norm if m.layernorm == "out" else m.up_proj for m in adapter_modules(model)]  # type: ignore[union-attr]


METHOD = Method(
    name="adaptformer",
    config=AdaptFormerConfig,
    attach=attach,
    modules=adapter_modules,
    summary="AdaptMLP bottleneck adapters beside every block's MLP (Chen et al., NeurIPS 2022)",
    group="adapters",
    title="AdaptFormer",
    block_modules=(BlockModule("adaptmlp", bypass=without_adapter, route=route, measure=measure),),
    batch_refusal=None,
    interpolation=Interpolation(interpolate, how="each adapter's output scale s times alpha"),
    noise_sites=noise_sites,
)
