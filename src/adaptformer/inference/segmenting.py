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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision import tv_tensors

from ..data import ACCEPTED_FORMATS, ImageDecodeError, read_image
from ..data.segmentation import SegmentationAugment, build_segmentation_transform, voc_palette
from ..engine.distributed import resolve_device
from ..engine.segmentation import SegmentationInference, segment
from ..files import atomic_write_bytes, make_folder
from ..precision import resolve_precision
from ..preprocessing import Preprocessing

__all__ = ["OVERLAY_ALPHA", "MaskPrediction", "mask_files", "segment_files", "write_mask_files"]

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
    pre = Preprocessing.from_model(model)
    transform = build_segmentation_transform(pre, train=False, augment=augment)
    num_classes = int(model.num_classes)
    for path in paths:
        try:
            image = read_image(path, formats=ACCEPTED_FORMATS)
        except ImageDecodeError as e:
            yield MaskPrediction(str(path), error=str(e))
            continue
        placeholder = tv_tensors.Mask(torch.zeros(image.height, image.width, dtype=torch.uint8))
        x, full = transform(image, placeholder)  # (3, h, w) resized and normalised; (H, W) at the file's size
        with chosen.autocast():
            probabilities = segment(
                model, x[None].to(target), inference, tuple(full.shape[-2:]), input_size=tuple(pre.image_size),
                num_classes=num_classes, multiple=model.layout.divisor,
            )  # fmt: skip
        labels = probabilities[0].argmax(dim=0).cpu().numpy().astype(np.uint8)  # (H, W)
        counts = np.bincount(labels.ravel(), minlength=num_classes)
        yield MaskPrediction(str(path), labels, tuple((counts / labels.size).tolist()), np.asarray(image))


def write_mask_files(prediction: MaskPrediction, out: Path, num_classes: int) -> tuple[Path, Path]:
    """Write ``prediction``'s label PNG (palette mode, values = class indices) and its overlay; returns both paths.
    Each file is encoded in memory and written atomically."""
    assert prediction.labels is not None and prediction.image is not None
    label_path, overlay_path = mask_files(make_folder(out), prediction.path)
    palette = np.array(voc_palette(max(num_classes, 1)), dtype=np.uint8)
    label = Image.fromarray(prediction.labels, mode="L")
    label.putpalette(palette.ravel().tolist())  # L -> P: the indices kept, shown in colour
    colours = palette[prediction.labels].astype(np.float32)  # (H, W, 3)
    blended = np.rint((1 - OVERLAY_ALPHA) * prediction.image.astype(np.float32) + OVERLAY_ALPHA * colours)
    blended = blended.astype(np.uint8)
    for picture, path in ((label, label_path), (Image.fromarray(blended, "RGB"), overlay_path)):
        buffer = io.BytesIO()
        picture.save(buffer, format="png")
        atomic_write_bytes(path, buffer.getvalue())
    return label_path, overlay_path
