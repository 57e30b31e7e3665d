"""Video Swin Transformer (Liu et al., CVPR 2022) as a timm model: torchvision's ``SwinTransformer3d``, registered.

AdaptFormer's Table 7 (Chen et al., NeurIPS 2022) adapts a Video Swin-B: a clip (B, C, T, H, W) is cut into
``2 x 4 x 4`` patches by a Conv3d, four stages of shifted-window attention blocks (3D windows, ``8 x 7 x 7`` for the
Kinetics weights) halve the spatial grid between stages (patch merging), and the classifier reads the final LayerNorm's
output averaged over T, H and W. torchvision ported the official weights; this module subclasses its model unchanged
(same submodules, same parameter names: ``patch_embed.proj``, ``features.{2i}`` = stage i, ``features.{2i+1}`` = its
patch merging, ``norm``, ``head``), so torchvision's weight files load as they are (checkpoint source
``torchvision``) and the official release loads through :func:`.checkpoints.video_swin.convert_video_swin`.

What the subclass adds is what the library reads from a timm model: ``get_classifier()`` / ``reset_classifier``,
``num_classes`` / ``num_features``, ``forward_features`` / ``forward_head``, a ``pretrained_cfg`` with the clip
length (``num_frames``) and preprocessing of torchvision's Swin3D weights, and the video head init scale. The blocks
are torchvision's ``SwinTransformerBlock`` (family ``tv_swin``), so AdaptFormer attaches beside each block's MLP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torchvision.models.video.swin_transformer import SwinTransformer3d

from .torchvision_common import check_avg_pool, check_rgb, check_stages, linear_head, sizes

__all__ = ["VideoSwinTransformer"]

# Frames per clip of the official Video Swin recipes and of torchvision's Swin3D weights: every Kinetics and SSv2
# config samples clip_len=32 frames (frame_interval 2), and torchvision reports its accuracies at clip_len=32. The
# model itself takes any clip length (it pads to whole windows); ``num_frames`` is what the data pipeline samples.
DEFAULT_FRAMES = 32


class VideoSwinTransformer(SwinTransformer3d):
    """torchvision's ``SwinTransformer3d`` with timm's model interface; forward computes exactly torchvision's.

    ``head_init_std`` is the paper's video head init scale (the library's video convention). There are no
    ``task_modules``: the final ``norm`` belongs to the pre-trained backbone, so only adapters and the head train.
    """

    head_init_std: float = 0.001

    def __init__(
        self,
        patch_size: int | Sequence[int] = (2, 4, 4),
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = (8, 7, 7),
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.1,
        num_classes: int = 400,
        num_frames: int = DEFAULT_FRAMES,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        """
        Args:
            patch_size: (T, H, W) of a patch (torchvision's ``patch_size``).
            embed_dim: width of the first stage; it doubles at every patch merging.
            depths, num_heads: blocks and attention heads per stage.
            window_size: (T, H, W) attention window (its relative-position table is sized for exactly this).
            mlp_ratio: MLP hidden width / block width.
            dropout, attention_dropout: torchvision's dropouts (after the patch embedding and in every block).
            drop_path_rate: stochastic depth of the last block (torchvision's ``stochastic_depth_prob``), linear
                from 0 over all blocks.
            num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
            num_frames: frames per clip the data pipeline samples (the model itself takes any clip length).
            img_size: input height and width the data pipeline crops to (an int for square inputs).
            in_chans: input channels; torchvision's patch embedding takes RGB only (3).
            global_pool: "avg" (mean over T, H, W; the only pooling of this model).
        """
        check_rgb(in_chans, "Swin3D")
        check_avg_pool(global_pool, "T, H, W")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        check_stages(depths, num_heads)
        super().__init__(
            patch_size=sizes(patch_size, 3, "patch_size"),
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=sizes(window_size, 3, "window_size"),
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            attention_dropout=attention_dropout,
            stochastic_depth_prob=drop_path_rate,
            num_classes=max(num_classes, 1),
        )
        if num_classes == 0:
            self.head = nn.Identity()
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.img_size = to_2tuple(img_size)
        self.global_pool = global_pool
        self.head_hidden_size = self.num_features
        self.grad_checkpointing = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_avg_pool(global_pool, "T, H, W")
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes, self.norm.weight.device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clips -> (B, T', H', W', D) tokens after the final norm."""
        x = self.pos_drop(self.patch_embed(x))  # (B, T/pt, H/ph, W/pw, C)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.features, x)
        else:
            x = self.features(x)  # (B, T', H', W', D)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, T', H', W', D) tokens -> mean over T', H', W' -> (B, D) features, or (B, num_classes) logits."""
        x = self.avgpool(x.permute(0, 4, 1, 2, 3))  # (B, D, 1, 1, 1)
        x = torch.flatten(x, 1)  # (B, D)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # torchvision's Swin3D weights' transforms (VideoClassification): resize the short side to 256 (bilinear),
    # centre-crop 224 (crop_pct 224/256), ImageNet mean/std.
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2106.13230",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"tv_swin3d_t": _cfg(), "tv_swin3d_s": _cfg(), "tv_swin3d_b": _cfg()})


def _create_video_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> VideoSwinTransformer:
    model = build_model_with_cfg(VideoSwinTransformer, variant, pretrained, **kwargs)
    # Record this instance's input (its crop size, and its frame count, which timm's config has no field for) so
    # Preprocessing.from_model and the data pipeline sample and crop what it was built for.
    size = (3, *model.img_size)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": size, "num_frames": model.num_frames}
    model.default_cfg = model.pretrained_cfg
    return model


@register_model
def tv_swin3d_t(pretrained: bool = False, **kwargs: Any) -> VideoSwinTransformer:
    """Video Swin-T (28M; torchvision ``swin3d_t``): embed 96, depths 2-2-6-2, window 8x7x7, 32 frames."""
    args = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], **kwargs}
    return _create_video_swin("tv_swin3d_t", pretrained, **args)


@register_model
def tv_swin3d_s(pretrained: bool = False, **kwargs: Any) -> VideoSwinTransformer:
    """Video Swin-S (50M; torchvision ``swin3d_s``): embed 96, depths 2-2-18-2, window 8x7x7, 32 frames."""
    args = {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], **kwargs}
    return _create_video_swin("tv_swin3d_s", pretrained, **args)


@register_model
def tv_swin3d_b(pretrained: bool = False, **kwargs: Any) -> VideoSwinTransformer:
    """Video Swin-B (88M; torchvision ``swin3d_b``, AdaptFormer's Table 7): embed 128, depths 2-2-18-2, window
    8x7x7, 32 frames."""
    args = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], **kwargs}
    return _create_video_swin("tv_swin3d_b", pretrained, **args)
