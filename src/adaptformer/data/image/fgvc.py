"""Fine-grained visual classification (FGVC) as VPT (Jia et al., ECCV 2022) distributes it: per dataset a folder with
the images and ``train.json`` / ``val.json`` / ``test.json``, each mapping a relative image path to an integer label
(``val.json`` is VPT's split of the official training set). Also the official CUB-200-2011 release (kind ``cub200``:
``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``), a separate kind because its
files, class names and splits (train/test only) differ from the JSON layout.

Protocol stages (option ``stage``): ``tune`` trains on train.json, selects and tests on val.json; ``final`` trains on
train.json + val.json and tests once on test.json, with no validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adaptformer.data.files import DatasetFileError, read_json, read_text
from adaptformer.data.image.datasets import ImageFileDataset, Transform
from adaptformer.data.kinds import check_class_coverage

log = logging.getLogger(__name__)

__all__ = ["CUB_LAYOUT", "FGVC_DATASETS", "FGVC_LAYOUT", "FgvcDataset", "build_cub200", "build_fgvc", "locate_fgvc"]


@dataclass(frozen=True)
class FgvcDataset:
    """One FGVC dataset of VPT's layout: the folder its JSON paths are relative to, and its class count."""

    images: str
    num_classes: int


# Folder names and image roots as VPT's JSON loaders use them.
FGVC_DATASETS: dict[str, FgvcDataset] = {
    "CUB_200_2011": FgvcDataset("images", 200),
    "nabirds": FgvcDataset("images", 555),
    "OxfordFlower": FgvcDataset("", 102),
    "stanford_dogs": FgvcDataset("Images", 120),
    "stanford_cars": FgvcDataset("", 196),
}

# The JSON files of each (stage, split).
_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("tune", "train"): ("train.json",),
    ("tune", "val"): ("val.json",),
    ("tune", "test"): ("val.json",),
    ("final", "train"): ("train.json", "val.json"),
    ("final", "test"): ("test.json",),
}

FGVC_LAYOUT = (
    "<root>/\n"
    "  <dataset>/                 (CUB_200_2011, nabirds, OxfordFlower, stanford_dogs, stanford_cars)\n"
    '    train.json  val.json  test.json   ({"relative/path.jpg": label, ...})\n'
    "    <images>/...             (paths relative to images/ for CUB_200_2011 and nabirds, Images/ for stanford_dogs,\n"
    "                              <dataset>/ itself for OxfordFlower and stanford_cars)"
)
CUB_LAYOUT = (
    "<root>/\n"
    "  CUB_200_2011/\n"
    "    images/<class>/<image>.jpg\n"
    '    images.txt               ("<image id> <class>/<image>.jpg")\n'
    '    image_class_labels.txt   ("<image id> <class id 1..200>")\n'
    '    train_test_split.txt     ("<image id> <1 train | 0 test>")\n'
    '    classes.txt              ("<class id> <class name>")'
)


def _check_options(dataset: str, stage: str) -> None:
    if dataset not in FGVC_DATASETS:
        raise ValueError(f"fgvc: unknown dataset {dataset!r}; allowed: {list(FGVC_DATASETS)} (data.options.dataset)")
    if stage not in ("tune", "final"):
        raise ValueError(f"fgvc: unknown stage {stage!r}; allowed: ['tune', 'final'] (data.options.stage)")


def locate_fgvc(root: Path, split: str, options: Mapping[str, Any]) -> Path | None:
    """The (first) JSON file of ``split`` for the dataset and stage in ``options`` if it is on disk, else None."""
    dataset, stage = options.get("dataset"), options.get("stage", "tune")
    if dataset not in FGVC_DATASETS or (stage, split) not in _FILES:
        return None
    path = root / str(dataset) / _FILES[(stage, split)][0]
    return path if path.is_file() else None


def _read_listing(path: Path, images: Path) -> list[tuple[Path, int]]:
    expected = 'a JSON object mapping each relative image path to its integer label, {"001.x/a.jpg": 0, ...}'
    listing = read_json(path, expected)
    if not isinstance(listing, dict):
        raise DatasetFileError(f"{path}: expected {expected}, got a {type(listing).__name__}")
    samples = []
    for name, label in listing.items():
        if isinstance(label, bool) or not isinstance(label, int):
            raise DatasetFileError(f"{path}: entry {name!r}: label {label!r} is not an integer; expected {expected}")
        if not (images / name).is_file():
            raise DatasetFileError(f"{path}: entry {name!r}: image {images / name} not found\n"
                                   f"expected layout:\n{FGVC_LAYOUT}")  # fmt: skip
        samples.append((images / name, label))
    return samples


