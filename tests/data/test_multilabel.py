"""Multi-label recognition (paper Table 2): the metrics against a hand computation, each data kind on tiny real files
with its bad-input errors, and a run end to end (train, resume, eval, predict, two-process eval)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptformer.cli import main
from adaptformer.data import DatasetFileError, build_image_dataset
from adaptformer.engine.loop import Predictions
from adaptformer.engine.metrics import multilabel_metrics

# ---------------------------------------------------------------------------------------------------------------
# Metrics


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_map_and_f1_equal_a_hand_computation() -> None:
    # class 0: ranked 0.9 (pos), 0.8 (neg), 0.3 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2 = 5/6
    # class 1: ranked 0.7 (pos), 0.6 (pos), 0.55 (neg), 0.2 (neg): AP = 1;  mAP = (5/6 + 1) / 2
    # class 2 has no positive: left out of mAP and of the per-class F1
    scores = [[0.9, 0.2, 0.1], [0.8, 0.7, 0.2], [0.3, 0.6, 0.3], [0.1, 0.55, 0.4]]
    truth = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    logits = torch.tensor([[_logit(p) for p in row] for row in scores])
    got = multilabel_metrics(Predictions(logits, torch.tensor(truth, dtype=torch.float32), torch.arange(4)),
                             per_class=True)  # fmt: skip
    assert got["map"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert got["ap"] == [pytest.approx(100 * 5 / 6), pytest.approx(100.0), None]
    assert got["map_classes"] == 2 and got["n"] == 4
    # at 0.5: class 0 decides rows 0, 1 (TP 1, FP 1, FN 1); class 1 rows 1, 2, 3 (TP 2, FP 1, FN 0); class 2 none
    op, recall_o = 3 / 5, 3 / 4
    cp, cr = (1 / 2 + 2 / 3) / 2, (1 / 2 + 1) / 2
    assert got["op"] == pytest.approx(100 * op) and got["or"] == pytest.approx(100 * recall_o)
    assert got["of1"] == pytest.approx(100 * 2 * op * recall_o / (op + recall_o))
    assert got["cf1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    expected_loss = torch.nn.functional.binary_cross_entropy(torch.tensor(scores), torch.tensor(truth).float())
    assert got["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)


def test_metrics_refuse_single_label_targets_and_empty_splits() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="labels of the logits' shape"):
        multilabel_metrics(Predictions(logits, torch.tensor([0, 1, 2]), torch.arange(3)))
    with pytest.raises(ValueError, match="no predictions"):
        multilabel_metrics(Predictions(torch.zeros(0, 4), torch.zeros(0, 4), torch.arange(0)))


# ---------------------------------------------------------------------------------------------------------------
# Data kinds on tiny real files


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


def _labels(dataset: object) -> list[tuple[int, ...]]:
    return list(dataset.label_sets)  # type: ignore[attr-defined]


def _list_tree(root: Path, train: str, test: str = "img/a.png cat\n") -> Path:
    for name in ("a", "b", "c", "d e"):
        _image(root / "img" / f"{name}.png")
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    (root / "train.txt").write_text(train)
    (root / "test.txt").write_text(test)
    return root


def test_list_kind_reads_names_tabs_and_the_empty_label_policy(tmp_path: Path) -> None:
    root = _list_tree(tmp_path, "img/a.png cat,bird\nimg/b.png dog\n\nimg/d e.png\tbird, cat\nimg/c.png\n")
    with pytest.raises(DatasetFileError, match=r"train.txt: line 5 \(img/c.png\) has no labels .*empty_labels"):
        build_image_dataset("multilabel-list", root, "train", None)
    kept = build_image_dataset("multilabel-list", root, "train", None, empty_labels="keep")
    assert _labels(kept) == [(0, 2), (1,), (0, 2), ()]
    image, target = kept[0]
    assert image.shape == (3, 8, 8) and target.tolist() == [1.0, 0.0, 1.0]
    dropped = build_image_dataset("multilabel-list", root, "train", None, empty_labels="drop")
    assert _labels(dropped) == [(0, 2), (1,), (0, 2)] and kept.multi_label and kept.targets is None


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("img/a.png cat,fish", r"train.txt:2: unknown class 'fish'; the classes are those of .*classes.txt"),
        ("img/a.png cat,dog,cat", r"train.txt:2: class\(es\) \['cat'\] listed more than once"),
        ("img/a.png cat,,dog", r"train.txt:2: an empty class name"),
    ],
)
def test_list_kind_names_the_line_of_a_bad_label(tmp_path: Path, line: str, match: str) -> None:
    root = _list_tree(tmp_path, f"img/b.png dog\n{line}\n")
    with pytest.raises(DatasetFileError, match=match):
        build_image_dataset("multilabel-list", root, "train", None)


def test_list_kind_refuses_a_class_without_training_positives(tmp_path: Path) -> None:
    root = _list_tree(tmp_path, "img/a.png cat\nimg/b.png dog\n")
    with pytest.raises(DatasetFileError, match=r"no image has the class\(es\) \['bird'\]"):
        build_image_dataset("multilabel-list", root, "train", None)
    assert _labels(build_image_dataset("multilabel-list", root, "test", None)) == [(0,)]  # a warning only


def _csv_tree(root: Path, train: str, test: str | None = None) -> Path:
    for name in ("a", "b"):
        _image(root / f"{name}.png")
    (root / "train.csv").write_text(train)
    (root / "test.csv").write_text(test if test is not None else train)
    return root


def test_csv_kind_reads_a_multi_hot_table(tmp_path: Path) -> None:
    root = _csv_tree(tmp_path, "path,cat,dog,bird\na.png,1,0,1\nb.png,0,1,0\n")
    dataset = build_image_dataset("multilabel-csv", root, "train", None)
    assert dataset.classes == ["cat", "dog", "bird"] and _labels(dataset) == [(0, 2), (1,)]
    assert dataset[1][1].tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("train", "test", "split", "match"),
    [
        ("path,cat,dog\na.png,1,2\n", None, "train", r"train.csv:2: column 'dog' holds '2'; expected 0 or 1"),
        ("path,cat,dog\na.png,1\n", None, "train", r"train.csv:2: 2 columns, expected 3"),
        ("path,cat,cat\na.png,1,0\n", None, "train", r"class columns \['cat'\] appear more than once"),
        ("path,cat,dog\na.png,1,1\n", "path,dog,cat\na.png,1,1\n", "test", r"test.csv: its class columns .* differ"),
        ("path,cat,dog\na.png,1,1\nb.png,0,0\n", None, "train", r"train.csv: line 3 \(b.png\) has no labels"),
    ],
)
def test_csv_kind_errors_name_file_line_and_column(
    tmp_path: Path, train: str, test: str | None, split: str, match: str
) -> None:
    root = _csv_tree(tmp_path, train, test)
    with pytest.raises(DatasetFileError, match=match):
        build_image_dataset("multilabel-csv", root, split, None)


def _nuswide_tree(root: Path, labels: dict[str, list[str]]) -> Path:
    """Three concepts, three training images (Windows separators in the list, as the release has them)."""
    (root / "Concepts81.txt").write_text("sky\nwater\nanimal\n")
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "TrainImagelist.txt").write_text("actor\\1.jpg\nactor\\2.jpg\nbeach\\3.jpg\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("beach\\4.jpg\n")
    folder = root / "Groundtruth" / "TrainTestLabels"
    folder.mkdir(parents=True)
    for concept, rows in labels.items():
        (folder / f"Labels_{concept}_Train.txt").write_text("".join(f"{r}\n" for r in rows))
        (folder / f"Labels_{concept}_Test.txt").write_text("1\n")
    for name in ("actor/1", "actor/2", "beach/3", "beach/4"):
        _image(root / "Flickr" / f"{name}.jpg")
    return root


def test_nuswide_reads_the_release_layout(tmp_path: Path) -> None:
    root = _nuswide_tree(tmp_path, {"sky": ["1", "0", "1"], "water": ["0", "1", "1"], "animal": ["1", "0", "0"]})
    dataset = build_image_dataset("nuswide", root, "train", None)
    assert dataset.classes == ["sky", "water", "animal"] and _labels(dataset) == [(0, 2), (1,), (0, 1)]
    assert [p.relative_to(root).as_posix() for p, _ in dataset.samples] == [
        "Flickr/actor/1.jpg", "Flickr/actor/2.jpg", "Flickr/beach/3.jpg"]  # fmt: skip
    assert _labels(build_image_dataset("nuswide", root, "test", None)) == [(0, 1, 2)]
    assert dataset[0][1].tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("water", "match"),
    [
        (["0", "1"], r"Labels_water_Train.txt: 2 rows, but .*TrainImagelist.txt lists 3 images"),
        (["0", "x", "1"], r"Labels_water_Train.txt:2: 'x'; expected 0 or 1"),
        (["0", "0", "0"], r"image 2 \(actor/2.jpg\) has no labels"),
    ],
)
def test_nuswide_errors_name_the_label_file(tmp_path: Path, water: list[str], match: str) -> None:
    root = _nuswide_tree(tmp_path, {"sky": ["1", "0", "1"], "water": water, "animal": ["1", "0", "0"]})
    with pytest.raises(DatasetFileError, match=match):
        build_image_dataset("nuswide", root, "train", None)


def test_nuswide_missing_label_file_shows_the_layout(tmp_path: Path) -> None:
    root = _nuswide_tree(tmp_path, {"sky": ["1", "0", "1"], "water": ["0", "1", "1"]})
    with pytest.raises(FileNotFoundError, match=r"Labels_animal_Train.txt not found(.|\n)*expected layout"):
        build_image_dataset("nuswide", root, "train", None)


def _coco_tree(root: Path, annotations: list[dict[str, int]]) -> Path:
    """Category ids 1, 3, 7 (COCO's ids have gaps), three images, the third without annotations."""
    data = {
        "images": [{"id": 10, "file_name": "x.jpg"}, {"id": 5, "file_name": "y.jpg"}, {"id": 20, "file_name": "z.jpg"}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    for part in ("train2014", "val2014"):
        (root / "annotations" / f"instances_{part}.json").write_text(json.dumps(data))
        for name in ("x", "y", "z"):
            _image(root / part / f"{name}.jpg")
    return root


def test_coco_reads_instances_json(tmp_path: Path) -> None:
    annotations = [{"id": 1, "image_id": 10, "category_id": 7}, {"id": 2, "image_id": 10, "category_id": 7},
                   {"id": 3, "image_id": 5, "category_id": 1}, {"id": 4, "image_id": 10, "category_id": 3}]  # fmt: skip
    root = _coco_tree(tmp_path, annotations)
    with pytest.raises(DatasetFileError, match=r"image id 20 \(z.jpg\) has no labels"):
        build_image_dataset("coco", root, "train", None)
    dataset = build_image_dataset("coco", root, "train", None, empty_labels="drop")
    assert dataset.classes == ["person", "car", "dog"]  # category id order
    assert _labels(dataset) == [(0,), (1, 2)]  # image ids 5, 10 (two dog boxes are one label)
    assert [p.name for p, _ in dataset.samples] == ["y.jpg", "x.jpg"]
    test = build_image_dataset("coco", root, "test", None, empty_labels="keep")
    assert test.samples[0][0].parent.name == "val2014" and _labels(test)[-1] == ()


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        ({"id": 9, "image_id": 10, "category_id": 2}, r"annotation 9 has category_id 2, which is not among"),
        ({"id": 9, "image_id": 99, "category_id": 1}, r"annotation 9 refers to image_id 99"),
        ({"id": 9, "image_id": 10}, r"an entry lacks a field"),
    ],
)
def test_coco_errors_name_the_annotation(tmp_path: Path, annotation: dict[str, int], match: str) -> None:
    root = _coco_tree(tmp_path, [annotation])
    with pytest.raises(DatasetFileError, match=match):
        build_image_dataset("coco", root, "train", None, empty_labels="keep")


def test_unknown_empty_label_policy_is_refused(tmp_path: Path) -> None:
    root = _list_tree(tmp_path, "img/a.png cat,dog,bird\n")
    with pytest.raises(ValueError, match=r"empty_labels must be one of \['error', 'keep', 'drop'\], got 'skip'"):
        build_image_dataset("multilabel-list", root, "train", None, empty_labels="skip")


def test_digits_multilabel_labels_are_the_digits_shown() -> None:
    train = build_image_dataset("digits-multilabel", None, "train", None, num_samples=40, max_digits=3)
    again = build_image_dataset("digits-multilabel", None, "train", None, num_samples=40, max_digits=3)
    test = build_image_dataset("digits-multilabel", None, "test", None, num_samples=40, max_digits=3)
    assert _labels(train) == _labels(again) and _labels(train) != _labels(test)
    for index in range(len(train)):
        image, target = train[index]
        cells = image[0].reshape(2, 16, 2, 16).permute(0, 2, 1, 3).reshape(4, -1)  # (4 cells, 256 pixels)
        drawn = int((cells.amax(dim=1) > 0).sum())
        assert image.shape == (1, 32, 32) and 1 <= int(target.sum()) <= drawn <= 3


# ---------------------------------------------------------------------------------------------------------------
# A run end to end on the miniature


TRAIN = [
    "train", "--model.backbone", "vit_shapes_patch8_32", "--model.checkpoint", "timm", "--model.method.bottleneck",
    "8", "--data.dataset", "digits-multilabel", "--data.options", "{num_samples: 160}", "--data.num_workers", "0",
    "--optim.epochs", "2", "--optim.warmup_epochs", "0", "--optim.batch_size", "32", "--optim.blr", "1.0",
    "--optim.precision", "fp32", "--run.device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multilabel") / "run"
    assert main([*TRAIN, "--run.output_dir", str(out)]) == 0
    return out


def test_training_scores_map_selects_by_it_and_records_a_multi_label_adapter(trained: Path) -> None:
    test = json.loads((trained / "test.json").read_text())
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert test["task"] == "multi-label" and test["n"] == 160 and len(test["ap"]) == 10
    best = max(records, key=lambda r: r["val_map"])
    assert test["epoch"] == best["epoch"] and test["val_map"] == best["val_map"]
    assert {"val_map", "val_of1", "val_cf1", "val_loss"} <= set(records[0]) and "val_acc1" not in records[0]
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert config["multi_label"] is True and config["classes"] == [str(d) for d in range(10)]


def test_eval_reproduces_the_test_scores(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--adapter", str(trained / "adapter")]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    test = json.loads((trained / "test.json").read_text())
    assert scores["map"] == pytest.approx(test["map"], abs=1e-9) and scores["of1"] == pytest.approx(test["of1"])


def test_eval_refuses_a_single_label_dataset_for_a_multi_label_adapter(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--adapter", str(trained / "adapter"), "--data.dataset", "digits"]) == 2
    assert "trained for a multi-label task but digits is single-label" in capsys.readouterr().err


def test_predict_prints_the_classes_above_the_threshold(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adaptformer.inference.evaluate import load_trained_model, predict_files

    image = build_image_dataset("digits-multilabel", None, "test", None, num_samples=1)[0][0]
    path = tmp_path / "digits.png"
    Image.fromarray(image[0].numpy()).save(path)
    model, _ = load_trained_model(trained / "adapter")
    from adaptformer.data import build_image_transform
    from adaptformer.preprocessing import Preprocessing

    with torch.no_grad():
        x = build_image_transform(Preprocessing.from_model(model), train=False)(Image.open(path).convert("RGB"))
        probabilities = torch.sigmoid(model(x[None]))[0]
    for threshold in (0.3, 0.6):
        assert main(["predict", "--adapter", str(trained / "adapter"), "--threshold", str(threshold), "--json",
                     str(path)]) == 0  # fmt: skip
        top = json.loads(capsys.readouterr().out.strip())["top"]
        expected = sorted((int(i) for i in torch.nonzero(probabilities >= threshold)), key=lambda i: -probabilities[i])
        assert [t["index"] for t in top] == expected
        assert all(t["prob"] == pytest.approx(float(probabilities[t["index"]]), abs=1e-6) for t in top)
    assert predict_files(model, [path], threshold=0.999)[0].top == ()  # nothing that sure: no class, no error


def test_threshold_is_refused_for_a_single_label_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptformer import create_model
    from adaptformer.saving import save_adapter

    adapter = save_adapter(
        create_model("vit_shapes_patch8_32", 3, checkpoint="timm"), tmp_path / "adapter", ["a", "b", "c"]
    )
    _image(tmp_path / "x.png")
    assert main(["predict", "--adapter", str(adapter), "--threshold", "0.5", str(tmp_path / "x.png")]) == 2
    assert "--threshold 0.5 applies to multi-label adapters" in capsys.readouterr().err


def test_resume_after_a_stop_gives_the_uninterrupted_run(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    assert main([*TRAIN, "--run.output_dir", str(out), "--run.stop_after_steps", "6"]) == 0
    assert not (out / "test.json").exists()
    assert main([*TRAIN, "--run.output_dir", str(out), "--run.resume", "true"]) == 0
    resumed, whole = (json.loads((d / "test.json").read_text()) for d in (out, trained))
    assert resumed["map"] == pytest.approx(whole["map"], abs=1e-6) and resumed["epoch"] == whole["epoch"]


def test_label_smoothing_is_refused_for_a_multi_label_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TRAIN, "--run.output_dir", str(tmp_path / "r"), "--optim.label_smoothing", "0.1"]) == 2
    assert "optim.label_smoothing 0.1 applies to single-label tasks" in capsys.readouterr().err


def test_two_process_eval_scores_every_image_once(trained: Path) -> None:
    """Under torchrun each process scores its shard; the scores are gathered and mAP computed once, over 51 images
    (odd: a padding sampler would duplicate one)."""
    flags = ["eval", "--adapter", str(trained / "adapter"), "--data.options", "{num_samples: 51}",
             "--batch-size", "8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "adaptformer.cli", *flags]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    single = subprocess.run([sys.executable, "-m", "adaptformer.cli", *flags], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads(single.stdout.strip().splitlines()[-1])
    assert len(lines) == 1 and lines[0]["n"] == alone["n"] == 51
    for key in ("map", "of1", "cf1"):
        assert lines[0][key] == pytest.approx(alone[key], abs=1e-6)


def test_prepare_writes_digits_multilabel_as_a_list_that_reads_back(tmp_path: Path) -> None:
    from adaptformer.data.builtin_files import write_builtin_dataset

    written = write_builtin_dataset("digits-multilabel", tmp_path / "out", {"num_samples": 40})
    assert written["dataset"] == "multilabel-list" and written["samples"] == {"train": 40, "test": 40}
    for split in ("train", "test"):
        files = build_image_dataset("multilabel-list", tmp_path / "out", split, None)
        built = build_image_dataset("digits-multilabel", None, split, None, num_samples=40)
        assert files.classes == built.classes and _labels(files) == _labels(built)
        for index in (0, 39):
            rgb, gray = files[index][0], built[index][0]  # the PNG is grayscale, read back as RGB
            assert torch.equal(rgb, gray.expand(3, -1, -1))
