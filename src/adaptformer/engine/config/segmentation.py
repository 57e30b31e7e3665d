"""The configuration sections of segmentation runs: what the decode head reads (``model.decode``) and the training
geometry and evaluation inference of segmentation datasets (``data.segmentation``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...data.segmentation import SegmentationAugment
from ...validation import check_choice
from ..segmentation import SegmentationInference
from .checks import at_least as _at_least


@dataclass
class DecodeConfig:
    """What a segmentation model's decode head reads (segmentation datasets only).

    Args:
        layers: blocks (ViT) or stages (Swin) whose outputs the head reads, negative from the end; null: the head's
            default (linear: the last block; upernet: four evenly spaced blocks of a ViT, every stage of a Swin).
        channels: UPerNet's width.
    """

    layers: list[int] | None = None
    channels: int = 256

    def __post_init__(self) -> None:
        if self.layers is not None:
            if not self.layers or any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers):
                raise ValueError(f"model.decode.layers must be a non-empty list of indices, got {self.layers!r}")
            self.layers = list(self.layers)
        _at_least("model.decode.channels", self.channels, 1)


@dataclass
class SegmentationConfig:
    """Segmentation datasets: the random geometry of training pairs, and how evaluation segments an image.

    Args:
        scale: [min, max] ratio of a training image's random short side to base_size (then a random crop of the
            input size, padded with the ignore label when smaller).
        base_size: the short side scale applies to, and evaluation's; null: the backbone's input size.
        photometric: random colour jitter of training images.
        eval_resize: evaluation images' short side resized to base_size (masks always keep their resolution: the
            prediction is resized to the mask); false: images as they are.
        inference: evaluation: slide (windows of the input size, averaged where they overlap; any backbone) or whole
            (the image at once; the backbone must take any size, e.g. model.kwargs {dynamic_img_size: true}).
        stride: slide: pixels between windows; null: two thirds of the input size.
        eval_flip: evaluation also segments the mirrored image and averages the probabilities.
        eval_scales: evaluation segments the image at each of these scales and averages the probabilities.
    """

    scale: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = None
    photometric: bool = True
    eval_resize: bool = True
    inference: Literal["slide", "whole"] = "slide"
    stride: int | None = None
    eval_flip: bool = False
    eval_scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)  # type: ignore[assignment]
        self.eval_scales = tuple(self.eval_scales)
        check_choice("data.segmentation.inference", self.inference, ("slide", "whole"))
        _at_least("data.segmentation.base_size", self.base_size, 1)
        _at_least("data.segmentation.stride", self.stride, 1)
        try:
            self.augment(flip=False)
            self.inference_settings()
        except ValueError as e:
            raise ValueError(f"data.segmentation.{e}") from e  # its message starts with the field's name

    def augment(self, flip: bool) -> SegmentationAugment:
        """The training geometry (and eval resize) of :mod:`adaptformer.data.segmentation.transforms`."""
        return SegmentationAugment(tuple(self.scale), self.base_size, flip, self.photometric, self.eval_resize)  # type: ignore[arg-type]

    def inference_settings(self) -> SegmentationInference:
        """How evaluation segments an image (:class:`adaptformer.engine.segmentation.SegmentationInference`)."""
        stride = None if self.stride is None else (self.stride, self.stride)
        return SegmentationInference(self.inference, None, stride, self.eval_flip, tuple(self.eval_scales))
