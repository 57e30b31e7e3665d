"""Every reader of a dataset file, given a truncated, corrupt (random bytes), differently-keyed file or one with a label
out of range (or a class name repeated): the library's error naming the file (``DatasetFileError``; images and videos:
their decode errors), and on the command line one ``error: ...`` line (exit 2)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from tests.data.release_files import WRITERS, cifar_rows, random_images
from tests.video_files import PRE, write_video

from adaptformer.cli import main
from adaptformer.data import DatasetFileError, ImageDecodeError, build_image_dataset
from adaptformer.data.video import (
    SamplerConfig,
    TestViews,
    VideoDecodeError,
    VideoTransform,
    load_video_split,
    prepare_hmdb51,
    prepare_ssv2,
)


@dataclass(frozen=True)
class Reader:
    """A tiny good dataset or release under a root, one of its files to damage, and how it is read."""

    write: Callable[[Path], None]
    target: str  # the file to damage, relative to the root
    load: Callable[[Path], object]  # reads the dataset (raises on the damaged file)
    cli: Callable[[Path, Path], list[str]] | None  # adaptformer ARGS that read it (root, scratch dir)
    damages: dict[str, Callable[[Path], None]]  # its own damages (rekeyed, label out of range, ...) of the target


def _pickle(obj: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(pickle.dumps(obj))

    return write


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def _image_kind(kind: str) -> Callable[[Path], object]:
    def load(root: Path) -> object:
        options = {"verify_checksums": False} if kind in ("cifar10", "cifar100", "svhn") else {}
        return [build_image_dataset(kind, root, split, None, **options) for split in ("train", "test")]

    return load


def _train_cli(kind: str) -> Callable[[Path, Path], list[str]]:
    def args(root: Path, scratch: Path) -> list[str]:
        checksums = ["--data.verify_checksums", "false"] if kind in ("cifar10", "cifar100", "svhn") else []
        return ["train", "--data.dataset", kind, "--data.data_dir", str(root), "--run.output_dir", str(scratch / "run"),
                "--data.num_workers", "0", *checksums]  # fmt: skip

    return args


def _write_videolist(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("apple\nbanana\n")
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("".join(f"videos/{split}_{i}.mp4 {i % 2}\n" for i in range(3)))


def _read_videos(root: Path) -> object:
    return [load_video_split("videolist", root, split) for split in ("train", "test")]


def _write_ssv2(root: Path) -> None:
    (root / "videos").mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"Pushing something": "0", "Pulling something": "1"}))
    for split, ids in (("train", ["1", "2", "3"]), ("validation", ["4"])):
        records = [{"id": i, "template": "Pulling [something]" if i == "2" else "Pushing [something]"} for i in ids]
        (root / f"{split}.json").write_text(json.dumps(records))
        for i in ids:
            (root / "videos" / f"{i}.webm").touch()


SPLIT_FILE = "splits/jump_test_split1.txt"


def _write_hmdb51(root: Path) -> None:
    (root / "splits").mkdir(parents=True)
    for name in ("jump", "sit"):
        lines = [f"{name}{i}.avi {1 + i % 2}" for i in range(3)]
        (root / "splits" / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (root / "videos" / name).mkdir(parents=True)
        for line in lines:
            (root / "videos" / name / line.split()[0]).touch()


def _write_imagefolder(root: Path) -> None:
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(random_images(1, size=64, seed=label)[0]).save(root / split / name / "a.png")


def _read_images(root: Path) -> object:
    return [dataset[i] for split in ("train", "test") for dataset in [build_image_dataset("imagefolder", root, split,
            None)] for i in range(len(dataset))]  # fmt: skip


def _write_videofolder(root: Path) -> None:
    for split in ("train", "test"):
        for name in ("clap", "wave"):
            (root / split / name).mkdir(parents=True)
            write_video(root / split / name / "a.mp4", num_frames=6, size=(24, 32))


def _read_clips(root: Path) -> object:
    views = (SamplerConfig("dense", 4, 1), VideoTransform(PRE), "test", TestViews(1, 1))
    datasets = [load_video_split("videofolder", root, split).dataset(*views) for split in ("train", "test")]
    return [dataset[i] for dataset in datasets for i in range(len(dataset))]  # type: ignore[arg-type]


def _ssv2_cli(root: Path, scratch: Path) -> list[str]:
    return ["prepare", "ssv2", "--root", str(root), "--out", str(scratch / "lists")]


def _hmdb51_cli(root: Path, scratch: Path) -> list[str]:
    return ["prepare", "hmdb51", "--root", str(root), "--out", str(scratch / "lists")]


_ROWS = cifar_rows(random_images(2))
READERS: dict[str, Reader] = {
    "cifar10 batch": Reader(
        lambda root: WRITERS["cifar10"](root),
        "cifar-10-batches-py/data_batch_1",
        _image_kind("cifar10"),
        _train_cli("cifar10"),
        {
            "rekeyed": _pickle({"data": _ROWS, "fine_labels": [0, 1]}),
            "label": _pickle({"data": _ROWS, "labels": [0, 10]}),
        },
    ),
    "cifar10 meta": Reader(
        lambda root: WRITERS["cifar10"](root),
        "cifar-10-batches-py/batches.meta",
        _image_kind("cifar10"),
        _train_cli("cifar10"),
        {"rekeyed": _pickle({"fine_label_names": ["a"] * 10})},
    ),
    "cifar100 batch": Reader(
        lambda root: WRITERS["cifar100"](root),
        "cifar-100-python/train",
        _image_kind("cifar100"),
        _train_cli("cifar100"),
        {
            "rekeyed": _pickle({"data": _ROWS, "labels": [0, 1]}),
            "label": _pickle({"data": _ROWS, "fine_labels": [100, 1]}),
        },
    ),
    "cifar100 meta": Reader(
        lambda root: WRITERS["cifar100"](root),
        "cifar-100-python/meta",
        _image_kind("cifar100"),
        _train_cli("cifar100"),
        {"rekeyed": _pickle({"label_names": ["a"] * 100})},
    ),
    "svhn mat": Reader(
        lambda root: WRITERS["svhn"](root),
        "test_32x32.mat",
        _image_kind("svhn"),
        _train_cli("svhn"),
        {
            "rekeyed": lambda path: scipy.io.savemat(path, {"x": np.zeros((32, 32, 3, 1), np.uint8), "y": [[1]]}),
            "label": lambda path: scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [[1], [11]]}),
        },
    ),
    "food101 classes.txt": Reader(
        lambda root: WRITERS["food101"](root),
        "food-101/meta/classes.txt",
        _image_kind("food101"),
        _train_cli("food101"),
        {"repeated": _text("apple_pie\nsushi\napple_pie\n")},
    ),
    "food101 json": Reader(
        lambda root: WRITERS["food101"](root),
        "food-101/meta/train.json",
        _image_kind("food101"),
        _train_cli("food101"),
        {
            "rekeyed": _text('["apple_pie/1", "sushi/3"]'),
            "label": _text('{"apple_pie": ["apple_pie/1"], "pizza": ["pizza/9"]}'),
        },
    ),
    "videolist list": Reader(
        _write_videolist,
        "train.txt",
        _read_videos,
        _train_cli("videolist"),
        {"rekeyed": _text("path,label\nvideos/a.mp4,0\n"), "label": _text("videos/a.mp4 0\nvideos/b.mp4 2\n")},
    ),
    "videolist classes.txt": Reader(
        _write_videolist,
        "classes.txt",
        _read_videos,
        _train_cli("videolist"),
        {"rekeyed": _text('["apple", "banana"]\n'), "repeated": _text("apple\napple\n")},
    ),
    "ssv2 labels.json": Reader(
        _write_ssv2,
        "labels.json",
        lambda root: prepare_ssv2(root, root / "out"),
        _ssv2_cli,
        {
            "rekeyed": _text('["Pushing something", "Pulling something"]'),
            "label": _text('{"Pushing something": "0", "Pulling something": "2"}'),
        },
    ),
    "ssv2 train.json": Reader(
        _write_ssv2,
        "train.json",
        lambda root: prepare_ssv2(root, root / "out"),
        _ssv2_cli,
        {
            "rekeyed": _text('[{"id": "1", "label": "Pushing something"}]'),
            "label": _text('[{"id": "1", "template": "Lifting [something]"}]'),
        },
    ),
    "hmdb51 split file": Reader(
        _write_hmdb51,
        SPLIT_FILE,
        lambda root: prepare_hmdb51(root, root / "out"),
        _hmdb51_cli,
        {"rekeyed": _text("jump0.avi train\n"), "label": _text("jump0.avi 3\n")},
    ),
    "imagefolder image": Reader(_write_imagefolder, "train/dog/a.png", _read_images, None, {}),
    "videofolder video": Reader(_write_videofolder, "test/wave/a.mp4", _read_clips, None, {}),
}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, max(256, path.stat().st_size), dtype=np.uint8).tobytes()
    path.write_bytes(b"\xff\xfe" + noise)  # never valid UTF-8, a pickle, a .mat, an image or a video


CASES = [(name, damage) for name, reader in READERS.items() for damage in ("truncated", "corrupt", *reader.damages)]
MEDIA_ERRORS = {"imagefolder image": ImageDecodeError, "videofolder video": VideoDecodeError}


def _damaged(tmp_path: Path, name: str, damage: str) -> tuple[Reader, Path, Path]:
    reader = READERS[name]
    root = tmp_path / "data"
    reader.write(root)
    reader.load(root)  # the intact files read fine
    target = root / reader.target
    {"truncated": _truncate, "corrupt": _corrupt, **reader.damages}[damage](target)
    return reader, root, target


@pytest.mark.parametrize(("name", "damage"), CASES)
def test_a_damaged_dataset_file_is_an_error_naming_it(tmp_path: Path, name: str, damage: str) -> None:
    reader, root, target = _damaged(tmp_path, name, damage)
    with pytest.raises(MEDIA_ERRORS.get(name, DatasetFileError)) as err:
        reader.load(root)
    assert str(target) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "damage"), [case for case in CASES if READERS[case[0]].cli is not None])
def test_the_command_line_shows_a_damaged_file_as_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, damage: str
) -> None:
    reader, root, target = _damaged(tmp_path, name, damage)
    assert reader.cli is not None
    capsys.readouterr()
    assert main(reader.cli(root, tmp_path)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]
