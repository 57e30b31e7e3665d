"""Adapter files: content, exact round trip, refusal of a different backbone, atomic writes, corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import SWIN, VIT, tiny_kwargs
from tests.training_step import move_trainable

import adaptformer.files as files
import adaptformer.methods.state as state
from adaptformer import (
    AdapterFileError,
    AdaptFormerConfig,
    VPTConfig,
    build_backbone,
    create_model,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from adaptformer.saving import TrainingRecord


def _trained(name: str = VIT, method: str = "adaptformer", **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(1)
    model = create_model(name, 5, method=method, **tiny_kwargs(name), **kwargs)
    move_trainable(model)  # pretend training moved the task tensors away from their init
    model.train()
    model(torch.randn(8, 3, 32, 32))  # updates the paper head's BatchNorm running statistics
    return model.eval()


def _fresh_backbone(name: str = VIT) -> torch.nn.Module:
    torch.manual_seed(1)  # the same "pre-trained" weights as _trained's backbone
    return build_backbone(name, 5, **tiny_kwargs(name))


CASES = [
    (VIT, "adaptformer", {}),
    (VIT, AdaptFormerConfig(bottleneck=3, scale="learnable", layernorm="out", layers=(1,)), {}),
    (VIT, "linear", {}),
    (VIT, VPTConfig(num_tokens=2), {}),
    (VIT, "adaptformer", {"head": "linear"}),
    (SWIN, AdaptFormerConfig(bottleneck=(2, 4)), {}),
    (VIT, "full", {}),
]


@pytest.mark.parametrize("name, method, kwargs", CASES)
def test_round_trip_reproduces_logits_exactly(tmp_path: Path, name: str, method: str, kwargs: dict) -> None:
    model = _trained(name, method, **kwargs)
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(_fresh_backbone(name), tmp_path / "adapter").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert restored.adaptformer_spec == model.adaptformer_spec


def test_files_hold_only_task_tensors_and_describe_the_model(tmp_path: Path) -> None:
    model = _trained()
    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(".adaptmlp." in k or k.startswith("head.") for k in tensors)
    assert {k for k in tensors if k.startswith("head.")} == {
        "head.0.running_mean",
        "head.0.running_var",
        "head.0.num_batches_tracked",
        "head.1.weight",
        "head.1.bias",
    }
    assert len([k for k in tensors if ".adaptmlp." in k]) == 3 * 4
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == "adaptformer" and config["backbone"] == VIT and config["num_classes"] == 5
    assert config["method_config"]["bottleneck"] == 64 and config["head"] == "paper"
    assert config["backbone_fingerprint"].startswith("sha256:")
    assert config["preprocessing"]["input_size"] == [3, 32, 32]
    assert config["num_parameters"] == sum(t.numel() for t in tensors.values())


@pytest.mark.slow
def test_vit_b_adapter_file_is_about_5_mb(tmp_path: Path) -> None:
    save_adapter(create_model("vit_base_patch16_224", 100), tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert 4.5e6 < size < 5.5e6  # (1,189,632 + 76,900) fp32 params + BN stats


def test_mismatched_backbone_is_refused_unless_overridden(tmp_path: Path) -> None:
    save_adapter(_trained(), tmp_path)
    torch.manual_seed(2)
    other_weights = build_backbone(VIT, 5, **tiny_kwargs(VIT))
    with pytest.raises(AdapterFileError, match="backbone weights differ.*fingerprint"):
        load_adapter(other_weights, tmp_path)
    load_adapter(other_weights, tmp_path, allow_backbone_mismatch=True)  # explicit override
    with pytest.raises(AdapterFileError, match="trained on 'vit_tiny_patch16_224', the model is 'swin_tiny"):
        load_adapter(build_backbone(SWIN, 5, **tiny_kwargs(SWIN)), tmp_path)


def test_method_mismatch_is_refused(tmp_path: Path) -> None:
    save_adapter(_trained(), tmp_path)
    torch.manual_seed(1)
    linear = create_model(VIT, 5, method="linear", **tiny_kwargs(VIT))
    with pytest.raises(AdapterFileError, match="method differs"):
        load_adapter(linear, tmp_path)
    torch.manual_seed(1)
    with pytest.raises(AdapterFileError, match="num_classes"):
        load_adapter(create_model(VIT, 4, **tiny_kwargs(VIT)), tmp_path)


def test_crash_mid_write_keeps_the_last_good_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained()
    save_adapter(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)
    with torch.no_grad():
        model.head[1].bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left, old pair intact
    load_adapter(_fresh_backbone(), tmp_path)


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (lambda d: (d / "adapter_config.json").write_text("{not json"), AdapterFileError, "not valid JSON"),
        (lambda d: (d / "adapter_config.json").unlink(), FileNotFoundError, "no adapter here"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00" * 10), AdapterFileError, "SHA-256 differs"),
        (lambda d: _edit(d, colour="red"), AdapterFileError, r"unknown fields \['colour'\]"),
        (lambda d: _edit(d, method_config={"bottleneck": -4}), AdapterFileError, "bottleneck must be >= 1"),
        (lambda d: _edit(d, format_version=7), AdapterFileError, "format_version 7"),
        (lambda d: _edit(d, weights_sha256=None, drop_weights=True), AdapterFileError, "not a valid safetensors"),
    ],
)
def test_corrupt_adapter_dirs_give_clear_errors(tmp_path: Path, corrupt, error: type, message: str) -> None:
    save_adapter(_trained(), tmp_path)
    corrupt(tmp_path)
    with pytest.raises(error, match=message):
        load_adapter(_fresh_backbone(), tmp_path)


def _edit(directory: Path, drop_weights: bool = False, **changes: object) -> None:
    path = directory / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    if drop_weights:
        del data["weights_sha256"]
        (directory / "adapter_model.safetensors").write_bytes(b"garbage")
    path.write_text(json.dumps(data))


def test_read_adapter_config_returns_spec_and_preprocessing(tmp_path: Path) -> None:
    save_adapter(_trained(), tmp_path)
    info = read_adapter_config(tmp_path)
    spec, extras = info.spec, {"preprocessing": info.preprocessing}
    assert spec.method == "adaptformer" and extras["preprocessing"].input_size == (3, 32, 32)


def test_video_settings_of_a_02_adapter_read_under_their_03_name(tmp_path: Path) -> None:
    """0.2 recorded the sampling stride as ``stride``; 0.3 names it ``sampling_stride``, as the data section does."""
    video = {"sampling": "dense", "sampling_stride": 2, "flip": False, "test_clips": 2, "test_crops": 3}
    save_adapter(_trained(), tmp_path, training=TrainingRecord(dataset="videofolder", video=video))
    config = tmp_path / "adapter_config.json"
    data = json.loads(config.read_text())
    assert data["training"]["video"] == video  # written under the new name
    data["training"]["video"] = {("stride" if k == "sampling_stride" else k): v for k, v in video.items()}
    config.write_text(json.dumps(data))
    assert read_adapter_config(tmp_path).training.video == video


def test_remembered_fingerprint_survives_a_storage_cast(tmp_path: Path) -> None:
    model = _trained()
    fingerprint = state.remember_fingerprint(model)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # storage changes, the backbone it came from does not
    assert state.backbone_fingerprint(model) == fingerprint
    save_adapter(model, tmp_path)
    load_adapter(_fresh_backbone(), tmp_path)  # the fp32 original is accepted


def _snapshot(model: torch.nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m)) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        getattr(model, "adaptformer_spec", None),
        torch.random.get_rng_state(),
    )


def _tensors(directory: Path, edit) -> None:
    """Rewrite the adapter's tensors (a valid safetensors file with other content) and drop the recorded SHA-256."""
    path = directory / "adapter_model.safetensors"
    save_file(edit(load_file(str(path))), str(path))
    _edit(directory, weights_sha256=None)


