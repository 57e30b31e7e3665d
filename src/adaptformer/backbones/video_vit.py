"""A video Vision Transformer with the VideoMAE layout (Tong et al., NeurIPS 2022), built from timm's parts.

AdaptFormer's video experiments (Chen et al., NeurIPS 2022) adapt a VideoMAE ViT: a clip (B, C, T, H, W) is cut into
tubelets of ``tubelet_size x patch_size x patch_size`` by a Conv3d (8 frames at 224 -> 4 x 14 x 14 = 784 tokens), a
FIXED sinusoidal position table is added, there is no CLS token, every block is a pre-norm transformer block whose
attention has q and v biases but no k bias, and the classifier reads the mean of all tokens through a fresh LayerNorm
(``fc_norm``).

The blocks are timm's own ``vision_transformer.Block`` (only the attention layer is swapped, through Block's
``attn_layer`` argument), so everything the library does to timm ViTs applies unchanged: ``adapt()`` finds the blocks
by type, VPT prompts them, heads are replaced through ``get_classifier()``. Parameter names follow VideoMAE's
fine-tuning model (``patch_embed.proj``, ``blocks.N.attn.qkv.weight``, ``blocks.N.attn.q_bias``, ``fc_norm``,
``head``), so its checkpoints need almost no renaming (see :mod:`adaptformer.backbones.checkpoints.videomae`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    Attention,
    LayerNorm,
    calculate_drop_path_rates,
    maybe_add_mask,
    resolve_self_attn_mask,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block

__all__ = ["QVBiasAttention", "TubeletEmbed", "VideoVisionTransformer", "sinusoid_position_table"]


def sinusoid_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table (``get_sinusoid_encoding_table``): (num_positions, dim), float32.

    Entry (p, j) is ``sin`` (even j) or ``cos`` (odd j) of ``p / 10000 ** (2 * (j // 2) / dim)``; computed in
    float64 like the original (numpy), then rounded once to float32.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (N, 1)
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim  # (D,)
    angles = position / torch.pow(10000.0, exponent)  # (N, D)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)


class QVBiasAttention(Attention):
    """timm ``Attention`` whose qkv projection has q and v biases but no k bias (VideoMAE, BEiT).

    A k bias would add ``q . b_k`` to every score of a query, a constant per softmax row, so it never changes the
    output; VideoMAE therefore has none. The biases are separate parameters ``q_bias`` / ``v_bias`` (VideoMAE's names),
    and the forward keeps timm's fused (``scaled_dot_product_attention``) or explicit path, chosen by
    ``use_fused_attn()`` exactly as in timm's ``Attention``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **kwargs)
        dd = {"device": self.qkv.weight.device, "dtype": self.qkv.weight.dtype}
        if qkv_bias:
            self.q_bias: nn.Parameter | None = nn.Parameter(torch.zeros(self.attn_dim, **dd))
            self.v_bias: nn.Parameter | None = nn.Parameter(torch.zeros(self.attn_dim, **dd))
        else:
            self.q_bias = self.v_bias = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))  # (3 * A,), k part zero
        if type(self.qkv) is nn.Linear:
            qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3 * A)
        else:  # an adapted projection (LoRA's LoRALinear): called, so that its update applies; then the q/v biases
            qkv = self.qkv(x) if bias is None else self.qkv(x) + bias
        qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, A)
        return self.proj_drop(self.proj(self.norm(x)))


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, N, D) tokens, one per ``tubelet_size x patch_size x patch_size`` tubelet (Conv3d)."""

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_frames: int,
        tubelet_size: int,
        in_chans: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        (height, width), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
        if height % ph or width % pw or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames {num_frames} a "
                f"multiple of tubelet_size {tubelet_size}"
            )
        self.img_size, self.patch_size, self.tubelet_size = (height, width), (ph, pw), tubelet_size
        self.input_size = (in_chans, num_frames, height, width)
        self.grid_size = (num_frames // tubelet_size, height // ph, width // pw)  # (T', H', W')
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        kernel = (tubelet_size, ph, pw)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_size:
            raise ValueError(f"expected clips shaped (B, C, T, H, W) = (B, *{self.input_size}), got {tuple(x.shape)}")
        x = self.proj(x)  # (B, D, T', H', W')
        return x.flatten(2).transpose(1, 2)  # (B, N, D), time-major: token (t, h, w) -> t * H'W' + h * W' + w


class VideoVisionTransformer(nn.Module):
    """VideoMAE-style ViT for clips (B, C, T, H, W): tubelet tokens, fixed sinusoid positions, mean pool + fc_norm.

    Follows timm's model interface (``forward_features`` / ``forward_head``, ``get_classifier``,
    ``reset_classifier``, ``num_classes``, ``num_features``). Two class attributes tell the library what is new for a
    task: ``task_modules`` (trained with the head, as in the paper) and ``head_init_std`` (the paper's video head
    init scale).
    """

    task_modules: tuple[str, ...] = ("fc_norm",)
    head_init_std: float = 0.001

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        num_frames: int = 8,
        tubelet_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 400,
        global_pool: str = "avg",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        """
        Args:
            img_size: input height and width (an int for square inputs).
            patch_size: spatial height and width of a tubelet.
            num_frames: frames per clip; the position table is sized for exactly this many.
            tubelet_size: frames per tubelet.
            in_chans: input channels.
            num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
            global_pool: "avg" (the only pooling of this model; accepted for timm compatibility).
            embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP ratio.
            qkv_bias: give the attention q and v biases (VideoMAE: True).
            init_values: LayerScale init (None: no LayerScale, VideoMAE's default).
            drop_rate: dropout before the head; pos_drop_rate, proj_drop_rate, attn_drop_rate: dropouts inside.
            drop_path_rate: stochastic depth, linearly increasing over the blocks.
        """
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"global_pool must be 'avg' (mean over all tokens), got {global_pool!r}")
        norm_layer = partial(LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False

        self.patch_embed = TubeletEmbed(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        table = sinusoid_position_table(self.patch_embed.num_patches, embed_dim)
        # Fixed, not learned; non-persistent so state_dicts (and VideoMAE's checkpoints) do not carry it.
        self.register_buffer("pos_embed", table[None], persistent=False)  # (1, N, D)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)  # linear 0 -> drop_path_rate over the blocks
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    init_values=init_values,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    attn_layer=QVBiasAttention,
                )
                for i in range(depth)
            ]
        )
        self.fc_norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=self.head_init_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """VideoMAE's fine-tuning init: truncated normal (std 0.02) linear weights, zero biases."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"global_pool must be 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        device = self.fc_norm.weight.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clips -> (B, N, D) tokens after the last block."""
        x = self.patch_embed(x)  # (B, N, D)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, D) tokens -> mean over tokens -> fc_norm -> (B, D) features, or (B, num_classes) logits."""
        x = self.fc_norm(x.mean(dim=1))  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2203.12602",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "video_vit_small_patch16_224": _cfg(),
        "video_vit_base_patch16_224": _cfg(),
        "video_vit_large_patch16_224": _cfg(),
    }
)


def _create_video_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    model = build_model_with_cfg(VideoVisionTransformer, variant, pretrained, **kwargs)
    # The token count, and so the position table, is fixed by the input size: record this instance's input (and its
    # frame count, which timm's config has no field for) so Preprocessing.from_model and the data pipeline agree.
    in_chans, num_frames, height, width = model.patch_embed.input_size
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (in_chans, height, width), "num_frames": num_frames}
    model.default_cfg = model.pretrained_cfg
    return model


@register_model
def video_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """VideoMAE ViT-S/16 (22M), 8 frames of 224 by default (``num_frames=16`` for 16)."""
    args = {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs}
    return _create_video_vit("video_vit_small_patch16_224", pretrained, **args)


@register_model
def video_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """VideoMAE ViT-B/16 (86M), the paper's video backbone; 8 frames of 224 by default."""
    args = {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs}
    return _create_video_vit("video_vit_base_patch16_224", pretrained, **args)


@register_model
def video_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """VideoMAE ViT-L/16 (304M), 8 frames of 224 by default."""
    args = {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs}
    return _create_video_vit("video_vit_large_patch16_224", pretrained, **args)
