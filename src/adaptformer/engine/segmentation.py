"""Semantic segmentation in the engine: how a model's logits are taken from an image of any size (the whole image, or
a sliding window; optionally flipped and at several scales), and how they are scored.

The scores follow the protocol of the segmentation literature (mmsegmentation's ``IoUMetric``): one confusion matrix
summed over every pixel of every image (and of every process), ignored pixels (label 255) left out, then per class
IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); ``miou`` and ``macc`` average them over the classes that
occur in the labels or the predictions (a class absent from both is NaN and left out of the mean; a class that is
predicted but absent from the labels has IoU 0), ``aacc`` is the pixel accuracy. The matrix and the scores are
torchmetrics' (``MulticlassJaccardIndex``, ``MulticlassRecall``, ``MulticlassAccuracy`` sharing one state); under
``torchrun`` torchmetrics sums the states of all processes before computing, so two processes score what one does.

Each prediction is made at the resolution the model sees and resized (bilinear, on the logits) to its label's
resolution before the argmax: an evaluation transform may shrink the image but keeps the mask as it is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import Precision
from ..validation import check_choice
from .distributed import DistributedContext
from .progress import Progress

IGNORE_INDEX = 255
INFERENCE_MODES = ("whole", "slide")


@dataclass(frozen=True)
class SegmentationInference:
    """How logits are taken from an image.

    Args:
        mode: "whole" (the image at once, padded to a multiple of ``multiple``; the backbone must accept any input
            size) or "slide" (windows of ``crop`` pixels every ``stride`` pixels, their logits averaged where they
            overlap; any image size, for any backbone).
        crop: window size (height, width) for "slide"; None: the model's input size.
        stride: window step (height, width) for "slide"; None: two thirds of ``crop`` (mmsegmentation's 512/341).
        flip: also predict the horizontally flipped image and average the probabilities.
        scales: predict the image resized by each factor (and flipped, with ``flip``) and average the probabilities.
    """

    mode: Literal["whole", "slide"] = "slide"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        check_choice("inference mode", self.mode, INFERENCE_MODES)
        for name in ("crop", "stride"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ValueError(f"{name} must be two positive sizes (height, width), got {value!r}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive factors, got {self.scales!r}")

    def windows(self, input_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window size and step for a model whose input size is ``input_size``."""
        crop = self.crop or input_size
        stride = self.stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
        return crop, stride


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Where windows of ``crop`` start along a side of ``size`` so that every pixel is covered, the last window ending
    at the border (``size <= crop``: one window at 0, the image padded to it)."""
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


def _pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``image`` (B, C, H, W) at the bottom and right with zeros (the normalised mean colour) to at least
    ``height`` x ``width``."""
    return F.pad(image, (0, max(0, width - image.shape[-1]), 0, max(0, height - image.shape[-2])))


def whole_logits(model: nn.Module, image: torch.Tensor, multiple: int | tuple[int, int] = 1) -> torch.Tensor:
    """The model's logits (B, K, H, W) for the whole ``image`` (B, 3, H, W), padded to a multiple of ``multiple``
    ((height, width), or one number for both) for the model and cut back."""
    height, width = image.shape[-2:]
    step_h, step_w = (multiple, multiple) if isinstance(multiple, int) else multiple
    padded = _pad_to(image, math.ceil(height / step_h) * step_h, math.ceil(width / step_w) * step_w)
    return model(padded)[..., :height, :width]


def slide_logits(
    model: nn.Module, image: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], num_classes: int
) -> torch.Tensor:
    """Logits (B, K, H, W) of ``image`` (B, 3, H, W) from windows of ``crop`` every ``stride`` pixels (an image
    smaller than a window is padded to it), averaged where windows overlap."""
    height, width = image.shape[-2:]
    padded = _pad_to(image, crop[0], crop[1])
    full_h, full_w = padded.shape[-2:]
    total = padded.new_zeros((padded.shape[0], num_classes, full_h, full_w), dtype=torch.float32)
    count = padded.new_zeros((1, 1, full_h, full_w), dtype=torch.float32)
    for top in window_starts(full_h, crop[0], stride[0]):
        for left in window_starts(full_w, crop[1], stride[1]):
            window = padded[..., top : top + crop[0], left : left + crop[1]]
            total[..., top : top + crop[0], left : left + crop[1]] += model(window).float()
            count[..., top : top + crop[0], left : left + crop[1]] += 1
    return (total / count)[..., :height, :width]


