"""Data pipeline: image datasets in their standard local layouts, the paper's transforms, and validation splits.

dataset = build_image_dataset("cifar100", "data/", "train", build_image_transform(pre, train=True))
train, val = train_val_split(dataset, 0.1, seed=0, val_dataset=same_data_with_eval_transform)
"""

from .files import DatasetFileError
from .image import (
    ACCEPTED_FORMATS,
    IMAGE_DATASETS,
    ArrayImageDataset,
    ImageDatasetKind,
    ImageDecodeError,
    ImageFileDataset,
    ImageFormatError,
    ImageTooLargeError,
    build_image_dataset,
    load_rgb,
    read_image,
    to_rgb,
)
from .splits import dataset_labels, train_val_split, train_val_split_indices
from .transforms import (
    PAPER_CROP_SCALE,
    ImageAugment,
    ToRGBImage,
    build_image_transform,
    eval_resize_size,
    normalize_transform,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "IMAGE_DATASETS",
    "PAPER_CROP_SCALE",
    "ArrayImageDataset",
    "DatasetFileError",
    "ImageAugment",
    "ImageDatasetKind",
    "ImageDecodeError",
    "ImageFileDataset",
    "ImageFormatError",
    "ImageTooLargeError",
    "ToRGBImage",
    "build_image_dataset",
    "build_image_transform",
    "dataset_labels",
    "eval_resize_size",
    "load_rgb",
    "normalize_transform",
    "read_image",
    "to_rgb",
    "train_val_split",
    "train_val_split_indices",
]
