"""``adaptformer predict`` with a segmentation adapter: a label PNG (palette mode, class indices, the image's size)
and an overlay per image, equal to the model's own segmentation; the per-class fractions; nothing overwritten unasked;
a bad file an error line while the others are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import VIT
from tests.segmentation.tiny_segmenters import tiny_segmenter
from tests.training_step import move_trainable
from torchvision import tv_tensors

from adaptformer import save_adapter
from adaptformer.cli import main
from adaptformer.data import read_image
from adaptformer.data.segmentation import SegmentationAugment, build_segmentation_transform, voc_palette
from adaptformer.engine.segmentation import SegmentationInference, segment
from adaptformer.inference.segmenting import OVERLAY_ALPHA
from adaptformer.preprocessing import Preprocessing
from adaptformer.saving import TrainingRecord

CLASSES = ["sky", "road", "tree"]
RECORD = {"base_size": 32, "inference": "slide", "stride": 16, "eval_flip": True}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("seg") / "adapter"
    model = move_trainable(tiny_segmenter(VIT, "adaptformer", "linear"), 0.5).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # BatchNorm statistics off their init
    record = TrainingRecord(dataset="segfolder", precision="fp32", segmentation=RECORD)
    save_adapter(model.eval(), directory, CLASSES, record)
    return directory


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_label_and_overlay_pngs_are_the_models_segmentation(adapter: Path, tmp_path: Path, capsys) -> None:
    from adaptformer.inference.evaluate import load_trained_model

    image = _image(tmp_path / "street.png", 0)
    out = tmp_path / "out"
    assert main(["predict", "--adapter", str(adapter), "--out", str(out), "--json", str(image)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["label"] == str(out / "street.png") and row["overlay"] == str(out / "street_overlay.png")
    label = Image.open(out / "street.png")
    assert label.mode == "P" and label.size == (56, 40)
    assert label.getpalette()[: 3 * 3] == [c for rgb in voc_palette(3) for c in rgb]
    values = np.asarray(label)

    # the same image through eval's transform at the recorded base size, segmented by the recorded inference (slide
    # windows every 16 pixels, flip) and resized to the file's 40 x 56
    model, _ = load_trained_model(adapter)
    transform = build_segmentation_transform(Preprocessing.from_model(model), False, SegmentationAugment(base_size=32))
    x, _ = transform(read_image(image), tv_tensors.Mask(torch.zeros(40, 56, dtype=torch.uint8)))
    assert tuple(x.shape) == (3, 32, 44)
    with torch.no_grad():
        expected = segment(model, x[None], SegmentationInference("slide", None, (16, 16), True), (40, 56),
                           input_size=(32, 32), num_classes=3, multiple=8)[0].argmax(0)  # fmt: skip
    assert np.array_equal(values, expected.numpy())

    counts = np.bincount(values.ravel(), minlength=3) / values.size
    assert list(row["fractions"]) == CLASSES and row["fractions"] == pytest.approx(
        dict(zip(CLASSES, counts, strict=True))
    )
    overlay = np.asarray(Image.open(out / "street_overlay.png"), dtype=np.float64)
    colours = np.array(voc_palette(3), dtype=np.float64)[values]
    blend = (1 - OVERLAY_ALPHA) * np.asarray(Image.open(image), dtype=np.float64) + OVERLAY_ALPHA * colours
    assert np.abs(overlay - blend).max() <= 0.5 + 1e-9


def test_files_already_there_are_not_overwritten_unasked(adapter: Path, tmp_path: Path, capsys) -> None:
    image = _image(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    assert main(["predict", "--adapter", str(adapter), "--out", str(out), str(image)]) == 0
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"mine")
    assert main(["predict", "--adapter", str(adapter), "--out", str(out), str(image)]) == 2
    assert "already holds 2 of the files to write" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"mine"
    assert main(["predict", "--adapter", str(adapter), "--out", str(out), "--overwrite", str(image)]) == 0
    assert (out / "a.png").read_bytes() == before


def test_a_bad_file_gets_an_error_line_and_the_others_are_written(adapter: Path, tmp_path: Path, capsys) -> None:
    good = _image(tmp_path / "good.png", 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["predict", "--adapter", str(adapter), "--out", str(out), str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith(f"{bad}: error: cannot read image file {bad}")
    assert lines[1].startswith(f"{good}: {out / 'good.png'}, {out / 'good_overlay.png'}; ")
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "good_overlay.png"]
    assert "1 of 2 files could not be segmented" in captured.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give --out DIR"),
        (["--out", "o", "--top-k", "2"], "--top-k applies to classification adapters"),
        (["--out", "o", "--threshold", "0.3"], "--threshold applies to classification adapters"),
    ],
)
def test_segmentation_flags_are_checked(adapter: Path, tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    image = _image(tmp_path / "x.png", 3)
    assert main(["predict", "--adapter", str(adapter), *flags, str(image)]) == 2
    assert message in capsys.readouterr().err


def test_two_files_of_one_name_would_collide(adapter: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _image(tmp_path / "a" / "x.png", 4), _image(tmp_path / "b" / "x.png", 5)
    assert main(["predict", "--adapter", str(adapter), "--out", str(tmp_path / "o"), str(first), str(second)]) == 2
    assert "would write the same files" in capsys.readouterr().err
