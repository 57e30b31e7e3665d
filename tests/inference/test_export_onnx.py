"""``adaptformer export --format onnx``: per method (and for a video backbone) the ONNX file computes PyTorch's logits
in ONNX Runtime, also in a process where adaptformer cannot be imported; the sidecar; refusing to overwrite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.inference.onnx_alone import RUN_ALONE
from tests.training_step import move_trainable

from adaptformer import AdapterPlusConfig, LoRAConfig, create_model, save_adapter
from adaptformer.cli import main
from adaptformer.saving import create_model_from_adapter

NAME = "vit_shapes_patch8_32"
VIDEO_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}

# ONNX Runtime alone: the file and numpy, with adaptformer made unimportable


def _adapter(tmp_path: Path, method, name: str = NAME, classes: int = 6, **kwargs) -> Path:
    torch.manual_seed(0)
    checkpoint = "timm" if name == NAME else None
    model = move_trainable(
        create_model(
            name, classes, method=method, checkpoint=checkpoint, init_seed=None if checkpoint else 0, **kwargs
        ),
        0.2,
    )
    return save_adapter(model.eval(), tmp_path / "run" / "adapter", classes=[f"c{i}" for i in range(classes)])


@pytest.mark.parametrize(
    "method",
    [
        "adaptformer",
        "linear",
        "vpt",
        LoRAConfig(targets=("q", "v", "o")),
        LoRAConfig(targets=("qkv",)),
        AdapterPlusConfig(bottleneck=4),
        "full",
    ],
    ids=["adaptformer", "linear", "vpt", "lora", "lora_fused_qkv", "adapter_plus", "full"],
)
def test_the_onnx_file_computes_pytorchs_logits_without_adaptformer(tmp_path: Path, method, capsys) -> None:
    adapter = _adapter(tmp_path, method)
    assert main(["export", "--adapter", str(adapter), "--format", "onnx"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = tmp_path / "run" / "model.onnx"
    assert report["onnx"] == str(path) and report["max_abs_diff"] <= 1e-4 and report["checked_batches"] == [2, 3]
    meta = json.loads((tmp_path / "run" / "model.onnx.json").read_text())
    assert meta["classes"] == [f"c{i}" for i in range(6)] and meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["preprocessing"]["input_size"] == [3, 32, 32] and len(meta["preprocessing"]["mean"]) == 3

    x = torch.randn(4, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    command = [sys.executable, "-c", RUN_ALONE, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = create_model_from_adapter(adapter).eval()(x).numpy()
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - expected).max() <= 1e-4 and (got.argmax(1) == expected.argmax(1)).all()


def test_a_video_adapter_exports_with_clip_input(tmp_path: Path, capsys) -> None:
    adapter = _adapter(tmp_path, "adaptformer", "video_vit_base_patch16_224", 3, **VIDEO_TINY)
    out = tmp_path / "clips.onnx"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["input_shape"] == ["batch", 3, 4, 32, 32] and report["max_abs_diff"] <= 1e-4
    assert json.loads(out.with_name("clips.onnx.json").read_text())["input"]["layout"] == "NCTHW"


def test_an_existing_file_is_replaced_only_when_asked(tmp_path: Path, capsys) -> None:
    adapter = _adapter(tmp_path, "linear")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"someone's file")
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2
    assert f"{out} exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"someone's file"
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] != b"some" and not list(tmp_path.glob(".m.onnx.*.tmp"))


def test_a_file_that_disagrees_with_pytorch_is_not_kept(tmp_path: Path, capsys, monkeypatch) -> None:
    import onnxruntime

    class Wrong(onnxruntime.InferenceSession):  # an exporter bug, simulated: logits off by 0.01
        def run(self, *args, **kwargs):
            return [y + 0.01 for y in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Wrong)
    adapter = _adapter(tmp_path, "adaptformer")
    out = tmp_path / "m.onnx"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2
    assert "max-abs logit difference 0.01 (tolerance 0.0001); nothing was written" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("m.onnx.json").exists() and not list(tmp_path.glob(".m.onnx*"))


@pytest.mark.parametrize("version", ["2.4.1+cu121", "2.4.0", "1.13.1"])
def test_export_needs_a_torch_with_the_dynamo_exporter(version: str) -> None:
    from adaptformer.errors import MissingDependencyError
    from adaptformer.inference.export import require_onnx

    expected = rf"ONNX export needs torch >= 2\.5 .* this is torch {re.escape(version)}"
    with pytest.raises(MissingDependencyError, match=expected):
        require_onnx(version)
    assert require_onnx("2.5.0") is require_onnx("2.14.1+cu130")  # the onnxruntime module


def test_export_without_the_extra_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from adaptformer.errors import MissingDependencyError
    from adaptformer.inference.export import require_onnx

    real_import = builtins.__import__

    def without_onnxscript(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'", name="onnxscript")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxscript)
    with pytest.raises(MissingDependencyError, match=r"needs onnxscript, which is not installed: pip install"):
        require_onnx()