def build_fgvc(
    root: Path,
    split: str,
    transform: Transform | None,
    *,
    skip_bad_images: bool,
    dataset: str = "",
    stage: Literal["tune", "final"] = "tune",
) -> ImageFileDataset:
    """The ``split`` of FGVC ``dataset`` at protocol ``stage``. Labels are the JSON's integers, mapped in sorted order
    to 0..C-1 over train.json + val.json (so every stage and split agrees); C must not exceed the dataset's count."""
    _check_options(dataset, stage)
    if (stage, split) not in _FILES:
        raise ValueError(f"fgvc: stage {stage!r} has no {split!r} split; the final stage trains on train + val and "
                         "tests the last epoch (data.val_split 0, run.select last)")  # fmt: skip
    info, folder = FGVC_DATASETS[dataset], root / dataset
    for name in dict.fromkeys(("train.json", "val.json", *_FILES[(stage, split)])):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"fgvc dataset: {folder / name} not found (root: {root})\nexpected layout:\n{FGVC_LAYOUT}"
            )
    images = folder / info.images
    defining = {name: _read_listing(folder / name, images) for name in ("train.json", "val.json")}
    ids = sorted({label for samples in defining.values() for _, label in samples})
    if len(ids) > info.num_classes:
        raise DatasetFileError(f"{folder}/train.json + val.json: {len(ids)} distinct labels, more than the "
                               f"{info.num_classes} classes of {dataset}")  # fmt: skip
    index = {label: i for i, label in enumerate(ids)}
    samples = []
    for name in _FILES[(stage, split)]:
        listed = defining.get(name) or _read_listing(folder / name, images)
        unknown = sorted({label for _, label in listed if label not in index})
        if unknown:
            raise DatasetFileError(f"{folder / name}: labels {unknown[:10]} appear in neither train.json nor val.json")
        samples += [(path, index[label]) for path, label in listed]
    classes = [str(label) for label in ids]
    result = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(
        result.targets, classes, f"fgvc {folder}", required=split == "train", skipped=len(result.skipped),
        what="every label of train.json + val.json needs training images",
    )  # fmt: skip
    return result


def _id_table(path: Path, what: str) -> dict[int, str]:
    table = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetFileError(f"{path}, line {number} ({line.strip()!r}): expected '<id> <{what}>'\n"
                                   f"expected layout:\n{CUB_LAYOUT}")  # fmt: skip
        table[int(parts[0])] = parts[1].strip()
    return table


def build_cub200(root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool) -> ImageFileDataset:
    """The official CUB-200-2011 release: its train/test split (``train_test_split.txt``), 200 classes named by
    ``classes.txt`` (class id k is label k - 1); validation is carved from train (``data.val_split``)."""
    base = root / "CUB_200_2011"
    files = {name: base / name for name in
             ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}  # fmt: skip
    for path in (*files.values(), base / "images"):
        if not path.exists():
            hint = f"\nhint: root points inside 'CUB_200_2011'; pass its parent {root.parent}" if root.name == \
                "CUB_200_2011" else ""  # fmt: skip
            raise FileNotFoundError(f"cub200 dataset: {path} not found (root: {root})\nexpected layout:\n{CUB_LAYOUT}"
                                    f"{hint}")  # fmt: skip
    class_table = _id_table(files["classes.txt"], "class name")
    if sorted(class_table) != list(range(1, len(class_table) + 1)):
        raise DatasetFileError(f"{files['classes.txt']}: class ids must be 1..{len(class_table)} without gaps")
    classes = [class_table[k] for k in sorted(class_table)]
    if len(set(classes)) != len(classes):
        raise DatasetFileError(f"{files['classes.txt']}: class names appear more than once")
    paths = _id_table(files["images.txt"], "relative image path")
    labels = _id_table(files["image_class_labels.txt"], "class id")
    is_train = _id_table(files["train_test_split.txt"], "1 or 0")
    wanted = "1" if split == "train" else "0"
    samples = []
    for image_id, name in sorted(paths.items()):
        for table, file in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DatasetFileError(f"{files[file]}: no entry for image id {image_id} ({name}) of images.txt")
        if is_train[image_id] not in ("0", "1"):
            raise DatasetFileError(f"{files['train_test_split.txt']}: image id {image_id}: {is_train[image_id]!r} "
                                   "is neither 1 (train) nor 0 (test)")  # fmt: skip
        if is_train[image_id] != wanted:
            continue
        label = labels[image_id]
        if not label.isdigit() or not 1 <= int(label) <= len(classes):
            raise DatasetFileError(f"{files['image_class_labels.txt']}: image id {image_id}: class id {label!r} is "
                                   f"not in 1..{len(classes)}")  # fmt: skip
        image = base / "images" / name
        if not image.is_file():
            raise DatasetFileError(f"{files['images.txt']}: image id {image_id}: {image} not found\n"
                                   f"expected layout:\n{CUB_LAYOUT}")  # fmt: skip
        samples.append((image, int(label) - 1))
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(
        dataset.targets, classes, f"cub200 {base}", required=split == "train", skipped=len(dataset.skipped),
        what="every class of classes.txt needs training images",
    )  # fmt: skip
    return dataset
