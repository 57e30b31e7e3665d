"""Image dataset kinds selectable by name (``adaptformer train --data.dataset KIND``), read from local files in their
standard layouts; nothing is ever downloaded.

Kinds (see ``IMAGE_DATASETS``): ``cifar100`` / ``cifar10`` (the python pickle release), ``svhn`` (cropped digits,
``*_32x32.mat``), ``food101``, ``imagefolder`` (``<root>/<split>/<class>/<image>``), ``digits`` (scikit-learn's
bundled 8x8 handwritten digits, for offline runs on real data), ``synthetic`` (seeded, class-coloured images) and
``shapes`` (procedural shapes), the PETL benchmarks' ``vtab1k`` (:mod:`.vtab`), ``fgvc`` and ``cub200``
(:mod:`.fgvc`), the multi-label kinds ``multilabel-list``, ``multilabel-csv``, ``nuswide``, ``coco`` and
``digits-multilabel`` (:mod:`.multilabel`), and the shifted ImageNet test sets ``imagenet-v2``, ``imagenet-sketch``,
``imagenet-c``, ``imagenet-r`` and ``imagenet-a`` (:mod:`adaptformer.data.shift.imagenet`). ``skip_bad_images`` is
taken only by the kinds with one file per image (``food101``, ``imagefolder``, ...). The image handed to the
transform is a PIL RGB image for file-based kinds and a uint8 ``(C, H, W)`` tensor for the others; with
``transform=None`` a uint8 ``(C, H, W)`` tensor is returned.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, SVHN
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.datasets.utils import check_integrity

from adaptformer.data.files import (
    DatasetFileError,
    check_label_range,
    read_class_names,
    read_json,
    read_mat,
    read_pickle,
    require_keys,
)
from adaptformer.data.image.datasets import ArrayImageDataset, ImageFileDataset, Transform
from adaptformer.data.image.fgvc import CUB_LAYOUT, FGVC_LAYOUT, build_cub200, build_fgvc, locate_fgvc
from adaptformer.data.image.multilabel import (
    COCO_LAYOUT,
    CSV_LAYOUT,
    LIST_LAYOUT,
    NUSWIDE_LAYOUT,
    build_coco,
    build_digits_multilabel,
    build_multilabel_csv,
    build_multilabel_list,
    build_nuswide,
    locate_csv,
    locate_list,
)
from adaptformer.data.image.vtab import VTAB_LAYOUT, build_vtab1k, locate_vtab1k
from adaptformer.data.kinds import check_class_coverage, resolve_request, split_folder
from adaptformer.data.shift.imagenet import (
    build_imagenet_a,
    build_imagenet_c,
    build_imagenet_r,
    build_imagenet_sketch,
    build_imagenet_v2,
)
from adaptformer.data.splits import train_val_split_indices

log = logging.getLogger(__name__)

__all__ = ["IMAGE_DATASETS", "ImageDatasetKind", "build_image_dataset"]


# ---------------------------------------------------------------------------------------------------------------
# Locating files: every miss says what was expected where.

_LAYOUTS = {
    "cifar100": "<root>/\n  cifar-100-python/\n    train\n    test\n    meta",
    "cifar10": "<root>/\n  cifar-10-batches-py/\n    data_batch_1 ... data_batch_5\n    test_batch\n    batches.meta",
    "svhn": "<root>/\n  train_32x32.mat\n  test_32x32.mat\n  extra_32x32.mat   (optional)",
    "food101": "<root>/\n  food-101/\n    images/<class>/<id>.jpg\n    meta/classes.txt\n    meta/train.json\n"
    "    meta/test.json",
    "vtab1k": VTAB_LAYOUT,
    "fgvc": FGVC_LAYOUT,
    "cub200": CUB_LAYOUT,
    "multilabel-list": LIST_LAYOUT,
    "multilabel-csv": CSV_LAYOUT,
    "nuswide": NUSWIDE_LAYOUT,
    "coco": COCO_LAYOUT,
    "imagefolder": "<root>/\n  train/<class>/<image>.jpg|png|...\n  val/<class>/...     (optional: model selection; "
    "without test/, the test split)\n  test/<class>/...    (optional when val/ is there)",
}


def _require(path: Path, root: Path, kind: str, top: str | None = None) -> Path:
    """Return ``path`` if it exists, else raise FileNotFoundError showing the expected layout of ``kind``."""
    if path.exists():
        return path
    hint = ""
    if top is not None and root.name == top:
        hint = f"\nhint: root points inside {top!r}; pass its parent {root.parent}"
    raise FileNotFoundError(
        f"{kind} dataset: {path} not found (root: {root})\nexpected layout:\n{_LAYOUTS[kind]}{hint}"
    )


def _verify_md5(path: Path, md5: str, verify: bool) -> None:
    if verify and not check_integrity(str(path), md5):
        raise ValueError(
            f"{path} does not match the official release (md5 {md5}); "
            "pass verify_checksums=False to read a modified or re-packed copy"
        )


# Builders: build(root, split, transform, *, <kind options>) -> dataset; those that read one file per image also take
# ``skip_bad_images``. Their other keyword options are the ``kind_options`` that ``build_image_dataset`` accepts.


def _read_cifar(release: type[CIFAR10], root: Path, split: str, verify_checksums: bool) -> tuple[Any, ...]:
    """The CIFAR python release (file names and md5 sums are torchvision's). Pickles can run code when loaded:
    only read files you trust, as with torchvision."""
    kind = "cifar100" if release is CIFAR100 else "cifar10"
    folder = _require(root / release.base_folder, root, kind, top=release.base_folder)
    meta_path = _require(folder / release.meta["filename"], root, kind)
    _verify_md5(meta_path, release.meta["md5"], verify_checksums)
    names_key = release.meta["key"]
    meta = read_pickle(meta_path, f"a dict with the class names under {names_key!r}")
    require_keys(meta, [names_key], meta_path, f"the {kind} meta dict with the class names under {names_key!r}")
    classes = [str(name) for name in meta[names_key]]
    label_key = "fine_labels" if release is CIFAR100 else "labels"
    expected = f"a {kind} batch: a dict with 'data' (N x 3072 uint8) and {label_key!r} (N ints)"
    images, labels = [], []
    for name, md5 in release.train_list if split == "train" else release.test_list:
        path = _require(folder / name, root, kind)
        _verify_md5(path, md5, verify_checksums)
        entry = read_pickle(path, expected)
        require_keys(entry, ["data", label_key], path, expected)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
        except (TypeError, ValueError, OverflowError) as err:
            raise DatasetFileError(f"{path}: 'data' is not an array of pixels ({err}); expected {expected}") from err
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFileError(f"{path}: expected 'data' of shape (N, 3072), got {data.shape}")
        file_labels = check_label_range(entry[label_key], len(classes), path, f"{label_key!r}")
        if len(file_labels) != len(data):
            raise DatasetFileError(f"{path}: {len(data)} images but {len(file_labels)} {label_key!r}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are (C, H, W) -> (N, H, W, C)
        labels.extend(file_labels)
    return np.concatenate(images), labels, classes


def _build_cifar100(
    root: Path, split: str, transform: Transform | None, *, verify_checksums: bool = True
) -> ArrayImageDataset:
    return ArrayImageDataset(*_read_cifar(CIFAR100, root, split, verify_checksums), transform)


def _build_cifar10(
    root: Path, split: str, transform: Transform | None, *, verify_checksums: bool = True
) -> ArrayImageDataset:
    return ArrayImageDataset(*_read_cifar(CIFAR10, root, split, verify_checksums), transform)


def _build_svhn(
    root: Path, split: str, transform: Transform | None, *, verify_checksums: bool = True
) -> ArrayImageDataset:
    """SVHN cropped digits: X is (32, 32, 3, N) uint8, y is (N, 1) with labels 1..10, where 10 is the digit 0."""
    _, filename, md5 = SVHN.split_list[split]
    path = _require(root / filename, root, "svhn")
    _verify_md5(path, md5, verify_checksums)
    expected = "SVHN cropped digits: 'X' (H, W, 3, N) uint8 images and 'y' (N, 1) labels 1..10"
    mat = read_mat(path, ["X", "y"], expected)
    x, raw = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(raw):
        raise DatasetFileError(f"{path}: 'X' has shape {x.shape} and 'y' {len(raw)} labels; expected {expected}")
    if not np.issubdtype(raw.dtype, np.number):
        raise DatasetFileError(f"{path}: 'y' holds {raw.dtype} values; expected {expected}")
    bad = sorted(set(raw[(raw < 1) | (raw > 10) | (raw != np.round(raw))].tolist()))
    if bad:
        raise DatasetFileError(f"{path}: labels {bad[:10]} outside the allowed SVHN labels 1..10 (10 = digit 0)")
    raw = raw.astype(np.int64)
    images = x.astype(np.uint8).transpose(3, 0, 1, 2)  # (H, W, C, N) -> (N, H, W, C)
    return ArrayImageDataset(images, raw % 10, [str(d) for d in range(10)], transform)


def _build_food101(root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool) -> ImageFileDataset:
    """Food-101: meta/<split>.json maps class -> ["class/id", ...]; images are images/<class/id>.jpg."""
    base = _require(root / "food-101", root, "food101", top="food-101")
    classes_file = _require(base / "meta" / "classes.txt", root, "food101")
    classes = read_class_names(classes_file)
    images_dir = _require(base / "images", root, "food101")
    listing_file = _require(base / "meta" / f"{split}.json", root, "food101")
    expected = 'a JSON object mapping each class to its images, {"apple_pie": ["apple_pie/1005649", ...], ...}'
    listing = read_json(listing_file, expected)
    if not isinstance(listing, dict) or not all(
        isinstance(v, list) and all(isinstance(e, str) for e in v) for v in listing.values()
    ):
        raise DatasetFileError(f"{listing_file}: expected {expected}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(listing) - set(index))
    if unknown:
        raise DatasetFileError(
            f"{listing_file} lists classes {unknown[:5]} that are not in {classes_file} (allowed: {classes})"
        )
    samples = [(images_dir / f"{entry}.jpg", index[name]) for name in classes for entry in listing.get(name, [])]
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(
        dataset.targets, classes, f"{listing_file} (classes from {classes_file})", required=split == "train",
        skipped=len(dataset.skipped), what=f"every class of {classes_file.name} needs training images",
    )  # fmt: skip
    return dataset


def _build_imagefolder(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool
) -> ImageFileDataset:
    """``<root>/<split>/<class>/<image>``; class indices come from ``train/`` (when present) so splits agree."""
    split_dir = _require(root / split, root, "imagefolder")
    class_dir = root / "train" if (root / "train").is_dir() else split_dir
    classes, class_to_idx = find_classes(str(class_dir))
    extra = sorted({p.name for p in split_dir.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise DatasetFileError(
            f"{split_dir} has class folders {extra} that {class_dir} lacks (allowed: {classes}); every class needs "
            f"training images in {class_dir}"
        )
    samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(
            f"imagefolder dataset: no images ({', '.join(IMG_EXTENSIONS)}) under {split_dir}\n"
            f"expected layout:\n{_LAYOUTS['imagefolder']}"
        )
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(
        dataset.targets, classes, f"imagefolder {split_dir}", required=split == "train",
        skipped=len(dataset.skipped), what=f"each class folder of {class_dir} is a class: add images ("
        f"{', '.join(IMG_EXTENSIONS)}) to it or remove it",
    )  # fmt: skip
    return dataset


def _build_digits(
    root: Path | None,
    split: str,
    transform: Transform | None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayImageDataset:
    """scikit-learn's 1,797 8x8 digits (0..16 gray levels -> uint8); a seeded, stratified held-out test split."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    train_idx, test_idx = train_val_split_indices(digits.target.tolist(), test_fraction, seed)
    chosen = train_idx if split == "train" else test_idx
    return ArrayImageDataset(images[chosen], digits.target[chosen], [str(d) for d in range(10)], transform)


def _build_synthetic(
    root: Path | None,
    split: str,
    transform: Transform | None,
    *,
    num_classes: int = 10,
    num_samples: int = 200,
    image_size: int = 32,
    noise: float = 20.0,
    seed: int = 0,
) -> ArrayImageDataset:
    """Seeded images whose class sets the mean colour, plus Gaussian pixel noise: learnable, tiny, no files.

    Class colours depend only on ``seed``; the noise also on the split, so train and test are different samples.
    Labels cycle through the classes, so classes are balanced (+-1).
    """
    if num_classes < 2 or num_samples < 1 or image_size < 1 or noise < 0:
        raise ValueError(
            "synthetic needs num_classes >= 2, num_samples >= 1, image_size >= 1, noise >= 0; got "
            f"{num_classes}, {num_samples}, {image_size}, {noise}"
        )
    colours = np.random.default_rng(seed).uniform(0, 255, size=(num_classes, 3))
    labels = np.arange(num_samples) % num_classes
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    pixels = colours[labels][:, None, None, :] + rng.normal(0, noise, size=(num_samples, image_size, image_size, 3))
    images = np.clip(pixels, 0, 255).round().astype(np.uint8)  # (N, H, W, C)
    return ArrayImageDataset(images, labels, [f"class_{c}" for c in range(num_classes)], transform)


# ---------------------------------------------------------------------------------------------------------------
# The registry: adding a kind is one entry.


def _build_shapes(
    root: Path | None,
    split: str,
    transform: Transform | None,
    *,
    num_classes: int = 64,
    num_samples: int = 6400,
    image_size: int = 32,
    seed: int = 0,
) -> Dataset:
    """Procedural shapes (``data/shapes.py``), the tiny backbone's pre-training data; test uses another seed stream."""
    from adaptformer.data.shapes import ProceduralShapes

    stream = 2 * seed + ("train", "test").index(split)
    return ProceduralShapes(num_samples, num_classes, image_size, seed=stream, transform=transform)


@dataclass(frozen=True)
class ImageDatasetKind:
    """One dataset kind: its builder, the splits it has, and whether it reads files under a root."""

    build: Callable[..., Dataset]
    splits: tuple[str, ...]
    needs_root: bool = True
    locate: Callable[[Path, str, Mapping[str, Any]], Path | None] | None = None  # an optional split on disk
    multi_label: bool = False  # several classes per image (sigmoid + BCE, mAP): known before anything is read

    @property
    def options(self) -> tuple[str, ...]:
        """The ``kind_options`` the builder accepts."""
        params = inspect.signature(self.build).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "skip_bad_images")

    @property
    def reads_image_files(self) -> bool:
        """Whether every image is its own file (the kinds whose unreadable files ``skip_bad_images`` can drop)."""
        return "skip_bad_images" in inspect.signature(self.build).parameters


