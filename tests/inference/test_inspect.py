"""``adaptformer inspect`` and :mod:`adaptformer.inference.inspection`: adapter/MLP and adapter/residual norm ratios per
adapted block and the class token's drift from the frozen backbone, on the shipped tiny ViT and a tiny video ViT; and
on segmentation models, the per-patch-token drift of their backbone's blocks and of the maps the decode head reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from adaptformer import (
    AdapterPlusConfig,
    AdaptFormerConfig,
    LoRAConfig,
    UnsupportedModelError,
    VPTConfig,
    create_model,
    save_adapter,
)
from adaptformer.cli import main
from adaptformer.data.segmentation.digits import DIGITS_SEG_CLASSES
from adaptformer.inference.inspection import (
    FILES,
    PATCH_TOKENS,
    adapters_off,
    format_markdown,
    inspect_adapter,
    trace_features,
)
from adaptformer.methods import adapter_modules
from adaptformer.saving import TrainingRecord
from adaptformer.segmentation import SegmentationModel, create_segmentation_model, patch_features

NAME = "vit_shapes_patch8_32"  # 6 blocks, with a class token
VIDEO = "video_vit_base_patch16_224"
TINY_VIDEO: dict[str, Any] = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 32, "depth": 2,
                              "num_heads": 2}  # fmt: skip
CONFIGS = {  # every option of AdaptFormerConfig that changes what the adapter reads or adds
    "parallel": {},
    "sequential": {"form": "sequential"},
    "normed_input": {"input": "normed"},
    "learnable_scale": {"scale": "learnable"},
    "norm_in": {"layernorm": "in"},
    "norm_out": {"layernorm": "out"},
}


def _model(method: Any = None, **config: Any) -> nn.Module:
    torch.manual_seed(0)
    method = method if method is not None else AdaptFormerConfig(bottleneck=8, dropout=0.0, **config)
    return create_model(NAME, 10, method=method, checkpoint="timm").eval()


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _set_up_proj(model: nn.Module, block: int) -> None:
    """Known, non-zero up-projection weights (and bias) in one block's adapter."""
    up = model.blocks[block].adaptmlp.up_proj
    with torch.no_grad():
        up.weight.copy_(torch.linspace(-0.5, 0.5, up.weight.numel()).reshape(up.weight.shape))
        up.bias.fill_(0.05)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_at_init_every_ratio_and_drift_is_exactly_zero(config: dict[str, Any]) -> None:
    report = inspect_adapter(_model(**config), [_images()])
    assert [r.block for r in report.adapters] == list(range(6)) and len(report.drift) == 6
    for row in report.adapters:
        assert row.adapter_mlp == row.adapter_mlp_token_mean == row.adapter_residual == 0.0
        assert row.adapter_residual_token_mean == 0.0
    assert all(d.relative_l2 == 0.0 for d in report.drift) and report.pooled.relative_l2 == 0.0
    assert report.feature == "class token" and report.num_samples == 4


def _hand_ratios(model: nn.Module, block: int, x: torch.Tensor) -> tuple[float, float, float]:
    """(adapter/MLP RMS ratio, its per-token mean, adapter/residual RMS ratio) from the submodules called by hand on
    the captured residual stream x'."""
    blk = model.blocks[block]
    captured = {}
    handle = blk.norm2.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        residual = captured["x"]  # (B, N, C)
        h = blk.mlp(blk.norm2(residual))
        adapter = blk.adaptmlp
        read = h if adapter.form == "sequential" else blk.norm2(residual) if adapter.input == "normed" else residual
        a = adapter.branch(read)
    a_norm, h_norm, x_norm = a.norm(dim=-1), h.norm(dim=-1), residual.norm(dim=-1)
    rms = (a_norm.square().mean() / h_norm.square().mean()).sqrt().item()
    return rms, (a_norm / h_norm).mean().item(), (a_norm.square().mean() / x_norm.square().mean()).sqrt().item()


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_ratio_equals_the_hand_computation_and_drift_starts_at_the_block(config: dict[str, Any]) -> None:
    model = _model(**config)
    _set_up_proj(model, 2)
    x = _images()
    report = inspect_adapter(model, [x[:3], (x[3:], torch.zeros(1))])  # batches of tensors or (inputs, labels)
    row = report.adapters[2]
    mlp, mlp_token, residual = _hand_ratios(model, 2, x)
    assert row.adapter_mlp == pytest.approx(mlp, rel=1e-5) and mlp > 0.01
    assert row.adapter_mlp_token_mean == pytest.approx(mlp_token, rel=1e-5)
    assert row.adapter_residual == pytest.approx(residual, rel=1e-5)
    assert all(r.adapter_mlp == 0.0 for r in report.adapters if r.block != 2)
    assert [d.relative_l2 == 0.0 for d in report.drift] == [True, True, False, False, False, False]
    assert all(d.cosine < 1.0 for d in report.drift[2:]) and report.pooled.relative_l2 > 0


