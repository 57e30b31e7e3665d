"""Image datasets read from tiny real files in their release layouts (:mod:`tests.data.release_files` writes them):
lengths, classes, labels and pixels, checksums, bad layouts, arguments and files."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.release_files import (
    CHECKSUMMED,
    WRITERS,
    _pickle,
    _smooth,
    build_kind,
    cifar_rows,
    random_images,
    write_cifar100,
    write_food101,
    write_imagefolder,
    write_svhn,
)

from adaptformer.data import (
    IMAGE_DATASETS,
    ImageDecodeError,
    build_image_dataset,
    dataset_labels,
)


@pytest.mark.parametrize(
    ("kind", "split", "length"),
    [
        ("cifar100", "train", 6),
        ("cifar100", "test", 4),
        ("cifar10", "train", 10),
        ("cifar10", "test", 3),
        ("svhn", "train", 5),
        ("svhn", "test", 3),
        ("food101", "train", 5),
        ("food101", "test", 2),
        ("imagefolder", "train", 5),
        ("imagefolder", "val", 2),
        ("imagefolder", "test", 3),
    ],
)
def test_dataset_length_classes_labels_and_pixels(tmp_path: Path, kind: str, split: str, length: int) -> None:
    written, classes = WRITERS[kind](tmp_path)
    images, labels = written[split]
    dataset = build_kind(kind, tmp_path, split)
    assert len(dataset) == length
    assert dataset.classes == classes
    assert dataset.targets == labels == [dataset[i][1] for i in range(length)]
    assert dataset_labels(dataset) == labels
    for i in range(length):
        raw = dataset[i][0]
        assert raw.dtype == torch.uint8 and raw.shape[0] == 3
        if images is not None:  # lossless formats: the decoded pixels are exactly the written ones
            assert torch.equal(raw, torch.from_numpy(images[i]).permute(2, 0, 1))


def test_food101_jpeg_decodes_close_to_source(tmp_path: Path) -> None:
    write_food101(tmp_path)
    raw = build_kind("food101", tmp_path, "train")[0][0]  # apple_pie/1.jpg
    source = torch.from_numpy(_smooth(20, seed=1)).permute(2, 0, 1)
    assert raw.shape == (3, 20, 20)
    assert (raw.float() - source.float()).abs().mean() < 4  # JPEG is lossy, but it is the same picture
    other = torch.from_numpy(_smooth(20, seed=2)).permute(2, 0, 1)
    assert (raw.float() - other.float()).abs().mean() > (raw.float() - source.float()).abs().mean()


def test_svhn_label_10_is_digit_zero(tmp_path: Path) -> None:
    write_svhn(tmp_path, test_labels=(10, 1, 9, 10))
    assert build_kind("svhn", tmp_path, "test").targets == [0, 1, 9, 0]


@pytest.mark.parametrize("kind", sorted(CHECKSUMMED))
def test_checksums_are_verified_by_default(tmp_path: Path, kind: str) -> None:
    WRITERS[kind](tmp_path)
    with pytest.raises(ValueError, match="verify_checksums=False") as info:
        build_image_dataset(kind, tmp_path, "train", None)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("kind", "layout_line"),
    [
        ("cifar100", "cifar-100-python/"),
        ("cifar10", "data_batch_1 ... data_batch_5"),
        ("svhn", "train_32x32.mat"),
        ("food101", "meta/classes.txt"),
        ("imagefolder", "train/<class>/"),
    ],
)
@pytest.mark.parametrize("missing_root", [False, True])
def test_missing_dataset_shows_layout_and_path(tmp_path: Path, kind: str, layout_line: str, missing_root: bool) -> None:
    root = tmp_path / "nowhere" if missing_root else tmp_path
    with pytest.raises(FileNotFoundError) as info:
        build_kind(kind, root, "train")
    assert layout_line in str(info.value)
    assert str(root) in str(info.value)


@pytest.mark.parametrize(("kind", "inner"), [("cifar100", "cifar-100-python"), ("food101", "food-101")])
def test_root_pointing_inside_the_dataset_gets_a_hint(tmp_path: Path, kind: str, inner: str) -> None:
    WRITERS[kind](tmp_path)
    with pytest.raises(FileNotFoundError, match=f"pass its parent {tmp_path}"):
        build_kind(kind, tmp_path / inner, "train")


@pytest.mark.parametrize(
    ("kind", "split", "options", "message"),
    [
        ("cifar100", "val", {}, "split 'val' is not available for 'cifar100'; allowed: \\['train', 'test'\\]"),
        ("imagefolder", "dev", {}, "allowed: \\['train', 'val', 'test'\\]"),
        ("mnist", "train", {}, "unknown image dataset kind 'mnist'"),
        ("synthetic", "train", {"colour": 3}, "unknown options \\['colour'\\]"),
        ("food101", "train", {"verify_checksums": True}, "allowed: \\[\\]"),
    ],
)
def test_bad_arguments_are_value_errors(tmp_path: Path, kind: str, split: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_image_dataset(kind, tmp_path, split, None, **options)


def test_out_of_range_labels_are_value_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(tmp_path)
    _pickle(folder / "test", {"data": cifar_rows(random_images(2)), "fine_labels": [3, 100]})
    with pytest.raises(ValueError, match=r"labels \[100\].*0\.\.99"):
        build_kind("cifar100", tmp_path, "test")
    write_svhn(tmp_path / "svhn", test_labels=(0, 3))  # 0 is not an SVHN label (the digit 0 is 10)
    with pytest.raises(ValueError, match=r"labels \[0\].*1\.\.10"):
        build_kind("svhn", tmp_path / "svhn", "test")


def test_imagefolder_split_with_unknown_class_is_rejected(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    (tmp_path / "val" / "horse").mkdir()
    with pytest.raises(ValueError, match=r"\['horse'\].*allowed: \['cat', 'dog'\]"):
        build_kind("imagefolder", tmp_path, "val")


@pytest.mark.parametrize("kind", ["food101", "imagefolder"])
def test_corrupt_images_are_named_or_skipped_and_counted(tmp_path: Path, kind: str, caplog) -> None:
    WRITERS[kind](tmp_path)
    dataset = build_kind(kind, tmp_path, "train")
    good = len(dataset)
    garbage, truncated = dataset.samples[0][0], dataset.samples[-1][0]
    garbage.write_bytes(b"this is not an image")
    buf = random_images(1, size=64)[0]
    Image.fromarray(buf).save(truncated, format="JPEG" if kind == "food101" else "PNG")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    strict = build_kind(kind, tmp_path, "train")
    for index, path in ((0, garbage), (len(strict) - 1, truncated)):
        with pytest.raises(ImageDecodeError, match=str(path)):
            strict[index]
    with caplog.at_level(logging.WARNING, logger="adaptformer.data.image"):
        lenient = build_kind(kind, tmp_path, "train", skip_bad_images=True)
    assert lenient.skipped == [str(garbage), str(truncated)]
    assert len(lenient) == good - 2 == len(lenient.targets)
    assert "skipped 2 unreadable image(s)" in caplog.text
    assert all(lenient[i][0].shape[0] == 3 for i in range(len(lenient)))


def test_digits_is_real_and_has_a_disjoint_stratified_test_split() -> None:
    from sklearn.datasets import load_digits

    train, test = (build_image_dataset("digits", None, split, None) for split in ("train", "test"))
    assert train.classes == test.classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797 and len(test) == round(0.2 * 1797)
    assert set(test.targets) == set(range(10))
    counts, total = Counter(test.targets), Counter(load_digits().target.tolist())
    assert all(abs(counts[c] - 0.2 * total[c]) <= 1 for c in range(10))
    # train + test is exactly the full set of images: every image lands in one split only
    pixels = [ds[i][0].numpy().tobytes() for ds in (train, test) for i in range(len(ds))]
    full = [np.round(img * 255 / 16).astype(np.uint8).tobytes() for img in load_digits().images]
    assert sorted(pixels) == sorted(full)
    assert build_image_dataset("digits", None, "test", None).targets == test.targets  # seeded


def test_synthetic_is_seeded_and_class_dependent() -> None:
    options = {"num_classes": 3, "num_samples": 30, "image_size": 8}
    a = build_image_dataset("synthetic", None, "train", None, **options)
    b = build_image_dataset("synthetic", None, "train", None, **options)
    test = build_image_dataset("synthetic", None, "test", None, **options)
    assert len(a) == 30 and a.classes == ["class_0", "class_1", "class_2"] and Counter(a.targets)[2] == 10
    assert torch.equal(a[5][0], b[5][0]) and not torch.equal(a[5][0], test[5][0])
    means = {c: torch.stack([a[i][0].float().mean((1, 2)) for i in range(30) if a.targets[i] == c]) for c in range(3)}
    for c in range(3):  # each sample's colour is closest to its own class mean: a nearest-mean classifier is perfect
        centres = torch.stack([means[k].mean(0) for k in range(3)])
        assert (torch.cdist(means[c], centres).argmin(1) == c).all()


@pytest.mark.parametrize("kind", ["digits", "synthetic", "shapes"])
def test_skip_bad_images_is_an_error_for_kinds_without_image_files(kind: str) -> None:
    assert {k for k, spec in IMAGE_DATASETS.items() if spec.reads_image_files} == {
        "food101",
        "imagefolder",
        "vtab1k",
        "fgvc",
        "cub200",
        "multilabel-list",
        "multilabel-csv",
        "nuswide",
        "coco",
        *("imagenet-v2", "imagenet-sketch", "imagenet-c", "imagenet-r", "imagenet-a"),
    }
    with pytest.raises(ValueError, match=f"{kind!r} has no image files that could be skipped"):
        build_image_dataset(kind, None, "train", None, skip_bad_images=True)


def test_every_registered_kind_is_covered() -> None:
    in_other_files = {"shapes", "vtab1k", "fgvc", "cub200"}  # tests/data/test_shapes.py, test_vtab_fgvc.py
    in_other_files |= {
        "multilabel-list",
        "multilabel-csv",
        "nuswide",
        "coco",
        "digits-multilabel",
    }  # tests/data/test_multilabel.py
    in_other_files |= {"imagenet-v2", "imagenet-sketch", "imagenet-c", "imagenet-r", "imagenet-a"}  # shift/
    assert set(IMAGE_DATASETS) == set(WRITERS) | {"digits", "synthetic"} | in_other_files