SPLITS3 = ("train", "val", "test")
IMAGE_DATASETS: dict[str, ImageDatasetKind] = {
    "cifar100": ImageDatasetKind(_build_cifar100, ("train", "test")),
    "cifar10": ImageDatasetKind(_build_cifar10, ("train", "test")),
    "svhn": ImageDatasetKind(_build_svhn, ("train", "test", "extra")),
    "food101": ImageDatasetKind(_build_food101, ("train", "test")),
    "imagefolder": ImageDatasetKind(_build_imagefolder, ("train", "val", "test"), locate=split_folder),
    "vtab1k": ImageDatasetKind(build_vtab1k, ("train", "val", "test"), locate=locate_vtab1k),
    "fgvc": ImageDatasetKind(build_fgvc, ("train", "val", "test"), locate=locate_fgvc),
    "cub200": ImageDatasetKind(build_cub200, ("train", "test")),
    "digits": ImageDatasetKind(_build_digits, ("train", "test"), needs_root=False),
    "synthetic": ImageDatasetKind(_build_synthetic, ("train", "test"), needs_root=False),
    "shapes": ImageDatasetKind(_build_shapes, ("train", "test"), needs_root=False),
    # multi-label (several classes per image; :mod:`.multilabel`)
    "multilabel-list": ImageDatasetKind(build_multilabel_list, SPLITS3, locate=locate_list, multi_label=True),
    "multilabel-csv": ImageDatasetKind(build_multilabel_csv, SPLITS3, locate=locate_csv, multi_label=True),
    "nuswide": ImageDatasetKind(build_nuswide, ("train", "test"), multi_label=True),
    "coco": ImageDatasetKind(build_coco, ("train", "test"), multi_label=True),
    "digits-multilabel": ImageDatasetKind(
        build_digits_multilabel, ("train", "test"), needs_root=False, multi_label=True
    ),
    # the shifted ImageNet test sets (:mod:`adaptformer.data.shift.imagenet`): test splits only
    "imagenet-v2": ImageDatasetKind(build_imagenet_v2, ("test",)),
    "imagenet-sketch": ImageDatasetKind(build_imagenet_sketch, ("test",)),
    "imagenet-c": ImageDatasetKind(build_imagenet_c, ("test",)),
    "imagenet-r": ImageDatasetKind(build_imagenet_r, ("test",)),
    "imagenet-a": ImageDatasetKind(build_imagenet_a, ("test",)),
}


