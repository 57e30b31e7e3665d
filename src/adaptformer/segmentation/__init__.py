"""Semantic segmentation on frozen, adapted backbones: an adapted ViT or Swin, its patch features from chosen blocks
or stages (:mod:`.features`), a linear or UPerNet decode head (:mod:`.heads`), the model and its adapter files
(:mod:`.model`).

    model = create_segmentation_model("vit_base_patch16_224.mae", num_classes=150, method="adaptformer",
                                      head="upernet", checkpoint="mae_pretrain_vit_base.pth", checkpoint_source="mae")
    logits = model(images)  # (B, 150, H, W)
"""

from .features import FeatureLayout, feature_layout, patch_features
from .heads import LinearHead, UperNetHead
from .model import (
    DECODE_HEADS,
    IGNORE_INDEX,
    SegmentationConfig,
    SegmentationModel,
    create_segmentation_model,
    load_segmentation_model,
    segmentation_model,
)

__all__ = [
    "DECODE_HEADS",
    "IGNORE_INDEX",
    "FeatureLayout",
    "LinearHead",
    "SegmentationConfig",
    "SegmentationModel",
    "UperNetHead",
    "create_segmentation_model",
    "feature_layout",
    "load_segmentation_model",
    "patch_features",
    "segmentation_model",
]
