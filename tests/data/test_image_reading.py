"""The one image reader (``adaptformer.data.image.reading``): every mode becomes the RGB picture it shows, checked
against a reference conversion written here with numpy; the format allow-list judges bytes, not names; the pixel
limit is applied from the header, before anything is decoded; and every reader (datasets, predict, the multi-task
model, the transforms) goes through it."""

from __future__ import annotations

import io
import os
import stat
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.data import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    ImageFileDataset,
    ImageFormatError,
    ImageTooLargeError,
    ToRGBImage,
    load_rgb,
    read_image,
    to_rgb,
)

GREY = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)  # the picture, as 8-bit grey
COLOUR = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = np.random.default_rng(2).integers(0, 256, (12, 10), dtype=np.uint8)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _saved(image: Image.Image, path: Path, fmt: str, **options) -> Path:
    image.save(path, fmt, **options)
    return path


def _read(path: Path) -> np.ndarray:
    image = read_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return colour * a + 255 * (1 - a)


# ---------------------------------------------------------------- the same picture whatever the bit depth


def test_8_bit_grey_is_repeated_to_rgb(tmp_path: Path) -> None:
    assert np.array_equal(_read(_saved(Image.fromarray(GREY), tmp_path / "g.png", "PNG")), _rgb(GREY))


def test_16_bit_grey_png_is_the_same_picture_as_8_bit(tmp_path: Path) -> None:
    """Pillow's own I;16 -> RGB clips at 255, which binarises the picture; the reader scales it."""
    wide = GREY.astype(np.uint16) * 257
    path = _saved(Image.fromarray(wide), tmp_path / "g16.png", "PNG")
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        assert len(np.unique(np.asarray(opened.convert("RGB")))) <= 2  # what Pillow alone does
    assert np.array_equal(_read(path), _rgb(GREY))


def test_16_bit_values_between_8_bit_levels_round_to_the_nearest(tmp_path: Path) -> None:
    wide = np.array([[0, 128, 129, 385, 65535, 65407]], dtype=np.uint16)
    got = _read(_saved(Image.fromarray(wide), tmp_path / "g16.png", "PNG"))[..., 0]
    assert got.tolist() == np.rint(wide / 257).astype(np.uint8).tolist() == [[0, 0, 1, 1, 255, 255]]


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16_bit_grey_of_either_byte_order(mode: str) -> None:
    dtype = ">u2" if mode.endswith("B") else "<u2"
    image = Image.frombytes(mode, GREY.shape[::-1], (GREY.astype(dtype) * 257).tobytes())
    assert np.array_equal(np.asarray(to_rgb(image)), _rgb(GREY))


def test_32_bit_integer_grey_is_read_in_the_16_bit_range_and_clipped(tmp_path: Path) -> None:
    values = GREY.astype(np.int32) * 257
    values[0, :3] = [-5, 70000, 2**31 - 1]
    path = _saved(Image.fromarray(values), tmp_path / "g32.tif", "TIFF")
    with Image.open(path) as opened:
        assert opened.mode == "I"
    expected = _rgb(GREY)
    expected[0, :3] = [[0] * 3, [255] * 3, [255] * 3]
    assert np.array_equal(_read(path), expected)


def test_float_grey_is_read_as_intensities_in_0_1(tmp_path: Path) -> None:
    values = GREY.astype(np.float32) / 255
    values[0, :3] = [-0.5, 7.0, np.nan]
    path = _saved(Image.fromarray(values), tmp_path / "f.tif", "TIFF")
    with Image.open(path) as opened:
        assert opened.mode == "F"
    expected = _rgb(GREY)
    expected[0, :3] = [[0] * 3, [255] * 3, [0] * 3]
    assert np.array_equal(_read(path), expected)


def test_1_bit_black_and_white(tmp_path: Path) -> None:
    bits = GREY > 127
    path = _saved(Image.fromarray(bits), tmp_path / "b.png", "PNG")
    assert np.array_equal(_read(path), _rgb(np.where(bits, 255, 0).astype(np.uint8)))


