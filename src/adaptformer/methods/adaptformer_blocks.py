"""AdaptFormer's adapted block of each backbone family: the family's own ``forward`` with the feed-forward half put
together by the block's ``adaptmlp`` (:meth:`adaptformer.methods.adaptformer.AdaptMLP.add`).

Each class subclasses the library's block, so parameter names, the attention half and everything the block owns stay
the library's; only the class of an existing block is swapped. ``add(x, normed, h)`` returns exactly ``x + h`` while
the adapter outputs zero, so each ``forward`` below computes bit for bit what the plain block computes at init.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from timm.models.beit import Block as BeitBlock
from timm.models.eva import EvaBlock
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torchvision.models.swin_transformer import SwinTransformerBlock as TorchvisionSwinBlock
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionViTBlock

if TYPE_CHECKING:
    from .adaptformer import AdaptMLP


class AdaptedViTBlock(Block):
    """timm ``vision_transformer.Block`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        normed = self.norm2(x)
        return self.adaptmlp.add(x, normed, self.drop_path2(self.ls2(self.mlp(normed))))


class AdaptedSwinBlock(SwinTransformerBlock):
    """timm ``SwinTransformerBlock`` with an AdaptMLP beside its MLP (``self.adaptmlp``)."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)  # (B, H*W, C)
        normed = self.norm2(x)
        x = self.adaptmlp.add(x, normed, self.drop_path2(self.mlp(normed)))
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
        return self.adaptmlp.add(x, normed, self.drop_path2(x_mlp))


class AdaptedBeitBlock(BeitBlock):
    """timm BEiT ``Block`` (relative position bias, optional ``gamma`` layer scale) with an AdaptMLP beside its MLP."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        x_attn = self.attn(self.norm1(x), shared_rel_pos_bias=shared_rel_pos_bias)
        x = x + self.drop_path1(x_attn if self.gamma_1 is None else self.gamma_1 * x_attn)
        normed = self.norm2(x)
        x_mlp = self.mlp(normed)
        return self.adaptmlp.add(x, normed, self.drop_path2(x_mlp if self.gamma_2 is None else self.gamma_2 * x_mlp))


class AdaptedTorchvisionViTBlock(TorchvisionViTBlock):
    """torchvision ``vision_transformer.EncoderBlock`` (``vit_b_16`` and kin) with an AdaptMLP beside its MLP."""

    adaptmlp: AdaptMLP

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + input  # x': the residual stream after attention
        normed = self.ln_2(x)
        return self.adaptmlp.add(x, normed, self.mlp(normed))


class AdaptedTorchvisionSwinBlock(TorchvisionSwinBlock):
    """torchvision ``swin_transformer.SwinTransformerBlock`` (image Swin V1 and the video Swin3D, whose blocks are
    this class with 3D window attention) with an AdaptMLP beside its MLP. Tokens are (B, H, W, C) or (B, T, H, W, C);
    the adapter acts on the last dimension."""

    adaptmlp: AdaptMLP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        normed = self.norm2(x)
        return self.adaptmlp.add(x, normed, self.stochastic_depth(self.mlp(normed)))


# backbone family name (adaptformer.families.FAMILIES) -> its adapted block class (a subclass of the family's block)
ADAPTED_BLOCKS: dict[str, type[nn.Module]] = {
    "vit": AdaptedViTBlock,
    "swin": AdaptedSwinBlock,
    "eva": AdaptedEvaBlock,
    "beit": AdaptedBeitBlock,
    "tv_vit": AdaptedTorchvisionViTBlock,
    "tv_swin": AdaptedTorchvisionSwinBlock,
}
