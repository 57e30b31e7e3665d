"""torchvision's image ViT (Dosovitskiy et al., ICLR 2021) and Swin V1 (Liu et al., ICCV 2021) as timm models.

AdaptFormer (Chen et al., NeurIPS 2022) adapts a frozen ViT (Tables 1-6) and a Swin-B (Table 7). torchvision ships
both with its own ImageNet weights (and, for ViT, Meta's SWAG weights); this module registers them with timm under
``tv_vit_{b_16,b_32,l_16,l_32,h_14}`` and ``tv_swin_{t,s,b}`` so ``timm.create_model``, ``adaptformer.create_model``
and ``--model.backbone`` find them. Each class subclasses torchvision's model unchanged: same submodules, same
parameter names (ViT: ``conv_proj``, ``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}``,
``encoder.ln``, ``heads.head``; Swin: ``features.0`` = patch embedding, ``features.{2i+1}`` = stage i,
``features.{2i+2}`` = its patch merging, ``norm``, ``head``), so torchvision's weight files load as they are
(checkpoint source ``torchvision``) and ``forward`` computes exactly torchvision's.

What the subclasses add is what the library reads from a timm model: ``get_classifier()`` / ``reset_classifier``,
``num_classes`` / ``num_features``, ``forward_features`` / ``forward_head``, grad checkpointing, and a
``pretrained_cfg`` whose url, input size, interpolation, crop_pct, mean and std are those of torchvision's weights
(its ``Weights.transforms()``: e.g. ViT-B/16 resizes to 256 bilinear and crops 224, Swin-B resizes to 238 bicubic).
The blocks are torchvision's ``EncoderBlock`` (family ``tv_vit``) and V1 ``SwinTransformerBlock`` (``tv_swin``).
torchvision's Swin V2 is not registered: its block subclasses V1's but is post-norm, and no method adapts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from torchvision.models import (
    Swin_B_Weights,
    Swin_S_Weights,
    Swin_T_Weights,
    ViT_B_16_Weights,
    ViT_B_32_Weights,
    ViT_H_14_Weights,
    ViT_L_16_Weights,
    ViT_L_32_Weights,
)
from torchvision.models._api import WeightsEnum
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from .torchvision_common import check_avg_pool, check_rgb, check_stages, linear_head, sizes

__all__ = ["TorchvisionSwin", "TorchvisionViT"]


class TorchvisionViT(VisionTransformer):
    """torchvision's ``VisionTransformer`` with timm's model interface; ``forward`` computes exactly torchvision's.

    The pooled feature is the class token after the encoder's final LayerNorm (``encoder.ln``); the classifier is
    ``heads.head``. torchvision's ``representation_size`` (a pre-logits layer), ``conv_stem_configs`` and
    ``norm_layer`` are not taken: no torchvision weights use them.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        """
        Args:
            image_size: input height and width; the position table has ``(image_size / patch_size)**2 + 1`` rows, so
                a weight file loads only at the size it was trained at (224; SWAG end-to-end: 384, 512, 518).
            patch_size: side of a square patch (the stride of ``conv_proj``).
            num_layers, num_heads, hidden_dim, mlp_dim: encoder depth, attention heads, width, MLP hidden width.
            dropout, attention_dropout: torchvision's dropouts (after the position embedding, in every block).
            num_classes: classes of the linear head (0: no head, ``forward`` returns the pooled features).
            drop_path_rate: must be 0: torchvision's ViT has no stochastic depth (timm's ViTs have).
            in_chans: input channels; torchvision's patch embedding takes RGB only (3).
        """
        if drop_path_rate:
            raise ValueError(
                f"drop_path_rate {drop_path_rate} (model.drop_path): torchvision's VisionTransformer has no stochastic "
                "depth (drop path) to apply it to; use 0, or a timm ViT (e.g. vit_base_patch16_224) for drop path"
            )
        check_rgb(in_chans, "VisionTransformer")
        if image_size < 1 or patch_size < 1 or image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            num_classes=max(num_classes, 1),
        )
        if num_classes == 0:
            self.heads.head = nn.Identity()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = hidden_dim
        self.grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.heads.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != "token":
            raise ValueError(
                f"global_pool must be 'token' (torchvision's ViT reads the class token), got {global_pool!r}"
            )
        self.num_classes = num_classes
        device = self.class_token.device
        self.heads.head = linear_head(self.num_features, num_classes, device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 1 + N, D) tokens (class token first) after the encoder's final LayerNorm."""
        x = self._process_input(x)  # (B, N, D)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # torchvision's Encoder.forward, with its blocks recomputed in backward
            x = self.encoder.dropout(x + self.encoder.pos_embedding)
            return self.encoder.ln(checkpoint_seq(self.encoder.layers, x))
        return self.encoder(x)  # adds the position embedding, runs the blocks, ends with encoder.ln

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + N, D) tokens -> the class token (B, D), or (B, num_classes) logits."""
        x = x[:, 0]  # (B, D)
        return x if pre_logits else self.heads(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TorchvisionSwin(SwinTransformer):
    """torchvision's ``SwinTransformer`` (V1) with timm's model interface; ``forward`` computes exactly torchvision's.

    The pooled feature is the final LayerNorm's output averaged over H and W; the classifier is ``head``. The model
    takes any input size (windows are padded); ``img_size`` is the size the data pipeline crops to.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.2,
        num_classes: int = 1000,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        """
        Args:
            patch_size: (H, W) of a patch (an int for square ones).
            embed_dim: width of the first stage; it doubles at every patch merging.
            depths, num_heads: blocks and attention heads per stage.
            window_size: (H, W) attention window (its relative-position table is sized for exactly this).
            mlp_ratio: MLP hidden width / block width.
            dropout, attention_dropout: torchvision's dropouts (after the patch embedding, in every block).
            drop_path_rate: stochastic depth of the last block (torchvision's ``stochastic_depth_prob``), linear
                from 0 over all blocks.
            num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
            img_size: input height and width the data pipeline crops to (an int for square inputs).
            in_chans: input channels; torchvision's patch embedding takes RGB only (3).
            global_pool: "avg" (mean over H and W; the only pooling of this model).
        """
        check_rgb(in_chans, "SwinTransformer")
        check_avg_pool(global_pool, "H and W")
        check_stages(depths, num_heads)
        super().__init__(
            patch_size=sizes(patch_size, 2, "patch_size"),
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=sizes(window_size, 2, "window_size"),
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            attention_dropout=attention_dropout,
            stochastic_depth_prob=drop_path_rate,
            num_classes=max(num_classes, 1),
        )
        if num_classes == 0:
            self.head = nn.Identity()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.norm.normalized_shape[0]
        self.img_size = tuple(sizes(img_size, 2, "img_size"))
        self.global_pool = global_pool
        self.grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_avg_pool(global_pool, "H and W")
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes, self.norm.weight.device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, H', W', D) tokens after the final norm."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.features, x)
        else:
            x = self.features(x)  # (B, H / (patch * 2**(stages - 1)), W / ..., D)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H', W', D) tokens -> mean over H', W' -> (B, D) features, or (B, num_classes) logits."""
        x = self.flatten(self.avgpool(self.permute(x)))  # (B, D, H', W') -> (B, D, 1, 1) -> (B, D)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(weights: WeightsEnum, first_conv: str, classifier: str) -> dict[str, Any]:
    """timm's pretrained config of torchvision ``weights``: its url, and the inference transforms torchvision gives
    them (``ImageClassification``: resize the short side, centre-crop, normalise) as timm's input_size / crop_pct."""
    transforms = weights.transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return {
        "url": weights.url,
        "num_classes": len(weights.meta["categories"]),
        "input_size": (3, crop, crop),
        "interpolation": transforms.interpolation.value,
        "crop_pct": crop / resize,
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
        "first_conv": first_conv,
        "classifier": classifier,
        "origin_url": weights.meta["recipe"],
        **({"license": weights.meta["license"]} if "license" in weights.meta else {}),
    }


