"""The segmentation kinds read tiny real copies of their release layouts: the right pairs, the stored values mapped
to class indices (ADE20K's 0 ignored, Cityscapes' label ids to train ids, VOC's palette indices and 255 borders),
and an error showing the layout, or naming the files, for every missing, mislaid or unpaired file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.segmentation.seg_release_files import (
    SEGFOLDER_CLASSES,
    SIZE,
    VOC_AUG_IDS,
    save_image,
    save_mask,
    write_ade20k,
    write_cityscapes,
    write_segfolder,
    write_voc,
)

from adaptformer.data import DatasetFileError
from adaptformer.data.kinds import split_location
from adaptformer.data.segmentation import (
    ADE20K_PALETTE,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    SEGMENTATION_DATASETS,
    build_segmentation_dataset,
    voc_palette,
)

WRITERS: dict[str, Callable[[Path], dict]] = {
    "ade20k": write_ade20k,
    "cityscapes": write_cityscapes,
    "voc": write_voc,
    "segfolder": write_segfolder,
}
NUM_CLASSES = {"ade20k": 150, "cityscapes": 19, "voc": 21, "segfolder": 3}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_release_layouts_read_back_mapped(tmp_path: Path, kind: str) -> None:
    expected = WRITERS[kind](tmp_path)
    for split, masks in expected.items():
        dataset = build_segmentation_dataset(kind, tmp_path, split, None)
        assert len(dataset) == len(masks) and len(dataset.classes) == NUM_CLASSES[kind]
        assert len(dataset.palette) == len(dataset.classes) and dataset.ignore_index == IGNORE_INDEX == 255
        assert dataset.targets is None  # no one label per sample to stratify by
        for index, want in enumerate(masks):
            image, mask = dataset[index]
            assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
            assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), want)


def test_ade20k_zero_is_ignored_and_the_classes_shift_down(tmp_path: Path) -> None:
    write_ade20k(tmp_path)
    dataset = build_segmentation_dataset("ade20k", tmp_path / "ADEChallengeData2016", "val", None)  # the folder too
    stored = np.asarray(Image.open(dataset.samples[0][1]))
    mask = dataset[0][1].numpy()
    for value, index in ((0, 255), (1, 0), (2, 1), (150, 149)):
        assert (mask[stored == value] == index).all() and (stored == value).any()
    assert dataset.classes[0] == "wall" and dataset.classes[149] == "flag"
    assert dataset.palette[:2] == ADE20K_PALETTE[:2] == [(120, 120, 120), (180, 120, 120)]


def test_cityscapes_train_ids_option_and_other_gtfine_files_left_alone(tmp_path: Path) -> None:
    expected = write_cityscapes(tmp_path)
    dataset = build_segmentation_dataset("cityscapes", tmp_path, "train", None, labels="labelTrainIds")
    assert [p[1].name.endswith("_gtFine_labelTrainIds.png") for p in dataset.samples] == [True, True]
    assert all(np.array_equal(dataset[i][1].numpy(), want) for i, want in enumerate(expected["train"]))
    assert dataset.classes[13] == "car" and dataset.palette == CITYSCAPES_PALETTE
    with pytest.raises(ValueError, match="labels must be one of"):
        build_segmentation_dataset("cityscapes", tmp_path, "train", None, labels="color")


def test_voc_masks_are_palette_indices_never_colours(tmp_path: Path) -> None:
    write_voc(tmp_path)
    dataset = build_segmentation_dataset("voc", tmp_path, "train", None)
    assert Image.open(dataset.samples[0][1]).mode == "P"
    mask = dataset[0][1]
    assert set(mask.unique().tolist()) == {0, 1, 15, 20, 255}  # 15 = person, 255 = borders, never (192, 128, 128)
    assert dataset.classes[15] == "person" and dataset.palette == voc_palette(21)
    assert dataset.palette[15] == (192, 128, 128)
    for inner in ("VOCdevkit", "VOCdevkit/VOC2012"):  # the devkit or the VOC2012 folder itself
        assert len(build_segmentation_dataset("voc", tmp_path / inner, "val", None)) == 1


def test_voc_augmented_reads_sbd_list_and_masks(tmp_path: Path) -> None:
    expected = write_voc(tmp_path, augmented=True)
    train = build_segmentation_dataset("voc", tmp_path, "train", None, augmented=True)
    assert [image.stem for image, _ in train.samples] == VOC_AUG_IDS
    assert all(mask.parent.name == "SegmentationClassAug" for _, mask in train.samples)
    assert all(np.array_equal(train[i][1].numpy(), want) for i, want in enumerate(expected["train"]))
    val = build_segmentation_dataset("voc", tmp_path, "val", None, augmented=True)
    assert [mask.parent.name for _, mask in val.samples] == ["SegmentationClass"]  # val stays VOC's own
    lists = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    (lists / "train_aug.txt").write_text("2007_000032\n2007_000033\n")  # plain ids; 2007_000033 is a val image
    with pytest.raises(DatasetFileError, match=r"train_aug.txt holds 1 images of the val split \(2007_000033"):
        build_segmentation_dataset("voc", tmp_path, "train", None, augmented=True)
    (lists / "train_aug.txt").write_text("a b c\n")
    with pytest.raises(DatasetFileError, match="train_aug.txt line 1: 'a b c'; expected '<id>'"):
        build_segmentation_dataset("voc", tmp_path, "train", None, augmented=True)


def test_voc_listed_files_missing_are_named_with_a_count(tmp_path: Path) -> None:
    write_voc(tmp_path)
    base = tmp_path / "VOCdevkit/VOC2012"
    extra = [f"2009_00{n:04d}" for n in range(7)]
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(["2007_000032", *extra]) + "\n")
    with pytest.raises(DatasetFileError) as info:
        build_segmentation_dataset("voc", tmp_path, "train", None)
    message = str(info.value)
    assert "7 listed images missing" in message and "7 listed masks missing" in message
    assert str(base / "JPEGImages/2009_000000.jpg") in message and message.count("...") == 2


@pytest.mark.parametrize("kind", ["ade20k", "cityscapes", "segfolder"])
def test_unpaired_images_and_masks_are_named(tmp_path: Path, kind: str) -> None:
    WRITERS[kind](tmp_path)
    image_dir, mask_dir, image_name, mask_name = {
        "ade20k": ("ADEChallengeData2016/images/training", "ADEChallengeData2016/annotations/training",
                   "ADE_train_00000099.jpg", "ADE_train_00000098.png"),
        "cityscapes": ("leftImg8bit/train/aachen", "gtFine/train/aachen", "aachen_000000_000099_leftImg8bit.png",
                       "aachen_000000_000098_gtFine_labelIds.png"),
        "segfolder": ("images/train", "masks/train", "lonely.png", "orphan.png"),
    }[kind]  # fmt: skip
    save_image(tmp_path / image_dir / image_name, 0)
    save_mask(tmp_path / mask_dir / mask_name, np.zeros(SIZE, np.uint8))
    with pytest.raises(DatasetFileError) as info:
        build_segmentation_dataset(kind, tmp_path, "train", None)
    message = str(info.value)
    assert f"1 images without a mask: {tmp_path / image_dir / image_name}" in message
    assert f"1 masks without an image: {tmp_path / mask_dir / mask_name}" in message


@pytest.mark.parametrize(
    "kind, remove, shown",
    [
        ("ade20k", "ADEChallengeData2016", "ADEChallengeData2016/\n    images/training/"),
        ("ade20k", "ADEChallengeData2016/annotations", "annotations/training/ADE_train_00000001.png"),
        ("cityscapes", "gtFine", "gtFine/{train,val}/<city>/"),
        ("voc", "VOCdevkit/VOC2012/ImageSets", "ImageSets/Segmentation/train.txt, val.txt"),
        ("voc", "VOCdevkit/VOC2012/SegmentationClass", "SegmentationClass/<id>.png"),
        ("segfolder", "classes.txt", "classes.txt   (one class name per line"),
        ("segfolder", "masks", "masks/train/<name>.png"),
    ],
)
def test_missing_parts_show_the_expected_layout(tmp_path: Path, kind: str, remove: str, shown: str) -> None:
    import shutil

    WRITERS[kind](tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match="expected layout:") as info:
        build_segmentation_dataset(kind, tmp_path, "train", None)
    assert shown in str(info.value)


def test_a_root_inside_the_release_gets_a_hint(tmp_path: Path) -> None:
    write_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="is inside the release; pass the folder above it"):
        build_segmentation_dataset("cityscapes", tmp_path / "leftImg8bit", "train", None)
    with pytest.raises(FileNotFoundError, match="root folder .* not found\nexpected layout:\n<root>/   \\(the folder"):
        build_segmentation_dataset("ade20k", tmp_path / "nowhere", "train", None)


def test_segfolder_ignore_value_and_its_checks(tmp_path: Path) -> None:
    expected = write_segfolder(tmp_path, ignore=7)
    dataset = build_segmentation_dataset("segfolder", tmp_path, "train", None, ignore_value=7)
    assert dataset.classes == SEGFOLDER_CLASSES and len(dataset.palette) == 3
    assert all(np.array_equal(dataset[i][1].numpy(), want) for i, want in enumerate(expected["train"]))
    with pytest.raises(ValueError, match=r"ignore_value must be an integer in 3..65535 \(not a class"):
        build_segmentation_dataset("segfolder", tmp_path, "train", None, ignore_value=2)
    (tmp_path / "classes.txt").write_text("".join(f"c{i}\n" for i in range(256)))
    with pytest.raises(DatasetFileError, match="256 classes; at most 255"):
        build_segmentation_dataset("segfolder", tmp_path, "train", None)


def test_two_images_of_one_mask_are_refused(tmp_path: Path) -> None:
    write_segfolder(tmp_path)
    save_image(tmp_path / "images/train/b2.png", 3)  # b2.jpg is there already
    with pytest.raises(DatasetFileError, match="b2.jpg and .*b2.png are two files of one sample|b2.png and .*b2.jpg"):
        build_segmentation_dataset("segfolder", tmp_path, "train", None)


def test_requests_are_checked_as_for_image_kinds(tmp_path: Path) -> None:
    write_segfolder(tmp_path)
    with pytest.raises(ValueError, match="unknown segmentation dataset kind 'ade'"):
        build_segmentation_dataset("ade", tmp_path, "train", None)
    with pytest.raises(ValueError, match=r"unknown options \['augment'\] for 'voc'; allowed: \['augmented'\]"):
        build_segmentation_dataset("voc", tmp_path, "train", None, augment=True)
    with pytest.raises(ValueError, match="split 'test' is not available for 'ade20k'"):
        build_segmentation_dataset("ade20k", tmp_path, "test", None)
    with pytest.raises(ValueError, match="'cityscapes' needs a root folder"):
        build_segmentation_dataset("cityscapes", None, "train", None)


def test_locate_finds_the_splits_on_disk(tmp_path: Path) -> None:
    """The engine's "no test split on disk: val is the test split" rule reads these."""
    for kind, writer in WRITERS.items():
        root = tmp_path / kind
        on_disk = set(writer(root))  # segfolder: train + test; the releases: train + val
        found = {
            split for split in ("train", "val", "test") if split_location(SEGMENTATION_DATASETS[kind], root, split)
        }
        assert found == on_disk, kind
    assert split_location(SEGMENTATION_DATASETS["voc"], tmp_path / "voc", "train", {"augmented": True}) is None
    assert SEGMENTATION_DATASETS["digits-seg"].options == (
        "num_samples", "image_size", "digit_size", "max_digits", "test_fraction", "seed"
    )  # fmt: skip
