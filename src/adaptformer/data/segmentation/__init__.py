"""Semantic segmentation data: datasets of (image, class-index mask) pairs in the layouts people download, masks
read as indices and checked against their images, and joint image + mask transforms.

dataset = build_segmentation_dataset("ade20k", "data/", "train", build_segmentation_transform(pre, train=True))
image, mask = dataset[0]   # float (3, H, W) normalised; int64 (H, W) of class indices, 255 = ignored
"""

from adaptformer.data.segmentation.datasets import (
    ArraySegmentationDataset,
    JointTransform,
    SegmentationFileDataset,
    pair_files,
)
from adaptformer.data.segmentation.digits import DIGITS_SEG_CLASSES, build_digits_seg
from adaptformer.data.segmentation.kinds import (
    SEGMENTATION_DATASETS,
    SegmentationDatasetKind,
    build_segmentation_dataset,
)
from adaptformer.data.segmentation.masks import IGNORE_INDEX, LabelMap, MaskError, read_mask_values, read_pair
from adaptformer.data.segmentation.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_IDS,
    VOC_CLASSES,
    voc_palette,
)
from adaptformer.data.segmentation.transforms import (
    SegmentationAugment,
    build_segmentation_transform,
    collate_segmentation,
)

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_TRAIN_IDS",
    "DIGITS_SEG_CLASSES",
    "IGNORE_INDEX",
    "SEGMENTATION_DATASETS",
    "VOC_CLASSES",
    "ArraySegmentationDataset",
    "JointTransform",
    "LabelMap",
    "MaskError",
    "SegmentationAugment",
    "SegmentationDatasetKind",
    "SegmentationFileDataset",
    "build_digits_seg",
    "build_segmentation_dataset",
    "build_segmentation_transform",
    "collate_segmentation",
    "pair_files",
    "read_mask_values",
    "read_pair",
    "voc_palette",
]
