"""Tiny segmentation models for the tests: each backbone family through the public factory, at widths 16-32, taking
inputs of other sizes than their ``img_size`` where the family can (timm ViT: ``dynamic_img_size``, timm Swin:
``strict_img_size=False``)."""

from __future__ import annotations

from typing import Any

from tests.conftest import SWIN, VIT, tiny_kwargs

from adaptformer.segmentation import SegmentationModel, create_segmentation_model

TV_VIT = "tv_vit_b_16"
TV_SWIN = "tv_swin_t"
SEG_KWARGS: dict[str, dict[str, Any]] = {
    VIT: tiny_kwargs(VIT, dynamic_img_size=True),  # 3 blocks of width 32, patch 8
    SWIN: tiny_kwargs(SWIN, strict_img_size=False),  # 2 stages of width 32, 64, patch 4: strides 4, 8
    TV_VIT: {"image_size": 32, "patch_size": 8, "hidden_dim": 32, "mlp_dim": 64, "num_layers": 3, "num_heads": 2},
    TV_SWIN: dict(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2)),
}
CLASSES = 3


def tiny_segmenter(name: str, method: Any = "adaptformer", head: str = "linear", **extra: Any) -> SegmentationModel:
    """A tiny segmentation model of backbone ``name`` (seeded), its UPerNet 8 channels wide."""
    kwargs = {"channels": 8, "init_seed": 0, **SEG_KWARGS.get(name, {}), **extra}
    return create_segmentation_model(name, CLASSES, method=method, head=head, **kwargs)
