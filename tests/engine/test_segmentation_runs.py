"""Segmentation through the training engine: ``adaptformer train`` on the offline digits-seg data with a tiny ViT
(linear and UPerNet heads), ``eval`` reproducing the run's test scores from the adapter alone, two processes scoring
what one does, a stopped run resumed to the uninterrupted one, the poly schedule, and the task/head mismatches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptformer.cli import main
from adaptformer.engine.schedule import WarmupCosine

VIT = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
DATA = "{num_samples: 12, image_size: 48}"


def _train_args(out: Path, head: str = "linear", *extra: str) -> list[str]:
    return [
        "train", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY), "--model.head", head,
        "--model.method.bottleneck", "8", "--data.dataset", "digits-seg", "--data.options", DATA,
        "--data.flip", "false", "--data.segmentation.base_size", "48", "--data.val_split", "4",
        "--data.num_workers", "0", "--optim.epochs", "2", "--optim.warmup_epochs", "0", "--optim.batch_size", "4",
        "--optim.eval_batch_size", "4", "--optim.blr", "2.0", "--optim.precision", "fp32", "--optim.schedule", "poly",
        "--run.output_dir", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "run"
    assert main(_train_args(out)) == 0
    return out


def test_a_segmentation_run_reports_miou_and_eval_reproduces_it(trained: Path, capsys) -> None:
    report = json.loads((trained / "test.json").read_text())
    assert report["task"] == "segmentation" and report["n"] == 12
    assert set(report["iou"]) == {"background", *map(str, range(10))}
    assert 0 <= report["miou"] <= 100 and report["pixels"] > 0 and report["skipped"] == 0
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("val_")) for r in rows] == [["val_aacc", "val_macc", "val_miou"]] * 2
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert config["task"]["type"] == "segmentation" and config["training"]["segmentation"]["base_size"] == 48
    capsys.readouterr()
    assert main(["eval", "--adapter", str(trained / "adapter")]) == 0  # dataset, options, base size: recorded
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("miou", "macc", "aacc", "n", "pixels"):
        assert again[key] == pytest.approx(report[key], abs=1e-9), key


def test_two_process_eval_scores_what_one_does(trained: Path, capsys) -> None:
    """torchmetrics sums the confusion matrices of both processes: 7 images (odd, so one process has more)."""
    flags = ["eval", "--adapter", str(trained / "adapter"), "--data.options", "{num_samples: 7, image_size: 48}",
             "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "adaptformer.cli", *flags], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    capsys.readouterr()
    assert main(flags) == 0  # one process: this one
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lines = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["n"] == alone["n"] == 7 and lines[0]["pixels"] == alone["pixels"]
    for key in ("miou", "macc", "aacc"):
        assert lines[0][key] == pytest.approx(alone[key], abs=1e-9), key


def test_a_stopped_upernet_run_resumes_to_the_uninterrupted_one(tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(_train_args(whole, "upernet", "--model.decode.channels", "16")) == 0
    assert main(_train_args(resumed, "upernet", "--model.decode.channels", "16", "--run.stop_after_steps", "2")) == 0
    assert not (resumed / "test.json").exists()
    assert main(_train_args(resumed, "upernet", "--model.decode.channels", "16", "--run.resume", "true")) == 0
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (whole, resumed))
    assert a.keys() == b.keys() and any(k.startswith("decode_head.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    reports = [json.loads((d / "test.json").read_text()) for d in (whole, resumed)]
    assert reports[0]["miou"] == reports[1]["miou"]


def test_the_poly_schedule_decays_linearly_to_min_lr_after_the_warmup() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    poly = WarmupCosine(optimizer, 1.0, 2, 10, 0.1, decay="poly")
    assert [round(poly.lr_at(s), 6) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.55, 0.1]
    squared = WarmupCosine(optimizer, 1.0, 0, 10, 0.0, decay="poly", power=2.0)
    assert squared.lr_at(5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.head", "paper"], "--model.head 'paper' is not a segmentation head; --data.dataset 'digits-seg' is a "
                                    "segmentation dataset: use one of ['linear', 'upernet']"),
        (["--data.crop_scale", "[0.5, 1.0]"], "data.crop_scale do not apply to segmentation datasets"),
        (["--data.segmentation.inference", "tiles"], "data.segmentation.inference"),
        (["--optim.schedule", "step"], "optim.schedule"),
    ],
)  # fmt: skip
def test_segmentation_flags_are_checked(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    args = [a for a in _train_args(tmp_path / "r") if a not in ("--model.head", "linear")]
    assert main([*args, *flags]) == 2
    assert message in capsys.readouterr().err


def test_classification_refuses_segmentation_settings(tmp_path: Path, capsys) -> None:
    base = ["train", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY), "--data.dataset", "synthetic",
            "--run.output_dir", str(tmp_path / "r")]  # fmt: skip
    assert main([*base, "--model.head", "upernet"]) == 2
    assert "model.head 'upernet' is not a classification head" in capsys.readouterr().err
    assert main([*base, "--data.segmentation.eval_flip", "true"]) == 2
    assert "data.segmentation applies to segmentation datasets only" in capsys.readouterr().err


def test_a_segmentation_adapter_is_refused_on_a_classification_dataset(trained: Path, capsys) -> None:
    assert main(["eval", "--adapter", str(trained / "adapter"), "--data.dataset", "synthetic"]) == 2
    assert "synthetic is a classification dataset but the model segments images" in capsys.readouterr().err
