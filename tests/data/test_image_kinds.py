"""Image data pipeline: datasets read from tiny real files in their standard layouts, transforms, splits."""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adaptformer.data import (
    IMAGE_DATASETS,
    ImageDecodeError,
    build_image_dataset,
    build_image_transform,
    dataset_labels,
    eval_resize_size,
    normalize_transform,
    train_val_split,
    train_val_split_indices,
)
from adaptformer.preprocessing import Preprocessing

SMALL = Preprocessing(input_size=(3, 16, 16), crop_pct=0.875)


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)  # (N, H, W, C)


def _smooth(size: int, seed: int) -> np.ndarray:
    """A smooth colour gradient (H, W, C): JPEG keeps it close, unlike noise."""
    ramp = np.linspace(0, 1, size)
    base = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], ramp[:, None] * ramp[None, :]), axis=-1)
    return (base * 200 + 5 * seed).astype(np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, H, W, C) -> (N, 3072) in C, H, W order


# Each writer builds a miniature release under root and returns {split: (images or None, labels)}, classes.
def write_cifar100(root: Path) -> tuple[dict, list[str]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    classes = [f"c{i}" for i in range(100)]
    out = {}
    for split, n, seed in (("train", 6, 1), ("test", 4, 2)):
        images, labels = _images(n, seed=seed), [(7 * i + seed) % 100 for i in range(n)]
        _pickle(folder / split, {"data": _cifar_rows(images), "fine_labels": labels, "coarse_labels": [0] * n})
        out[split] = (images, labels)
    _pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": ["x"]})
    return out, classes


def write_cifar10(root: Path) -> tuple[dict, list[str]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_images, train_labels = [], []
    for b in range(1, 6):
        images, labels = _images(2, seed=10 + b), [b, (b + 3) % 10]
        _pickle(folder / f"data_batch_{b}", {"data": _cifar_rows(images), "labels": labels})
        train_images.append(images)
        train_labels += labels
    test_images, test_labels = _images(3, seed=20), [0, 9, 4]
    _pickle(folder / "test_batch", {"data": _cifar_rows(test_images), "labels": test_labels})
    _pickle(folder / "batches.meta", {"label_names": classes})
    return {"train": (np.concatenate(train_images), train_labels), "test": (test_images, test_labels)}, classes


def write_svhn(root: Path, test_labels: tuple[int, ...] = (10, 1, 5)) -> tuple[dict, list[str]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, raw, seed in (("train", (10, 10, 3, 7, 1), 3), ("test", test_labels, 4)):
        images = _images(len(raw), seed=seed)
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
                image = _images(1, size=12, seed=seed + 10 * label + k)[0]
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


def _build(kind: str, root: Path, split: str, transform=None, **options):
    if kind in CHECKSUMMED:
        options.setdefault("verify_checksums", False)
    return build_image_dataset(kind, root, split, transform, **options)


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
    dataset = _build(kind, tmp_path, split)
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
    raw = _build("food101", tmp_path, "train")[0][0]  # apple_pie/1.jpg
    source = torch.from_numpy(_smooth(20, seed=1)).permute(2, 0, 1)
    assert raw.shape == (3, 20, 20)
    assert (raw.float() - source.float()).abs().mean() < 4  # JPEG is lossy, but it is the same picture
    other = torch.from_numpy(_smooth(20, seed=2)).permute(2, 0, 1)
    assert (raw.float() - other.float()).abs().mean() > (raw.float() - source.float()).abs().mean()


def test_svhn_label_10_is_digit_zero(tmp_path: Path) -> None:
    write_svhn(tmp_path, test_labels=(10, 1, 9, 10))
    assert _build("svhn", tmp_path, "test").targets == [0, 1, 9, 0]


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
        _build(kind, root, "train")
    assert layout_line in str(info.value)
    assert str(root) in str(info.value)


@pytest.mark.parametrize(("kind", "inner"), [("cifar100", "cifar-100-python"), ("food101", "food-101")])
def test_root_pointing_inside_the_dataset_gets_a_hint(tmp_path: Path, kind: str, inner: str) -> None:
    WRITERS[kind](tmp_path)
    with pytest.raises(FileNotFoundError, match=f"pass its parent {tmp_path}"):
        _build(kind, tmp_path / inner, "train")


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
    _pickle(folder / "test", {"data": _cifar_rows(_images(2)), "fine_labels": [3, 100]})
    with pytest.raises(ValueError, match=r"labels \[100\].*0\.\.99"):
        _build("cifar100", tmp_path, "test")
    write_svhn(tmp_path / "svhn", test_labels=(0, 3))  # 0 is not an SVHN label (the digit 0 is 10)
    with pytest.raises(ValueError, match=r"labels \[0\].*1\.\.10"):
        _build("svhn", tmp_path / "svhn", "test")


def test_imagefolder_split_with_unknown_class_is_rejected(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    (tmp_path / "val" / "horse").mkdir()
    with pytest.raises(ValueError, match=r"\['horse'\].*allowed: \['cat', 'dog'\]"):
        _build("imagefolder", tmp_path, "val")


@pytest.mark.parametrize("kind", ["food101", "imagefolder"])
def test_corrupt_images_are_named_or_skipped_and_counted(tmp_path: Path, kind: str, caplog) -> None:
    WRITERS[kind](tmp_path)
    dataset = _build(kind, tmp_path, "train")
    good = len(dataset)
    garbage, truncated = dataset.samples[0][0], dataset.samples[-1][0]
    garbage.write_bytes(b"this is not an image")
    buf = _images(1, size=64)[0]
    Image.fromarray(buf).save(truncated, format="JPEG" if kind == "food101" else "PNG")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    strict = _build(kind, tmp_path, "train")
    for index, path in ((0, garbage), (len(strict) - 1, truncated)):
        with pytest.raises(ImageDecodeError, match=str(path)):
            strict[index]
    with caplog.at_level(logging.WARNING, logger="adaptformer.data.image"):
        lenient = _build(kind, tmp_path, "train", skip_bad_images=True)
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


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (20, 24), (10, 20, 30)),
        Image.new("L", (20, 24), 100),
        Image.new("RGBA", (20, 24), (1, 2, 3, 4)),
        np.zeros((24, 20, 3), dtype=np.uint8),
        np.zeros((24, 20), dtype=np.uint8),
        torch.zeros(3, 24, 20, dtype=torch.uint8),
        torch.zeros(1, 24, 20, dtype=torch.uint8),
    ],
    ids=["pil-rgb", "pil-gray", "pil-rgba", "np-hwc", "np-gray", "tensor-chw", "tensor-gray"],
)
@pytest.mark.parametrize("train", [True, False])
def test_transform_accepts_common_inputs(image, train: bool) -> None:
    out = build_image_transform(SMALL, train)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 16, 16)


