"""Decode heads: per-pixel class logits from a backbone's feature maps.

``linear``: BatchNorm2d + a 1x1 convolution over the last block's patch features (or several blocks' maps, resized to
the first one's size and concatenated): the frozen-backbone protocol of DINOv2 (Oquab et al., 2023), a linear probe
per patch. ``upernet``: a light UPerNet (Xiao et al., ECCV 2018): a pyramid pooling module on the coarsest map, an FPN
top-down path, every level fused at the finest stride. A plain ViT has one stride only; ViTDet's simple feature
pyramid (Li et al., ECCV 2022), in the form BEiT's and MAE's segmentation heads use it, turns four of its blocks'
maps into strides /4, /2, x1 and x2 of the patch stride (16 px patches: 4, 8, 16, 32). Swin's stage maps have those
strides already and feed the UPerNet directly.

Every head takes a list of (B, C_i, h_i, w_i) maps and returns (B, K, h_0, w_0) logits at the first (finest) map's
size; the model upsamples them to the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LinearHead", "PyramidPooling", "SimpleFeaturePyramid", "UperNetHead"]

POOL_SCALES = (1, 2, 3, 6)  # PSPNet's, as UPerNet uses them


def _resized(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` (B, C, h, w) bilinearly resized to ``size`` (unchanged when it has that size already)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 convolution to class logits, weight ~ N(0, 0.01^2) and zero bias (mmsegmentation's decode heads)."""
    conv = nn.Conv2d(channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class LinearHead(nn.Module):
    """BatchNorm2d + 1x1 convolution over the chosen maps, concatenated along channels (DINOv2's linear head)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        width = sum(in_channels)
        self.norm = nn.BatchNorm2d(width)
        self.classifier = _classifier(width, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = torch.cat([_resized(f, size) for f in features], dim=1)  # (B, sum C_i, h_0, w_0)
        return self.classifier(self.norm(x))  # (B, K, h_0, w_0)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm2d + ReLU, padded to keep the size: UPerNet's building block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SimpleFeaturePyramid(nn.Module):
    """Four same-stride ViT maps -> strides /4, /2, x1, x2 of it: two stride-2 deconvolutions, one, none, a 2x2 max
    pool (BEiT's and MAE's form of ViTDet's pyramid; BatchNorm between the two deconvolutions)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        a, b, c, d = features  # each (B, C, h, w)
        return [self.up4(a), self.up2(b), c, self.down2(d)]  # (B, C, 4h, 4w), (.., 2h, 2w), (.., h, w), (.., h/2, w/2)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the map average-pooled to each scale, projected, upsampled back, concatenated with
    the map and fused by a 3x3 convolution."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = POOL_SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(conv_norm_act(in_channels, channels, 1) for _ in self.scales)
        self.bottleneck = conv_norm_act(in_channels + len(self.scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            _resized(branch(F.adaptive_avg_pool2d(x, scale)), size)  # (B, channels, h, w)
            for scale, branch in zip(self.scales, self.branches, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (B, channels, h, w)


class UperNetHead(nn.Module):
    """UPerNet: pyramid pooling on the coarsest map, FPN laterals and top-down sums, all levels fused at the finest.

    Args:
        in_channels: channels of each input map, finest first (strides increasing).
        num_classes: classes of the logits.
        channels: the head's width (lateral, FPN and fusion convolutions).
        simple_pyramid: the inputs are four same-stride maps of a plain ViT, first turned into a pyramid
            (:class:`SimpleFeaturePyramid`).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, channels: int = 256, simple_pyramid: bool = False
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if simple_pyramid and (len(in_channels) != 4 or len(set(in_channels)) != 1):
            raise ValueError(f"the simple feature pyramid takes 4 maps of one width, got widths {list(in_channels)}")
        self.pyramid = SimpleFeaturePyramid(in_channels[0]) if simple_pyramid else None
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.laterals = nn.ModuleList(conv_norm_act(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_norm_act(len(in_channels) * channels, channels, 3)
        self.classifier = _classifier(channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.pyramid is not None:
            features = self.pyramid(features)
        levels = [lateral(f) for lateral, f in zip(self.laterals, features, strict=False)]  # (B, channels, h_i, w_i)
        levels.append(self.ppm(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level gets the coarser one, upsampled
            levels[i - 1] = levels[i - 1] + _resized(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn, levels, strict=False)] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([_resized(o, size) for o in outs], dim=1))  # (B, channels, h_0, w_0)
        return self.classifier(fused)  # (B, K, h_0, w_0)
