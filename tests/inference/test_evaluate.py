"""``adaptformer eval`` matches a dataset's classes to the adapter's by name: the same names in another order give
the metrics of the original order (single- and multi-label), other names are refused, naming the difference; and
``eval`` / ``predict`` refuse backbone kwargs that change the architecture the adapter recorded, saying how."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import VIT, tiny_kwargs
from tests.data.release_files import write_food101
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.cli import main
from adaptformer.saving import TrainingRecord


def _adapter(directory: Path, classes: list[str] | None, dataset: str, multi_label: bool = False) -> Path:
    torch.manual_seed(0)
    model = move_trainable(create_model(VIT, 3 if multi_label else 2, init_seed=0, **tiny_kwargs(VIT)), scale=1.0)
    record = TrainingRecord(dataset=dataset, precision="fp32", eval_batch_size=8)
    return save_adapter(model.eval(), directory, classes, record, multi_label=multi_label)


def _eval(capsys: pytest.CaptureFixture[str], adapter: Path, data: Path) -> tuple[int, dict, str]:
    code = main(["eval", "--adapter", str(adapter), "--data.data_dir", str(data), "--run.device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 else {}, captured.err


def test_a_classes_file_in_another_order_gives_the_original_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _, classes = write_food101(tmp_path / "food")
    adapter = _adapter(tmp_path / "adapter", classes, "food101")
    code, original, _ = _eval(capsys, adapter, tmp_path / "food")
    assert code == 0 and original["n"] == 2

    (tmp_path / "food" / "food-101" / "meta" / "classes.txt").write_text("sushi\napple_pie\n")  # the labels swap
    with caplog.at_level(logging.INFO, logger="adaptformer.inference.evaluate"):
        code, permuted, _ = _eval(capsys, adapter, tmp_path / "food")
    # the same predictions and labels; the loss sums the same terms in another order (columns permuted), so it may
    # differ in its last bits
    assert code == 0 and permuted == {**original, "loss": pytest.approx(original["loss"], rel=1e-6)}
    assert "food101 test lists the adapter's classes in another order: labels are matched to them by name" in (
        caplog.text
    )
    # not a vacuous check: by index (an adapter that records no names) the same data scores otherwise
    code, by_index, _ = _eval(capsys, _adapter(tmp_path / "nameless", None, "food101"), tmp_path / "food")
    assert code == 0 and by_index["loss"] != pytest.approx(original["loss"])


def test_multi_label_classes_in_another_order_give_the_original_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tags"
    (data / "img").mkdir(parents=True)
    for k in range(4):
        pixels = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "img" / f"{k}.png")
    (data / "classes.txt").write_text("cat\ndog\nbird\n")
    (data / "test.txt").write_text("img/0.png cat,bird\nimg/1.png dog\nimg/2.png bird\nimg/3.png cat,dog\n")
    adapter = _adapter(tmp_path / "adapter", ["cat", "dog", "bird"], "multilabel-list", multi_label=True)
    code, original, _ = _eval(capsys, adapter, data)
    assert code == 0 and original["n"] == 4 and len(original["ap"]) == 3

    (data / "classes.txt").write_text("bird\ncat\ndog\n")
    code, permuted, _ = _eval(capsys, adapter, data)
    assert code == 0 and permuted == original  # mAP, F1, the loss and each class's AP, in the adapter's order


def test_other_class_names_are_refused_naming_the_difference(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_food101(tmp_path / "food")
    adapter = _adapter(tmp_path / "adapter", ["apple_pie", "ramen"], "food101")
    code, _, err = _eval(capsys, adapter, tmp_path / "food")
    assert code == 2 and err.strip().splitlines() == [
        "error: the classes of food101 test are not those the adapter was trained with (only the adapter's: "
        "['ramen']; only in food101 test: ['sushi']); the adapter's classes are ['apple_pie', 'ramen']"
    ]


@pytest.fixture(scope="module")
def shapes_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter on the shipped tiny backbone (6 blocks of width 128, 4 heads), evaluated on synthetic data."""
    torch.manual_seed(0)
    model = move_trainable(create_model("vit_shapes_patch8_32", 10, checkpoint="timm", drop_path_rate=0.0))
    record = TrainingRecord("synthetic", {"num_samples": 8, "image_size": 32}, precision="fp32", eval_batch_size=8)
    return save_adapter(model.eval(), tmp_path_factory.mktemp("shapes") / "adapter", None, record)


RECORDED = "vit_shapes_patch8_32 with kwargs {'drop_path_rate': 0.0} has 6 blocks of width 128 with 4 heads"


@pytest.mark.parametrize(
    ("command", "kwargs", "how"),
    [
        ("eval", "{embed_dim: 64}", "the kwargs {'embed_dim': 64} make 6 blocks of width 64 with 4 heads"),
        ("predict", "{num_heads: 3}", "model kwargs {'num_heads': 3} do not build 'vit_shapes_patch8_32': dim "
         "should be divisible by num_heads"),
        ("eval", "{depth: 4}", "the kwargs {'depth': 4} make 4 blocks of width 128 with 4 heads"),
        ("predict", "{num_heads: 2}", "the kwargs {'num_heads': 2} make 6 blocks of width 128 with 2 heads"),
        ("eval", "{patch_size: 16}", "the kwargs {'patch_size': 16} change its tensors: pos_embed (1, 17, 128) -> "
         "(1, 5, 128); patch_embed.proj.weight (128, 3, 8, 8) -> (128, 3, 16, 16)"),
    ],
)  # fmt: skip
def test_kwargs_that_change_the_recorded_architecture_are_refused_saying_how(
    shapes_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kwargs: str, how: str
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    files = [str(image)] if command == "predict" else []
    assert main([command, "--adapter", str(shapes_adapter), "--model.kwargs", kwargs, *files]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {shapes_adapter}: the architecture differs from the one the adapter recorded: {RECORDED}"
        f"{'; ' if 'do not build' in how else ', '}{how}; give the kwargs it records, or leave them out"
    ]


def test_kwargs_that_keep_the_architecture_are_taken(shapes_adapter: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--adapter", str(shapes_adapter), "--run.device", "cpu"]) == 0
    recorded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    argv = ["eval", "--adapter", str(shapes_adapter), "--run.device", "cpu", "--model.kwargs", "{drop_path_rate: 0.1}"]
    assert main(argv) == 0  # drop path is off in evaluation: the same model, the same numbers
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == recorded