# ---------------------------------------------------------------- colour models and transparency


def test_cmyk_is_converted_by_the_standard_formula(tmp_path: Path) -> None:
    cmyk = np.random.default_rng(3).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    path = _saved(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.tif", "TIFF")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    reference = 255 * (1 - c / 255) * (1 - k / 255)
    assert np.abs(_read(path).astype(np.float64) - reference).max() <= 1


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    path = _saved(Image.fromarray(np.dstack([COLOUR, ALPHA]), "RGBA"), tmp_path / "a.png", "PNG")
    assert np.abs(_read(path).astype(np.float64) - _over_white(COLOUR, ALPHA)).max() <= 1


def test_grey_with_alpha_is_composited_onto_white(tmp_path: Path) -> None:
    path = _saved(Image.fromarray(np.dstack([GREY, ALPHA]), "LA"), tmp_path / "la.png", "PNG")
    assert np.abs(_read(path).astype(np.float64) - _over_white(_rgb(GREY), ALPHA)).max() <= 1


def test_a_fully_transparent_pixel_is_the_background_not_its_hidden_colour(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent: Pillow's convert("RGB") keeps the black
    path = _saved(Image.fromarray(pixels, "RGBA"), tmp_path / "clear.png", "PNG")
    assert (_read(path) == 255).all()
    assert np.array_equal(np.asarray(read_image(path, background=(0, 128, 0)))[0, 0], [0, 128, 0])


def test_palette_with_a_transparent_index(tmp_path: Path) -> None:
    indices = np.random.default_rng(4).integers(0, 4, (12, 10), dtype=np.uint8)
    palette = [200, 10, 10, 10, 200, 10, 10, 10, 200, 0, 0, 0]
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    path = _saved(image, tmp_path / "p.png", "PNG", transparency=3)
    colours = np.array(palette, np.uint8).reshape(4, 3)
    expected = np.where((indices == 3)[..., None], 255, colours[indices])
    assert np.array_equal(_read(path), expected)


def test_palette_without_transparency_is_its_colours(tmp_path: Path) -> None:
    indices = np.random.default_rng(5).integers(0, 3, (12, 10), dtype=np.uint8)
    palette = [1, 2, 3, 90, 80, 70, 250, 0, 125]
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    path = _saved(image, tmp_path / "p.bmp", "BMP")
    assert np.array_equal(_read(path), np.array(palette, np.uint8).reshape(3, 3)[indices])


def test_rgb_with_a_transparent_colour_key(tmp_path: Path) -> None:
    colour = COLOUR.copy()
    colour[0, 0] = [7, 8, 9]
    path = _saved(Image.fromarray(colour), tmp_path / "key.png", "PNG", transparency=(7, 8, 9))
    got = _read(path)
    assert (got[0, 0] == 255).all()
    keyed = (colour == [7, 8, 9]).all(axis=2)
    assert np.array_equal(got[~keyed], colour[~keyed])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the picture rotated 90 degrees clockwise
    path = _saved(Image.fromarray(COLOUR), tmp_path / "turned.png", "PNG", exif=exif)
    got = _read(path)
    assert got.shape == (10, 12, 3)
    assert np.array_equal(got, np.rot90(COLOUR, k=-1))


def test_an_animated_gif_is_read_as_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((6, 6), v, np.uint8)).convert("P") for v in (40, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])
    assert (_read(path) == 40).all()


def test_a_file_of_an_unsupported_mode_is_an_error_or_skipped_as_unreadable(tmp_path: Path) -> None:
    lab = _saved(Image.new("LAB", (4, 4)), tmp_path / "lab.tif", "TIFF")
    good = _saved(Image.fromarray(GREY), tmp_path / "g.png", "PNG")
    with pytest.raises(ImageDecodeError, match=r"lab\.tif: image mode 'LAB' is not supported \(supported: 1, CMYK"):
        load_rgb(lab)
    dataset = ImageFileDataset([(lab, 0), (good, 0)], ["a"], None, skip_bad_images=True)
    assert dataset.skipped == [str(lab)] and len(dataset) == 1


