"""Image datasets of the AdaptFormer benchmarks: how samples are held (:mod:`.datasets`: arrays in memory or one file
per image), the dataset kinds selectable by name (:mod:`.kinds`: ``IMAGE_DATASETS``, ``build_image_dataset``) and the
one image reader every path shares (:mod:`.reading`: format allow-list, pixel limit, every mode to RGB)."""

from adaptformer.data.image.datasets import ArrayImageDataset, ImageDecodeError, ImageFileDataset, load_rgb
from adaptformer.data.image.kinds import IMAGE_DATASETS, ImageDatasetKind, build_image_dataset
from adaptformer.data.image.reading import (
    ACCEPTED_FORMATS,
    ImageFormatError,
    ImageTooLargeError,
    read_image,
    to_rgb,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "IMAGE_DATASETS",
    "ArrayImageDataset",
    "ImageDatasetKind",
    "ImageDecodeError",
    "ImageFileDataset",
    "ImageFormatError",
    "ImageTooLargeError",
    "build_image_dataset",
    "load_rgb",
    "read_image",
    "to_rgb",
]
