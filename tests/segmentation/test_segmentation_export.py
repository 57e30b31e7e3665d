"""``adaptformer export`` of a segmentation adapter: ONNX Runtime computes PyTorch's (B, K, H, W) logits within the
classification export's tolerance (1e-4), also where adaptformer cannot be imported; the sidecar names the output's
shape and the task. Every feature path exports: timm's ViT and Swin (``forward_intermediates``) and torchvision's
ViT (forward hooks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from tests.conftest import SWIN, VIT
from tests.inference.onnx_alone import RUN_ALONE
from tests.segmentation.tiny_segmenters import CLASSES, TV_VIT, tiny_segmenter
from tests.training_step import move_trainable

from adaptformer import save_adapter
from adaptformer.cli import main
from adaptformer.inference.export import export_onnx
from adaptformer.segmentation import SegmentationModel, load_segmentation_model


def _trained(name: str, method: str, head: str) -> SegmentationModel:
    model = move_trainable(tiny_segmenter(name, method, head), 0.2).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # decode-head BatchNorm statistics off their init
    return model.eval()


def test_the_onnx_file_computes_pytorchs_logits_without_adaptformer(tmp_path: Path, capsys) -> None:
    adapter = save_adapter(_trained(VIT, "lora", "upernet"), tmp_path / "run" / "adapter", classes=["a", "b", "c"])
    assert main(["export", "--adapter", str(adapter)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = tmp_path / "run" / "model.onnx"
    assert report["onnx"] == str(path) and report["max_abs_diff"] <= 1e-4 and report["checked_batches"] == [2, 3]
    meta = json.loads(path.with_name("model.onnx.json").read_text())
    assert meta["output"]["shape"] == ["batch", CLASSES, 32, 32] and meta["task"]["head"] == "upernet"
    assert meta["input"]["shape"] == ["batch", 3, 32, 32] and meta["classes"] == ["a", "b", "c"]

    x = torch.randn(4, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    command = [sys.executable, "-c", RUN_ALONE, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = load_segmentation_model(adapter)(x).numpy()
    got = np.load(tmp_path / "y.npy")
    assert got.shape == (4, CLASSES, 32, 32) and np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("name", "method", "head"), [(SWIN, "adaptformer", "linear"), (TV_VIT, "adapter_plus", "linear")]
)
def test_every_feature_path_exports(tmp_path: Path, name: str, method: str, head: str) -> None:
    model = _trained(name, method, head)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    report = export_onnx(model, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() <= 1e-4
