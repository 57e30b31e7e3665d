"""The two ways a segmentation dataset holds its samples: (image file, mask file) pairs read on demand, or decoded
arrays in memory (the built-in ``digits-seg``).

Both return ``(image, mask)``: with a transform, what the joint transform makes of the RGB image and its
``tv_tensors.Mask`` (:mod:`.transforms`: a normalised float ``(3, H, W)`` image and an int64 ``(H, W)`` mask); without
one, the uint8 ``(3, H, W)`` image and the int64 ``(H, W)`` mask. Mask values are class indices ``0..K-1`` or
:data:`~.masks.IGNORE_INDEX` (255). Attributes: ``classes`` (names, index = class), ``palette`` (one RGB colour per
class), ``ignore_index`` (255), ``targets`` (None: there is no one label per sample to stratify a split by) and
``skipped`` (always empty: a bad file is an error, never left out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from adaptformer.data.files import DatasetFileError
from adaptformer.data.segmentation.masks import IGNORE_INDEX, LabelMap, read_pair
from adaptformer.data.segmentation.palettes import Palette, voc_palette

__all__ = ["ArraySegmentationDataset", "JointTransform", "SegmentationFileDataset", "pair_files"]

JointTransform = Callable[[Any, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


def _check_classes(classes: Sequence[str], palette: Palette | None) -> Palette:
    if not 1 <= len(classes) <= IGNORE_INDEX:
        raise ValueError(f"a segmentation dataset has 1..{IGNORE_INDEX} classes ({IGNORE_INDEX} is the ignore "
                         f"index), got {len(classes)}")  # fmt: skip
    palette = list(palette) if palette is not None else voc_palette(len(classes))
    if len(palette) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
    return [(int(r), int(g), int(b)) for r, g, b in palette]


def _item(image: Any, mask: np.ndarray, transform: JointTransform | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, mask)`` through the joint ``transform``, or as uint8 ``(3, H, W)`` and int64 ``(H, W)`` tensors."""
    wrapped = tv_tensors.Mask(torch.from_numpy(mask))  # uint8 (H, W); transforms resize it with nearest
    if transform is not None:
        return transform(image, wrapped)
    tensor = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else pil_to_tensor(image)
    return tensor, wrapped.as_subclass(torch.Tensor).long()


def pair_files(images: Mapping[str, Path], masks: Mapping[str, Path], where: str) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of the files sharing a key (their path relative to the split's folder, without the
    suffix and any kind-specific name ending), in key order. An image without its mask or a mask without its image
    is a :class:`DatasetFileError` naming the first few and the count; ``where`` names the folders."""
    problems = []
    for what, ours, theirs in (("images without a mask", images, masks), ("masks without an image", masks, images)):
        lonely = sorted(key for key in ours if key not in theirs)
        if lonely:
            shown = ", ".join(str(ours[key]) for key in lonely[:5])
            problems.append(f"{len(lonely)} {what}: {shown}" + (" ..." if len(lonely) > 5 else ""))
    if problems:
        raise DatasetFileError(f"{where}: {'; '.join(problems)}")
    return [(images[key], masks[key]) for key in sorted(images)]


class SegmentationFileDataset(Dataset):
    """(image file, mask file) pairs read on demand; each mask is checked against its image when read (size; values
    through ``label_map``), so a bad pair is a :class:`~.masks.MaskError` naming the file."""

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, str | Path]],
        classes: Sequence[str],
        transform: JointTransform | None,
        *,
        label_map: LabelMap,
        palette: Palette | None = None,
    ) -> None:
        self.palette = _check_classes(classes, palette)
        self.samples = [(Path(image), Path(mask)) for image, mask in samples]
        self.classes = list(classes)
        self.transform = transform
        self.label_map = label_map
        self.ignore_index = IGNORE_INDEX
        self.targets = None
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_pair(*self.samples[index], self.label_map)
        return _item(image, mask, self.transform)


class ArraySegmentationDataset(Dataset):
    """Images uint8 ``(N, H, W)`` (grey, repeated to RGB when read) or ``(N, H, W, 3)`` with their uint8 ``(N, H, W)``
    class-index masks in memory; the masks are checked once, here."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        classes: Sequence[str],
        transform: JointTransform | None,
        *,
        palette: Palette | None = None,
    ) -> None:
        self.palette = _check_classes(classes, palette)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise ValueError(f"expected uint8 images (N, H, W) or (N, H, W, 3), got {images.shape} {images.dtype}")
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise ValueError(f"expected uint8 masks {images.shape[:3]} for images {images.shape}, got {masks.shape} "
                             f"{masks.dtype}")  # fmt: skip
        bad = np.unique(masks[(masks >= len(classes)) & (masks != IGNORE_INDEX)])
        if len(bad):
            raise ValueError(f"mask values {bad[:10].tolist()} are neither a class (0..{len(classes) - 1}) nor the "
                             f"ignore index {IGNORE_INDEX}")  # fmt: skip
        self.images, self.masks = images, masks
        self.classes = list(classes)
        self.transform = transform
        self.ignore_index = IGNORE_INDEX
        self.targets = None
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        image = image.expand(3, -1, -1).clone() if image.ndim == 2 else image.permute(2, 0, 1)  # -> (3, H, W)
        return _item(tv_tensors.Image(image), self.masks[index], self.transform)
