"""The VideoMAE-layout video ViT: architecture, timm interface, method/freezing, and its checkpoint converters.

Numerical parity is checked against Hugging Face transformers' VideoMAE built small and random, saved with
``save_pretrained`` to a tmp dir, and loaded back through ``adaptformer.create_model``.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models.vision_transformer import Attention, Block
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

from adaptformer import (
    AdaptFormerConfig,
    CheckpointError,
    Preprocessing,
    count_trainable,
    create_model,
    load_adapter,
    load_pretrained,
    save_adapter,
)
from adaptformer.backbones import QVBiasAttention, VideoVisionTransformer, sinusoid_position_table
from adaptformer.backbones.checkpoints.load import CONVERTERS
from adaptformer.backbones.checkpoints.videomae import convert_hf_videomae
from adaptformer.methods import adapter_modules
from adaptformer.methods.adaptformer import attach

VIDEO = "video_vit_base_patch16_224"
TINY: dict[str, Any] = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}


def tiny(**extra: Any) -> dict[str, Any]:
    return {**TINY, **extra}


@pytest.fixture
def clips() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)


def _perturb(modules: list[nn.Module], scale: float = 0.5) -> None:
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(scale * torch.randn_like(p))


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize(
    "name, frames, tokens, width, depth",
    [
        ("video_vit_small_patch16_224", 8, 784, 384, 12),
        ("video_vit_base_patch16_224", 8, 784, 768, 12),
        ("video_vit_base_patch16_224", 16, 1568, 768, 12),
        ("video_vit_large_patch16_224", 8, 784, 1024, 24),
    ],
)
def test_registered_sizes_and_token_counts(name: str, frames: int, tokens: int, width: int, depth: int) -> None:
    kwargs = {} if frames == 8 else {"num_frames": frames}  # 8 frames is the default
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    assert model.patch_embed.num_patches == tokens  # T/2 x 14 x 14
    assert model.patch_embed.proj.kernel_size == (2, 16, 16)
    assert model.pos_embed.shape == (1, tokens, width) and model.num_features == width and len(model.blocks) == depth
    assert model.pretrained_cfg["num_frames"] == frames


def test_position_table_is_videomaes_fixed_sinusoid_buffer() -> None:
    table = sinusoid_position_table(7, 6)
    for p in range(7):
        for j in range(6):
            angle = p / 10000 ** (2 * (j // 2) / 6)
            assert table[p, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle), abs=1e-7)
    model = timm.create_model(VIDEO, **tiny())
    assert torch.equal(model.pos_embed[0], sinusoid_position_table(2 * 4 * 4, 64))
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" not in model.state_dict()


@pytest.mark.parametrize("fused", [True, False])
def test_attention_has_q_and_v_bias_only_and_a_k_bias_changes_nothing(fused: bool) -> None:
    model = timm.create_model(VIDEO, **tiny())
    assert all(type(b) is Block and isinstance(b.attn, QVBiasAttention) for b in model.blocks)
    names = {n for n, _ in model.blocks[0].attn.named_parameters()}
    assert names == {"q_bias", "v_bias", "qkv.weight", "proj.weight", "proj.bias"}
    ours = model.blocks[0].attn.eval()
    _perturb([ours], 0.1)
    ours.fused_attn = fused
    reference = Attention(64, num_heads=2, qkv_bias=True).eval()  # timm's, with one fused qkv bias
    with torch.no_grad():
        reference.qkv.weight.copy_(ours.qkv.weight)
        reference.qkv.bias.copy_(torch.cat([ours.q_bias, torch.randn(64), ours.v_bias]))  # any k bias
        reference.proj.load_state_dict(ours.proj.state_dict())
        x = torch.randn(2, 5, 64)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)


def test_timm_interface(clips: torch.Tensor) -> None:
    model = timm.create_model(VIDEO, num_classes=5, **tiny()).eval()
    assert isinstance(model, VideoVisionTransformer) and model.num_classes == 5
    with torch.no_grad():
        tokens = model.forward_features(clips)
        assert tokens.shape == (2, 32, 64)  # (B, 2 x 4 x 4, D): no CLS token
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, model.fc_norm(tokens.mean(1)))
        assert model(clips).shape == (2, 5)
        assert model.get_classifier() is model.head
        model.reset_classifier(7)
        assert model(clips).shape == (2, 7) and model.num_classes == 7
        model.reset_classifier(0)
        assert model(clips).shape == (2, 64)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(clips[:, :, :2])  # 2 frames into a 4-frame model
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        timm.create_model(VIDEO, **tiny(num_frames=5))


def test_preprocessing_follows_the_built_model() -> None:
    with torch.device("meta"):  # the configuration is all that is read
        default = Preprocessing.from_model(timm.create_model("video_vit_small_patch16_224", num_classes=2))
    assert default.input_size == (3, 224, 224)
    assert default.mean == pytest.approx((0.485, 0.456, 0.406)) and default.std == pytest.approx((0.229, 0.224, 0.225))
    model = create_model(VIDEO, 3, **tiny())
    assert Preprocessing.from_model(model).input_size == (3, 32, 32)
    assert model.pretrained_cfg["num_frames"] == 4


# ---------------------------------------------------------------- method, freezing, saving, compile


@pytest.mark.parametrize("variant", [{}, {"form": "sequential"}, {"input": "normed", "dropout": 0.0}])
def test_identity_at_init_is_bit_exact(variant: dict, clips: torch.Tensor) -> None:
    plain = timm.create_model(VIDEO, num_classes=5, **tiny()).eval()
    adapted = attach(copy.deepcopy(plain), AdaptFormerConfig(**variant)).eval()
    assert len(adapter_modules(adapted)) == 2
    with torch.no_grad():
        assert torch.equal(adapted(clips), plain(clips))


@pytest.mark.parametrize(
    "method, trainable_prefixes",
    [
        ("adaptformer", ("fc_norm.", "head.", "blocks.0.adaptmlp.", "blocks.1.adaptmlp.")),
        ("linear", ("fc_norm.", "head.")),
        ("vpt", ("fc_norm.", "head.", "blocks.0.vpt.", "blocks.1.vpt.")),
    ],
)
def test_only_fc_norm_head_and_method_modules_train(method: str, trainable_prefixes: tuple[str, ...]) -> None:
    model = create_model(VIDEO, 5, method=method, **tiny())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(trainable_prefixes) for n in trainable), sorted(trainable)
    assert all(any(n.startswith(prefix) for n in trainable) for prefix in trainable_prefixes)
    assert model.head[1].weight.std() < 0.002  # the paper's video head init scale (0.001)


@pytest.mark.slow
@pytest.mark.parametrize("classes, expected", [(174, 1_324_974), (51, 1_230_387)])  # SSv2, HMDB51 (paper)
def test_paper_trainable_counts(classes: int, expected: int) -> None:
    model = create_model(VIDEO, classes)
    assert count_trainable(model) == expected == 1_189_632 + (768 + 1) * classes + 1_536


def test_adapter_round_trip_gives_equal_logits(tmp_path: Path, clips: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = create_model(VIDEO, 4, **tiny()).eval()
    _perturb([*adapter_modules(model), model.fc_norm, model.head])
    save_adapter(model, tmp_path / "adapter")
    torch.manual_seed(1)  # the same frozen backbone
    fresh = load_adapter(timm.create_model(VIDEO, num_classes=4, **tiny()), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(fresh(clips), model(clips))


def test_compiled_adapted_model_gives_the_same_output(clips: torch.Tensor) -> None:
    model = create_model(VIDEO, 5, **tiny()).eval()
    _perturb(adapter_modules(model))
    compiled = torch.compile(model, backend="aot_eager")  # graph capture; kernels: see test_families.py
    with torch.no_grad():
        torch.testing.assert_close(compiled(clips), model(clips), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Hugging Face VideoMAE


def _hf_config(patch: int, **extra: Any) -> VideoMAEConfig:
    args = {
        "image_size": 32,
        "patch_size": patch,
        "num_frames": 4,
        "tubelet_size": 2,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "use_mean_pooling": True,
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,  # the original VideoMAE's (HF's default is 1e-12); see convert_hf_videomae
        **extra,
    }
    return VideoMAEConfig(**args)


def _hf_saved(hf: nn.Module, directory: Path) -> Path:
    _perturb([hf], 0.05)  # non-trivial biases and norms
    hf.eval().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("patch", [8, 16])
def test_hf_classifier_logits_match(patch: int, tmp_path: Path, clips: torch.Tensor) -> None:
    hf = VideoMAEForVideoClassification(_hf_config(patch, num_labels=5))
    hf.fc_norm.eps = 1e-6  # HF hard-codes 1e-5 here; VideoMAE and this model use 1e-6
    path = _hf_saved(hf, tmp_path / "hf")
    ours = create_model(
        VIDEO, 5, checkpoint=path, checkpoint_source="hf-videomae", head="linear", **tiny(patch_size=patch)
    ).eval()
    with torch.no_grad():
        expected = hf(pixel_values=clips.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        torch.testing.assert_close(ours(clips), expected, rtol=0, atol=1e-5)


def test_hf_encoder_tokens_match_and_pretraining_files_load(tmp_path: Path, clips: torch.Tensor) -> None:
    hf = VideoMAEModel(_hf_config(8))
    path = _hf_saved(hf, tmp_path / "encoder")
    ours = timm.create_model(VIDEO, num_classes=3, **tiny())
    report = load_pretrained(ours, path, source="hf-videomae", keep_head=False)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    with torch.no_grad():
        expected = hf(pixel_values=clips.permute(0, 2, 1, 3, 4)).last_hidden_state
        torch.testing.assert_close(ours.eval().forward_features(clips), expected, rtol=0, atol=1e-5)

    pretraining = VideoMAEForPreTraining(
        _hf_config(8, use_mean_pooling=False, decoder_hidden_size=32, decoder_num_attention_heads=2)
    )
    path = _hf_saved(pretraining, tmp_path / "pretraining")  # + decoder, encoder_to_decoder, mask_token, layernorm
    ours = timm.create_model(VIDEO, num_classes=3, **tiny())
    report = load_pretrained(ours, path, source="hf-videomae", keep_head=False)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    torch.testing.assert_close(
        ours.blocks[1].attn.v_bias, pretraining.videomae.encoder.layer[1].attention.attention.value.bias
    )


def test_hf_both_bias_spellings_convert_alike() -> None:
    model = timm.create_model(VIDEO, **tiny())
    state = VideoMAEModel(_hf_config(8)).state_dict()  # in memory: query.bias / value.bias (transformers >= 5)
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v for k, v in state.items()}
    assert any(k.endswith("q_bias") for k in legacy) and not any(k.endswith("q_bias") for k in state)
    new, old = convert_hf_videomae(state, model), convert_hf_videomae(legacy, model)
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


# ---------------------------------------------------------------- official VideoMAE and image inflation


def _videomae_files(tmp_path: Path, source: nn.Module) -> dict[str, Path]:
    """A fine-tuning file (under "module") and a pre-training file ("encoder." + decoder side, under "model")."""
    # VideoMAE names LayerScale gamma_1 / gamma_2 (timm: ls1.gamma / ls2.gamma).
    state = {
        k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in source.state_dict().items()
    }
    backbone = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    pretrain = {f"encoder.{k}": v for k, v in backbone.items()}
    pretrain |= {"encoder.norm.weight": torch.ones(64), "encoder.norm.bias": torch.zeros(64)}
    pretrain |= {"encoder_to_decoder.weight": torch.randn(32, 64), "mask_token": torch.zeros(1, 1, 32)}
    pretrain |= {"decoder.blocks.0.attn.q_bias": torch.zeros(32), "decoder.head.weight": torch.randn(384, 32)}
    files = {"finetune": tmp_path / "finetune.pth", "pretrain": tmp_path / "pretrain.pth"}
    torch.save({"module": state, "epoch": 3}, files["finetune"])
    torch.save({"model": pretrain}, files["pretrain"])
    return files


def test_videomae_checkpoints_load(tmp_path: Path, clips: torch.Tensor) -> None:
    source = timm.create_model(VIDEO, num_classes=5, **tiny(init_values=0.1)).eval()
    _perturb([source], 0.05)
    files = _videomae_files(tmp_path, source)
    ours = create_model(
        VIDEO, 5, checkpoint=files["finetune"], checkpoint_source="videomae", head="linear", **tiny(init_values=0.1)
    ).eval()
    with torch.no_grad():
        assert torch.equal(ours(clips), source(clips))

    fresh = timm.create_model(VIDEO, num_classes=3, **tiny(init_values=0.1))
    report = load_pretrained(fresh, files["pretrain"], source="videomae", keep_head=False)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(clips), source.forward_features(clips), rtol=0, atol=0)


@pytest.mark.parametrize(
    "source, old, new, named",
    [
        ("videomae", "encoder.blocks.1.attn.q_bias", "encoder.blocks.1.attn.query_bias", "blocks.1.attn.query_bias"),
        ("videomae", "encoder.patch_embed.proj.weight", "encoder.tubelet.proj.weight", "tubelet.proj.weight"),
        ("hf-videomae", "encoder.layer.0.layernorm_after.weight", "encoder.layer.0.ln_after.weight", None),
        ("inflate-image", "blocks.0.attn.qkv.bias", "blocks.0.attn.qkv_bias", None),
    ],
)
def test_a_renamed_key_fails_naming_it(source: str, old: str, new: str, named: str | None, tmp_path: Path) -> None:
    assert source in CONVERTERS
    if source == "hf-videomae":
        state = VideoMAEModel(_hf_config(8)).state_dict()
    elif source == "inflate-image":
        state = timm.create_model("vit_tiny_patch16_224", **tiny_image()).state_dict()
    else:
        state = {f"encoder.{k}": v for k, v in timm.create_model(VIDEO, **tiny()).state_dict().items()}
    assert old in state
    state[new] = state.pop(old)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "renamed.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"'{named or new}'")):
        load_pretrained(timm.create_model(VIDEO, **tiny()), tmp_path / "renamed.safetensors", source=source)


def test_learned_pos_embed_and_bad_directories_are_refused(tmp_path: Path) -> None:
    state = timm.create_model(VIDEO, **tiny()).state_dict()
    torch.save({**state, "pos_embed": torch.randn(1, 32, 64)}, tmp_path / "learned.pth")
    with pytest.raises(CheckpointError, match="learned pos_embed"):
        load_pretrained(timm.create_model(VIDEO, **tiny()), tmp_path / "learned.pth", source="videomae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(timm.create_model(VIDEO, **tiny()), tmp_path / "empty", source="hf-videomae")


def tiny_image() -> dict[str, Any]:
    return {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 10}


def test_inflated_image_vit_sees_a_static_clip_as_the_image(tmp_path: Path) -> None:
    image = timm.create_model("vit_tiny_patch16_224", **tiny_image()).eval()
    _perturb([image], 0.05)  # includes non-zero k biases, which inflation drops
    state = image.state_dict() | {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 64)}
    torch.save({"model": state}, tmp_path / "mae.pth")
    video = timm.create_model(VIDEO, num_classes=3, **tiny()).eval()
    report = load_pretrained(video, tmp_path / "mae.pth", source="inflate-image", keep_head=False)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}

    frame = torch.randn(2, 3, 32, 32)
    clip = frame[:, :, None].expand(-1, -1, 4, -1, -1)  # (B, C, T, H, W), all frames equal
    with torch.no_grad():
        per_frame = image.patch_embed(frame)  # (B, 16, D): 4 x 4 spatial positions
        tokens = video.patch_embed(clip).reshape(2, 2, 16, 64)  # (B, T', H'W', D)
        for t in range(2):
            torch.testing.assert_close(tokens[:, t], per_frame, rtol=0, atol=1e-5)
        x = torch.randn(2, 32, 64)
        for theirs, ours in zip(image.blocks, video.blocks, strict=True):  # dropping the k bias is exact
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
