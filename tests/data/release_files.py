"""Tiny real files of the image datasets' release layouts (CIFAR-10/100 pickles, SVHN .mat, Food-101 JPEGs and
meta lists, an image folder), written into a test's temporary folder: what the dataset kinds read."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from adaptformer.data import build_image_dataset
from adaptformer.data.image.fgvc import FGVC_DATASETS
from adaptformer.data.image.vtab import VTAB_TASKS
from adaptformer.preprocessing import Preprocessing


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)  # (N, H, W, C)


def _smooth(size: int, seed: int) -> np.ndarray:
    """A smooth colour gradient (H, W, C): JPEG keeps it close, unlike noise."""
    ramp = np.linspace(0, 1, size)
    base = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], ramp[:, None] * ramp[None, :]), axis=-1)
    return (base * 200 + 5 * seed).astype(np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, H, W, C) -> (N, 3072) in C, H, W order


# Each writer builds a miniature release under root and returns {split: (images or None, labels)}, classes.
def write_cifar100(root: Path) -> tuple[dict, list[str]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    classes = [f"c{i}" for i in range(100)]
    out = {}
    for split, n, seed in (("train", 6, 1), ("test", 4, 2)):
        images, labels = random_images(n, seed=seed), [(7 * i + seed) % 100 for i in range(n)]
        _pickle(folder / split, {"data": cifar_rows(images), "fine_labels": labels, "coarse_labels": [0] * n})
        out[split] = (images, labels)
    _pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": ["x"]})
    return out, classes


def write_cifar10(root: Path) -> tuple[dict, list[str]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_images, train_labels = [], []
    for b in range(1, 6):
        images, labels = random_images(2, seed=10 + b), [b, (b + 3) % 10]
        _pickle(folder / f"data_batch_{b}", {"data": cifar_rows(images), "labels": labels})
        train_images.append(images)
        train_labels += labels
    test_images, test_labels = random_images(3, seed=20), [0, 9, 4]
    _pickle(folder / "test_batch", {"data": cifar_rows(test_images), "labels": test_labels})
    _pickle(folder / "batches.meta", {"label_names": classes})
    return {"train": (np.concatenate(train_images), train_labels), "test": (test_images, test_labels)}, classes


def write_svhn(root: Path, test_labels: tuple[int, ...] = (10, 1, 5)) -> tuple[dict, list[str]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, raw, seed in (("train", (10, 10, 3, 7, 1), 3), ("test", test_labels, 4)):
        images = random_images(len(raw), seed=seed)
        y = np.asarray(raw, dtype=np.uint8).reshape(-1, 1)  # (N, 1), 10 means the digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})  # X: (H, W, C, N)
        out[split] = (images, [r % 10 for r in raw])
    return out, [str(d) for d in range(10)]


def write_food101(root: Path) -> tuple[dict, list[str]]:
    base = root / "food-101"
    classes = ["apple_pie", "sushi"]
    listing = {
        "train": {"apple_pie": ["1", "2"], "sushi": ["3", "4", "5"]},
        "test": {"apple_pie": ["6"], "sushi": ["7"]},
    }
    for mapping in listing.values():
        for name, ids in mapping.items():
            (base / "images" / name).mkdir(parents=True, exist_ok=True)
            for i in ids:
                image = _smooth(20, seed=int(i))
                Image.fromarray(image).save(base / "images" / name / f"{i}.jpg", quality=95)
    (base / "meta").mkdir()
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    out = {}
    for split, mapping in listing.items():
        (base / "meta" / f"{split}.json").write_text(
            json.dumps({c: [f"{c}/{i}" for i in v] for c, v in mapping.items()})
        )
        out[split] = (None, [classes.index(c) for c, v in mapping.items() for _ in v])
    return out, classes


def write_imagefolder(root: Path) -> tuple[dict, list[str]]:
    classes = ["cat", "dog"]
    out = {}
    for split, counts, seed in (("train", (2, 3), 30), ("val", (1, 1), 40), ("test", (1, 2), 50)):
        images, labels = [], []
        for label, (name, count) in enumerate(zip(classes, counts, strict=True)):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                image = random_images(1, size=12, seed=seed + 10 * label + k)[0]
                Image.fromarray(image).save(root / split / name / f"img{k}.png")  # lossless: pixels round-trip
                images.append(image)
                labels.append(label)
        out[split] = (np.stack(images), labels)
    return out, classes


WRITERS = {
    "cifar100": write_cifar100,
    "cifar10": write_cifar10,
    "svhn": write_svhn,
    "food101": write_food101,
    "imagefolder": write_imagefolder,
}
CHECKSUMMED = {"cifar100", "cifar10", "svhn"}


SMALL = Preprocessing(input_size=(3, 16, 16), crop_pct=0.875)  # a small model input for these files


def build_kind(kind: str, root: Path, split: str, transform=None, **options):
    """``build_image_dataset`` on the files written here (their made-up checksums not verified)."""
    if kind in CHECKSUMMED:
        options.setdefault("verify_checksums", False)
    return build_image_dataset(kind, root, split, transform, **options)


# The PETL benchmarks' layouts: VTAB-1k task folders (NOAH/VPT archives) and FGVC datasets (VPT's JSON lists)


def png_file(path: Path, value: int = 0, size: tuple[int, int] = (12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 50)).save(path)


LISTS = {"train800.txt": 2, "val200.txt": 1, "train800val200.txt": 3, "test.txt": 2}  # images per class


def write_vtab_task(root: Path, task: str) -> Path:
    """A tiny VTAB-1k task folder (as the NOAH/VPT archives): images/ + the four list files, every class present."""
    folder = root / task
    for list_name, per_class in LISTS.items():
        lines = []
        for label in range(VTAB_TASKS[task].num_classes):
            for k in range(per_class):
                name = f"images/{list_name[:-4]}/{label}_{k}.png"
                png_file(folder / name, value=label * 40)
                lines.append(f"{name} {label}")
        (folder / list_name).write_text("\n".join(lines) + "\n")
    return folder


def write_fgvc(root: Path, dataset: str, labels: tuple[int, ...] = (3, 7)) -> Path:
    """A tiny FGVC dataset in VPT's layout: JSONs beside the dataset's image root."""
    folder = root / dataset
    images = folder / FGVC_DATASETS[dataset].images
    for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
        listing = {}
        for label in labels:
            for k in range(per_class):
                name = f"{label:03d}.class/{split}_{k}.png"
                png_file(images / name, value=label * 20)
                listing[name] = label
        (folder / f"{split}.json").write_text(json.dumps(listing))
    return folder
