"""Reading a segmentation mask as the class indices it stores, never as colours, and checking it against its image.

A mask file is read for its values (:func:`read_mask_values`): a palette PNG (``P``, VOC's ``SegmentationClass``) gives
its palette indices, a greyscale PNG (``L``: ADE20K, Cityscapes, SBD's ``SegmentationClassAug``) its grey values,
16-bit (``I;16``) and 32-bit integer (``I``) PNGs their values and a 1-bit PNG 0/1. A colour mask (RGB, RGBA, LA, PA)
holds colours, not indices, and a JPEG mask has lossy edges: both are a :class:`MaskError` naming the file and what
was expected. The stored values become class indices through the dataset's :class:`LabelMap` (ADE20K's 0 -> ignored,
Cityscapes' label ids -> train ids, ...); a value the map does not know is an error naming the file and the values.

EXIF orientation: images are read upright (:func:`~adaptformer.data.image.reading.read_image` applies their EXIF
orientation), and a mask is taken to be drawn on its image's stored pixels, so the image's orientation is applied to
the mask as well; a mask with an orientation tag of its own (1: upright as stored) gets its own instead. The release
datasets carry no orientation tags, so this only matters for photos in a folder dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from adaptformer.data.files import DatasetFileError, file_error_fields
from adaptformer.data.image.reading import ImageDecodeError, open_image, read_image

__all__ = ["IGNORE_INDEX", "LabelMap", "MaskError", "exif_orientation", "read_mask_values", "read_pair"]

IGNORE_INDEX = 255
"""The mask value of pixels that are not scored and carry no loss, in every dataset after its mapping."""

_MASK_ERROR = "bad segmentation mask"
_INDEX_MODES = {"P", "L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I"}
_EXPECTED_FILE = "a palette (P) or greyscale (L) index PNG whose pixel values are class indices"
# EXIF orientation -> the transposition that makes the stored pixels upright (Pillow's ImageOps.exif_transpose table)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class MaskError(DatasetFileError):
    """A mask file that does not hold what its dataset expects: ``MaskError(path, reason)``, message
    "bad segmentation mask PATH: REASON".

    As :class:`~adaptformer.data.image.reading.ImageDecodeError`, the one-argument form rebuilds the error from a text
    holding its message, so a bad mask met in a DataLoader worker still reaches the user as one line naming the file.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        self.path, self.reason = file_error_fields(path, reason, _MASK_ERROR, type(self).__name__)
        super().__init__(f"{_MASK_ERROR} {self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type[MaskError], tuple[Path, str]]:
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class LabelMap:
    """How a dataset's stored mask values become class indices ``0..K-1`` or :data:`IGNORE_INDEX`.

    Args:
        table: int16 lookup table indexed by the stored value: the class index, ``IGNORE_INDEX``, or -1 for a value
            the dataset never stores (an error when met); values past its end are such values too.
        expected: what the stored values should be, in words, for the error message.
    """

    table: np.ndarray
    expected: str

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, int], expected: str) -> LabelMap:
        """A map from ``{stored value: class index or IGNORE_INDEX}``; every other value is refused."""
        table = np.full(max(mapping) + 2, -1, dtype=np.int16)  # one past the largest value: the refused sentinel
        for stored, index in mapping.items():
            table[stored] = index
        return cls(table, expected)

    def apply(self, values: np.ndarray, path: Path) -> np.ndarray:
        """The uint8 ``(H, W)`` class-index mask of the stored ``values``; a refused value is a :class:`MaskError`
        naming ``path``, the values and how many pixels hold them."""
        last = len(self.table) - 1  # refused by construction: values past the end land there
        index = values if values.dtype == np.uint8 and last >= 255 else np.clip(values, 0, last)
        mapped = self.table[index]
        bad_pixels = (mapped < 0) | (values < 0) if values.dtype.kind == "i" else mapped < 0
        if bad_pixels.any():
            bad = np.unique(values[bad_pixels])
            shown = ", ".join(str(v) for v in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise MaskError(
                path,
                f"values {shown} ({int(bad_pixels.sum())} pixels) are neither a class nor the ignore label; expected "
                f"{self.expected}",
            )
        return mapped.astype(np.uint8)


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image: None when it has none, 1 (upright) for an invalid one."""
    value = image.getexif().get(ExifTags.Base.Orientation)
    return None if value is None else value if value in _UPRIGHT else 1


def read_mask_values(path: str | Path, orientation: int = 1) -> np.ndarray:
    """The values stored in mask file ``path`` as an ``(H, W)`` array (uint8 for ``P``/``L``/``1``, wider integers
    for 16- and 32-bit PNGs), made upright by the mask's own EXIF orientation (a mask tagged 1 is upright as stored)
    or, without one, ``orientation`` (its image's). A file that is not an index image is a :class:`MaskError`; an
    unreadable one an ``ImageDecodeError``."""
    path = Path(path)
    with open_image(path) as mask:
        if mask.format == "JPEG":
            raise MaskError(path, f"a JPEG, whose lossy compression changes class values at edges; expected "
                                  f"{_EXPECTED_FILE}")  # fmt: skip
        if mask.mode not in _INDEX_MODES:
            kind = "a colour image" if mask.mode in {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr"} else "an image"
            raise MaskError(
                path,
                f"{kind} of mode {mask.mode}: its pixels are colours, not class indices; expected {_EXPECTED_FILE} "
                "(a palette PNG saved again as RGB has lost its indices)",
            )
        own = exif_orientation(mask)
        transpose = _UPRIGHT.get(own if own is not None else orientation)
        try:
            mask.load()
            upright = mask.transpose(transpose) if transpose is not None else mask
            values = np.asarray(upright)
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
            raise ImageDecodeError(path, " ".join(str(error).split()) or type(error).__name__) from None
    return values.astype(np.uint8) if values.dtype == bool else values


def read_pair(image_path: Path, mask_path: Path, label_map: LabelMap) -> tuple[Image.Image, np.ndarray]:
    """The RGB image (upright, :func:`read_image`) and its uint8 ``(H, W)`` class-index mask (same orientation,
    mapped by ``label_map``); a mask of another size than its image is a :class:`MaskError` naming both."""
    image = read_image(image_path)
    with open_image(image_path) as header:  # the header again, for the orientation read_image applied
        orientation = exif_orientation(header) or 1
    values = read_mask_values(mask_path, orientation)
    height, width = values.shape
    if (width, height) != image.size:
        turned = (f" (upright by the image's EXIF orientation {orientation}, which turns the mask too unless it has an "
                  "orientation tag of its own)")  # fmt: skip
        raise MaskError(
            mask_path,
            f"{width}x{height} pixels, but its image {image_path} is {image.size[0]}x{image.size[1]}"
            f"{turned if orientation != 1 else ''}; a mask must have its image's size",
        )
    return image, label_map.apply(values, mask_path)