def _vit_cfg(weights: WeightsEnum) -> dict[str, Any]:
    return _cfg(weights, "conv_proj", "heads.head")


def _swin_cfg(weights: WeightsEnum) -> dict[str, Any]:
    return _cfg(weights, "features.0.0", "head")


# The first tag of each model is its default (torchvision's DEFAULT weights: ViT-H/14 has no IMAGENET1K_V1).
default_cfgs = generate_default_cfgs(
    {
        "tv_vit_b_16.imagenet1k_v1": _vit_cfg(ViT_B_16_Weights.IMAGENET1K_V1),
        "tv_vit_b_16.swag_e2e_v1": _vit_cfg(ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1),
        "tv_vit_b_16.swag_linear_v1": _vit_cfg(ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1),
        "tv_vit_b_32.imagenet1k_v1": _vit_cfg(ViT_B_32_Weights.IMAGENET1K_V1),
        "tv_vit_l_16.imagenet1k_v1": _vit_cfg(ViT_L_16_Weights.IMAGENET1K_V1),
        "tv_vit_l_16.swag_e2e_v1": _vit_cfg(ViT_L_16_Weights.IMAGENET1K_SWAG_E2E_V1),
        "tv_vit_l_16.swag_linear_v1": _vit_cfg(ViT_L_16_Weights.IMAGENET1K_SWAG_LINEAR_V1),
        "tv_vit_l_32.imagenet1k_v1": _vit_cfg(ViT_L_32_Weights.IMAGENET1K_V1),
        "tv_vit_h_14.swag_e2e_v1": _vit_cfg(ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1),
        "tv_vit_h_14.swag_linear_v1": _vit_cfg(ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1),
        "tv_swin_t.imagenet1k_v1": _swin_cfg(Swin_T_Weights.IMAGENET1K_V1),
        "tv_swin_s.imagenet1k_v1": _swin_cfg(Swin_S_Weights.IMAGENET1K_V1),
        "tv_swin_b.imagenet1k_v1": _swin_cfg(Swin_B_Weights.IMAGENET1K_V1),
    }
)


