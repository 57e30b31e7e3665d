"""Reading backbone checkpoints in the formats users have, with exact key accounting and clear errors."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from tests.conftest import VIT, tiny_kwargs

from adaptformer import CheckpointError, create_model, register_converter
from adaptformer.backbones.checkpoints import load as pretrained_module
from adaptformer.backbones.checkpoints.load import read_state_dict
from adaptformer.factory import build_backbone


@pytest.fixture
def source_model() -> torch.nn.Module:
    return timm.create_model(VIT, num_classes=7, **tiny_kwargs(VIT))


def _write(path: Path, state: dict, kind: str) -> Path:
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "mae":
        torch.save({"model": state, "epoch": 3}, path)  # MAE wraps the weights, with other entries beside them
    elif kind == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "kind, suffix",
    [("plain", ".pth"), ("plain", ".bin"), ("safetensors", ".safetensors"), ("mae", ".pth"), ("ddp", ".pt")],
)
def test_formats_load_into_the_backbone(tmp_path: Path, source_model: torch.nn.Module, kind: str, suffix: str) -> None:
    path = _write(tmp_path / f"ckpt{suffix}", source_model.state_dict(), kind)
    model = create_model(VIT, 3, checkpoint=path, **tiny_kwargs(VIT))
    for name, tensor in source_model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], tensor), name


def test_mae_pretraining_checkpoint_drops_decoder(tmp_path: Path, source_model: torch.nn.Module) -> None:
    state = {k: v for k, v in source_model.state_dict().items() if not k.startswith("head.")}
    state.update(
        {
            "mask_token": torch.zeros(1, 1, 16),
            "decoder_embed.weight": torch.zeros(16, 32),
            "decoder_blocks.0.norm1.weight": torch.ones(16),
        }
    )
    path = _write(tmp_path / "mae_pretrain.pth", state, "mae")
    with pytest.raises(CheckpointError, match="unexpected keys.*decoder_blocks.0.norm1.weight"):
        create_model(VIT, 3, checkpoint=path, **tiny_kwargs(VIT))  # read as timm: the decoder is foreign
    model = create_model(VIT, 3, checkpoint=path, checkpoint_source="mae", **tiny_kwargs(VIT))
    assert torch.equal(model.blocks[0].attn.qkv.weight, source_model.blocks[0].attn.qkv.weight)


def test_renamed_key_fails_naming_it(tmp_path: Path, source_model: torch.nn.Module) -> None:
    state = source_model.state_dict()
    state["blocks.1.mlp.fc9.weight"] = state.pop("blocks.1.mlp.fc1.weight")
    path = _write(tmp_path / "renamed.pth", state, "plain")
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.mlp.fc1.weight'\].*blocks.1.mlp.fc9.weight"):
        create_model(VIT, 3, checkpoint=path, **tiny_kwargs(VIT))


def test_wrong_head_size_is_dropped_with_a_log_line(
    tmp_path: Path, source_model: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path / "ft.pth", source_model.state_dict(), "plain")  # a 7-class head
    with caplog.at_level(logging.INFO, logger="adaptformer.backbones.checkpoints.load"):
        model = build_backbone(VIT, 3, checkpoint=path, keep_head=True, **tiny_kwargs(VIT))
    assert "dropped classifier keys head.bias (7,), head.weight (7, 32)" in caplog.text
    assert model.head.out_features == 3
    same = build_backbone(VIT, 7, checkpoint=path, keep_head=True, **tiny_kwargs(VIT))
    assert torch.equal(same.head.weight, source_model.head.weight)  # right size: kept for head="linear"


def test_shape_mismatch_and_pos_embed_resampling(tmp_path: Path, source_model: torch.nn.Module) -> None:
    path = _write(tmp_path / "p.pth", source_model.state_dict(), "plain")
    bigger = create_model(VIT, 3, checkpoint=path, **tiny_kwargs(VIT, img_size=48))  # 4x4 grid -> 6x6
    assert bigger.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(bigger.pos_embed[:, 0], source_model.pos_embed[:, 0])  # cls position kept
    wide = tiny_kwargs(VIT, embed_dim=48, num_heads=2)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*cls_token: file \(1, 1, 32\) vs model \(1, 1, 48\)"):
        create_model(VIT, 3, checkpoint=path, **wide)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot be read"),
        (b"not a checkpoint at all", "cannot be read"),
        (None, "cannot be read"),  # truncated real file
    ],
)
def test_corrupt_files_name_the_file(
    tmp_path: Path, source_model: torch.nn.Module, content: bytes | None, message: str
) -> None:
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        if content is None:
            _write(path, source_model.state_dict(), "safetensors" if suffix == ".safetensors" else "plain")
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{path.name}.*{message}"):
            read_state_dict(path)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Path("x")}, path)  # an arbitrary object, not a tensor dict
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_missing_file_and_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
    path = _write(tmp_path / "c.pth", {"w": torch.zeros(1)}, "plain")
    with pytest.raises(ValueError, match="unknown checkpoint source 'jax'"):
        create_model(VIT, 3, checkpoint=path, checkpoint_source="jax", **tiny_kwargs(VIT))


def test_timm_pretrained_file_mechanism(tmp_path: Path, source_model: torch.nn.Module) -> None:
    path = _write(tmp_path / "timm_weights.safetensors", source_model.state_dict(), "safetensors")
    model = create_model(VIT, 3, checkpoint="timm", pretrained_cfg_overlay={"file": str(path)}, **tiny_kwargs(VIT))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source_model.blocks[1].mlp.fc2.weight)


def test_one_converter_table_lists_every_source() -> None:
    """checkpoints/load.py's table names every source itself: no import side effect elsewhere (videomae.py only defines
    the video functions, it does not even see the table), so nothing but pretrained needs importing."""
    code = (
        "import sys; from adaptformer.backbones.checkpoints.load import CONVERTERS; print(sorted(CONVERTERS)); "
        "print(hasattr(sys.modules['adaptformer.backbones.checkpoints.videomae'], 'CONVERTERS'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sources, video_module_sees_table = done.stdout.splitlines()
    expected = ["hf", "hf-videomae", "inflate-image", "inflate-image-swin", "mae", "swin", "timm", "torchvision"]
    assert sources == str([*expected, "video-swin", "videomae"])
    assert video_module_sees_table == "False"


def test_microsoft_swin_release_layout_loads_through_timms_converter(tmp_path: Path) -> None:
    """Microsoft's Swin files downsample at the end of each stage (``layers.0.downsample``, timm: at the start of the
    next, ``layers.1.downsample``), name the classifier ``head`` (timm: ``head.fc``) and keep the derived
    ``relative_position_index`` / ``attn_mask`` buffers; ``checkpoint_source="swin"`` reads them exactly."""
    from tests.conftest import SWIN

    torch.manual_seed(3)
    timm_model = build_backbone(SWIN, 7, **tiny_kwargs(SWIN)).eval()
    release = {}
    for key, value in timm_model.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        release[key.replace("head.fc.", "head.")] = value
    grid = timm_model.layers[0].blocks[0].attn.relative_position_index
    release["layers.0.blocks.0.attn.relative_position_index"] = grid.clone()  # derived buffers the release kept
    assert "layers.0.downsample.reduction.weight" in release and "head.weight" in release
    path = _write(tmp_path / "swin_tiny_release.pth", {"model": release}, "plain")
    model = build_backbone(SWIN, 7, checkpoint=path, checkpoint_source="swin", keep_head=True, **tiny_kwargs(SWIN))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), timm_model(x))
    with pytest.raises(CheckpointError, match="layers.0.downsample"):  # read as timm's own layout: refused, named
        build_backbone(SWIN, 7, checkpoint=path, checkpoint_source="timm", **tiny_kwargs(SWIN))


def test_register_converter(tmp_path: Path, source_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained_module, "CONVERTERS", dict(pretrained_module.CONVERTERS))  # left as it was after

    def strip_prefix(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k.removeprefix("backbone."): v for k, v in state_dict.items()}

    register_converter("prefixed", strip_prefix)
    path = _write(tmp_path / "c.pth", {f"backbone.{k}": v for k, v in source_model.state_dict().items()}, "plain")
    model = create_model(VIT, 3, checkpoint=path, checkpoint_source="prefixed", **tiny_kwargs(VIT))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source_model.blocks[1].mlp.fc2.weight)
    with pytest.raises(ValueError, match="checkpoint source 'mae' already has a converter"):
        register_converter("mae", strip_prefix)
