"""``adaptformer export`` with several ``--adapter [NAME=]DIR``: one ONNX graph of a multi-task model whose logits, in
ONNX Runtime, equal PyTorch's per sample for a mixed batch of every method (AdaptFormer, Adapter+, LoRA, VPT deep and
shallow of different prompt counts, linear, full), padded with -inf beyond each task's classes; the sidecar's task
order and class counts; what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.cli import main
from adaptformer.inference.export import ExportError
from adaptformer.inference.export_multitask import export_multitask_onnx
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.methods import AdapterPlusConfig, AdaptFormerConfig, LoRAConfig, VPTConfig

NAME = "vit_shapes_patch8_32"
VIDEO_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
METHODS = {  # run folder -> (method, classes); the heads differ in size
    "af": (AdaptFormerConfig(bottleneck=8, layers=(0, 1, 2)), 5),
    "aplus": (AdapterPlusConfig(bottleneck=4, layers=(3, 4, 5)), 3),
    "lora": (LoRAConfig(rank=2, targets=("q", "v", "o")), 7),
    "vpt": (VPTConfig(num_tokens=3), 2),
    "vpt_shallow": (VPTConfig(num_tokens=1, deep=False), 4),
    "probe": ("linear", 6),
    "full": ("full", 3),
}


def _adapter(root: Path, name: str, method, classes: int, seed: int, backbone: str = NAME, **kwargs) -> Path:
    torch.manual_seed(seed)
    checkpoint = "timm" if backbone == NAME else None
    model = create_model(backbone, classes, method=method, checkpoint=checkpoint,
                         init_seed=None if checkpoint else 0, **kwargs)  # fmt: skip
    return save_adapter(move_trainable(model, 0.2).eval(), root / name / "adapter",
                        classes=[f"{name}{i}" for i in range(classes)])  # fmt: skip


def test_one_graph_of_every_method_computes_each_samples_logits(tmp_path: Path, capsys) -> None:
    dirs = {n: _adapter(tmp_path, n, m, c, k) for k, (n, (m, c)) in enumerate(METHODS.items())}
    # named NAME=DIR, or after the run folder (default_task_name)
    argv = [a for n, d in dirs.items() for a in ("--adapter", f"t_{n}={d}" if n in ("lora", "full") else str(d))]
    out = tmp_path / "tasks.onnx"
    assert main(["export", *argv, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tasks = [f"t_{n}" if n in ("lora", "full") else n for n in METHODS]
    assert report["tasks"] == tasks and report["max_abs_diff"] <= 1e-4 and report["onnx"] == str(out)
    meta = json.loads(out.with_name("tasks.onnx.json").read_text())
    counts = [c for _, c in METHODS.values()]
    assert [(t["name"], t["num_classes"]) for t in meta["tasks"]] == list(zip(tasks, counts, strict=True))
    assert meta["tasks"][2]["method"] == "lora" and meta["tasks"][2]["classes"] == [f"lora{i}" for i in range(7)]
    assert meta["output"]["shape"] == ["batch", 7] and meta["task_input"]["name"] == "task"

    multi = MultiTaskModel.from_adapters(list(dirs.values()), tasks).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(3)
    for size in (17, 2):  # every task, interleaved; and a batch where most tasks have no row
        ids = torch.randint(0, len(tasks), (size,), generator=generator)
        if size > len(tasks):
            ids[torch.randperm(size, generator=generator)[: len(tasks)]] = torch.arange(len(tasks))
        x = torch.randn(size, 3, 32, 32, generator=generator)
        logits, counts = session.run(None, {"input": x.numpy(), "task": ids.numpy()})
        assert logits.shape == (size, 7) and counts.tolist() == [METHODS[list(METHODS)[i]][1] for i in ids]
        with torch.no_grad():
            expected = multi(x, ids)
        for k, name in enumerate(tasks):
            rows = (ids == k).nonzero().squeeze(1).numpy()
            if not len(rows):
                continue
            classes = expected[name].shape[1]
            assert np.abs(logits[rows, :classes] - expected[name].numpy()).max() <= 1e-4, name
            assert np.isneginf(logits[rows, classes:]).all()  # softmax and argmax never pick a padded class


def test_video_tasks_and_a_missing_out_are_refused_by_name(tmp_path: Path, capsys) -> None:
    probe = _adapter(tmp_path, "probe", "linear", 3, 0)
    assert main(["export", "--adapter", str(probe), "--adapter", f"two={probe}"]) == 2
    assert (
        "several --adapter make one multi-task graph: give the file to write with --out FILE" in capsys.readouterr().err
    )
    clips = _adapter(tmp_path, "clips", "linear", 3, 1, "video_vit_base_patch16_224", **VIDEO_TINY)
    multi = MultiTaskModel.from_adapters([clips])
    with pytest.raises(
        ExportError, match=r"task 'clips' \(.*\) classifies video clips; a multi-task graph takes images"
    ):
        export_multitask_onnx(multi, tmp_path / "m.onnx")
    assert not list(tmp_path.glob("*.onnx*"))


def test_one_named_adapter_makes_a_one_task_graph_and_an_existing_file_stays(tmp_path: Path, capsys) -> None:
    probe = _adapter(tmp_path, "probe", "linear", 3, 0)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"someone's file")
    assert main(["export", "--adapter", f"digits={probe}", "--out", str(out)]) == 2
    assert f"{out} exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"someone's file"
    assert main(["export", "--adapter", f"digits={probe}", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == ["digits"]
    assert [t["name"] for t in json.loads(out.with_name("m.onnx.json").read_text())["tasks"]] == ["digits"]