def _create(cls: type[nn.Module], size_arg: str, variant: str, pretrained: bool, **kwargs: Any) -> Any:
    """Build ``cls`` through timm (pretrained config, timm's weight loading); the input size defaults to the one of
    the chosen weights (``tv_vit_b_16.swag_e2e_v1``: 384), and the config records the size actually built."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    kwargs.setdefault(size_arg, cfg.input_size[-1])
    model = build_model_with_cfg(cls, variant, pretrained, **kwargs)
    size = model.img_size if isinstance(model, TorchvisionSwin) else (model.image_size, model.image_size)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, *size)}
    model.default_cfg = model.pretrained_cfg
    return model


def _vit(variant: str, pretrained: bool, arch: dict[str, int], kwargs: dict[str, Any]) -> TorchvisionViT:
    return _create(TorchvisionViT, "image_size", variant, pretrained, **{**arch, **kwargs})


def _swin(variant: str, pretrained: bool, arch: dict[str, Any], kwargs: dict[str, Any]) -> TorchvisionSwin:
    return _create(TorchvisionSwin, "img_size", variant, pretrained, **{**arch, **kwargs})


@register_model
def tv_vit_b_16(pretrained: bool = False, **kwargs: Any) -> TorchvisionViT:
    """ViT-B/16 (torchvision ``vit_b_16``, 86M): width 768, 12 layers, 12 heads, MLP 3072, patch 16."""
    arch = {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}
    return _vit("tv_vit_b_16", pretrained, arch, kwargs)


@register_model
def tv_vit_b_32(pretrained: bool = False, **kwargs: Any) -> TorchvisionViT:
    """ViT-B/32 (torchvision ``vit_b_32``, 88M): width 768, 12 layers, 12 heads, MLP 3072, patch 32."""
    arch = {"patch_size": 32, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}
    return _vit("tv_vit_b_32", pretrained, arch, kwargs)


@register_model
def tv_vit_l_16(pretrained: bool = False, **kwargs: Any) -> TorchvisionViT:
    """ViT-L/16 (torchvision ``vit_l_16``, 304M): width 1024, 24 layers, 16 heads, MLP 4096, patch 16."""
    arch = {"patch_size": 16, "num_layers": 24, "num_heads": 16, "hidden_dim": 1024, "mlp_dim": 4096}
    return _vit("tv_vit_l_16", pretrained, arch, kwargs)


@register_model
def tv_vit_l_32(pretrained: bool = False, **kwargs: Any) -> TorchvisionViT:
    """ViT-L/32 (torchvision ``vit_l_32``, 306M): width 1024, 24 layers, 16 heads, MLP 4096, patch 32."""
    arch = {"patch_size": 32, "num_layers": 24, "num_heads": 16, "hidden_dim": 1024, "mlp_dim": 4096}
    return _vit("tv_vit_l_32", pretrained, arch, kwargs)


@register_model
def tv_vit_h_14(pretrained: bool = False, **kwargs: Any) -> TorchvisionViT:
    """ViT-H/14 (torchvision ``vit_h_14``, 632M): width 1280, 32 layers, 16 heads, MLP 5120, patch 14; 518 x 518
    by default (its default weights, SWAG end-to-end; ``.swag_linear_v1``: 224)."""
    arch = {"patch_size": 14, "num_layers": 32, "num_heads": 16, "hidden_dim": 1280, "mlp_dim": 5120}
    return _vit("tv_vit_h_14", pretrained, arch, kwargs)


@register_model
def tv_swin_t(pretrained: bool = False, **kwargs: Any) -> TorchvisionSwin:
    """Swin-T (torchvision ``swin_t``, 28M): embed 96, depths 2-2-6-2, window 7, stochastic depth 0.2."""
    arch = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "drop_path_rate": 0.2}
    return _swin("tv_swin_t", pretrained, arch, kwargs)


@register_model
def tv_swin_s(pretrained: bool = False, **kwargs: Any) -> TorchvisionSwin:
    """Swin-S (torchvision ``swin_s``, 50M): embed 96, depths 2-2-18-2, window 7, stochastic depth 0.3."""
    arch = {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "drop_path_rate": 0.3}
    return _swin("tv_swin_s", pretrained, arch, kwargs)


@register_model
def tv_swin_b(pretrained: bool = False, **kwargs: Any) -> TorchvisionSwin:
    """Swin-B (torchvision ``swin_b``, 88M; the image backbone of AdaptFormer's Table 7): embed 128, depths
    2-2-18-2, window 7, stochastic depth 0.5."""
    arch = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "drop_path_rate": 0.5}
    return _swin("tv_swin_b", pretrained, arch, kwargs)
