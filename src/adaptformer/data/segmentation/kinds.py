"""Segmentation dataset kinds selectable by name, as the image kinds (:mod:`adaptformer.data.image.kinds`): read
from local files in the layouts people download (:mod:`.releases`), nothing ever downloaded.

Kinds (see ``SEGMENTATION_DATASETS``): ``ade20k`` (150 classes), ``voc`` (21; option ``augmented`` for SBD's
training list), ``cityscapes`` (19; option ``labels``), ``segfolder`` (``images/``, ``masks/``, ``classes.txt``;
option ``ignore_value``) and ``digits-seg`` (built in, offline: :mod:`.digits`). The release kinds have the splits
``train`` and ``val`` (their test images have no public masks), ``segfolder`` ``train``, ``val`` and ``test`` as
on disk, ``digits-seg`` ``train`` and ``test``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from adaptformer.data.kinds import resolve_request
from adaptformer.data.segmentation.datasets import JointTransform
from adaptformer.data.segmentation.digits import build_digits_seg
from adaptformer.data.segmentation.releases import (
    LAYOUTS,
    build_ade20k,
    build_cityscapes,
    build_segfolder,
    build_voc,
    locate_ade20k,
    locate_cityscapes,
    locate_segfolder,
    locate_voc,
)

log = logging.getLogger(__name__)

__all__ = ["SEGMENTATION_DATASETS", "SegmentationDatasetKind", "build_segmentation_dataset"]


@dataclass(frozen=True)
class SegmentationDatasetKind:
    """One dataset kind: its builder, the splits it has, whether it reads files under a root, and where a split is
    on disk (``locate``; None: every split is always there)."""

    build: Callable[..., Dataset]
    splits: tuple[str, ...]
    needs_root: bool = True
    locate: Callable[[Path, str, Mapping[str, Any]], Path | None] | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The ``kind_options`` the builder accepts."""
        params = inspect.signature(self.build).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


SEGMENTATION_DATASETS: dict[str, SegmentationDatasetKind] = {
    "ade20k": SegmentationDatasetKind(build_ade20k, ("train", "val"), locate=locate_ade20k),
    "voc": SegmentationDatasetKind(build_voc, ("train", "val"), locate=locate_voc),
    "cityscapes": SegmentationDatasetKind(build_cityscapes, ("train", "val"), locate=locate_cityscapes),
    "segfolder": SegmentationDatasetKind(build_segfolder, ("train", "val", "test"), locate=locate_segfolder),
    "digits-seg": SegmentationDatasetKind(build_digits_seg, ("train", "test"), needs_root=False),
}


def build_segmentation_dataset(
    kind: str, root: str | Path | None, split: str, transform: JointTransform | None, **kind_options: Any
) -> Dataset:
    """Build the ``split`` of segmentation dataset ``kind`` read from ``root`` (ignored by ``digits-seg``).

    Args:
        kind: a key of ``SEGMENTATION_DATASETS``.
        root: the folder holding the dataset in its layout (the error for a miss shows it).
        split: "train" or "val" ("test" for segfolder and digits-seg).
        transform: the joint ``(image, mask)`` transform (:func:`~.transforms.build_segmentation_transform`); None
            returns uint8 ``(3, H, W)`` images and int64 ``(H, W)`` masks.
        kind_options: per kind: ``augmented`` (voc), ``labels`` (cityscapes), ``ignore_value`` (segfolder),
            ``num_samples``/``image_size``/``digit_size``/``max_digits``/``test_fraction``/``seed`` (digits-seg).
    """
    path = resolve_request(kind, SEGMENTATION_DATASETS, root, split, kind_options, LAYOUTS, "segmentation dataset")
    if path is None and root is not None:
        log.debug("%s ignores root %s", kind, root)
    dataset = SEGMENTATION_DATASETS[kind].build(path, split, transform, **kind_options)
    log.info("%s %s: %d samples, %d classes", kind, split, len(dataset), len(dataset.classes))
    return dataset
