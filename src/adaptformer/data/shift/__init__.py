"""Test data under distribution shift: ImageNet-C's corruptions applied on the fly to any split
(:mod:`.corruptions`) and the shifted ImageNet test sets in their released layouts (:mod:`.imagenet`)."""

from adaptformer.data.shift.corruptions import (
    COMMON_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    Condition,
    CorruptedImages,
    check_corruptions,
    check_severities,
    condition_grid,
    corrupt_image,
)
from adaptformer.data.shift.imagenet import SUBSET_KINDS, imagenet_classes, subset_classes

__all__ = [
    "COMMON_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "SUBSET_KINDS",
    "Condition",
    "CorruptedImages",
    "check_corruptions",
    "check_severities",
    "condition_grid",
    "corrupt_image",
    "imagenet_classes",
    "subset_classes",
]
