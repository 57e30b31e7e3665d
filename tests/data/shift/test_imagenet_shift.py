"""The shifted ImageNet test sets read from tiny copies of their released layouts (real WordNet ids, real PNG files):
labels among ImageNet's 1000 classes (V2 by class index, Sketch and C by WordNet id) or among the 200 of ImageNet-R
/ -A, and every folder that is no class of the set refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptformer.data import DatasetFileError, build_image_dataset
from adaptformer.data.shift import imagenet_classes, subset_classes

GOLDFISH, SHARK, HEN = "n01443537", "n01484850", "n01514859"  # ImageNet classes 1, 2 and 8, all in ImageNet-R


def write_class_folders(root: Path, folders: dict[str, int]) -> None:
    """``count`` small PNG images in ``root/<folder>/`` for each folder."""
    for k, (folder, count) in enumerate(folders.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.random.default_rng([k, i]).integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"img{i}.png")


def test_the_class_lists_are_imagenets() -> None:
    imagenet = imagenet_classes()
    assert len(imagenet) == 1000 and imagenet[:2] == ("n01440764", GOLDFISH) and list(imagenet) == sorted(imagenet)
    for kind in ("imagenet-r", "imagenet-a"):
        subset = subset_classes(kind)
        assert len(subset) == 200 and set(subset) <= set(imagenet) and list(subset) == sorted(subset)
    assert subset_classes("imagenet-r") != subset_classes("imagenet-a")


@pytest.mark.parametrize(
    ("kind", "folders", "options", "labels"),
    [
        ("imagenet-v2", {"1": 2, "8": 1}, {}, [1, 1, 8]),
        ("imagenet-sketch", {GOLDFISH: 1, HEN: 2}, {}, [1, 8, 8]),
        ("imagenet-c", {"fog/3/" + SHARK: 2}, {"corruption": "fog", "severity": 3}, [2, 2]),
        ("imagenet-r", {GOLDFISH: 1, SHARK: 1, HEN: 1}, {}, [0, 1, 4]),  # positions among ImageNet-R's 200
    ],
)
def test_each_release_layout_is_read_with_its_labels(
    tmp_path: Path, kind: str, folders: dict[str, int], options: dict, labels: list[int]
) -> None:
    write_class_folders(tmp_path / kind, folders)
    dataset = build_image_dataset(kind, tmp_path / kind, "test", None, **options)
    assert dataset.targets == labels
    names = [dataset.classes[label] for label in labels]
    if kind == "imagenet-r":
        assert len(dataset.classes) == 200 and names == [GOLDFISH, SHARK, HEN]
    else:
        assert len(dataset.classes) == 1000 and names == [imagenet_classes()[label] for label in labels]
    image, _ = dataset[0]
    assert tuple(image.shape) == (3, 40, 36)


def test_imagenet_a_has_its_own_200_classes(tmp_path: Path) -> None:
    first = subset_classes("imagenet-a")[0]
    write_class_folders(tmp_path, {first: 1})
    dataset = build_image_dataset("imagenet-a", tmp_path, "test", None)
    assert dataset.classes == list(subset_classes("imagenet-a")) and dataset.targets == [0]
    outside_r = sorted(set(subset_classes("imagenet-a")) - set(subset_classes("imagenet-r")))[0]
    write_class_folders(tmp_path / "r", {outside_r: 1})
    with pytest.raises(DatasetFileError, match=rf"has folders \['{outside_r}'\] that are no imagenet-r class"):
        build_image_dataset("imagenet-r", tmp_path / "r", "test", None)


@pytest.mark.parametrize(
    ("kind", "folders", "options", "message"),
    [
        ("imagenet-v2", {"7": 1, "1000": 1}, {}, "has folders ['1000'] that are no imagenet-v2 class"),
        ("imagenet-sketch", {GOLDFISH: 1, "n99999999": 1, "cat": 1}, {},
         "has folders ['cat', 'n99999999'] that are no imagenet-sketch class"),
        ("imagenet-c", {"fog/3/" + SHARK: 1}, {}, "imagenet-c reads one corruption at one severity: --data.options "
         "'{corruption: NAME, severity: N}' (on disk under"),
        ("imagenet-c", {"fog/3/" + SHARK: 1}, {"corruption": "fog", "severity": 6}, "valid corruptions: gaussian"),
        ("imagenet-c", {"fog/3/" + SHARK: 1}, {"corruption": "fog", "severity": 2}, "fog/2 not found (on disk: "
         "['fog/3'])"),
        ("imagenet-r", {GOLDFISH: 1, "n01440764": 1}, {}, "has folders ['n01440764'] that are no imagenet-r class"),
    ],
)  # fmt: skip
def test_folders_that_are_no_class_of_the_set_are_refused_naming_them(
    tmp_path: Path, kind: str, folders: dict[str, int], options: dict, message: str
) -> None:
    write_class_folders(tmp_path, folders)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        build_image_dataset(kind, tmp_path, "test", None, **options)
    assert message in str(error.value)


def test_unreadable_images_are_skipped_when_asked(tmp_path: Path) -> None:
    write_class_folders(tmp_path, {GOLDFISH: 2})
    (tmp_path / GOLDFISH / "img1.png").write_bytes(b"not a png")
    dataset = build_image_dataset("imagenet-sketch", tmp_path, "test", None, skip_bad_images=True)
    assert len(dataset) == 1 and dataset.skipped == [str(tmp_path / GOLDFISH / "img1.png")]
