"""Masks are read as the indices they store (palette, grey, 16-bit, 1-bit PNGs), turned with their image's EXIF
orientation, and every bad mask is an error naming the file and what was expected: a colour or JPEG mask, a size
other than the image's, values that are neither a class nor the ignore label."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from tests.data.segmentation.seg_release_files import (
    SIZE,
    save_mask,
    write_ade20k,
    write_cityscapes,
    write_segfolder,
    write_voc,
)

from adaptformer.data.image.reading import ImageDecodeError
from adaptformer.data.segmentation import (
    ArraySegmentationDataset,
    MaskError,
    build_segmentation_dataset,
    read_mask_values,
)

MASK_ERRORS = [
    ("rgb", "a colour image of mode RGB: its pixels are colours, not class indices; expected a palette (P) or "
            "greyscale (L) index PNG"),
    ("rgba", "a colour image of mode RGBA"),
    ("la", "an image of mode LA: its pixels are colours"),
    ("jpeg", "a JPEG, whose lossy compression changes class values at edges; expected a palette (P) or greyscale"),
    ("size", f"{SIZE[1] + 2}x{SIZE[0]} pixels, but its image {{image}} is {SIZE[1]}x{SIZE[0]}; a mask must have its "
             "image's size"),
    ("values", "values 5, 9 (2 pixels) are neither a class nor the ignore label; expected class indices 0..2 (the "
               "lines of {root}/classes.txt) or 255 (ignored)"),
]  # fmt: skip


@pytest.mark.parametrize("case, message", MASK_ERRORS)
def test_bad_masks_name_the_file_and_what_was_expected(tmp_path: Path, case: str, message: str) -> None:
    write_segfolder(tmp_path)
    mask_path = tmp_path / "masks/train/b2.png"
    values = np.asarray(Image.open(mask_path))
    if case in ("rgb", "rgba", "la"):
        Image.open(mask_path).convert(case.upper()).save(mask_path)
    elif case == "jpeg":
        Image.fromarray(values).save(mask_path, format="JPEG")  # named .png: judged by its bytes
    elif case == "size":
        save_mask(mask_path, np.zeros((SIZE[0], SIZE[1] + 2), np.uint8))
    else:
        values = values.copy()
        values[0, :2] = (9, 5)
        save_mask(mask_path, values)
    dataset = build_segmentation_dataset("segfolder", tmp_path, "train", None)
    index = [mask for _, mask in dataset.samples].index(mask_path)
    with pytest.raises(MaskError) as info:
        dataset[index]
    image = dataset.samples[index][0]
    expected = message.format(image=image, root=tmp_path)
    assert str(info.value).startswith(f"bad segmentation mask {mask_path}: ") and expected in str(info.value)


@pytest.mark.parametrize(
    "kind, stored, bad",
    [("ade20k", 151, "151"), ("cityscapes", 34, "34"), ("voc", 21, "21"), ("voc", 254, "254")],
)
def test_release_values_outside_the_dataset_are_named(tmp_path: Path, kind: str, stored: int, bad: str) -> None:
    {"ade20k": write_ade20k, "cityscapes": write_cityscapes, "voc": write_voc}[kind](tmp_path)
    dataset = build_segmentation_dataset(kind, tmp_path, "train", None)
    mask_path = dataset.samples[0][1]
    with Image.open(mask_path) as mask:
        values, palette = np.array(mask), mask.getpalette()
    values[3, 4] = stored
    save_mask(mask_path, values, palette=palette is not None)
    with pytest.raises(MaskError, match=rf"values {bad} \(1 pixels\) are neither a class nor the ignore label"):
        dataset[0]


def test_index_modes_read_as_values(tmp_path: Path) -> None:
    """P gives palette indices, not colours; a 16-bit PNG its values (an ignore value above 255); 1-bit gives 0/1."""
    palette = tmp_path / "p.png"
    save_mask(palette, np.full(SIZE, 15, np.uint8), palette=True)
    assert Image.open(palette).mode == "P" and (read_mask_values(palette) == 15).all()
    wide = np.full(SIZE, 1000, np.uint16)
    wide[0, 0] = 2
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    assert read_mask_values(tmp_path / "w.png").tolist() == wide.tolist()
    binary = np.zeros(SIZE, bool)
    binary[2:5] = True
    Image.fromarray(binary).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert read_mask_values(tmp_path / "b.png").tolist() == binary.astype(np.uint8).tolist()


def test_a_16_bit_mask_with_a_wide_ignore_value(tmp_path: Path) -> None:
    write_segfolder(tmp_path)
    stored = np.full(SIZE, 1000, np.uint16)
    stored[:4] = 2
    Image.fromarray(stored).save(tmp_path / "masks/train/c3.png")
    dataset = build_segmentation_dataset("segfolder", tmp_path, "train", None, ignore_value=1000)
    mask = dataset[[m.name for _, m in dataset.samples].index("c3.png")][1]
    assert set(mask[:4].unique().tolist()) == {2} and set(mask[4:].unique().tolist()) == {255}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


COLOURS = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_image_exif_orientation_turns_its_mask_too(tmp_path: Path, orientation: int) -> None:
    write_segfolder(tmp_path)
    stored = np.random.default_rng(orientation).integers(0, 3, SIZE).astype(np.uint8)  # drawn on the stored pixels
    Image.fromarray(COLOURS[stored]).save(tmp_path / "images/train/b2.png", exif=_exif(orientation))
    (tmp_path / "images/train/b2.jpg").unlink()
    save_mask(tmp_path / "masks/train/b2.png", stored)
    dataset = build_segmentation_dataset("segfolder", tmp_path, "train", None)
    image, mask = dataset[1]  # (3, H, W) upright, (H, W)
    assert image.shape[1:] == mask.shape == (SIZE if orientation == 3 else SIZE[::-1])
    decoded = np.argmax(image.numpy().transpose(1, 2, 0), axis=-1)  # the colour's channel is the class
    assert np.array_equal(decoded, mask.numpy())
    # a mask tagged upright (orientation 1) is taken as it is stored
    upright = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_180))
    Image.fromarray(upright).save(tmp_path / "masks/train/b2.png", exif=_exif(1))
    if orientation == 3:
        assert np.array_equal(dataset[1][1].numpy(), upright)
    else:
        with pytest.raises(MaskError, match=rf"\(upright by the image's EXIF orientation {orientation}, which turns"):
            dataset[1]


def test_mask_errors_survive_a_dataloader_worker_and_pickling() -> None:
    """torch's DataLoader re-raises a worker's error as ``type(traceback_text)``: the file and reason come back."""
    error = MaskError("/data/m.png", "values 7 (1 pixels) are neither a class nor the ignore label")
    rebuilt = MaskError(f"Caught MaskError in DataLoader worker process 0.\nOriginal Traceback ...\n{error}")
    assert (rebuilt.path, rebuilt.reason, str(rebuilt)) == (error.path, error.reason, str(error))
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_unreadable_and_vanished_masks_are_decode_errors_naming_them(tmp_path: Path) -> None:
    write_voc(tmp_path)
    dataset = build_segmentation_dataset("voc", tmp_path, "train", None)
    first, second = dataset.samples[0][1], dataset.samples[1][1]
    first.write_bytes(first.read_bytes()[:60])  # truncated
    second.unlink()
    with pytest.raises(ImageDecodeError, match=f"cannot read image file {first}: "):
        dataset[0]
    with pytest.raises(ImageDecodeError, match=f"cannot read image file {second}: no such file"):
        dataset[1]


def test_in_memory_masks_are_checked_once() -> None:
    images = np.zeros((2, *SIZE), np.uint8)
    masks = np.zeros((2, *SIZE), np.uint8)
    masks[1, 0, 0] = 7
    with pytest.raises(ValueError, match=r"mask values \[7\] are neither a class \(0..2\) nor the ignore index 255"):
        ArraySegmentationDataset(images, masks, ["a", "b", "c"], None)
    with pytest.raises(ValueError, match="expected uint8 masks"):
        ArraySegmentationDataset(images, masks[:, :4], ["a", "b", "c"], None)
    masks[1, 0, 0] = 255
    image, mask = ArraySegmentationDataset(images, masks, ["a", "b", "c"], None)[1]
    assert image.shape == (3, *SIZE) and mask[0, 0] == 255