def segment(
    model: nn.Module,
    image: torch.Tensor,
    inference: SegmentationInference,
    out_size: tuple[int, int],
    *,
    input_size: tuple[int, int],
    num_classes: int,
    multiple: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Class probabilities (B, K, *out_size) of ``image`` (B, 3, H, W): for each scale (and its flip), the logits by
    ``inference.mode``, resized bilinearly to ``out_size``, softmaxed; the probabilities averaged (one view: exactly
    its softmax)."""
    crop, stride = inference.windows(input_size)
    total = None
    views = 0
    for scale in inference.scales:
        scaled = image
        if scale != 1.0:
            size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if inference.flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if inference.mode == "whole":
                logits = whole_logits(model, x, multiple).float()
            else:
                logits = slide_logits(model, x, crop, stride, num_classes)
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            probabilities = logits.softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            views += 1
    assert total is not None
    return total / views


class SegmentationScores:
    """The confusion matrix of one evaluation and the scores computed from it (module docstring)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        from torchmetrics import MetricCollection  # imported only when segmenting
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex, MulticlassRecall

        common: dict[str, Any] = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX, "validate_args": False}
        self.num_classes = num_classes
        self.metrics = MetricCollection(
            {
                "iou": MulticlassJaccardIndex(average="none", zero_division=float("nan"), **common),
                "acc": MulticlassRecall(average="none", zero_division=float("nan"), **common),
                "aacc": MulticlassAccuracy(average="micro", **common),
            }
        ).to(device)
        self.counts = torch.zeros(2, dtype=torch.long, device=device)  # images, labelled pixels

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Add ``predicted`` class indices and ``labels`` (same shape, (B, H, W)); labels of 255 are ignored, other
        labels outside 0..K-1 are an error."""
        if predicted.shape != labels.shape:
            raise ValueError(f"predictions of shape {tuple(predicted.shape)} for labels of shape {tuple(labels.shape)}")
        bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_classes))]
        if bad.numel():
            values = sorted(set(bad.unique().tolist()))[:10]
            raise ValueError(
                f"label values {values} are neither a class (0..{self.num_classes - 1}) nor the ignore label "
                f"{IGNORE_INDEX}"
            )
        self.metrics.update(predicted.reshape(-1), labels.reshape(-1))
        self.counts[0] += labels.shape[0]
        self.counts[1] += int((labels != IGNORE_INDEX).sum())

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``miou``, ``macc``, ``aacc`` (percent), ``iou`` per class (percent, None for a class absent from labels
        and predictions), ``n`` (images) and ``pixels`` (scored, not ignored). Summed over all processes."""
        counts = self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # as torchmetrics syncs its state
            torch.distributed.all_reduce(counts)
        images, pixels = counts.tolist()
        if pixels == 0:
            raise ValueError(
                "no labelled pixels to score: every pixel of the evaluated split is ignored or it is empty"
            )
        scores = self.metrics.compute()
        iou, acc = scores["iou"].float().cpu(), scores["acc"].float().cpu()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "miou": 100.0 * float(torch.nanmean(iou)),
            "macc": 100.0 * float(torch.nanmean(acc)),
            "aacc": 100.0 * float(scores["aacc"]),
            "n": images,
            "pixels": pixels,
            "iou": {name: None if math.isnan(v) else 100.0 * v for name, v in zip(names, iou.tolist(), strict=True)},
        }


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable[Any],
    precision: Precision,
    ctx: DistributedContext,
    inference: SegmentationInference,
    *,
    num_classes: int,
    input_size: tuple[int, int],
    multiple: int | tuple[int, int] = 1,
    class_names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Segment every image of the loader (this process's shard; batches of ``(images, masks, ids)``, images and
    masks stacked or lists of several sizes) and score them all (module docstring)."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.eval()
    scores = SegmentationScores(num_classes, ctx.device)
    done, started = 0, time.perf_counter()
    for images, masks, _ in loader:
        pairs = zip(images, masks, strict=True) if isinstance(images, list) else [(images, masks)]
        for image, mask in pairs:
            batch = image if image.ndim == 4 else image[None]  # (B, 3, H, W)
            labels = (mask if mask.ndim == 3 else mask[None]).to(ctx.device)  # (B, H, W)
            with precision.autocast():
                probabilities = segment(
                    model, batch.to(ctx.device), inference, tuple(labels.shape[-2:]),
                    input_size=input_size, num_classes=num_classes, multiple=multiple,
                )  # fmt: skip
            scores.update(probabilities.argmax(dim=1), labels)
            done += batch.shape[0] * ctx.world_size
        if progress is not None:
            progress.update(samples=done, **{"samples/s": done / max(time.perf_counter() - started, 1e-9)})
    return scores.compute(class_names)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled pixels (255 ignored) of logits (B, K, h, w), resized bilinearly to the masks'
    (B, H, W) resolution first when they differ."""
    if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
