"""The one function every path reads an image through: dataset readers, ``predict``, ``serve`` and the multi-task
model's Python API.

:func:`read_image` opens the file's header, checks its format by its bytes (``formats``, an allow-list of Pillow's
format names; ``serve`` and ``predict`` pass :data:`ACCEPTED_FORMATS`) and its pixel count (``max_pixels``) before
anything is decoded, then decodes and converts to 8-bit RGB with :func:`to_rgb`.

How each mode becomes RGB (:func:`to_rgb`); every rule keeps "the same picture" the same whatever bit depth it was
saved in:

==========================  =========================================================================================
mode                        conversion
==========================  =========================================================================================
``1``, ``L``, ``RGB``       Pillow's exact conversion (grey repeated to three channels)
``I;16`` (``B``/``L``/...)  16-bit grey: ``round(v / 257)`` (0..65535 onto 0..255; 257 * k -> k exactly)
``I`` (32-bit integer)      read in the 16-bit range as ``I;16`` (Pillow's mode for 16-bit data), values clipped to
                            0..65535
``F`` (32-bit float)        intensities in 0..1: ``round(255 * v)``, clipped; NaN -> 0
``CMYK``                    ``255 * (1 - C) * (1 - K)`` per channel (Pillow's conversion; Adobe's inverted JPEGs are
                            un-inverted by Pillow when it opens them)
``YCbCr``                   Pillow's JPEG (ITU-R BT.601 full range) conversion
``P`` (palette)             the palette's colours
alpha (``LA``, ``RGBA``,    composited onto :data:`BACKGROUND` (white) by the alpha value; a palette or ``L``/``RGB``
``PA``, ``RGBa``, ``La``,   image with a transparent colour (``transparency`` in its info) likewise
transparency key)
``LAB``, ``HSV``, others    refused by name (:class:`ImageDecodeError`)
==========================  =========================================================================================

EXIF orientation is applied first (a phone photo taken upright is classified upright), in training as in
inference. An animated GIF or WebP is read as its first frame. Images with an embedded ICC profile are taken as
sRGB: their profile is not applied.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from adaptformer.data.files import file_error_fields

__all__ = [
    "ACCEPTED_FORMATS",
    "BACKGROUND",
    "SUPPORTED_MODES",
    "ImageDecodeError",
    "ImageFormatError",
    "ImageTooLargeError",
    "open_image",
    "read_image",
    "to_rgb",
]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""The formats ``serve`` and ``predict`` accept from a client, by Pillow's name, recognised by the file's bytes (its
signature), never by its name: PNG, JPEG, WebP, BMP and GIF (first frame). Others (EPS, whose Pillow plugin runs
Ghostscript; TIFF; PSD; ...) are refused before any plugin parses them."""

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited onto: white."""

_IMAGE_ERROR = "cannot read image file"
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_PLAIN_MODES = {"1", "L", "P", "RGB", "CMYK", "YCbCr"}
SUPPORTED_MODES = frozenset(_ALPHA_MODES | _SIXTEEN_BIT | _PLAIN_MODES | {"I", "F"})
"""The Pillow modes :func:`to_rgb` converts; others are refused by name."""


class ImageDecodeError(OSError):
    """An image file could not be opened or decoded: ``ImageDecodeError(path, reason)``, message
    "cannot read image file PATH: REASON".

    As :class:`~adaptformer.data.video.VideoDecodeError`, the one-argument form rebuilds the error from a text that
    holds its message (torch's DataLoader re-raises a worker's error by calling its type with the worker's traceback
    as text), so an unreadable image read in a loader worker still reaches the user as one line naming the file.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        self.path, self.reason = file_error_fields(path, reason, _IMAGE_ERROR, type(self).__name__)
        super().__init__(f"{_IMAGE_ERROR} {self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[Path, str]]:
        return type(self), (self.path, self.reason)


class ImageFormatError(ImageDecodeError):
    """A file whose bytes are not one of the accepted formats (an HTTP 415)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than allowed (an HTTP 413); nothing was decoded."""


def _reason(error: BaseException) -> str:
    """An exception as one line of text, without reprs of Python objects."""
    return " ".join(str(error).split()) or type(error).__name__


def open_image(
    source: str | Path | bytes,
    *,
    name: str | Path | None = None,
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open ``source`` (a path, or the file's bytes named ``name``) reading only its header; check its format against
    ``formats`` (None: any Pillow can read) and its size against ``max_pixels`` (None: Pillow's own decompression-bomb
    limit). The caller closes the image (or uses it in a ``with``)."""
    label = name if name is not None else ("<bytes>" if isinstance(source, bytes) else source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        # Pillow warns above its MAX_IMAGE_PIXELS (once per process, by Python's default filter); not silenced here:
        # warnings.catch_warnings is not thread-safe, and serve decodes in a thread pool
        image = Image.open(stream, formats=list(formats) if formats is not None else None)
    except Image.UnidentifiedImageError:
        if formats is None:
            raise ImageDecodeError(label, "not an image file Pillow can identify") from None
        accepted = ", ".join(formats)
        raise ImageFormatError(label, f"not one of the accepted formats ({accepted}), judged by its bytes") from None
    except Image.DecompressionBombError as error:  # over twice Pillow's MAX_IMAGE_PIXELS
        raise ImageTooLargeError(label, _reason(error)) from None
    except FileNotFoundError:
        raise ImageDecodeError(label, "no such file") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow raises these for corrupt headers
        raise ImageDecodeError(label, _reason(error)) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(label, f"{width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels")
    return image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """``image`` (any mode; EXIF orientation applied) as an 8-bit RGB image, by the rules of this module's table. An
    upright RGB image without a transparent colour is returned as it is."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image).astype(np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in image.info):
        rgba = image.convert("RGBA")  # premultiplied and palette forms become straight RGBA here
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in _PLAIN_MODES:
        return image.convert("RGB")
    raise ValueError(f"image mode {mode!r} is not supported (supported: {', '.join(sorted(SUPPORTED_MODES))})")


def read_image(
    source: str | Path | bytes,
    *,
    name: str | Path | None = None,
    formats: Sequence[str] | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """Open, check (:func:`open_image`), decode and convert (:func:`to_rgb`) an image file or its bytes; any failure
    raises :class:`ImageDecodeError` (or its :class:`ImageFormatError` / :class:`ImageTooLargeError`) naming
    ``name`` or the path."""
    label = name if name is not None else ("<bytes>" if isinstance(source, bytes) else source)
    with open_image(source, name=name, formats=formats, max_pixels=max_pixels) as image:
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            rgb = to_rgb(image, background)
            return rgb.copy() if rgb is image else rgb  # the opened image is closed on leaving the ``with``
        except ValueError as error:
            raise ImageDecodeError(label, _reason(error)) from None
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:  # truncated or corrupt pixel data
            raise ImageDecodeError(label, _reason(error)) from None
