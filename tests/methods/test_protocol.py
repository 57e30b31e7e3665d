"""The method protocol (:mod:`adaptformer.methods.protocol`): a method defined here, outside the package, that installs
a module in the blocks it adapts and declares its protocol, registered with one call, also runs in a mixed-task batch
beside AdaptFormer tasks, exports to ONNX and is inspected, with no change inside the package. A method that declares
nothing is refused by the multi-task model with the default reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from tests.inference.onnx_alone import RUN_ALONE
from tests.training_step import move_trainable
from timm.models.vision_transformer import Block

from adaptformer import AdaptFormerConfig, Method, MethodConfig, UnsupportedModelError, create_model, save_adapter
from adaptformer.backbones.families import block_width, chosen_blocks, install
from adaptformer.cli import main
from adaptformer.inference.inspection import adapters_off, inspect_adapter, trace_features
from adaptformer.inference.multitask import MultiTaskModel, Router
from adaptformer.methods import register_method, unregister_method
from adaptformer.methods.protocol import BlockModule, Measurement
from adaptformer.saving import TrainingRecord, create_model_from_adapter

NAME = "vit_shapes_patch8_32"  # the shipped tiny backbone (6 blocks, width 128), weights from the package
ATOL = 1e-5  # fp32: only the batched products' rounding differs between a mixed batch and one task's own batch


# ------------------------------------------------------------------------------ the outside method: scale and shift


@dataclass(frozen=True)
class ScaleShiftConfig(MethodConfig):
    """A learned per-channel scale and shift of the chosen blocks' MLP branch (in the spirit of SSF, Lian et al.,
    NeurIPS 2022): a method this package does not ship.

    Args:
        layers: the blocks that get one, as indices in forward order; null: every block.
    """

    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", None if self.layers is None else tuple(self.layers))


class ScaleShift(nn.Module):
    """``x + h * scale + shift``: the block's feed-forward half with the MLP branch h scaled and shifted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x + (h * self.scale + self.shift)


class ScaleShiftBlock(Block):
    """timm ``vision_transformer.Block`` whose MLP branch goes through its ``scale_shift``."""

    scale_shift: ScaleShift

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return self.scale_shift(x, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


def _attach(model: nn.Module, config: ScaleShiftConfig) -> nn.Module:
    _, blocks, wanted = chosen_blocks(model, ("vit",), config.layers, what="scale-shift")
    for index in wanted:
        block = blocks[index][1]
        install(block, "scale_shift", ScaleShift(block_width(block)), ScaleShiftBlock)
    return model


def _modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ScaleShift)]