def test_transform_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        build_image_transform(SMALL, False)(torch.zeros(4, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("train", [True, False])
def test_transform_normalises_with_mean_and_std(train: bool) -> None:
    value = (200, 100, 50)
    out = build_image_transform(SMALL, train)(Image.new("RGB", (40, 30), value))  # constant: any crop is the same
    expected = (torch.tensor(value) / 255 - torch.tensor(SMALL.mean)) / torch.tensor(SMALL.std)
    assert torch.allclose(out, expected[:, None, None].expand(3, 16, 16), atol=1e-5)


def test_eval_transform_is_a_deterministic_identity_at_full_crop() -> None:
    pre = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 12, 12), crop_pct=1.0)
    image = _images(1, size=12)[0]
    transform = build_image_transform(pre, train=False)
    out = transform(image)
    assert torch.equal(out, transform(image))
    assert torch.allclose(out * 0.25 + 0.5, torch.from_numpy(image).permute(2, 0, 1) / 255, atol=1e-6)


def test_train_transform_is_random() -> None:
    image = _images(1, size=48)[0]
    transform = build_image_transform(SMALL, train=True)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(
    ("input_size", "crop_pct", "expected"),
    [((3, 224, 224), 0.875, 256), ((3, 384, 384), 1.0, 384), ((3, 224, 160), 0.875, (256, 182))],
)
def test_eval_resize_matches_the_paper(input_size, crop_pct: float, expected) -> None:
    pre = Preprocessing(input_size=input_size, crop_pct=crop_pct)
    assert eval_resize_size(pre) == expected
    assert build_image_transform(pre, False)(np.zeros((300, 400, 3), np.uint8)).shape == input_size