def test_to_rgb_refuses_an_unsupported_mode_by_name() -> None:
    with pytest.raises(ValueError, match="image mode 'HSV' is not supported"):
        to_rgb(Image.new("HSV", (4, 4)))


def test_an_upright_rgb_image_is_returned_as_it_is() -> None:
    image = Image.fromarray(COLOUR)
    assert to_rgb(image) is image


# ---------------------------------------------------------------- formats by their bytes, sizes by their header


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_every_accepted_format_is_read(fmt: str) -> None:
    data = _bytes(Image.fromarray(COLOUR), fmt)
    image = read_image(data, name="upload.bin", formats=ACCEPTED_FORMATS)
    assert image.size == (10, 12) and image.mode == "RGB"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"


def test_postscript_named_png_is_refused_by_its_bytes_without_running_ghostscript(tmp_path, monkeypatch) -> None:
    """Pillow's EPS plugin runs Ghostscript to decode: the allow-list refuses the bytes before any plugin parses
    them. A fake ``gs`` on PATH records whether it ever ran."""
    marker = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "photo.png"
    path.write_bytes(EPS)
    with pytest.raises(ImageFormatError, match=r"photo\.png: not one of the accepted formats \(PNG, JPEG, WEBP"):
        load_rgb(path, formats=ACCEPTED_FORMATS)
    with pytest.raises(ImageFormatError):
        read_image(EPS, name="photo.png", formats=ACCEPTED_FORMATS)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO"])
def test_formats_outside_the_allow_list_are_refused_even_with_an_image_name(fmt: str) -> None:
    data = _bytes(Image.fromarray(COLOUR), fmt)
    assert read_image(data).size == (10, 12)  # readable: the refusal is the allow-list's
    with pytest.raises(ImageFormatError, match="image.jpg"):
        read_image(data, name="image.jpg", formats=ACCEPTED_FORMATS)


def test_a_png_whose_header_is_over_the_pixel_limit_is_refused_before_decoding() -> None:
    """A few kilobytes that would decode to 144 megapixels: refused from the header, in milliseconds."""
    data = _bytes(Image.new("1", (12000, 12000)), "PNG")
    assert len(data) < 100_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: 12000x12000 = 144000000 pixels; the limit is 4000000"):
        read_image(data, name="bomb.png", formats=ACCEPTED_FORMATS, max_pixels=4_000_000)
    assert time.perf_counter() - start < 1.0


def test_pillows_own_bomb_limit_is_a_too_large_error() -> None:
    data = _bytes(Image.new("1", (1, 1)), "PNG")
    header = bytearray(data)
    header[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width, height: 400 megapixels, over twice Pillow's limit
    header[29:33] = zlib.crc32(header[12:29]).to_bytes(4, "big")
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        read_image(bytes(header), name="forged.png")


def test_unreadable_bytes_name_the_file_and_show_no_repr() -> None:
    for data in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\xff" * 10):
        with pytest.raises(ImageDecodeError) as error:
            read_image(data, name="upload.png", formats=ACCEPTED_FORMATS)
        message = str(error.value)
        assert message.startswith("cannot read image file upload.png: ") and " at 0x" not in message


def test_a_truncated_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = _bytes(Image.fromarray(COLOUR), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.png"):
        load_rgb(path)


# ---------------------------------------------------------------- every reader goes through it


def test_the_file_dataset_and_the_transforms_read_16_bit_as_8_bit(tmp_path: Path) -> None:
    eight = _saved(Image.fromarray(GREY), tmp_path / "g8.png", "PNG")
    sixteen = _saved(Image.fromarray(GREY.astype(np.uint16) * 257), tmp_path / "g16.png", "PNG")
    dataset = ImageFileDataset([(eight, 0), (sixteen, 0)], ["a"], ToRGBImage())
    assert torch.equal(dataset[0][0], dataset[1][0])
    with Image.open(sixteen) as opened:  # a PIL image handed to the transforms directly (the Python API, serve)
        assert torch.equal(ToRGBImage()(opened), dataset[0][0])