def _without(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return x + h


def _measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> Measurement:
    x, h = inputs
    return Measurement(output=h * module.scale + module.shift - h, residual=x, mlp=h, form="on the MLP branch")


SCALE_SHIFT = Method(
    "scaleshift",
    ScaleShiftConfig,
    _attach,
    _modules,
    summary="per-channel scale and shift of the MLP branch",
    group="scale_shift",
    title="ScaleShift",
    block_modules=(BlockModule("scale_shift", bypass=_without, measure=_measure),),
    batch_refusal=None,
)


@dataclass(frozen=True)
class SilentConfig(MethodConfig):
    """A method that says nothing about mixed batches (the protocol's defaults)."""


SILENT = Method("silent", SilentConfig, lambda model, config: model, lambda model: [])


@pytest.fixture(scope="module")
def registered() -> Iterator[Method]:
    methods = [register_method(SCALE_SHIFT), register_method(SILENT)]
    yield methods[0]
    for method in methods:
        unregister_method(method.name)


def _adapter(root: Path, name: str, method: MethodConfig | str, classes: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = move_trainable(create_model(NAME, classes, method=method, checkpoint="timm"), 0.2).eval()
    return save_adapter(model, root / name / "adapter", classes=[f"{name}{i}" for i in range(classes)],
                        training=TrainingRecord(dataset="digits"))  # fmt: skip


@pytest.fixture(scope="module")
def adapters(registered: Method, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("protocol")
    return {
        "ss_a": _adapter(root, "ss_a", ScaleShiftConfig(layers=(0, 1, 2)), 4, 0),
        "ss_b": _adapter(root, "ss_b", ScaleShiftConfig(layers=(1, 2)), 3, 1),
        "af": _adapter(root, "af", AdaptFormerConfig(bottleneck=8, layers=(3, 4, 5)), 5, 2),
        "af_all": _adapter(root, "af_all", AdaptFormerConfig(bottleneck=8), 5, 3),
        "silent": _adapter(root, "silent", SilentConfig(), 2, 4),
    }


# ------------------------------------------------------------------------------------------------ the modes


@pytest.mark.parametrize("seed", [0, 1])
def test_an_outside_method_shares_a_mixed_batch_with_adaptformer(adapters: dict[str, Path], seed: int) -> None:
    names = ("ss_a", "af", "ss_b")
    multi = MultiTaskModel.from_adapters([adapters[n] for n in names], list(names)).eval()
    assert isinstance(multi.trunk.blocks[0].scale_shift, Router) and isinstance(multi.trunk.blocks[4].adaptmlp, Router)
    assert sorted(multi.routers["blocks/1/scale_shift"].tasks) == ["ss_a", "ss_b"]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(names), (12,), generator=generator)
    ids[:3] = torch.tensor([0, 1, 2])  # every task has rows
    x = torch.randn(12, 3, 32, 32, generator=generator)
    with torch.no_grad():
        out = multi(x, ids)
        for k, name in enumerate(names):
            rows = (ids == k).nonzero().squeeze(1)
            expected = create_model_from_adapter(adapters[name]).eval()(x[rows])  # the task's own model
            torch.testing.assert_close(out[name], expected, atol=ATOL, rtol=0)
    assert multi.task("ss_b").method == "scaleshift"


def test_an_outside_method_and_adaptformer_on_the_same_block_are_refused_by_title(adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters([adapters["ss_a"]])
    with pytest.raises(UnsupportedModelError, match=r"block blocks\.0 .*ScaleShift and AdaptFormer tasks cannot"):
        multi.add_task("af_all", adapters["af_all"])
    assert multi.tasks == ("ss_a",) and all(list(r.tasks) == ["ss_a"] for r in multi.routers.values())


def test_a_method_that_declares_nothing_cannot_join_a_mixed_batch(adapters: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedModelError, match=r"method 'silent' cannot share .*declares no mixed-batch"):
        MultiTaskModel.from_adapters([adapters["af"], adapters["silent"]])


def test_an_outside_method_exports_to_onnx(adapters: dict[str, Path], tmp_path: Path, capsys) -> None:
    path = tmp_path / "scale_shift.onnx"
    assert main(["export", "--adapter", str(adapters["ss_a"]), "--out", str(path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert report["max_abs_diff"] <= 1e-4 and sidecar["method"] == "scaleshift"
    x = torch.randn(3, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    command = [sys.executable, "-c", RUN_ALONE, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # ONNX Runtime without adaptformer
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = create_model_from_adapter(adapters["ss_a"]).eval()(x).numpy()
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - expected).max() <= 1e-4 and (got.argmax(1) == expected.argmax(1)).all()


def test_inspect_reports_an_outside_methods_measurement(adapters: dict[str, Path]) -> None:
    model = create_model_from_adapter(adapters["ss_b"]).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    report = inspect_adapter(model, [images], device="cpu")
    assert report.method == "ScaleShift" and report.form == "on the MLP branch"
    assert [r.block for r in report.adapters] == [1, 2] and len(report.drift) == 6
    seen: dict[str, torch.Tensor] = {}
    block = model.blocks[1]
    handle = block.scale_shift.register_forward_pre_hook(lambda m, args: seen.update(x=args[0], h=args[1]))
    with torch.no_grad():
        model(images)
    handle.remove()
    a = seen["h"] * block.scale_shift.scale + block.scale_shift.shift - seen["h"]  # what it adds beyond h
    a_norm, h_norm, x_norm = a.norm(dim=-1), seen["h"].norm(dim=-1), seen["x"].norm(dim=-1)
    row = report.adapters[0]
    assert row.adapter_mlp == pytest.approx((a_norm.square().mean() / h_norm.square().mean()).sqrt().item(), rel=1e-5)
    assert row.adapter_mlp_token_mean == pytest.approx((a_norm / h_norm).mean().item(), rel=1e-5)
    assert row.adapter_residual == pytest.approx((a_norm.square().mean() / x_norm.square().mean()).sqrt().item(),
                                                 rel=1e-5)  # fmt: skip
    assert [d.relative_l2 == 0.0 for d in report.drift] == [True, False, False, False, False, False]
    with adapters_off(model):  # the bypass is the plain block: the frozen backbone's features
        frozen = trace_features(model, images)
    plain = create_model(NAME, 3, method="linear", checkpoint="timm").eval()
    torch.testing.assert_close(frozen.blocks[-1], trace_features(plain, images).blocks[-1], atol=1e-5, rtol=0)


def test_the_inspect_command_takes_an_outside_method(adapters: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "inspect"
    argv = ["inspect", "--adapter", str(adapters["ss_a"]), "--num-samples", "8", "--run.device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(json.loads(capsys.readouterr().out)["adapter_mlp"]) == ["0", "1", "2"]
    assert "ScaleShift (on the MLP branch)" in (out / "inspect.md").read_text()
    assert main([*argv[:2], str(adapters["silent"]), *argv[3:], "--overwrite"]) == 2
    assert "method 'silent', which declares nothing for inspect" in capsys.readouterr().err
