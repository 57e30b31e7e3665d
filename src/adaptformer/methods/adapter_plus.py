"""Adapter+ (Steitz & Roth, "Adapters Strike Back", CVPR 2024): a bottleneck adapter after each block.

The paper compares adapter positions, structures and initialisations on VTAB-1k and puts the best together as
Adapter+: the Post-Adapter position (after the block's feed-forward sub-layer, its residual included), a learned
channel-wise scaling vector, Houlsby initialisation, no adapter LayerNorm, and stochastic depth on the adapter branch:

    y = x' + DropPath(MLP(LN(x')))                         the block as it is (x' = after attention)
    out = y + DropPath_a(s * up(GELU(down(y))))            s in R^d, initialised to ones

as in the authors' released code (``forward_post`` of adapter_plus/vit_adapter.py, config ``adapter_plus.yaml``:
bottleneck 8, drop_path 0.1, dropout 0, biases on, GELU). Houlsby initialisation draws both projection weights from a
normal with std 0.01 truncated at +-2 std, biases zero: the adapter is NOT zero at init, so an adapted model is close
to, not exactly, the frozen backbone (each output channel moves by at most 4e-4 * bottleneck * ||y||_1 per token; the
tests check that bound and bit-identity with a zero up-projection).

Because the adapter reads the block's output, it applies to every backbone family with the same few lines: each
adapted block class below is its family's block whose ``forward`` is the family's, followed by the adapter (tokens
on the last dimension, so Swin's (B, H, W, C) and Swin3D's (B, T, H, W, C) work as they are). The three roles:
:class:`AdapterPlusConfig`, :func:`attach` (an ``adapter_plus`` module in each chosen block, whose class is swapped;
backbone names unchanged) and :func:`adapter_plus_modules` (what trains, found by type).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.beit import Block as BeitBlock
from timm.models.eva import EvaBlock
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torchvision.models.swin_transformer import SwinTransformerBlock as TorchvisionSwinBlock
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionViTBlock

from ..backbones.families import BlockClasses, BlockFamily, adapted_class, block_width, chosen_blocks, install
from ..validation import check_block_indices, check_probability
from .protocol import BlockModule, Interpolation, Measurement
from .registry import Method, MethodConfig

HOULSBY_STD = 0.01  # the paper's value (Houlsby et al.'s code uses 1e-3); truncated at +-2 std


@dataclass(frozen=True)
class AdapterPlusConfig(MethodConfig):
    """Adapter+ after every block (defaults: the authors' Adapter+ configuration).

    Args:
        bottleneck: hidden width of every adapter (the paper's VTAB-1k runs use 8; 1 to 32 per task in its tuned rows).
        drop_path: stochastic depth rate on the adapter branch during training (paper: 0.1).
        layers: the blocks that get an adapter, as block indices in forward order; null: every block.
    """

    bottleneck: int = 8
    drop_path: float = 0.1
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        b = self.bottleneck
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"bottleneck must be a positive int, got {b!r}")
        check_probability("drop_path", self.drop_path)
        object.__setattr__(self, "drop_path", float(self.drop_path))
        object.__setattr__(self, "layers", check_block_indices("layers", self.layers))


class AdapterPlus(nn.Module):
    """The Adapter+ module: ``y + DropPath(s * up(GELU(down(y))))``, (..., d) -> (..., d), with its own residual."""

    def __init__(self, dim: int, bottleneck: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(dim))  # channel-wise
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Houlsby initialisation (the paper's): weights ~ N(0, 0.01^2) truncated at +-0.02, biases 0, scale 1."""
        for linear in (self.down_proj, self.up_proj):
            nn.init.trunc_normal_(linear.weight, std=HOULSBY_STD, a=-2 * HOULSBY_STD, b=2 * HOULSBY_STD)
            nn.init.zeros_(linear.bias)
        self.scale.fill_(1.0)

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        """The adapter branch ``s * up(GELU(down(y)))`` alone, (..., d) -> (..., d)."""
        return self.up_proj(self.act(self.down_proj(y))) * self.scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # Under autocast the fp32 scale would promote the branch: the stream keeps its dtype for the frozen blocks.
        return y + self.drop_path(self.branch(y).to(y.dtype))


class AdapterPlusViTBlock(Block):
    """timm ``vision_transformer.Block`` followed by its Adapter+ (``self.adapter_plus``)."""

    adapter_plus: AdapterPlus

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return self.adapter_plus(super().forward(x, attn_mask=attn_mask, is_causal=is_causal))


class AdapterPlusSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` followed by its Adapter+; tokens (B, H, W, C)."""

    adapter_plus: AdapterPlus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_plus(super().forward(x))


class AdapterPlusEvaBlock(EvaBlock):
    """timm ``EvaBlock`` (EVA, EVA-02, RoPE ViTs) followed by its Adapter+."""

    adapter_plus: AdapterPlus

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        return self.adapter_plus(super().forward(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal))


class AdapterPlusBeitBlock(BeitBlock):
    """timm BEiT ``Block`` followed by its Adapter+."""

    adapter_plus: AdapterPlus

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.adapter_plus(super().forward(x, shared_rel_pos_bias=shared_rel_pos_bias))


class AdapterPlusTorchvisionViTBlock(TorchvisionViTBlock):
    """torchvision ``vision_transformer.EncoderBlock`` followed by its Adapter+."""

    adapter_plus: AdapterPlus

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.adapter_plus(super().forward(input))


class AdapterPlusTorchvisionSwinBlock(TorchvisionSwinBlock):
    """torchvision ``SwinTransformerBlock`` (Swin V1 and Swin3D) followed by its Adapter+; tokens (B, [T,] H, W, C)."""

    adapter_plus: AdapterPlus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_plus(super().forward(x))


def _adapter_plus_layer(family: BlockFamily) -> type[nn.Module]:
    """A transformers encoder layer (:mod:`adaptformer.backbones.hf.layers`) followed by its Adapter+: the layer's
    output tokens x' + h through ``self.adapter_plus``."""
    assert family.halves is not None

    def forward(self: nn.Module, *args: object, **kwargs: object) -> object:
        x, _, h = family.halves(self, *args, **kwargs)
        return family.output(self.adapter_plus(x + h))

    return adapted_class(family, "AdapterPlus", forward, __name__)


# backbone family name (adaptformer.backbones.families.families()) -> its Adapter+ block class (a subclass of the
# family's block)
ADAPTER_PLUS_BLOCKS = BlockClasses(
    {
        "vit": AdapterPlusViTBlock,
        "swin": AdapterPlusSwinBlock,
        "eva": AdapterPlusEvaBlock,
        "beit": AdapterPlusBeitBlock,
        "tv_vit": AdapterPlusTorchvisionViTBlock,
        "tv_swin": AdapterPlusTorchvisionSwinBlock,
    },
    _adapter_plus_layer,
)


def adapter_plus_modules(model: nn.Module) -> list[nn.Module]:
    """The model's Adapter+ modules, found by type."""
    return [m for m in model.modules() if isinstance(m, AdapterPlus)]


def attach(model: nn.Module, config: AdapterPlusConfig) -> nn.Module:
    """Put an Adapter+ after each chosen block of ``model``, in place; returns the model.

    Raises UnsupportedModelError for a backbone family without an Adapter+ block (or a block that is already another
    method's subclass), ValueError when ``layers`` names blocks the model does not have or the model already has them.
    """
    if adapter_plus_modules(model):
        raise ValueError(f"{type(model).__name__} already has Adapter+ modules; attach them only once")
    family, blocks, wanted = chosen_blocks(model, tuple(ADAPTER_PLUS_BLOCKS), config.layers, what="Adapter+")
    for index in wanted:
        block = blocks[index][1]
        adapter = AdapterPlus(block_width(block), config.bottleneck, config.drop_path)
        install(block, "adapter_plus", adapter, ADAPTER_PLUS_BLOCKS[family.name])
    return model


# ------------------------------------------------------------------------------------------------ the protocol


def without_adapter(y: torch.Tensor) -> torch.Tensor:
    """The plain block's output: what an Adapter+ block has before its adapter."""
    return y


def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> Measurement:
    """``inspect``'s view of one Adapter+ call: the adapter branch against the residual stream y it is added to (drop
    path is the identity in eval)."""
    assert isinstance(module, AdapterPlus)
    (y,) = inputs
    return Measurement(output=module.branch(y), residual=y, form="post-block")


@torch.no_grad()
def interpolate(model: nn.Module, alpha: float, pretrained: object = None) -> None:
    """Every Adapter+'s contribution times ``alpha``, in place: its channel-wise scale s times alpha (alpha = 0 adds
    exact zeros: the plain block's output)."""
    for module in adapter_plus_modules(model):
        assert isinstance(module, AdapterPlus)
        module.scale.mul_(alpha)


def noise_sites(model: nn.Module) -> list[nn.Module]:
    """Where PACE's noise multiplies each Adapter+'s contribution: its up-projection (s is a fixed factor after it)."""
    return [m.up_proj for m in adapter_plus_modules(model)]  # type: ignore[misc]


METHOD = Method(
    name="adapter_plus",
    config=AdapterPlusConfig,
    attach=attach,
    modules=adapter_plus_modules,
    summary="Adapter+: a scaled bottleneck adapter after every block (Steitz & Roth, CVPR 2024)",
    group="adapters",
    title="Adapter+",
    block_modules=(BlockModule("adapter_plus", bypass=without_adapter, measure=measure),),
    batch_refusal=None,
    interpolation=Interpolation(interpolate, how="each adapter's channel-wise scale s times alpha"),
    noise_sites=noise_sites,
)
