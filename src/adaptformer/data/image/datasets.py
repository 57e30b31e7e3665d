"""The two ways an image dataset holds its samples: decoded arrays in memory, or one file per image read on demand.

Both return ``(transform(image), label)`` and have ``classes`` (names, index = label), ``targets`` (one int label per
sample, known without decoding images) and ``skipped`` (files left out as unreadable; always empty for arrays).

Multi-label data (``multi_label=True``, several classes per image: NUS-WIDE, COCO): each sample's label is a tuple of
class indices, ``label_sets`` holds them, ``targets`` is None (no single label to stratify by) and an item's label is
the float multi-hot vector ``(K,)`` that binary cross-entropy takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor
from tqdm import tqdm

from adaptformer.data.image.reading import SUPPORTED_MODES, ImageDecodeError, open_image, read_image

log = logging.getLogger(__name__)

__all__ = ["ArrayImageDataset", "ImageDecodeError", "ImageFileDataset", "Transform", "load_rgb"]

Transform = Callable[[Any], Any]


def _check_labels(targets: Sequence[Any], num_classes: int, source: str, multi_label: bool = False) -> None:
    flat = [int(t) for labels in targets for t in labels] if multi_label else [int(t) for t in targets]
    bad = sorted({t for t in flat if not 0 <= t < num_classes})
    if bad:
        raise ValueError(f"labels {bad[:10]} in {source} are outside the allowed range 0..{num_classes - 1}")


def multi_hot(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """The float ``(num_classes,)`` vector with 1 at each of ``labels`` (a multi-label sample's target)."""
    target = torch.zeros(num_classes, dtype=torch.float32)
    target[list(labels)] = 1.0
    return target


class _Labels:
    """One label per sample (int), or a tuple of class indices per sample (multi-label), and how an item carries it."""

    def __init__(self, labels: Sequence[Any], num_classes: int, multi_label: bool) -> None:
        self.multi_label = multi_label
        self.num_classes = num_classes
        self.values = [tuple(int(t) for t in v) for v in labels] if multi_label else [int(t) for t in labels]

    def item(self, index: int) -> Any:
        value = self.values[index]
        return multi_hot(value, self.num_classes) if self.multi_label else value


class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 ``(N, H, W, C)`` or ``(N, H, W)`` (grayscale), with int labels (or, with
    ``multi_label``, a tuple of class indices per image)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[Any],
        classes: Sequence[str],
        transform: Transform | None,
        *,
        multi_label: bool = False,
    ):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(targets):
            raise ValueError(
                f"expected uint8 images (N, H, W[, C]) and N labels, got {images.shape} {images.dtype} "
                f"and {len(targets)} labels"
            )
        _check_labels(targets, len(classes), "the label array", multi_label)
        self.images = images
        self._labels = _Labels(targets, len(classes), multi_label)
        self.multi_label = multi_label
        self.targets = None if multi_label else list(self._labels.values)
        self.label_sets = list(self._labels.values) if multi_label else None
        self.classes = list(classes)
        self.transform = transform
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        return (self.transform(image) if self.transform else image), self._labels.item(index)


def load_rgb(path: str | Path, *, formats: Sequence[str] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file to 8-bit RGB (:func:`~.reading.read_image`: every mode converted, EXIF orientation
    applied); any failure raises :class:`ImageDecodeError` naming the file. ``formats`` and ``max_pixels`` are the
    format allow-list and pixel limit (default: any format Pillow reads, Pillow's own size limit)."""
    return read_image(path, formats=formats, max_pixels=max_pixels)


def _decode_problem(path: Path) -> str | None:
    """Why ``path`` cannot be decoded, or None. Decodes fully (``verify()`` misses truncated JPEGs); JPEGs are
    decoded at reduced scale (``draft``), which still reads the whole entropy-coded stream but is cheap."""
    try:
        with open_image(path) as image:
            if image.mode not in SUPPORTED_MODES:
                return f"image mode {image.mode!r} is not supported"
            image.draft("RGB", (1, 1))
            image.load()
    except ImageDecodeError as exc:
        return exc.reason
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"{type(exc).__name__}: {exc}"
    return None


class ImageFileDataset(Dataset):
    """Images decoded from files on demand.

    With ``skip_bad_images`` every file is decoded once at construction and the unreadable (or missing) ones are
    dropped, listed in ``skipped`` and reported in a warning; otherwise a bad file raises :class:`ImageDecodeError`
    when its sample is read. With ``multi_label`` each sample's label is a tuple of class indices.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, Any]],
        classes: Sequence[str],
        transform: Transform | None,
        *,
        skip_bad_images: bool = False,
        multi_label: bool = False,
    ):
        _check_labels([label for _, label in samples], len(classes), "the sample list", multi_label)
        self.samples = [(Path(path), label) for path, label in samples]
        self.skipped: list[str] = []
        if skip_bad_images:
            kept = []
            for path, label in tqdm(self.samples, desc="checking images", unit="img", leave=False):
                problem = _decode_problem(path)
                if problem is None:
                    kept.append((path, label))
                else:
                    self.skipped.append(str(path))
                    log.debug("skipping %s: %s", path, problem)
            if self.skipped:
                log.warning(
                    "skipped %d unreadable image(s) of %d, first: %s",
                    len(self.skipped),
                    len(self.samples),
                    self.skipped[0],
                )
            self.samples = kept
        self._labels = _Labels([label for _, label in self.samples], len(classes), multi_label)
        self.multi_label = multi_label
        self.targets = None if multi_label else list(self._labels.values)
        self.label_sets = list(self._labels.values) if multi_label else None
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, _ = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else pil_to_tensor(image)), self._labels.item(index)