def test_frozen_reference_equals_a_linear_probe_model() -> None:
    adapted, linear = _model(), _model("linear")
    for module in adapter_modules(adapted):
        nn.init.normal_(module.up_proj.weight, std=0.2)
    x = _images()
    with adapters_off(adapted):
        frozen = trace_features(adapted, x)
    probe = trace_features(linear, x)
    for ours, theirs in zip((*frozen.blocks, frozen.pooled), (*probe.blocks, probe.pooled), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    moved = trace_features(adapted, x)  # the hooks are gone: the adapters count again
    assert (moved.pooled - probe.pooled).abs().max() > 1e-3
    assert not adapted.blocks[0].adaptmlp._forward_hooks


def test_only_the_chosen_layers_get_rows_every_block_gets_drift() -> None:
    model = _model(form="sequential", layers=[1])
    _set_up_proj(model, 1)
    report = inspect_adapter(model, [_images(8)], num_samples=5, device="cpu")
    assert [r.block for r in report.adapters] == [1] and report.adapters[0].adapter_mlp > 0
    assert [d.block for d in report.drift] == list(range(6)) and report.form == "sequential"
    assert report.drift[0].relative_l2 == 0.0 and report.drift[1].relative_l2 > 0 and report.num_samples == 5
    data = report.to_dict()
    assert len(data["adapters"]) == 1 and len(data["drift"]) == 6 and data["pooled"]["block"] is None


@pytest.mark.parametrize(
    ("method", "name"), [("linear", "linear"), (VPTConfig(num_tokens=2), "vpt"), (LoRAConfig(), "lora")], ids=str
)
def test_other_methods_are_refused_by_name(method: Any, name: str) -> None:
    with pytest.raises(UnsupportedModelError, match=f"AdaptFormer.*method '{name}'"):
        inspect_adapter(_model(method), [_images()])


def test_video_backbone_drift_is_on_the_mean_over_tokens() -> None:
    def video(method: Any) -> nn.Module:
        return create_model(VIDEO, 3, method=method, init_seed=0, **TINY_VIDEO).eval()

    adapted, linear = video(AdaptFormerConfig(bottleneck=4)), video("linear")
    clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    assert inspect_adapter(adapted, [clips]).drift[-1].relative_l2 == 0.0
    nn.init.normal_(adapted.blocks[0].adaptmlp.up_proj.weight, std=0.2)
    report = inspect_adapter(adapted, [clips])
    assert report.feature == "mean over tokens" and [r.block for r in report.adapters] == [0, 1]
    assert report.adapters[0].adapter_mlp > 0 and report.drift[1].relative_l2 > 0
    with adapters_off(adapted):
        frozen = trace_features(adapted, clips)
    torch.testing.assert_close(frozen.blocks[-1], trace_features(linear, clips).blocks[-1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- the command


def _saved(tmp_path: Path, method: Any = None) -> Path:
    model = _model(method)
    if method is None:
        _set_up_proj(model, 3)
    return save_adapter(model, tmp_path / "run" / "adapter", training=TrainingRecord(dataset="digits"))


def test_command_writes_json_markdown_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter, out = _saved(tmp_path), tmp_path / "inspect"
    argv = ["inspect", "--adapter", str(adapter), "--num-samples", "16", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    data = json.loads((out / "inspect.json").read_text())
    assert {"backbone", "form", "num_samples", "feature", "headline", "adapters", "drift", "pooled"} <= set(data)
    assert len(data["adapters"]) == len(data["drift"]) == 6 and data["num_samples"] == 16
    assert data["adapters"][3]["adapter_mlp"] > 0 and data["drift"][2]["relative_l2"] == 0.0
    table = (out / "inspect.md").read_text()
    assert "| block (from 0) | adapter/MLP | adapter/residual | class token relative drift | cosine |" in table
    assert table.count("\n| ") == 2 + 6 + 1  # header and rule, one row per block, the pooled feature
    assert (out / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(argv) == 2  # an existing, non-empty folder
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_command_default_out_is_beside_the_adapter(tmp_path: Path) -> None:
    assert main(["inspect", "--adapter", str(_saved(tmp_path)), "--num-samples", "2", "--run.device", "cpu"]) == 0
    assert (tmp_path / "run" / "inspect" / "inspect.json").is_file()


def test_command_reads_the_adapter_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptformer.saving as saving

    adapter, reads = _saved(tmp_path), []
    read_json = saving._read_json
    monkeypatch.setattr(saving, "_read_json", lambda path: reads.append(path) or read_json(path))
    assert main(["inspect", "--adapter", str(adapter), "--num-samples", "2", "--run.device", "cpu"]) == 0
    assert reads == [adapter / "adapter_config.json"]


@pytest.mark.parametrize(
    ("method", "flags", "named"),
    [
        (LoRAConfig(), [], "'lora'"),
        (VPTConfig(num_tokens=2), [], "'vpt'"),
        (None, ["--data.dataset", "nope"], "'nope'"),
        (None, ["--split", "val"], "--split 'val'"),
        (None, ["--data.dataset", "synthetic-video"], "video"),
    ],
    ids=["lora", "vpt", "unknown_dataset", "missing_split", "video_data_for_images"],
)
def test_command_refuses_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: Any, flags: list[str], named: str
) -> None:
    argv = ["inspect", "--adapter", str(_saved(tmp_path, method)), "--out", str(tmp_path / "o"), *flags]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_command_refuses_num_samples_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--adapter", str(tmp_path), "--num-samples", "0"])
    assert exit_info.value.code == 2 and "--num-samples" in capsys.readouterr().err


def test_adapter_plus_gets_an_adapter_residual_ratio_and_no_mlp_ratio() -> None:
    model = _model(AdapterPlusConfig(bottleneck=4, layers=[2, 3]))
    x = _images()
    report = inspect_adapter(model, [x])
    assert report.method == "Adapter+" and report.form == "post-block" and [r.block for r in report.adapters] == [2, 3]
    block = model.blocks[2]
    captured = {}
    handle = block.adapter_plus.register_forward_pre_hook(lambda m, args: captured.setdefault("y", args[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        y = captured["y"]  # the plain block's output, (B, N, C)
        a = block.adapter_plus(y) - y  # the adapter branch (no drop path in eval)
    a_norm, y_norm = a.norm(dim=-1), y.norm(dim=-1)
    row = report.adapters[0]
    assert row.adapter_mlp is None and row.adapter_mlp_token_mean is None
    assert row.adapter_residual == pytest.approx(
        (a_norm.square().mean() / y_norm.square().mean()).sqrt().item(), rel=1e-4
    )
    assert row.adapter_residual_token_mean == pytest.approx((a_norm / y_norm).mean().item(), rel=1e-4)
    assert [d.relative_l2 == 0.0 for d in report.drift] == [True, True, False, False, False, False]
    assert "| 2 | – | " in format_markdown(report)  # no MLP column value for a post-block adapter


# ------------------------------------------------------------------------------------------- segmentation models


def _segmenter(method: Any = None, head: str = "linear", **extra: Any) -> SegmentationModel:
    """The shipped ViT (32x32 inputs only) as a segmentation model of digits-seg's 11 classes."""
    torch.manual_seed(0)
    method = method if method is not None else AdaptFormerConfig(bottleneck=8, dropout=0.0)
    return create_segmentation_model(NAME, 11, method=method, head=head, checkpoint="timm", **extra).eval()


def _canvases(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_segmentation_at_init_every_ratio_and_drift_is_exactly_zero(head: str) -> None:
    report = inspect_adapter(_segmenter(head=head), [(_canvases(), torch.zeros(2, 64, 64))])
    assert report.feature == PATCH_TOKENS and report.num_samples == 2  # images, each read as four 32x32 windows
    assert [r.block for r in report.adapters] == [d.block for d in report.drift] == list(range(6))
    for row in report.adapters:
        assert row.adapter_mlp == row.adapter_mlp_token_mean == row.adapter_residual == 0.0
    assert all(d.relative_l2 == 0.0 and d.cosine == pytest.approx(1.0) for d in report.drift)
    assert report.pooled.relative_l2 == 0.0


def _token_drift(adapted: torch.Tensor, frozen: torch.Tensor) -> tuple[float, float]:
    """Mean over tokens of the relative L2 distance and cosine of (B, C, h, w) maps, per token."""
    a, f = (m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in (adapted, frozen))  # (tokens, C)
    relative = ((a - f).norm(dim=-1) / f.norm(dim=-1)).mean().item()
    return relative, torch.nn.functional.cosine_similarity(a, f, dim=-1).mean().item()


def test_segmentation_drift_is_per_patch_token_of_every_window() -> None:
    """A 64x64 canvas is read as the 4 windows of 32x32 the backbone takes; every block's drift is the mean over
    their patch tokens (the class token left out) of each token's distance from a linear probe's, the frozen
    backbone, and the decode head's input (the last block, for the linear head) drifts as that block."""
    adapted, probe = _segmenter(), _segmenter("linear")
    _set_up_proj(adapted.backbone, 2)
    x = _canvases()
    report = inspect_adapter(adapted, [x])
    corners = [(top, left) for top in (0, 32) for left in (0, 32)]
    windows = torch.cat([x[..., top : top + 32, left : left + 32] for top, left in corners])  # (8, 3, 32, 32)
    for block in (1, 2, 5):
        with torch.no_grad():
            ours, theirs = (patch_features(m.backbone, windows, [block], m.layout)[0] for m in (adapted, probe))
        relative, cosine = _token_drift(ours, theirs)
        assert report.drift[block].relative_l2 == pytest.approx(relative, rel=1e-4, abs=1e-7)
        assert report.drift[block].cosine == pytest.approx(cosine, rel=1e-5)
    assert report.drift[1].relative_l2 == 0.0 and report.drift[2].relative_l2 > 0.01
    assert report.pooled.relative_l2 == pytest.approx(report.drift[5].relative_l2, rel=1e-6)
    assert report.adapters[2].adapter_mlp > 0.01 and report.adapters[1].adapter_mlp == 0.0


def test_segmentation_images_of_several_sizes_and_an_early_last_block() -> None:
    """Images of different sizes (a list, as the segmentation collate gives them) are padded and cut each on its
    own; a decode head that reads block 2 stops the backbone there, so blocks 3-5 get no rows."""
    model = _segmenter(layers=[2])
    _set_up_proj(model.backbone, 1)
    images = [torch.randn(3, 40, 72, generator=torch.Generator().manual_seed(3)), _canvases(1, 32)[0]]
    report = inspect_adapter(model, [(images, None)])
    assert report.num_samples == 2 and [d.block for d in report.drift] == [0, 1, 2]
    assert [r.block for r in report.adapters] == [0, 1, 2]
    assert report.drift[0].relative_l2 == 0.0 and report.drift[1].relative_l2 > 0
    assert report.pooled.relative_l2 == pytest.approx(report.drift[2].relative_l2, rel=1e-6)


def test_segmentation_frozen_reference_is_the_linear_probes_backbone() -> None:
    adapted, probe = _segmenter(), _segmenter("linear")
    for module in adapter_modules(adapted):
        nn.init.normal_(module.up_proj.weight, std=0.2)
    x = _canvases(2, 32)
    with adapters_off(adapted):
        frozen = trace_features(adapted, x)
    reference = trace_features(probe, x)
    assert frozen.blocks[0].shape == (2 * 16, 128)  # (B * patch tokens, C): the class token left out
    for ours, theirs in zip((*frozen.blocks, frozen.pooled), (*reference.blocks, reference.pooled), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_command_inspects_a_segmentation_adapter_on_its_recorded_data(tmp_path: Path) -> None:
    model = _segmenter()
    _set_up_proj(model.backbone, 3)
    record = TrainingRecord(dataset="digits-seg", dataset_options={"num_samples": 6}, segmentation={"base_size": 64})
    adapter = save_adapter(model, tmp_path / "run" / "adapter", classes=list(DIGITS_SEG_CLASSES), training=record)
    assert main(["inspect", "--adapter", str(adapter), "--batch-size", "4", "--run.device", "cpu"]) == 0
    out = tmp_path / "run" / "inspect"
    data = json.loads((out / "inspect.json").read_text())
    assert data["feature"] == PATCH_TOKENS and data["num_samples"] == 6 and len(data["drift"]) == 6
    assert data["adapters"][3]["adapter_mlp"] > 0 and data["drift"][2]["relative_l2"] == 0.0
    assert data["drift"][3]["relative_l2"] > 0 and data["pooled"]["relative_l2"] > 0
    table = (out / "inspect.md").read_text()
    assert "| block (from 0) | adapter/MLP | adapter/residual | patch tokens relative drift | cosine |" in table
    assert "| decode head input (patch tokens) |" in table
