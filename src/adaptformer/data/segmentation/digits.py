"""``digits-seg``: an offline semantic segmentation dataset of real handwriting, scikit-learn's bundled 8x8 digits
placed on blank canvases.

Each image is a grey ``image_size`` square (64 by default) holding 1..``max_digits`` digits, each upscaled
(bilinear) to a random size in ``digit_size`` (16-24 px) and placed at a random position where it overlaps no other
digit. The mask is the digit's class + 1 where the upscaled digit is at least half its full ink (8 of scikit-learn's
16 grey levels), 0 (background) elsewhere: 11 classes, no ignored pixels. Train and test are composed from disjoint
digit images (a stratified ``test_fraction`` of the 1,797) with their own seeded draws, so a split is the same
for a seed on every machine.

The shipped tiny backbone ``vit_shapes_patch8_32`` takes 32x32 inputs: train it on 32x32 crops with ``base_size``
64 (digits at their drawn size), or build it with ``img_size=64`` (its position table is resampled) for whole
canvases; ``image_size: 32`` with ``digit_size: [10, 14]`` gives native-size canvases. A mirrored digit is another
symbol (or none): train with ``SegmentationAugment(flip=False)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adaptformer.data.segmentation.datasets import ArraySegmentationDataset, JointTransform
from adaptformer.data.segmentation.palettes import voc_palette
from adaptformer.data.splits import train_val_split_indices

__all__ = ["DIGITS_SEG_CLASSES", "build_digits_seg"]

DIGITS_SEG_CLASSES = ("background", *(str(d) for d in range(10)))
_FULL_INK = 16.0  # scikit-learn's digits are 0..16 grey levels
_PLACEMENT_TRIES = 50


def _place(occupied: list[tuple[int, int, int]], size: int, canvas: int, rng: np.random.Generator) -> tuple | None:
    """A random top-left corner for a ``size`` square on the ``canvas`` that overlaps none of ``occupied``
    (``(y, x, size)`` squares), or None after a few tries."""
    for _ in range(_PLACEMENT_TRIES):
        y, x = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        if all(y + size <= oy or oy + osize <= y or x + size <= ox or ox + osize <= x for oy, ox, osize in occupied):
            return y, x
    return None


def build_digits_seg(
    root: Path | None,
    split: str,
    transform: JointTransform | None,
    *,
    num_samples: int = 1000,
    image_size: int = 64,
    digit_size: tuple[int, int] | list[int] = (16, 24),
    max_digits: int = 3,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> ArraySegmentationDataset:
    """``num_samples`` canvases of the ``split`` ("train" or "test"); see the module docstring."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    if not (isinstance(digit_size, (tuple, list)) and len(digit_size) == 2 and all(type(v) is int for v in digit_size)):
        raise ValueError(f"digit_size must be two integers [min, max], got {digit_size!r}")
    low, high = digit_size
    if num_samples < 1 or max_digits < 1 or not 8 <= low <= high <= image_size:
        raise ValueError(
            "digits-seg needs num_samples >= 1, max_digits >= 1 and 8 <= digit_size min <= max <= image_size; got "
            f"num_samples {num_samples}, max_digits {max_digits}, digit_size {list(digit_size)}, "
            f"image_size {image_size}"
        )
    digits = load_digits()
    train_idx, test_idx = train_val_split_indices(digits.target.tolist(), test_fraction, seed)
    pool = np.asarray(train_idx if split == "train" else test_idx)
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    images = np.zeros((num_samples, image_size, image_size), dtype=np.uint8)
    masks = np.zeros((num_samples, image_size, image_size), dtype=np.uint8)
    for n in range(num_samples):
        occupied: list[tuple[int, int, int]] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            chosen = int(pool[rng.integers(len(pool))])
            size = int(rng.integers(low, high + 1))
            corner = _place(occupied, size, image_size, rng)
            if corner is None:
                continue
            y, x = corner
            occupied.append((y, x, size))
            ink = Image.fromarray(digits.images[chosen].astype(np.float32))  # mode F
            ink = np.asarray(ink.resize((size, size), Image.Resampling.BILINEAR))  # (size, size), 0..16
            images[n, y : y + size, x : x + size] = np.clip(np.round(ink * (255.0 / _FULL_INK)), 0, 255)
            masks[n, y : y + size, x : x + size] = np.where(ink >= _FULL_INK / 2, digits.target[chosen] + 1, 0)
    classes = list(DIGITS_SEG_CLASSES)
    return ArraySegmentationDataset(images, masks, classes, transform, palette=voc_palette(len(classes)))
