"""Image datasets of the AdaptFormer benchmarks: how samples are held (:mod:`.datasets`: arrays in memory or one file
per image) and the dataset kinds selectable by name (:mod:`.kinds`: ``IMAGE_DATASETS``, ``build_image_dataset``)."""

from adaptformer.data.image.datasets import ArrayImageDataset, ImageDecodeError, ImageFileDataset, load_rgb
from adaptformer.data.image.kinds import IMAGE_DATASETS, ImageDatasetKind, build_image_dataset

__all__ = [
    "IMAGE_DATASETS",
    "ArrayImageDataset",
    "ImageDatasetKind",
    "ImageDecodeError",
    "ImageFileDataset",
    "build_image_dataset",
    "load_rgb",
]
