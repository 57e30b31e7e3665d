"""Which outputs a shifted set is scored on: ImageNet-R/-A's 200 logits of a 1000-class head (the argmax among
them, as their papers score), a head over exactly those 200 as it is, any other head refused; V2/Sketch images
matched to an adapter's classes by WordNet id, and a folder of ids the adapter lacks refused naming them. End to end
on tiny ImageNet-R and Sketch layouts with a tiny 1000-class model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import VIT, tiny_kwargs
from tests.data.shift.test_imagenet_shift import GOLDFISH, HEN, SHARK, write_class_folders
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.data import build_image_dataset, build_image_transform
from adaptformer.data.shift import imagenet_classes, subset_classes
from adaptformer.engine.distributed import init_distributed
from adaptformer.engine.loop import Predictions
from adaptformer.engine.splits import DataSpec
from adaptformer.inference.evaluate import load_trained_model
from adaptformer.inference.robustness import RobustnessSettings
from adaptformer.inference.robustness.classes import shifted_output_map
from adaptformer.inference.robustness.evaluation import evaluate_shifted
from adaptformer.preprocessing import Preprocessing
from adaptformer.saving import TrainingRecord

IMAGENET = list(imagenet_classes())
R = list(subset_classes("imagenet-r"))


def test_a_1000_class_head_is_scored_on_the_200_logits() -> None:
    logits = torch.zeros(2, 1000)
    logits[:, 0] = 10.0  # tench (class 0) is no ImageNet-R class: the 1000-way argmax is wrong for both images
    logits[0, IMAGENET.index(GOLDFISH)] = 5.0
    logits[1, IMAGENET.index(HEN)] = 5.0
    labels = torch.tensor([R.index(GOLDFISH), R.index(HEN)])  # among the 200
    mapped = shifted_output_map("imagenet-r", R, labels.tolist(), IMAGENET, 1000).apply(
        Predictions(logits, labels, torch.arange(2))
    )
    assert mapped.logits.shape == (2, 200)
    assert mapped.logits.argmax(dim=1).tolist() == labels.tolist()  # right among the 200
    assert torch.equal(mapped.logits[:, R.index(SHARK)], logits[:, IMAGENET.index(SHARK)])


def test_a_head_over_the_200_classes_in_another_order_is_matched_by_name() -> None:
    head = list(reversed(R))
    mapping = shifted_output_map("imagenet-r", R, [0], head, 200)
    assert mapping.columns is None and mapping.labels is not None and mapping.labels[0] == 199


@pytest.mark.parametrize(
    ("kind", "labels", "adapter", "outputs", "message"),
    [
        ("imagenet-r", [0], ["cat", "dog"], 2, "imagenet-r is scored on the 200 logits of its classes in a head over "
         "ImageNet's 1000 classes (or on a head over exactly those 200), but this adapter's head has 2 classes: "
         "['cat', 'dog']"),
        ("imagenet-a", [0], IMAGENET[:500], 500, "this adapter's head has 500 classes"),
        ("imagenet-sketch", [1, 8], IMAGENET[:5], 5, "the imagenet-sketch folder has images of WordNet ids that are "
         f"not among the adapter's classes: ['{HEN}']"),
        ("imagenet-v2", [3], None, 10, "the adapter records no class names and has 10 outputs, not ImageNet's 1000"),
    ],
)  # fmt: skip
def test_heads_that_cannot_score_the_set_are_refused(
    kind: str, labels: list[int], adapter: list[str] | None, outputs: int, message: str
) -> None:
    classes = R if kind == "imagenet-r" else list(subset_classes(kind)) if kind == "imagenet-a" else IMAGENET
    with pytest.raises(ValueError) as error:
        shifted_output_map(kind, classes, labels, adapter, outputs)
    assert message in str(error.value)


def test_a_subset_adapter_scores_the_images_of_its_classes() -> None:
    mapping = shifted_output_map("imagenet-sketch", IMAGENET, [1, 8], [HEN, "n01440764", GOLDFISH], 3)
    assert mapping.columns is None and mapping.labels is not None
    assert (mapping.labels[1], mapping.labels[8], mapping.labels[0]) == (2, 0, 1)


@pytest.fixture(scope="module")
def imagenet_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = move_trainable(create_model(VIT, 1000, init_seed=0, **tiny_kwargs(VIT)), scale=1.0)
    record = TrainingRecord(dataset="imagefolder", precision="fp32", eval_batch_size=4)
    return save_adapter(model.eval(), tmp_path_factory.mktemp("imagenet") / "adapter", IMAGENET, record)


def test_imagenet_r_end_to_end_equals_the_argmax_among_its_200_logits(imagenet_adapter: Path, tmp_path: Path) -> None:
    write_class_folders(tmp_path, {GOLDFISH: 2, SHARK: 2, HEN: 2})
    model, info = load_trained_model(imagenet_adapter)
    result = evaluate_shifted(
        model, info, DataSpec("imagenet-r", str(tmp_path)), init_distributed("cpu"), RobustnessSettings()
    )
    dataset = build_image_dataset(
        "imagenet-r", tmp_path, "test", build_image_transform(Preprocessing.from_model(model), False)
    )
    with torch.no_grad():
        logits = model(torch.stack([dataset[i][0] for i in range(len(dataset))]))  # (6, 1000)
    columns = [IMAGENET.index(w) for w in R]
    hits = (logits[:, columns].argmax(dim=1) == torch.tensor(dataset.targets)).float().mean().item()
    assert result == {"acc1": pytest.approx(100 * hits), "n": 6}


def test_the_command_scores_released_sets_beside_the_synthetic_corruptions(
    imagenet_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adaptformer.cli import main

    write_class_folders(tmp_path / "sketch", {GOLDFISH: 2, HEN: 1})
    write_class_folders(tmp_path / "r", {SHARK: 2})
    write_class_folders(tmp_path / "c" / "fog" / "3", {GOLDFISH: 1, SHARK: 1})
    argv = [
        "robustness", "--adapter", str(imagenet_adapter), "--data.dataset", "imagenet-sketch", "--data.data_dir",
        str(tmp_path / "sketch"), "--corruptions", "fog", "--severities", "3", "--shifted",
        f"imagenet-r={tmp_path / 'r'}", "--shifted", f"imagenet-c={tmp_path / 'c'}", "--out", str(tmp_path / "out"),
        "--run.device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "out" / "robustness.json").read_text())["models"]["adapter"]
    assert report["n"] == 3 and list(report["corruptions"]) == ["synthetic", "imagenet-c"]
    assert list(report["corruptions"]["imagenet-c"]["acc1"]) == ["fog"]
    assert (
        report["shifted"]["imagenet-r"]["n"] == 2 and summary["imagenet-r"] == report["shifted"]["imagenet-r"]["acc1"]
    )

    argv[argv.index("--severities") + 1] = "2"  # ImageNet-C has no fog/2
    assert main([*argv, "--overwrite"]) == 2
    assert "imagenet-c " + str(tmp_path / "c") + " lacks the selected folders ['fog/2']" in capsys.readouterr().err
