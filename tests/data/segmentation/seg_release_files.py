"""Tiny real file trees of the segmentation releases' layouts (ADE20K, Pascal VOC 2012 with SBD's augmented list,
Cityscapes, a generic folder), written into a test's temporary folder. Each writer returns, per split, the masks the
dataset must return (class indices after the kind's mapping, 255 ignored), in the dataset's sample order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adaptformer.data.segmentation import voc_palette

SIZE = (12, 16)  # (H, W) of every written image


def smooth_image(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth colour gradient (H, W, 3) uint8 that JPEG keeps close."""
    rows, cols = np.linspace(0, 1, size[0])[:, None], np.linspace(0, 1, size[1])[None, :]
    base = np.stack(np.broadcast_arrays(rows, cols, rows * cols), axis=-1)
    return (base * 200 + 5 * seed).astype(np.uint8)


def stored_values(values: list[int], seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """An (H, W) uint8 mask holding each of ``values`` (in bands), then seeded draws of them."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.asarray(values, dtype=np.uint8), size=size)
    flat = mask.reshape(-1)
    flat[: len(values)] = values  # every value present
    return mask


def save_mask(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values)  # mode L
    if palette:
        image.putpalette([c for rgb in voc_palette(256) for c in rgb])  # L -> P, the indices kept
    image.save(path)


def save_image(path: Path, seed: int, size: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(seed, size)).save(path, quality=95)


def write_ade20k(root: Path) -> dict[str, list[np.ndarray]]:
    base = root / "ADEChallengeData2016"
    expected: dict[str, list[np.ndarray]] = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        expected[split] = []
        for n in range(2):
            stem = f"ADE_{split}_{n + 1:08d}"
            stored = stored_values([0, 1, 2, 75, 150], seed=n)
            save_image(base / "images" / folder / f"{stem}.jpg", n)
            save_mask(base / "annotations" / folder / f"{stem}.png", stored)
            expected[split].append(np.where(stored == 0, 255, stored.astype(np.int64) - 1))
    return expected


CITYSCAPES_STORED = [0, 1, 7, 9, 26, 33]  # unlabeled, ego vehicle, road, parking, car, bicycle
CITYSCAPES_TRAIN = {0: 255, 1: 255, 7: 0, 9: 255, 26: 13, 33: 18}


def write_cityscapes(root: Path, train_ids: bool = False) -> dict[str, list[np.ndarray]]:
    expected: dict[str, list[np.ndarray]] = {}
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        expected[split] = []
        for n, city in enumerate(cities):
            stem = f"{city}_000000_{n:06d}"
            stored = stored_values(CITYSCAPES_STORED, seed=n)
            mapped = np.vectorize(CITYSCAPES_TRAIN.get)(stored).astype(np.int64)
            save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", n)
            gt = root / "gtFine" / split / city
            save_mask(gt / f"{stem}_gtFine_labelIds.png", stored)
            save_mask(gt / f"{stem}_gtFine_labelTrainIds.png", mapped.astype(np.uint8))
            save_mask(gt / f"{stem}_gtFine_instanceIds.png", stored + 1)  # other files of the release: not read
            Image.fromarray(smooth_image(n)).save(gt / f"{stem}_gtFine_color.png")
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
            expected[split].append(mapped)
    return expected


VOC_IDS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
VOC_AUG_IDS = ["2007_000032", "2008_000002", "2011_003276"]


def write_voc(root: Path, augmented: bool = False) -> dict[str, list[np.ndarray]]:
    """VOCdevkit/VOC2012 with palette masks; ``augmented``: SBD's SegmentationClassAug (grey) and DeepLab's list."""
    base = root / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    expected: dict[str, list[np.ndarray]] = {}
    for split, ids in VOC_IDS.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        expected[split] = []
        for n, image_id in enumerate(ids):
            stored = stored_values([0, 1, 15, 20, 255], seed=n)  # 255: the object borders
            save_image(base / "JPEGImages" / f"{image_id}.jpg", n)
            save_mask(base / "SegmentationClass" / f"{image_id}.png", stored, palette=True)
            expected[split].append(stored.astype(np.int64))
    if augmented:
        lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in VOC_AUG_IDS]
        (lists / "train_aug.txt").write_text("\n".join(lines) + "\n")
        expected["train"] = []
        for n, image_id in enumerate(VOC_AUG_IDS):
            stored = stored_values([0, 3, 7, 255], seed=10 + n)
            if not (base / "JPEGImages" / f"{image_id}.jpg").exists():
                save_image(base / "JPEGImages" / f"{image_id}.jpg", n)
            save_mask(base / "SegmentationClassAug" / f"{image_id}.png", stored)
            expected["train"].append(stored.astype(np.int64))
    return expected


SEGFOLDER_CLASSES = ["sky", "road", "car"]


def write_segfolder(root: Path, ignore: int = 255) -> dict[str, list[np.ndarray]]:
    """Three classes, ``ignore`` for unlabelled pixels; PNG and JPEG images, one in a subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SEGFOLDER_CLASSES))
    expected: dict[str, list[np.ndarray]] = {}
    for split, names in (("train", ["a/x1", "b2", "c3"]), ("test", ["t1"])):
        expected[split] = []
        for n, name in enumerate(sorted(names)):
            stored = stored_values([0, 1, 2, ignore], seed=n)
            save_image(root / "images" / split / f"{name}{'.jpg' if n % 2 else '.png'}", n)
            save_mask(root / "masks" / split / f"{name}.png", stored)
            expected[split].append(np.where(stored == ignore, 255, stored).astype(np.int64))
    return expected
