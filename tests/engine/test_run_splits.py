"""Which splits a run reads and what a split must hold: the dataset's own val split (ImageNet's train/val layout), class
folders and class lists without samples, classes that differ between splits, empty splits, and unreadable files in
loader workers or among the training samples no epoch draws. Tiny real image folders, videos and list files."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.data.release_files import random_images, write_food101
from tests.video_files import write_video

import adaptformer.engine.train
from adaptformer.cli import main
from adaptformer.data import DatasetFileError, ImageDecodeError, build_image_dataset
from adaptformer.data.video import load_video_split
from adaptformer.engine.loaders import TrainBatchSampler, eval_loader
from adaptformer.engine.loop import Predictions, classification_metrics
from adaptformer.engine.splits import DataSpec, given_val_split, load_split, resolve_test_split

CLASSES = ("cat", "dog")
TINY = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}'


def write_folder(root: Path, counts: dict[str, int], classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/<i>.png``: ``counts[split]`` 32x32 images per class."""
    for split, count in counts.items():
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = random_images(1, size=32, seed=100 * label + 10 * i + len(split))[0]
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model.backbone", "vit_tiny_patch16_224", "--model.kwargs", TINY, "--model.method", "linear",
        "--data.dataset", "imagefolder", "--data.data_dir", str(root), "--run.output_dir", str(out),
        "--optim.epochs", "1", "--optim.warmup_epochs", "0", "--optim.batch_size", "2", "--optim.precision", "fp32",
        "--data.num_workers", "0", "--data.val_split", "2", *extra,
    ]  # fmt: skip


def errors(capsys: pytest.CaptureFixture) -> list[str]:
    """The command line's error lines on stderr (after checking that no traceback came with them)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


@pytest.fixture
def loader_sizes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The sizes of the datasets that training puts into its train and evaluation loaders."""
    sizes: dict[str, list[int]] = {"train": [], "eval": []}
    for name, key in (("train_loader", "train"), ("eval_loader", "eval")):
        original = getattr(adaptformer.engine.train, name)

        def record(dataset, *args, _original=original, _key=key, **kwargs):  # type: ignore[no-untyped-def]
            sizes[_key].append(len(dataset))
            return _original(dataset, *args, **kwargs)

        monkeypatch.setattr(adaptformer.engine.train, name, record)
    return sizes


# -- which splits: item "ImageFolder with train/ and val/ only" ---------------------------------------------------


def _layout(root: Path, kind: str, splits: tuple[str, ...]) -> None:
    for split in splits:
        if kind == "videolist":
            root.mkdir(parents=True, exist_ok=True)
            (root / f"{split}.txt").write_text("a.mp4 0\n")
        else:
            (root / split / "cat").mkdir(parents=True)


@pytest.mark.parametrize("kind", ["imagefolder", "videofolder", "videolist"])
@pytest.mark.parametrize(
    ("splits", "val", "test", "logged"),
    [
        (("train", "val", "test"), "val", "test", "model selection uses the given validation split"),
        (("train", "val"), None, "val", "is the held-out test split"),
        (("train", "test"), None, "test", None),
    ],
)
def test_the_split_roles_follow_the_layout_on_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, splits: tuple, val: str | None, test: str, logged
) -> None:
    _layout(tmp_path, kind, splits)
    spec = DataSpec(kind, str(tmp_path))
    with caplog.at_level(logging.INFO, logger="adaptformer.engine.splits"):
        assert (given_val_split(spec, 0.1), resolve_test_split(spec)) == (val, test)
    if logged is None:
        assert caplog.text == ""
    else:
        assert logged in caplog.text and str(tmp_path / ("val.txt" if kind == "videolist" else "val")) in caplog.text
    if splits == ("train", "val", "test"):
        assert "--data.val_split 0.1 is not used" in caplog.text


def test_imagenet_layout_trains_with_a_carved_val_and_tests_on_val(
    tmp_path: Path, loader_sizes: dict, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "data", {"train": 5, "val": 3})  # no test/
    with caplog.at_level(logging.INFO):
        assert main(train_args(root, tmp_path / "run")) == 0
    report = json.loads((tmp_path / "run" / "test.json").read_text())
    assert report["split"] == "val" and report["n"] == 6
    assert loader_sizes == {"train": [8], "eval": [2, 6]}  # 10 train images: 2 carved for selection; val tested
    assert f"{root / 'val'} is the held-out test split" in caplog.text
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--data.data_dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 6  # eval's default split "test" is val too


