"""``predict`` for a segmentation adapter: each image file becomes a label PNG (palette mode: a pixel's value is its
class index, shown in the Pascal VOC colour map) and an overlay PNG (the label colours blended over the image), and
its per-class pixel fractions.

Each image is read as every path reads images (:func:`adaptformer.data.read_image`, the ``predict`` format allow-list),
preprocessed by the evaluation transform training recorded (its short side resized to ``base_size``), segmented as
``eval`` segments (sliding window or whole image, flip, scales: the adapter's record, or the flags) and the
prediction resized to the file's own resolution, so the label PNG has the image's size.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision import tv_tensors

from ..data import ACCEPTED_FORMATS, ImageDecodeError, read_image
from ..data.segmentation import SegmentationAugment, build_segmentation_transform, voc_palette
from ..engine.config.segmentation import SegmentationConfig as SegmentationSettings
from ..engine.distributed import resolve_device
from ..engine.segmentation import SegmentationInference, segment
from ..files import atomic_write_bytes, make_folder
from ..precision import resolve_precision
from ..preprocessing import Preprocessing
from ..saving import AdapterInfo
from ..validation import from_mapping

__all__ = [
    "OVERLAY_ALPHA",
    "MaskPrediction",
    "label_png",
    "mask_files",
    "segment_files",
    "segment_input",
    "segmentation_input",
    "segmentation_settings",
    "write_mask_files",
]

OVERLAY_ALPHA = 0.5  # the weight of the label colours over the image in the overlay


@dataclass(frozen=True)
class MaskPrediction:
    """What ``predict`` made of one image file: its class-index map (H, W) at the file's resolution, the fraction of
    pixels of each class and the image as read (uint8 (H, W, 3), for the overlay), or why it could not be read (then
    ``labels`` is None)."""

    path: str
    labels: np.ndarray | None = None
    fractions: tuple[float, ...] = ()
    image: np.ndarray | None = None
    error: str | None = None


def mask_files(out: Path, path: str | Path) -> tuple[Path, Path]:
    """Where the label and overlay PNGs of image ``path`` go: ``OUT/<stem>.png`` and ``OUT/<stem>_overlay.png``."""
    stem = Path(path).stem
    return out / f"{stem}.png", out / f"{stem}_overlay.png"


@torch.no_grad()
def segment_files(
    model: nn.Module,
    paths: list[str | Path],
    augment: SegmentationAugment,
    inference: SegmentationInference,
    precision: str = "auto",
    device: str = "auto",
) -> Iterator[MaskPrediction]:
    """The class map of every image file, in order, one at a time (a caller writes each before the next is made); a
    file that cannot be read gets its error instead, and the others are still segmented."""
    target = resolve_device(device)
    chosen = resolve_precision(precision, target)
    model = model.to(target).eval()
    transform = segmentation_input(model, augment)
    for path in paths:
        try:
            image = read_image(path, formats=ACCEPTED_FORMATS)
        except ImageDecodeError as e:
            yield MaskPrediction(str(path), error=str(e))
            continue
        x, size = transform(image)
        with chosen.autocast():
            labels, fractions = segment_input(model, x, size, inference)
        yield MaskPrediction(str(path), labels, fractions, np.asarray(image))


def segmentation_settings(info: AdapterInfo) -> SegmentationSettings:
    """How training evaluated a segmentation adapter (its record's ``training.segmentation``; the defaults where it
    records none): ``predict`` segments with its ``augment(False)`` and ``inference_settings()``."""
    record = info.training.segmentation if info.training is not None else None
    return from_mapping(SegmentationSettings, record or {}, "the adapter's training.segmentation")


def segmentation_input(
    model: nn.Module, augment: SegmentationAugment
) -> Callable[[Image.Image], tuple[torch.Tensor, tuple[int, int]]]:
    """``prepare(image)``: a PIL image as ``model``'s evaluation transform makes it, ``(x (3, h, w), (H, W))``: resized
    (short side to ``base_size``) and normalised, and the image's own size, which the class map comes back at."""
    transform = build_segmentation_transform(Preprocessing.from_model(model), train=False, augment=augment)

    def prepare(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        placeholder = tv_tensors.Mask(torch.zeros(image.height, image.width, dtype=torch.uint8))
        x, full = transform(image, placeholder)  # (3, h, w) resized and normalised; (H, W) at the file's size
        return x, (int(full.shape[-2]), int(full.shape[-1]))

    return prepare


@torch.no_grad()
def segment_input(
    model: nn.Module, x: torch.Tensor, size: tuple[int, int], inference: SegmentationInference
) -> tuple[np.ndarray, tuple[float, ...]]:
    """One prepared image (:func:`segmentation_input`) segmented as ``eval`` segments it: its class map ``(H, W)``
    uint8 at ``size`` and the fraction of pixels of each class. Runs on ``model``'s device, under the caller's
    autocast."""
    num_classes = int(model.num_classes)
    device = next(model.parameters()).device
    probabilities = segment(
        model, x[None].to(device), inference, size, input_size=tuple(Preprocessing.from_model(model).image_size),
        num_classes=num_classes, multiple=model.layout.divisor,
    )  # fmt: skip
    labels = probabilities[0].argmax(dim=0).cpu().numpy().astype(np.uint8)  # (H, W)
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    return labels, tuple((counts / labels.size).tolist())


def label_png(labels: np.ndarray, num_classes: int) -> bytes:
    """A class map ``(H, W)`` as ``predict``'s label PNG: palette mode, a pixel's value its class index, shown in the
    Pascal VOC colours."""
    label = Image.fromarray(labels, mode="L")
    label.putpalette(np.array(voc_palette(max(num_classes, 1)), dtype=np.uint8).ravel().tolist())  # L -> P
    buffer = io.BytesIO()
    label.save(buffer, format="png")
    return buffer.getvalue()


def write_mask_files(prediction: MaskPrediction, out: Path, num_classes: int) -> tuple[Path, Path]:
    """Write ``prediction``'s label PNG (palette mode, values = class indices) and its overlay; returns both paths.
    Each file is encoded in memory and written atomically."""
    assert prediction.labels is not None and prediction.image is not None
    label_path, overlay_path = mask_files(make_folder(out), prediction.path)
    palette = np.array(voc_palette(max(num_classes, 1)), dtype=np.uint8)
    colours = palette[prediction.labels].astype(np.float32)  # (H, W, 3)
    blended = np.rint((1 - OVERLAY_ALPHA) * prediction.image.astype(np.float32) + OVERLAY_ALPHA * colours)
    buffer = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8), "RGB").save(buffer, format="png")
    atomic_write_bytes(label_path, label_png(prediction.labels, num_classes))
    atomic_write_bytes(overlay_path, buffer.getvalue())
    return label_path, overlay_path
