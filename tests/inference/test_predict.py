"""``adaptformer predict``: every file gets a line (a bad one an error line, then exit 2), --top-k is checked, and a
video adapter classifies video files by averaging the logits of the test views eval uses."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.cli import main
from adaptformer.data.video import aggregate_views
from adaptformer.engine.distributed import DistributedContext
from adaptformer.engine.loaders import eval_loader
from adaptformer.engine.loop import evaluate
from adaptformer.engine.splits import DataSpec, VideoSettings, load_split
from adaptformer.inference.evaluate import load_trained_model, predict_files
from adaptformer.precision import resolve_precision
from adaptformer.saving import TrainingRecord

CLASSES = ["cat", "dog", "emu"]
VIDEO = "video_vit_base_patch16_224"
VIDEO_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
# recorded by "training": 2 temporal clips x 3 crops, dense sampling with stride 2 (not the defaults, so a test that
# passes shows the recorded views were used)
VIDEO_RECORD = {"sampling": "dense", "sampling_stride": 2, "flip": False, "test_clips": 2, "test_crops": 3}


@pytest.fixture(scope="module")
def image_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("image") / "adapter"
    torch.manual_seed(0)
    model = move_trainable(create_model(VIT, len(CLASSES), init_seed=0, **tiny_kwargs(VIT)))
    record = TrainingRecord(dataset="synthetic", precision="fp32")
    save_adapter(model.eval(), directory, CLASSES, record)
    return directory


def _images(directory: Path) -> tuple[str, str, str]:
    good = []
    for i in range(2):
        path = directory / f"good{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        good.append(str(path))
    bad = directory / "bad.png"
    bad.write_bytes(b"not a png")
    return good[0], str(bad), good[1]


def test_one_bad_image_among_good_ones_gets_an_error_line(image_adapter: Path, tmp_path: Path, capsys) -> None:
    first, bad, second = _images(tmp_path)
    assert main(["predict", "--adapter", str(image_adapter), "--top-k", "2", first, bad, second]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{first}: ") and lines[2].startswith(f"{second}: ")
    assert all(
        len(line.split(", ")) == 2 and line.split(": ")[1].split()[0] in CLASSES for line in (lines[0], lines[2])
    )
    assert lines[1].startswith(f"{bad}: error: cannot read image file {bad}")
    assert captured.err.strip().splitlines()[-1] == f"error: 1 of 3 files could not be classified: {bad}"


def test_json_rows_carry_per_file_errors(image_adapter: Path, tmp_path: Path, capsys) -> None:
    first, bad, second = _images(tmp_path)
    assert main(["predict", "--adapter", str(image_adapter), "--json", first, bad, second]) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["image"] for r in rows] == [first, bad, second]
    assert "error" not in rows[0] and len(rows[0]["top"]) == 3 and "top" not in rows[1]
    assert rows[1]["error"].startswith(f"cannot read image file {bad}")
    assert main(["predict", "--adapter", str(image_adapter), "--json", first, second]) == 0  # all good: exit 0


def test_a_16_bit_png_is_classified_as_the_same_picture_in_8_bit(image_adapter: Path, tmp_path: Path, capsys) -> None:
    """Pillow alone binarises 16-bit grey (I;16 -> RGB clips at 255), which changed the predicted class; both files
    now give the same probabilities."""
    grey = np.random.default_rng(7).integers(0, 256, (40, 40), dtype=np.uint8)
    eight, sixteen = tmp_path / "g8.png", tmp_path / "g16.png"
    Image.fromarray(grey).save(eight)
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen)
    assert (
        main(["predict", "--adapter", str(image_adapter), "--json", "--precision", "fp32", str(eight), str(sixteen)])
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert rows[0]["top"] == rows[1]["top"]


def test_predict_accepts_only_the_allowed_formats_by_their_bytes(image_adapter: Path, tmp_path: Path, capsys) -> None:
    good, _, _ = _images(tmp_path)
    tiff = tmp_path / "scan.png"  # a TIFF named .png: judged by its bytes
    Image.open(good).save(tiff, "TIFF")
    assert main(["predict", "--adapter", str(image_adapter), good, str(tiff)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1] == (
        f"{tiff}: error: cannot read image file {tiff}: not one of the accepted formats (PNG, JPEG, WEBP, BMP, GIF), "
        "judged by its bytes"
    )


@pytest.mark.parametrize("top_k", ["0", "-1", "two"])
def test_top_k_must_be_a_positive_integer(image_adapter: Path, tmp_path: Path, capsys, top_k: str) -> None:
    first, _, _ = _images(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--adapter", str(image_adapter), "--top-k", top_k, first])
    assert exited.value.code == 2
    assert f"argument --top-k: expected a positive integer, got {top_k if top_k == 'two' else int(top_k)}" in (
        capsys.readouterr().err.replace("'two'", "two")
    )
    model, _ = load_trained_model(image_adapter)
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        predict_files(model, [first], top_k=0)


def test_top_k_above_the_class_count_shows_every_class(image_adapter: Path, tmp_path: Path, capsys, caplog) -> None:
    first, _, _ = _images(tmp_path)
    caplog.set_level(logging.WARNING)
    assert main(["predict", "--adapter", str(image_adapter), "--top-k", "10", "--json", first]) == 0
    row = json.loads(capsys.readouterr().out)
    assert sorted(t["class"] for t in row["top"]) == CLASSES
    assert "top-10 asked for, but the adapter has 3 classes: showing all 3" in caplog.text
    caplog.clear()
    assert main(["predict", "--adapter", str(image_adapter), "--json", first]) == 0  # default: 5, or all 3
    assert len(json.loads(capsys.readouterr().out)["top"]) == 3 and "asked for" not in caplog.text


def test_a_class_names_file_is_matched_to_the_adapters_by_name(image_adapter: Path, tmp_path: Path, capsys) -> None:
    first, _, _ = _images(tmp_path)
    assert main(["predict", "--adapter", str(image_adapter), "--json", first]) == 0
    recorded = capsys.readouterr().out
    (tmp_path / "names.txt").write_text("emu\ncat\ndog\n")  # the same names in another order: labels by name
    assert main(["predict", "--adapter", str(image_adapter), "--class-names", str(tmp_path / "names.txt"), "--json",
                 first]) == 0  # fmt: skip
    assert capsys.readouterr().out == recorded
    (tmp_path / "names.txt").write_text("cat\ndog\nfox\n")  # other names: refused
    assert main(["predict", "--adapter", str(image_adapter), "--class-names", str(tmp_path / "names.txt"), first]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: the classes of --class-names {tmp_path / 'names.txt'} are not those the adapter was trained with "
        f"(only the adapter's: ['emu']; only in --class-names {tmp_path / 'names.txt'}: ['fox']); the adapter's "
        "classes are ['cat', 'dog', 'emu']"
    ]


@pytest.fixture(scope="module")
def video_setup(tmp_path_factory: pytest.TempPathFactory, videos: dict[str, Path]) -> dict[str, Path]:
    """A tiny video adapter whose record names 2 x 3 views, and a videofolder dataset of three test videos."""
    root = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    model = move_trainable(create_model(VIDEO, 2, init_seed=0, **VIDEO_TINY), scale=0.5)
    record = TrainingRecord(dataset="videofolder", video=VIDEO_RECORD, precision="fp32", eval_batch_size=4)
    save_adapter(model.eval(), root / "adapter", ["left", "right"], record)
    data = root / "data"
    for split in ("train", "test"):
        for name in ("left", "right"):
            (data / split / name).mkdir(parents=True)
    shutil.copy(videos["mp4"], data / "test" / "left" / "a.mp4")
    shutil.copy(videos["long"], data / "test" / "left" / "b.mp4")
    shutil.copy(videos["webm"], data / "test" / "right" / "c.webm")
    for name in ("left", "right"):
        shutil.copy(videos["mp4"], data / "train" / name / "x.mp4")
    return {"adapter": root / "adapter", "data": data}


def _eval_logits(adapter: Path, data: Path) -> tuple[list[Path], torch.Tensor]:
    """The multi-view logits ``adaptformer eval`` scores, per test video (its own dataset, loader and averaging)."""
    model, _ = load_trained_model(adapter)
    spec = DataSpec("videofolder", str(data), video=VideoSettings(**VIDEO_RECORD))
    split = load_split(spec, "test")
    dataset = split.build(model, "test")
    assert dataset.views_per_video == 6
    ctx = DistributedContext()  # one CPU process
    device = ctx.device
    predictions = evaluate(model, eval_loader(dataset, 4, 0, device), resolve_precision("fp32", device), ctx)
    averaged = aggregate_views(predictions.logits, predictions.labels, predictions.ids)  # ids: the video of each view
    return [entry.path for entry in dataset.entries], averaged.logits


def test_predict_on_video_files_matches_evals_multi_view_average(video_setup: dict[str, Path], capsys) -> None:
    paths, logits = _eval_logits(video_setup["adapter"], video_setup["data"])
    bad = video_setup["data"].parent / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    files = [str(paths[0]), str(bad), str(paths[1]), str(paths[2])]
    assert main(["predict", "--adapter", str(video_setup["adapter"]), "--top-k", "2", "--json", *files]) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["video"] for r in rows] == files
    assert rows[1]["error"].startswith(f"cannot decode video {bad}")
    good = [rows[0], rows[2], rows[3]]
    assert [r["top"][0]["index"] for r in good] == logits.argmax(dim=1).tolist()
    expected = logits.softmax(dim=1).max(dim=1).values
    assert [r["top"][0]["prob"] for r in good] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_video_adapter_without_recorded_views_uses_the_defaults_and_says_so(
    video_setup: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = load_trained_model(video_setup["adapter"])
    video = next((video_setup["data"] / "test" / "left").iterdir())
    caplog.set_level(logging.WARNING)
    (result,) = predict_files(model, [video], top_k=1)  # no video settings given
    assert result.error is None and len(result.top) == 1
    assert "records no video settings; predicting with the videolist defaults" in caplog.text
    assert "test_clips=4, test_crops=3" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("names.txt", "cat\ndog\n\n", ["cat", "dog"]),
        ("names.json", '["cat", "dog"]', ["cat", "dog"]),
        ("adapter_config.json", '{"classes": ["cat", "dog"], "num_classes": 2}', ["cat", "dog"]),
        ("names.json", '{"labels": ["cat"]}', 'an object with a "classes" list'),
        ("names.json", '["cat", ', "not a readable JSON file"),
        ("names.json", '["cat", "cat"]', "repeated class names"),
        ("names.txt", "cat\ncat\n", "cat"),
        ("names.txt", "\n", "no class names"),
    ],
)
def test_class_names_file_is_read_or_named_in_an_error(tmp_path, name: str, text: str, expected) -> None:
    from adaptformer.inference.evaluate import read_class_names

    path = tmp_path / name
    path.write_text(text)
    if isinstance(expected, list):
        assert read_class_names(path) == expected
    else:
        with pytest.raises(ValueError, match=expected) as error:
            read_class_names(path)
        assert str(path) in str(error.value)


def test_a_video_adapter_refuses_a_still_image(video_setup: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    model, _ = load_trained_model(video_setup["adapter"])
    still = tmp_path / "still.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(still)
    video = next((video_setup["data"] / "test" / "left").iterdir())
    results = predict_files(model, [still, video], top_k=1)
    assert "a single frame (a still image?)" in results[0].error and str(still) in results[0].error
    assert results[1].error is None


def test_predict_with_two_video_adapters_gives_each_tasks_single_adapter_answer(
    video_setup: dict[str, Path], tmp_path: Path, capsys
) -> None:
    # the same randomly initialised backbone (init_seed 0; with no checkpoint its draws depend on the class count,
    # so 2 classes as the first adapter), another method and head
    torch.manual_seed(1)
    other = move_trainable(create_model(VIDEO, 2, method="linear", init_seed=0, **VIDEO_TINY), scale=0.5)
    record = TrainingRecord(dataset="videofolder", video=VIDEO_RECORD, precision="fp32", eval_batch_size=4)
    save_adapter(other.eval(), tmp_path / "other" / "adapter", ["up", "down"], record)
    files = [str(next((video_setup["data"] / "test" / c).iterdir())) for c in ("left", "right")]
    single = {}
    for name, adapter in (("video", video_setup["adapter"]), ("other", tmp_path / "other" / "adapter")):
        assert main(["predict", "--adapter", str(adapter), "--top-k", "2", "--json", *files]) == 0
        single[name] = [json.loads(line)["top"] for line in capsys.readouterr().out.strip().splitlines()]
    argv = ["predict", "--adapter", str(video_setup["adapter"]), "--adapter", str(tmp_path / "other" / "adapter")]
    assert main([*argv, "--top-k", "2", "--json", *files]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["file"] for r in rows] == files
    for i, row in enumerate(rows):
        first = video_setup["adapter"].parent.name  # tasks are named after the adapters' run folders
        assert list(row["tasks"]) == [first, "other"]
        for task in ("video", "other"):
            got = row["tasks"][first if task == "video" else task]["top"]
            assert [t["class"] for t in got] == [t["class"] for t in single[task][i]]
            assert [t["prob"] for t in got] == pytest.approx([t["prob"] for t in single[task][i]], abs=1e-5)