def test_eval_transform_crops_the_centre() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 255  # a white centre half: resize 32 -> 32 (crop_pct .5), crop 16 keeps only white
    pre = Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 16, 16), crop_pct=0.5)
    assert torch.allclose(build_image_transform(pre, False)(image), torch.ones(3, 16, 16), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 5), (4, 3, 5, 5), (2, 4, 3, 5, 5)])
def test_normalize_transform_keeps_leading_dims(shape: tuple[int, ...]) -> None:
    clip = torch.full(shape, 255, dtype=torch.uint8)
    out = normalize_transform(SMALL)(clip)
    expected = (1 - torch.tensor(SMALL.mean)) / torch.tensor(SMALL.std)
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.allclose(out.movedim(-3, 0).flatten(1), expected[:, None].expand(3, out[..., 0, :, :].numel()))


LABELS = [0] * 50 + [1] * 30 + [2] * 20


@pytest.mark.parametrize(("val_fraction", "per_class"), [(0.1, (5, 3, 2)), (0.2, (10, 6, 4)), (10, (5, 3, 2))])
def test_split_is_seeded_disjoint_and_stratified(val_fraction, per_class: tuple[int, ...]) -> None:
    train, val = train_val_split_indices(LABELS, val_fraction, seed=3)
    assert (train, val) == train_val_split_indices(LABELS, val_fraction, seed=3)
    assert val != train_val_split_indices(LABELS, val_fraction, seed=4)[1]
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert tuple(Counter(LABELS[i] for i in val)[c] for c in range(3)) == per_class


@pytest.mark.parametrize("val_fraction", [0, 0.0, 1.0, -0.2, 100, 0.001, True, "0.1", None])
def test_split_rejects_bad_fractions(val_fraction) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split_indices(LABELS, val_fraction, seed=0)


def test_split_without_labels_needs_a_size_and_is_unstratified() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        train_val_split_indices(None, 0.5, seed=0)
    train, val = train_val_split_indices(None, 3, seed=0, num_samples=10)
    assert len(val) == 3 and sorted(train + val) == list(range(10))


def test_train_val_split_uses_the_eval_transform_for_val(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    train_set = _build("imagefolder", tmp_path, "train", build_image_transform(SMALL, train=True))
    eval_set = _build("imagefolder", tmp_path, "train", build_image_transform(SMALL, train=False))
    train, val = train_val_split(train_set, 2, seed=0, val_dataset=eval_set)
    assert val.dataset is eval_set and train.dataset is train_set
    assert sorted(train.indices + val.indices) == list(range(5)) and len(val) == 2
    assert sorted(dataset_labels(val)) == [0, 1]  # stratified: one cat, one dog
    assert torch.equal(val[0][0], val[0][0])  # eval transform: deterministic
    batch, labels = next(iter(DataLoader(train, batch_size=3)))
    assert batch.shape == (3, 3, 16, 16) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="same data"):
        train_val_split(train_set, 2, seed=0, val_dataset=_build("imagefolder", tmp_path, "test"))


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
    }
    with pytest.raises(ValueError, match=f"{kind!r} has no image files that could be skipped"):
        build_image_dataset(kind, None, "train", None, skip_bad_images=True)


def test_every_registered_kind_is_covered() -> None:
    in_other_files = {"shapes", "vtab1k", "fgvc", "cub200"}  # tests/test_shapes.py, tests/test_vtab_fgvc.py
    in_other_files |= {"multilabel-list", "multilabel-csv", "nuswide", "coco", "digits-multilabel"}  # test_multilabel
    assert set(IMAGE_DATASETS) == set(WRITERS) | {"digits", "synthetic"} | in_other_files