def _other_seed() -> torch.nn.Module:
    torch.manual_seed(2)
    return build_backbone(VIT, 5, **tiny_kwargs(VIT))


FAILED_LOADS = {
    "wrong architecture": (lambda d: None, lambda: build_backbone(SWIN, 5, **tiny_kwargs(SWIN)), {}),
    "fingerprint mismatch": (lambda d: None, _other_seed, {}),
    "missing tensor": (lambda d: _tensors(d, lambda t: dict(list(t.items())[1:])), _fresh_backbone, {}),
    "extra tensor": (lambda d: _tensors(d, lambda t: {**t, "blocks.0.extra": torch.zeros(2)}), _fresh_backbone, {}),
    "shape mismatch": (lambda d: _tensors(d, lambda t: {**t, "head.1.bias": torch.zeros(7)}), _fresh_backbone, {}),
    "bad config": (lambda d: _edit(d, method_config={"bottleneck": -4}), _fresh_backbone, {}),
    "corrupt weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"x"), _fresh_backbone, {}),
    "method cannot attach": (
        lambda d: _edit(d, method_config={**AdaptFormerConfig(layers=(2,)).to_dict()}, weights_sha256=None),
        lambda: build_backbone(VIT, 5, **tiny_kwargs(VIT, depth=2)),
        {"allow_backbone_mismatch": True},
    ),
    "already adapted, shape mismatch": (
        lambda d: _tensors(d, lambda t: {**t, "head.1.bias": torch.zeros(7)}),
        lambda: create_model(VIT, 5, **tiny_kwargs(VIT)),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(FAILED_LOADS))
def test_a_failed_load_leaves_the_model_untouched(tmp_path: Path, case: str) -> None:
    damage, target, kwargs = FAILED_LOADS[case]
    save_adapter(_trained(), tmp_path)
    damage(tmp_path)
    model = target()
    before = _snapshot(model)
    with pytest.raises((AdapterFileError, ValueError, TypeError)):  # TypeError: UnsupportedModelError
        load_adapter(model, tmp_path, **kwargs)
    after = _snapshot(model)
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
    assert after[1:4] == before[1:4]  # module classes, requires_grad flags, no method recorded
    assert torch.equal(after[4], before[4])  # torch's RNG not advanced either