def build_image_dataset(
    kind: str,
    root: str | Path | None,
    split: str,
    transform: Transform | None,
    *,
    skip_bad_images: bool = False,
    **kind_options: Any,
) -> Dataset:
    """Build the ``split`` of dataset ``kind`` read from ``root`` (ignored by ``digits`` and ``synthetic``).

    Args:
        kind: a key of ``IMAGE_DATASETS``.
        root: the folder holding the dataset in its standard layout (the error for a miss shows it).
        split: "train" or "test" (plus "val" for imagefolder, "extra" for svhn).
        transform: applied to each image (see the module docstring for its input); None returns uint8 tensors.
        skip_bad_images: decode every image file now and drop the unreadable ones (listed in ``dataset.skipped``,
            with a warning) instead of raising when they are read. Only for kinds with one file per image
            (``food101``, ``imagefolder``); for the others it is a ValueError, as nothing could be skipped.
        kind_options: per kind: ``verify_checksums`` (cifar*, svhn; md5 of the official files, default True),
            ``test_fraction``/``seed`` (digits), ``num_classes``/``num_samples``/``image_size``/``noise``/``seed``
            (synthetic).
    """
    path = resolve_request(kind, IMAGE_DATASETS, root, split, kind_options, _LAYOUTS, what="image dataset")
    spec = IMAGE_DATASETS[kind]
    if path is None and root is not None:
        log.debug("%s ignores root %s", kind, root)
    if spec.reads_image_files:
        kind_options = {**kind_options, "skip_bad_images": skip_bad_images}
    elif skip_bad_images:
        files = [name for name, other in IMAGE_DATASETS.items() if other.reads_image_files]
        raise ValueError(
            f"skip_bad_images applies to kinds with one file per image ({', '.join(files)}); {kind!r} has no "
            "image files that could be skipped"
        )
    dataset = spec.build(path, split, transform, **kind_options)
    log.info("%s %s: %d samples, %d classes", kind, split, len(dataset), len(dataset.classes))
    return dataset
