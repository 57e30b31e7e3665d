"""Image transforms of the AdaptFormer recipe (paper Table 5), built from a backbone's ``Preprocessing``.

Train: RandomResizedCrop to the input size (the backbone's interpolation, bicubic for the MAE ViT-B) + horizontal
flip; :class:`ImageAugment` holds the crop's area range (paper: 8%-100%) and whether to flip, since neither suits
every task (an 8x8 digit cropped to 8% of its area is a blob; a mirrored digit is another symbol). Eval: resize the
short side to ``size / crop_pct`` (256 for 224 at crop_pct 0.875) + centre crop, or (``resize="full"``, the VTAB-1k
protocol) resize the whole image to the input size without a crop; with ``random=False`` (the VTAB-1k protocol's "no
augmentation") training images get that deterministic eval geometry too. Both end with
:func:`normalize_transform`, the uint8 -> float -> mean/std step, which works on any tensor shaped ``(..., C, H, W)``
so the video pipeline reuses it on ``(T, C, H, W)`` clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from adaptformer.data.image.reading import to_rgb
from adaptformer.preprocessing import Preprocessing

__all__ = [
    "PAPER_CROP_SCALE",
    "ImageAugment",
    "ToRGBImage",
    "build_image_transform",
    "eval_resize_size",
    "normalize_transform",
]

PAPER_CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's area range in the paper's (MAE's) image recipe
RESIZE_MODES = ("crop", "full")


@dataclass(frozen=True)
class ImageAugment:
    """The random geometry of training images.

    Args:
        crop_scale: (min, max) fraction of the image's area that RandomResizedCrop keeps, 0 < min <= max <= 1.
        flip: random horizontal flip (probability 0.5).
        random: whether training images get the random geometry at all; False: the eval geometry (no augmentation).
        resize: the eval geometry: "crop" (short side to size / crop_pct + centre crop) or "full" (the whole image
            resized to the input size, aspect ratio not kept).
    """

    crop_scale: tuple[float, float] = PAPER_CROP_SCALE
    flip: bool = True
    random: bool = True
    resize: str = "crop"

    def __post_init__(self) -> None:
        scale = self.crop_scale
        if not (
            isinstance(scale, (tuple, list))
            and len(scale) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
        ):
            raise ValueError(f"crop_scale must be two numbers [min, max], got {scale!r}")
        low, high = (float(v) for v in scale)
        if not (0.0 < low <= high <= 1.0):
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {list(scale)!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be true or false, got {self.flip!r}")
        if not isinstance(self.random, bool):
            raise ValueError(f"augment must be true or false, got {self.random!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {list(RESIZE_MODES)}, got {self.resize!r}")
        object.__setattr__(self, "crop_scale", (low, high))


class ToRGBImage:
    """Turn a PIL image, a numpy ``(H, W[, C])`` uint8 array or a ``([C,] H, W)`` tensor into a 3-channel image.

    Grayscale (one channel) is repeated to RGB; PIL images of any mode (16-bit, float, palette, alpha, CMYK...) are
    converted by :func:`~adaptformer.data.image.reading.to_rgb`.
    Any other channel count is an error rather than a silent reinterpretation.
    """

    def __call__(self, image: Any) -> tv_tensors.Image:
        if isinstance(image, Image.Image):
            image = to_rgb(image)
        elif not isinstance(image, (np.ndarray, torch.Tensor)):
            raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")
        out = v2.functional.to_image(image)  # (C, H, W); 2-D inputs get C = 1
        channels = out.shape[-3]
        if channels == 1:
            out = tv_tensors.wrap(out.expand(3, -1, -1).clone(), like=out)
        elif channels != 3:
            raise ValueError(f"expected an image with 1 or 3 channels, got shape {tuple(out.shape)}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def normalize_transform(pre: Preprocessing) -> v2.Compose:
    """uint8 (or float in [0, 1]) tensor ``(..., C, H, W)`` -> float32 normalised by the backbone's mean/std.

    Leading dimensions (e.g. the frames of a ``(T, C, H, W)`` clip) are kept; the result is a plain tensor.
    """
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),  # uint8 [0, 255] -> [0, 1]; floats are left as they are
            v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
            v2.ToPureTensor(),
        ]
    )


def eval_resize_size(pre: Preprocessing) -> int | tuple[int, int]:
    """Size of the evaluation resize: the short side for square inputs (224 / 0.875 = 256), else (H, W)."""
    height, width = pre.image_size
    if height == width:
        return math.floor(height / pre.crop_pct)
    return math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct)


def build_image_transform(
    pre: Preprocessing, train: bool, augment: ImageAugment | None = None, *, normalize: bool = True
) -> Callable[[Any], torch.Tensor]:
    """The train (random crop [+ flip], ``augment``; default: the paper's) or eval (resize + centre crop, or the whole
    image resized: ``augment.resize``) transform, ending normalised; training without ``augment.random`` uses the eval
    geometry.

    Accepts PIL images, numpy ``(H, W[, C])`` uint8 arrays and ``([C,] H, W)`` uint8 tensors; returns a float32
    ``(3, H, W)`` tensor with ``(H, W) = pre.image_size``; without ``normalize``, the uint8 ``(3, H, W)`` image at that
    size, for a step between the geometry and :func:`normalize_transform` (a corruption at the input resolution).
    """
    if pre.input_size[0] != 3:
        raise ValueError(f"image transforms produce RGB (3 channels), but input_size is {pre.input_size}")
    interpolation = InterpolationMode(pre.interpolation)
    size = list(pre.image_size)
    augment = augment or ImageAugment()
    if train and augment.random:
        geometry: list[Callable[[Any], Any]] = [
            v2.RandomResizedCrop(size, scale=augment.crop_scale, interpolation=interpolation, antialias=True),
            *([v2.RandomHorizontalFlip()] if augment.flip else []),
        ]
    elif augment.resize == "full":
        geometry = [v2.Resize(size, interpolation=interpolation, antialias=True)]
    else:
        geometry = [
            v2.Resize(eval_resize_size(pre), interpolation=interpolation, antialias=True),
            v2.CenterCrop(size),
        ]
    return v2.Compose([ToRGBImage(), *geometry, *([normalize_transform(pre)] if normalize else [])])