def test_a_given_val_folder_is_used_for_model_selection(tmp_path: Path, loader_sizes: dict) -> None:
    root = write_folder(tmp_path / "data", {"train": 4, "val": 3, "test": 1})
    assert main(train_args(root, tmp_path / "run")) == 0
    assert loader_sizes == {"train": [8], "eval": [6, 2]}  # every train image trains; val/ selects; test/ tests
    assert json.loads((tmp_path / "run" / "test.json").read_text())["split"] == "test"


def test_a_given_val_folder_needs_no_val_split_fraction(tmp_path: Path, loader_sizes: dict, capsys) -> None:
    root = write_folder(tmp_path / "data", {"train": 4, "val": 3, "test": 1})
    assert main([*train_args(root, tmp_path / "run"), "--data.val_split", "0"]) == 0  # select best on val/
    assert loader_sizes == {"train": [8], "eval": [6, 2]}
    bare = write_folder(tmp_path / "bare", {"train": 4, "test": 1})
    capsys.readouterr()
    assert main([*train_args(bare, tmp_path / "run2"), "--data.val_split", "0"]) == 2
    assert "--run.select best needs a validation split" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


# -- classes without samples, classes that differ between splits ---------------------------------------------------


def test_an_empty_train_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": 1, "test": 1})
    (tmp_path / "train" / "zebra").mkdir()
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetFileError, match=rf"imagefolder {tmp_path / 'train'} has no samples.*\['zebra'\]"):
        build_image_dataset("imagefolder", tmp_path, "train", None)


