"""Joint image + mask transforms for semantic segmentation, built from a backbone's ``Preprocessing`` with
torchvision's ``transforms.v2``, which moves a ``tv_tensors.Mask`` with its image (masks are always resized with
nearest, never blended) and leaves it out of colour changes.

Train (the mmsegmentation recipe of ADE20K/Cityscapes/VOC): the short side resized to a random ``scale`` ratio
(0.5-2.0) of ``base_size``, a random crop of the backbone's input size (an image smaller than the crop is padded
first: the image with its mean colour, which normalises to 0, the mask with the ignore index 255, so padding is
never scored), a horizontal flip and a colour jitter of mmseg's ``PhotoMetricDistortion`` ranges. Eval (mmseg's
protocol): the image's short side resized to ``base_size`` (or kept), the mask left at its original resolution, so
metrics are computed at full resolution after the prediction is resized to the mask. mmseg's crop retries while
one class covers over 75% of the crop and its long-side cap of the random resize are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from adaptformer.data.segmentation.datasets import JointTransform
from adaptformer.data.segmentation.masks import IGNORE_INDEX
from adaptformer.data.transforms import normalize_transform
from adaptformer.preprocessing import Preprocessing

__all__ = ["SegmentationAugment", "build_segmentation_transform", "collate_segmentation"]

# mmseg's PhotoMetricDistortion: brightness +-32 of 255, contrast and saturation 0.5-1.5, hue +-18 degrees
_JITTER = {"brightness": 32 / 255, "contrast": 0.5, "saturation": 0.5, "hue": 18 / 360}


@dataclass(frozen=True)
class SegmentationAugment:
    """The random geometry and colour of training pairs, and the eval resize.

    Args:
        scale: (min, max) ratio of the random short side to ``base_size``, 0 < min <= max.
        base_size: the short side the random ratio applies to, and eval's short side; None: the short side of the
            crop (the backbone's input size).
        flip: random horizontal flip (probability 0.5).
        photometric: colour jitter (brightness, contrast, saturation, hue) of the image.
        eval_resize: eval images' short side resized to ``base_size`` (True) or kept (False); eval masks keep their
            resolution either way.
    """

    scale: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = None
    flip: bool = True
    photometric: bool = True
    eval_resize: bool = True

    def __post_init__(self) -> None:
        scale = self.scale
        if not (
            isinstance(scale, (tuple, list))
            and len(scale) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            and 0 < scale[0] <= scale[1]
        ):
            raise ValueError(f"scale must be two numbers [min, max] with 0 < min <= max, got {scale!r}")
        if self.base_size is not None and (isinstance(self.base_size, bool) or not isinstance(self.base_size, int)
                                           or self.base_size < 1):  # fmt: skip
            raise ValueError(f"base_size must be a positive integer or None, got {self.base_size!r}")
        for name in ("flip", "photometric", "eval_resize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "scale", (float(scale[0]), float(scale[1])))


class _MaskToLong:
    """The end of every pipeline: image normalised by the backbone's mean/std, mask as an int64 tensor."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pipeline = v2.Compose([v2.ToDtype({tv_tensors.Mask: torch.int64, "others": None}),
                                    normalize_transform(pre)])  # fmt: skip

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline(image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


class _EvalPair:
    """Eval: the image resized (or not) and normalised; the mask untouched, at its original resolution."""

    def __init__(self, image: v2.Transform, finish: _MaskToLong) -> None:
        self.image, self.finish = image, finish

    def __call__(self, image: Any, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.image(image), mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image={self.image!r}, mask=original resolution)"


def build_segmentation_transform(
    pre: Preprocessing, train: bool, augment: SegmentationAugment | None = None
) -> JointTransform:
    """The joint train or eval transform (module docstring) of ``(image, mask)``: a PIL RGB image or uint8 ``(3, H,
    W)`` tensor and a ``tv_tensors.Mask`` ``(H, W)``, to a float32 ``(3, h, w)`` image normalised by ``pre`` and an
    int64 ``(h', w')`` mask: ``(h, w) = (h', w') = pre.image_size`` in training; at eval the image's short side is
    ``base_size`` and the mask keeps the size it was read at."""
    if pre.input_size[0] != 3:
        raise ValueError(f"segmentation transforms produce RGB (3 channels), but input_size is {pre.input_size}")
    augment = augment or SegmentationAugment()
    interpolation = InterpolationMode(pre.interpolation)
    crop = list(pre.image_size)
    base = augment.base_size or min(crop)
    finish = _MaskToLong(pre)
    if not train:
        resize = [v2.Resize(base, interpolation=interpolation, antialias=True)] if augment.eval_resize else []
        return _EvalPair(v2.Compose([v2.ToImage(), *resize]), finish)
    low, high = (max(1, round(ratio * base)) for ratio in augment.scale)
    mean_colour = tuple(round(255 * m) for m in pre.mean)
    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResize(low, high + 1, interpolation=interpolation, antialias=True),  # short side in [low, high]
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: mean_colour, tv_tensors.Mask: IGNORE_INDEX}),
        *([v2.RandomHorizontalFlip()] if augment.flip else []),
        *([v2.ColorJitter(**_JITTER)] if augment.photometric else []),
        finish,
    ]
    return v2.Compose(steps)


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """A DataLoader ``collate_fn``: images ``(B, 3, H, W)`` and masks ``(B, H, W)`` stacked when every item has one
    size (training crops; eval of a dataset of one image size), else two lists (eval at full resolution of images
    of several sizes: each prediction is resized to its own mask)."""
    images, masks = [item[0] for item in batch], [item[1] for item in batch]
    if len({tuple(i.shape) for i in images}) == 1 and len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack(images), torch.stack(masks)
    return images, masks
