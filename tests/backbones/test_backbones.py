"""Attaching adapters to timm ViT and Swin: exact identity at init, the block formula, names, errors (compile: the
family table of test_families.py)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.conftest import SWIN, VIT, tiny_kwargs

from adaptformer import AdaptFormerConfig, UnsupportedModelError, create_model
from adaptformer.methods import adapter_modules
from adaptformer.methods.adaptformer import AdaptedSwinBlock, AdaptedViTBlock, attach

VARIANTS = [
    {"form": "parallel", "input": "residual"},
    {"form": "parallel", "input": "normed"},
    {"form": "sequential"},
    {"form": "parallel", "layernorm": "out", "scale": "learnable"},
    {"form": "parallel", "layernorm": "in"},
]
BACKBONES = [
    (VIT, {}),
    (VIT, {"global_pool": "avg", "class_token": False}),
    (VIT, {"init_values": 1e-5, "drop_path_rate": 0.1}),  # LayerScale + drop-path
    (SWIN, {}),
]


@pytest.mark.parametrize("name, extra", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_is_bit_exact(name: str, extra: dict, variant: dict, images: torch.Tensor) -> None:
    plain = timm.create_model(name, num_classes=5, **tiny_kwargs(name, **extra)).eval()
    adapted = attach(copy.deepcopy(plain), AdaptFormerConfig(**variant)).eval()
    assert len(adapter_modules(adapted)) > 0
    with torch.no_grad():
        assert torch.equal(adapted(images), plain(images))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for adapter in adapter_modules(model):
            for p in adapter.parameters():
                p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("variant", VARIANTS)
def test_vit_block_matches_reference_formula(variant: dict) -> None:
    model = attach(timm.create_model(VIT, num_classes=5, **tiny_kwargs(VIT)), AdaptFormerConfig(**variant)).eval()
    _perturb(model)
    block = model.blocks[1]
    a = block.adaptmlp
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        xp = x + block.attn(block.norm1(x))  # x': residual stream after attention
        s = a.scale if isinstance(a.scale, float) else a.scale.item()

        def adapter(v: torch.Tensor) -> torch.Tensor:
            if a.layernorm == "in":
                v = F.layer_norm(v, (32,), a.norm.weight, a.norm.bias)
            out = s * (F.relu(v @ a.down_proj.weight.T + a.down_proj.bias) @ a.up_proj.weight.T + a.up_proj.bias)
            return F.layer_norm(out, (32,), a.norm.weight, a.norm.bias) if a.layernorm == "out" else out

        h = block.mlp(block.norm2(xp))
        if variant["form"] == "sequential":
            ref = xp + (h + adapter(h))
        else:
            ref = xp + h + adapter(block.norm2(xp) if variant.get("input") == "normed" else xp)
        torch.testing.assert_close(block(x), ref)
        assert not torch.allclose(block(x), xp + h)  # the adapter contributes


def test_swin_block_matches_reference_formula() -> None:
    model = attach(timm.create_model(SWIN, num_classes=5, **tiny_kwargs(SWIN)), AdaptFormerConfig()).eval()
    _perturb(model)
    block = model.layers[1].blocks[1]
    a = block.adaptmlp
    x = torch.randn(2, 4, 4, 64)  # (B, H, W, C)
    with torch.no_grad():
        xp = (x + block._attn(block.norm1(x))).reshape(2, 16, 64)
        ref = xp + block.mlp(block.norm2(xp)) + 0.1 * a.up_proj(F.relu(a.down_proj(xp)))
        torch.testing.assert_close(block(x), ref.reshape(2, 4, 4, 64))


def test_backbone_parameter_names_unchanged_and_adapter_prefixed() -> None:
    plain = timm.create_model(VIT, num_classes=5, **tiny_kwargs(VIT))
    adapted = attach(copy.deepcopy(plain), AdaptFormerConfig(layers=(0, 2)))
    new_keys = set(adapted.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(adapted.state_dict())
    assert new_keys == {
        f"blocks.{i}.adaptmlp.{p}.{w}" for i in (0, 2) for p in ("down_proj", "up_proj") for w in ("weight", "bias")
    }
    assert (
        type(adapted.blocks[0]) is AdaptedViTBlock and type(adapted.blocks[1]) is timm.models.vision_transformer.Block
    )
    # any checkpoint of the plain backbone loads into the adapted model as is
    result = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == new_keys


def test_swin_per_stage_bottleneck() -> None:
    model = attach(timm.create_model(SWIN, num_classes=5, **tiny_kwargs(SWIN)), AdaptFormerConfig(bottleneck=(3, 7)))
    widths = [(type(b), b.adaptmlp.down_proj.out_features) for s in model.layers for b in s.blocks]
    assert widths == [(AdaptedSwinBlock, 3)] * 2 + [(AdaptedSwinBlock, 7)] * 2
    ratio = attach(timm.create_model(SWIN, num_classes=5, **tiny_kwargs(SWIN)), AdaptFormerConfig(bottleneck=1 / 12))
    assert [b.adaptmlp.down_proj.out_features for s in ratio.layers for b in s.blocks] == [2, 2, 5, 5]  # dim // 12


@pytest.mark.parametrize(
    "config, message",
    [
        (AdaptFormerConfig(layers=(0, 3)), r"layers \[3\] out of range: VisionTransformer has 3 blocks"),
        (AdaptFormerConfig(bottleneck=(4, 8)), "bottleneck lists 2 stage widths, the backbone has 1 stages"),
    ],
)
def test_layers_and_stages_validated_against_model(config: AdaptFormerConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attach(timm.create_model(VIT, num_classes=5, **tiny_kwargs(VIT)), config)


def test_unsupported_model_error_names_blocks_and_families() -> None:
    resnet = timm.create_model("resnet18", num_classes=5)
    expected = r"ResNet with blocks: timm\.models\.resnet\.BasicBlock; supported: vit .*Block\), swin"
    with pytest.raises(UnsupportedModelError, match=expected):
        attach(resnet, AdaptFormerConfig())
    assert issubclass(UnsupportedModelError, TypeError)  # code that caught the TypeError of 0.1 still does


def test_adapting_twice_is_refused() -> None:
    model = attach(timm.create_model(VIT, num_classes=5, **tiny_kwargs(VIT)), AdaptFormerConfig())
    with pytest.raises(ValueError, match="already has AdaptMLP"):
        attach(model, AdaptFormerConfig())


def test_adapted_model_deepcopies_and_pickles(tmp_path) -> None:
    model = create_model(VIT, 5, **tiny_kwargs(VIT)).eval()
    _perturb(model)
    x = torch.randn(2, 3, 32, 32)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(copy.deepcopy(model)(x), model(x))