def test_a_class_whose_every_image_is_skipped_is_an_error(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": 1})
    (tmp_path / "train" / "dog" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFileError, match=r"\['dog'\] after leaving out 1 unreadable file"):
        build_image_dataset("imagefolder", tmp_path, "train", None, skip_bad_images=True)


def test_a_food101_class_without_images_is_an_error_naming_classes_txt(tmp_path: Path) -> None:
    write_food101(tmp_path)
    classes_txt = tmp_path / "food-101" / "meta" / "classes.txt"
    classes_txt.write_text("apple_pie\npizza\nsushi\n")
    with pytest.raises(DatasetFileError, match=rf"train.json \(classes from {classes_txt}\).*\['pizza'\]"):
        build_image_dataset("food101", tmp_path, "train", None)


def test_a_video_class_without_training_videos_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("clap\nrun\nwave\n")
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text("a.mp4 0\nb.mp4 2\n")
    with pytest.raises(DatasetFileError, match=rf"videolist {tmp_path / 'train.txt'} has no samples.*\['run'\]"):
        load_video_split("videolist", tmp_path, "train")
    folder = tmp_path / "folder"
    for name in ("clap", "wave"):
        (folder / "train" / name).mkdir(parents=True)
    write_video(folder / "train" / "clap" / "a.mp4", num_frames=4, size=(16, 16))
    with pytest.raises(DatasetFileError, match=r"has no samples of 1 class\(es\) \['wave'\]"):
        load_video_split("videofolder", folder, "train")


@pytest.mark.parametrize("kind", ["imagefolder", "videofolder"])
def test_a_test_class_unknown_to_train_is_an_error_and_a_missing_one_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    for split, names in (("train", ("cat", "dog", "emu")), ("test", ("dog",))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            if kind == "imagefolder":
                Image.fromarray(random_images(1, size=8)[0]).save(tmp_path / split / name / "a.png")
            else:
                write_video(tmp_path / split / name / "a.mp4", num_frames=4, size=(16, 16))
    with caplog.at_level(logging.WARNING):
        test = load_split(DataSpec(kind, str(tmp_path)), "test")
    assert test.classes == ["cat", "dog", "emu"]
    labels = test.dataset.targets if kind == "imagefolder" else [e.label for e in test.source.entries]  # type: ignore
    assert labels == [1]  # dog keeps train's index
    assert f"{tmp_path / 'test'} has no samples of 2 class(es) ['cat', 'emu']" in caplog.text
    (tmp_path / "test" / "fox").mkdir()
    with pytest.raises(DatasetFileError, match=rf"{tmp_path / 'test'} has class folders \['fox'\] that .*train lacks"):
        load_split(DataSpec(kind, str(tmp_path)), "test")


# -- empty splits --------------------------------------------------------------------------------------------------


def test_a_test_split_with_every_image_unreadable_is_an_error_not_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "data", {"train": 2, "test": 1})
    for path in (root / "test").rglob("*.png"):
        path.write_bytes(b"broken")
    capsys.readouterr()
    assert main(train_args(root, tmp_path / "run", "--data.skip_bad_images", "true")) == 2
    assert errors(capsys) == [
        f"error: the test split of imagefolder {root} has no samples: all 2 were unreadable and left out "
        "(--data.skip_bad_images); there is nothing to score"
    ]


def test_eval_of_a_split_without_readable_images_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(tmp_path / "data", {"train": 2, "test": 1})
    assert main(train_args(root, tmp_path / "run", "--data.val_split", "0", "--run.select", "last")) == 0
    for path in (root / "test").rglob("*.png"):
        path.write_bytes(b"broken")
    capsys.readouterr()
    args = ["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--data.data_dir", str(root)]
    assert main([*args, "--data.skip_bad_images", "true"]) == 2
    assert errors(capsys) == [
        f"error: the test split of imagefolder {root} has no samples: all 2 were unreadable and left out "
        "(--data.skip_bad_images); there is nothing to score"
    ]


def test_an_empty_list_file_is_an_error_and_nothing_is_scored_as_nan(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    (tmp_path / "test.txt").write_text("\n")
    with pytest.raises(DatasetFileError, match=rf"the test split of videolist {tmp_path / 'test.txt'} has no samples"):
        load_split(DataSpec("videolist", str(tmp_path)), "test")
    with pytest.raises(ValueError, match="no predictions to score"):
        classification_metrics(Predictions(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0)))


# -- unreadable files in loader workers and among samples no epoch draws ------------------------------------------


def test_an_unreadable_image_in_a_loader_worker_is_one_line_naming_it(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": 2})
    bad = tmp_path / "train" / "dog" / "1.png"
    bad.write_bytes(b"not a png")
    dataset = build_image_dataset("imagefolder", tmp_path, "train", None)
    with pytest.raises(ImageDecodeError) as err:
        list(eval_loader(dataset, 1, 1, torch.device("cpu")))
    assert err.value.path == bad and str(err.value).startswith(
        f"cannot read image file {bad}: not an image file Pillow can identify"
    )
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is ImageDecodeError and (again.path, again.reason) == (err.value.path, err.value.reason)


def test_training_reports_an_unreadable_image_read_by_a_worker_as_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "data", {"train": 2, "test": 1})  # 4 images, batch 2: every one is drawn
    bad = root / "train" / "cat" / "1.png"
    bad.write_bytes(b"not a png")
    capsys.readouterr()
    args = train_args(root, tmp_path / "run", "--data.val_split", "0", "--run.select", "last")
    assert main([*args, "--data.num_workers", "1"]) == 2
    lines = errors(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read image file {bad}: ")


def test_never_drawn_lists_exactly_the_samples_no_epoch_yields() -> None:
    sampler = TrainBatchSampler(num_samples=11, batch_size=2, accum_steps=2, seed=3)
    for epochs in (1, 2):
        drawn = set()
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            drawn |= {index for batch in sampler for _, index in batch}
        assert sampler.never_drawn(epochs) == sorted(set(range(11)) - drawn)
    assert len(sampler.never_drawn(1)) == 3 and sampler.never_drawn(40) == []


def test_an_unreadable_training_image_no_epoch_draws_still_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "data", {"train": 3, "test": 1})  # 6 train images, batch 4: 2 never drawn
    never = TrainBatchSampler(6, 4, seed=0).never_drawn(1)
    bad = build_image_dataset("imagefolder", root, "train", None).samples[never[0]][0]
    bad.write_bytes(b"not a png")
    args = train_args(root, tmp_path / "run", "--data.val_split", "0", "--run.select", "last")
    capsys.readouterr()
    assert main([*args, "--optim.batch_size", "4"]) == 2
    assert errors(capsys) == [f"error: cannot read image file {bad}: not an image file Pillow can identify"]
    assert not (tmp_path / "run").exists()  # a run that fails on its inputs writes nothing
    bad.write_bytes((root / "test" / "cat" / "0.png").read_bytes())
    assert main([*args, "--optim.batch_size", "4"]) == 0
