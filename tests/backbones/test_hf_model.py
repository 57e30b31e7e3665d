"""An ``hf:<folder>`` backbone (:class:`adaptformer.backbones.hf.model.HFBackbone`) through the library's modes as a
timm backbone goes through them: the parameter report, a training step that moves only what the method trains, an
adapter saved and loaded back onto a fresh build of the folder, activation checkpointing, the command line (train,
eval, predict, params, inspect, export to ONNX) and a multi-task model whose mixed batch gives each task its own
model's logits (and its ONNX export)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.hf_folders import inputs, write_hf_model
from tests.training_step import FP32_TOL, assert_same_step, move_trainable, train_step

from adaptformer import (
    AdaptFormerConfig,
    LoRAConfig,
    MultiTaskModel,
    UnsupportedModelError,
    VPTConfig,
    create_model,
    parameter_report,
    save_adapter,
)
from adaptformer.cli import main
from adaptformer.saving import create_model_from_adapter
from adaptformer.speed.apply import set_grad_checkpointing


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    for kind in ("dinov2", "swin", "videomae"):
        write_hf_model(kind, root / kind)
    return {kind: root / kind for kind in ("dinov2", "swin", "videomae")}


@pytest.mark.parametrize(
    ("kind", "method", "trained"),
    [
        # 2 layers of width 32, bottleneck 8: (32 * 8 + 8) + (8 * 32 + 32) = 552 each
        ("dinov2", AdaptFormerConfig(bottleneck=8), 2 * 552),
        # Swin: 2 layers of width 16 (4 * 16 + 4 + 16 * 4 + 16 each), 2 of width 32 (4 * 32 + 4 + 32 * 4 + 32)
        ("swin", AdaptFormerConfig(bottleneck=4), 2 * 148 + 2 * 292),
        # LoRA rank 4 on q and v of 2 layers of width 32: 2 * 2 * (4 * 32 + 32 * 4)
        ("videomae", LoRAConfig(rank=4), 2 * 2 * 256),
    ],
)
def test_parameter_report_and_a_training_step_move_only_what_the_method_trains(
    folders: dict[str, Path], kind: str, method: object, trained: int
) -> None:
    model = create_model(f"hf:{folders[kind]}", 5, method=method, head="linear")
    report = parameter_report(model).to_dict()["groups"]
    method_group = "lora" if isinstance(method, LoRAConfig) else "adapters"
    head = model.num_features * 5 + 5 + (2 * model.num_features if model.fc_norm is not None else 0)
    assert report[method_group] == {"trainable": trained, "total": trained}
    assert report["head"]["trainable"] == report["head"]["total"] == head
    assert report["backbone"]["trainable"] == 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    move_trainable(model)  # zero-initialised up-projections would otherwise hide the adapters' gradients
    model.train()
    F.cross_entropy(model(inputs(kind, batch=4)), torch.arange(4)).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved == trainable


def test_an_adapter_saved_and_loaded_onto_a_fresh_build_gives_the_same_logits(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    for method in (AdaptFormerConfig(bottleneck=8), LoRAConfig(rank=4), "adapter_plus", "vpt"):
        model = move_trainable(create_model(f"hf:{folders['dinov2']}", 5, method=method)).eval()
        out = tmp_path / type(method).__name__ if not isinstance(method, str) else tmp_path / method
        save_adapter(model, out)
        loaded = create_model_from_adapter(out).eval()
        x = inputs("dinov2")
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), method


@pytest.mark.parametrize("kind", ["dinov2", "swin"])
def test_grad_checkpointing_recomputes_the_adapted_layers_with_the_same_gradients(
    folders: dict[str, Path], kind: str
) -> None:
    plain = move_trainable(create_model(f"hf:{folders[kind]}", 5, method="adaptformer")).train()
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed, True)
    assert checkpointed.model.is_activation_checkpointing
    x = inputs(kind, batch=4)
    assert_same_step(train_step(plain, x), train_step(checkpointed, x), FP32_TOL, every_gradient_nonzero=True)


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_the_command_line_trains_evaluates_predicts_inspects_and_exports(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = ["--data.dataset", "synthetic", "--data.options", "{num_samples: 8}", "--data.num_workers", "0"]
    run = ["--optim.epochs", "1", "--optim.warmup_epochs", "0", "--optim.batch_size", "4", "--data.val_split", "0",
           "--run.select", "last", "--run.output_dir", "run", "--model.method.bottleneck", "8"]  # fmt: skip
    summary = json.loads(_cli(["train", "--model.backbone", f"hf:{folders['dinov2']}", *data, *run], capsys))
    evaluated = json.loads(_cli(["eval", "--adapter", "run/adapter", *data], capsys).strip().splitlines()[-1])
    assert evaluated["acc1"] == summary["test"]["acc1"] and evaluated["n"] == 8
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save("grey.png")
    assert _cli(["predict", "--adapter", "run/adapter", "grey.png"], capsys).startswith("grey.png: class_")
    report = _cli(["params", "--model.backbone", f"hf:{folders['dinov2']}", "--num-classes", "10"], capsys)
    assert "adapters" in report and "24,064" in report  # the folder's backbone, counted from its config alone
    inspected = json.loads(_cli(["inspect", "--adapter", "run/adapter", *data, "--num-samples", "4"], capsys))
    assert set(inspected["adapter_residual"]) == {"0", "1"}
    exported = json.loads(_cli(["export", "--adapter", "run/adapter", "--format", "onnx"], capsys))
    assert exported["max_abs_diff"] < 1e-4 and Path(exported["onnx"]).is_file()


def test_a_multitask_model_gives_each_task_its_own_models_logits(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    methods = {
        "af8": AdaptFormerConfig(bottleneck=8),
        "lora": LoRAConfig(rank=4),
        "af4": AdaptFormerConfig(bottleneck=4),
    }
    models = {}
    for name, method in methods.items():
        models[name] = move_trainable(create_model(f"hf:{folders['dinov2']}", 3, method=method)).eval()
        save_adapter(models[name], tmp_path / name)
    multi = MultiTaskModel.from_adapters([tmp_path / n for n in methods]).eval()
    x = inputs("dinov2", batch=6)
    task_ids = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        out = multi(x, task_ids)
        for k, name in enumerate(methods):
            own = models[name](x[task_ids == k])
            torch.testing.assert_close(out[name], own, atol=1e-5, rtol=1e-5)  # batched per task: another sum order
    adapters = [arg for name in methods for arg in ("--adapter", f"{name}={tmp_path / name}")]
    onnx = tmp_path / "multi.onnx"
    exported = json.loads(_cli(["export", *adapters, "--format", "onnx", "--out", str(onnx)], capsys))
    assert exported["tasks"] == list(methods) and exported["max_abs_diff"] < 1e-4 and onnx.is_file()


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_vpt_tasks_share_a_mixed_batch_on_transformers_layers(tmp_path: Path, kind: str) -> None:
    """Deep and shallow prompts of different counts beside LoRA, AdaptFormer and a probe: each sample's logits are its
    own model's (the prompt slots a row does not use masked in every layer's attention)."""
    write_hf_model(kind, tmp_path / kind)
    methods = {
        "deep2": VPTConfig(num_tokens=2),
        "shallow3": VPTConfig(num_tokens=3, deep=False),
        "lora": LoRAConfig(rank=4),
        "af8": AdaptFormerConfig(bottleneck=8),
        "probe": "linear",
    }
    models = {}
    for seed, (name, method) in enumerate(methods.items()):
        torch.manual_seed(seed)
        models[name] = move_trainable(create_model(f"hf:{tmp_path / kind}", 3, method=method), 0.3).eval()
        save_adapter(models[name], tmp_path / name)
    multi = MultiTaskModel.from_adapters([tmp_path / n for n in methods]).eval()
    task_ids = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 1])
    x = inputs(kind, batch=len(task_ids))
    with torch.no_grad():
        out = multi(x, task_ids)
        for k, name in enumerate(methods):
            torch.testing.assert_close(out[name], models[name](x[task_ids == k]), atol=1e-5, rtol=0)
        alone = multi(x[:1], task_ids[:1])["deep2"]  # one task filling every slot: no mask
        torch.testing.assert_close(alone, models["deep2"](x[:1]), atol=1e-5, rtol=0)


def test_vpt_in_a_mixed_batch_is_refused_on_a_layer_without_an_attention_mask(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    save_adapter(create_model(f"hf:{folders['videomae']}", 3, method="vpt"), tmp_path / "vpt")
    with pytest.raises(UnsupportedModelError, match="VideoMAELayer takes no attention mask"):
        MultiTaskModel.from_adapters([tmp_path / "vpt"])
