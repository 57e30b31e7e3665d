"""``digits-seg``: scikit-learn's digits on canvases, a mask class per digit, seeded; ``adaptformer prepare
digits-seg`` writes it as the segfolder layout, which reads back pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.cli import main
from adaptformer.data.segmentation import DIGITS_SEG_CLASSES, build_segmentation_dataset


def test_masks_mark_the_ink_of_each_digit_with_its_class() -> None:
    dataset = build_segmentation_dataset("digits-seg", None, "train", None, num_samples=200)
    assert dataset.classes == list(DIGITS_SEG_CLASSES) == ["background", *"0123456789"]
    assert dataset.images.shape == dataset.masks.shape == (200, 64, 64)
    assert np.array_equal(dataset.masks > 0, dataset.images >= 128)  # at least half of the full ink
    assert set(np.unique(dataset.masks).tolist()) == set(range(11))  # every digit, no ignored pixel
    per_image = [len(set(np.unique(m).tolist()) - {0}) for m in dataset.masks]
    assert min(per_image) >= 1 and max(per_image) <= 3
    image, mask = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and mask.dtype == torch.int64


def test_seeded_and_split_apart() -> None:
    options = {"num_samples": 20, "image_size": 32, "digit_size": [10, 14]}
    first = build_segmentation_dataset("digits-seg", None, "train", None, **options)
    again = build_segmentation_dataset("digits-seg", None, "train", None, **options)
    other = build_segmentation_dataset("digits-seg", None, "train", None, **options, seed=1)
    test = build_segmentation_dataset("digits-seg", None, "test", None, **options)
    assert first.images.shape == (20, 32, 32)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images) and not np.array_equal(first.images, test.images)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"digit_size": [4, 6]}, "8 <= digit_size min <= max <= image_size"),
        ({"digit_size": [20, 70]}, "8 <= digit_size min <= max <= image_size"),
        ({"digit_size": 16}, "digit_size must be two integers"),
        ({"num_samples": 0}, "num_samples >= 1"),
        ({"num_digits": 2}, r"unknown options \['num_digits'\] for 'digits-seg'"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_segmentation_dataset("digits-seg", None, "train", None, **options)


def test_prepare_writes_segfolder_files_that_read_back_exactly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "digits-seg"
    assert main(["prepare", "digits-seg", "--out", str(out), "--options", "{num_samples: 12}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"dataset": "segfolder", "data_dir": str(out), "samples": {"train": 12, "test": 12}}
    assert (out / "classes.txt").read_text().split() == list(DIGITS_SEG_CLASSES)
    for split in ("train", "test"):
        files = build_segmentation_dataset("segfolder", out, split, None)
        source = build_segmentation_dataset("digits-seg", None, split, None, num_samples=12)
        assert len(files) == 12 and files.classes == source.classes
        for index in range(12):
            image, mask = files[index]
            want_image, want_mask = source[index]
            assert torch.equal(image, want_image) and torch.equal(mask, want_mask)
    with Image.open(out / "masks/train/00000.png") as mask, Image.open(out / "images/train/00000.png") as image:
        assert (mask.mode, image.mode) == ("P", "L")  # a palette PNG of the indices; grey kept grey
        assert mask.getpalette()[3:6] == [128, 0, 0]  # class 1 (digit 0) in VOC's colour for index 1
    assert main(["prepare", "digits-seg", "--out", str(out)]) == 2  # nothing overwritten
