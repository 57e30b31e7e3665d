"""The decode head's features are the adapted blocks' outputs: for every method (VPT's prompts and the class and
register tokens dropped) and every backbone family they equal the block / stage outputs of the adapted classifier
with the same tensors, caught by forward hooks; at init AdaptFormer's features are the frozen backbone's; input
sizes the backbone cannot take are clear errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
from tests.conftest import SWIN, VIDEO_KWARGS, VIT
from tests.segmentation.tiny_segmenters import CLASSES, SEG_KWARGS, TV_SWIN, TV_VIT, tiny_segmenter
from tests.training_step import move_trainable

from adaptformer import LoRAConfig, VPTConfig, create_model
from adaptformer.errors import UnsupportedModelError
from adaptformer.heads import classifier_paths
from adaptformer.segmentation import create_segmentation_model

DINOV2 = "vit_small_patch14_reg4_dinov2"  # 4 register tokens, layer scale
EVA = "eva02_tiny_patch14_224"  # rotary position embedding, SwiGLU
BEIT = "beit_base_patch16_224"  # relative position bias
OTHER_KWARGS: dict[str, dict[str, Any]] = {
    DINOV2: {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
    EVA: {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
    BEIT: {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}
# (backbone, method, extra timm kwargs, patch size: None for a hierarchical backbone)
CASES = [
    pytest.param(VIT, "adaptformer", {}, 8, id="vit-adaptformer"),
    pytest.param(VIT, "adapter_plus", {}, 8, id="vit-adapter_plus"),
    pytest.param(VIT, LoRAConfig(targets=("q", "v", "o")), {}, 8, id="vit-lora"),
    pytest.param(VIT, VPTConfig(num_tokens=2), {}, 8, id="vit-vpt-deep"),
    # VPT-shallow keeps its prompts in every block's output but the last; 2 register tokens after the class token
    pytest.param(VIT, VPTConfig(num_tokens=2, deep=False), {"reg_tokens": 2}, 8, id="vit-vpt-shallow-registers"),
    pytest.param(VIT, "linear", {"reg_tokens": 2}, 8, id="vit-linear-registers"),
    pytest.param(VIT, "full", {}, 8, id="vit-full"),
    pytest.param(SWIN, "adaptformer", {}, None, id="swin-adaptformer"),
    pytest.param(SWIN, "lora", {}, None, id="swin-lora"),
    pytest.param(SWIN, "adapter_plus", {}, None, id="swin-adapter_plus"),
    pytest.param(TV_VIT, "adaptformer", {}, 8, id="torchvision-vit-adaptformer"),
    pytest.param(TV_SWIN, "adaptformer", {}, None, id="torchvision-swin-adaptformer"),
    pytest.param(DINOV2, "adaptformer", {}, 14, id="dinov2-registers-adaptformer"),
    pytest.param(EVA, "adaptformer", {}, 14, id="eva-adaptformer"),
    pytest.param(BEIT, "adaptformer", {}, 8, id="beit-adaptformer"),
]


def _kwargs(name: str) -> dict[str, Any]:
    return SEG_KWARGS.get(name) or OTHER_KWARGS[name]


def _outputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the maps, found here by each library's own layout: blocks, or whole stages."""
    if hasattr(model, "encoder"):  # torchvision ViT
        return list(model.encoder.layers)
    if hasattr(model, "features"):  # torchvision Swin: patch embedding, stage, merging, stage, ...
        return [model.features[i] for i in range(1, len(model.features), 2)]
    return list(model.layers) if hasattr(model, "layers") else list(model.blocks)  # timm Swin; timm ViT family


def _hooked_maps(model: nn.Module, x: torch.Tensor, patch: int | None) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for m in _outputs(model)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    if patch is None:
        return [out.permute(0, 3, 1, 2) for out in outputs]  # (B, h, w, C) -> (B, C, h, w)
    h, w = x.shape[-2] // patch, x.shape[-1] // patch
    return [out[:, -h * w :].transpose(1, 2).reshape(len(x), -1, h, w) for out in outputs]  # patches last


@pytest.mark.parametrize(("name", "method", "extra", "patch"), CASES)
def test_features_are_the_adapted_classifiers_block_outputs(name: str, method, extra: dict, patch: int | None) -> None:
    kwargs = {**_kwargs(name), **extra}
    classifier = create_model(name, CLASSES, method=method, init_seed=0, **kwargs).eval()
    count = len(_outputs(classifier))
    seg = tiny_segmenter(name, method, layers=tuple(range(count)), **kwargs)
    move_trainable(seg, 0.2).eval()  # adapters, prompts and LoRA factors away from their (identity) init
    state = {k.removeprefix("backbone."): v for k, v in seg.state_dict().items() if k.startswith("backbone.")}
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    assert unexpected == [] and {k.rsplit(".", 2)[0] for k in missing} <= {*classifier_paths(classifier), "head"}
    size = 28 if patch == 14 else 32
    x = torch.randn(2, 3, size, size)

    expected = _hooked_maps(classifier, x, patch)
    with torch.no_grad():
        got = seg.features(x)
    assert len(got) == count
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, i=i: f"map {i}: {m}")


@pytest.mark.parametrize(("name", "layers"), [(VIT, (0, 1, 2)), (SWIN, (0, 1))])
def test_at_init_adaptformers_features_are_the_frozen_backbones(name: str, layers: tuple[int, ...]) -> None:
    adapted, plain = (tiny_segmenter(name, m, layers=layers).eval() for m in ("adaptformer", "linear"))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        for a, b in zip(adapted.features(x), plain.features(x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "message"),
    [
        (VIT, SEG_KWARGS[VIT], (32, 36), "input 32x36 is not a multiple of 8x8 (the backbone's patch size)"),
        (SWIN, SEG_KWARGS[SWIN], (36, 32), "input 36x32 is not a multiple of 8x8 (the backbone's total stride"),
        (VIT, {**SEG_KWARGS[VIT], "dynamic_img_size": False}, (32, 48), "takes 32x32 inputs only, got 32x48"),
        (TV_VIT, SEG_KWARGS[TV_VIT], (48, 32), "takes 32x32 inputs only"),
    ],
)
def test_an_input_size_the_backbone_cannot_take_is_a_clear_error(name: str, kwargs, size, message: str) -> None:
    model = tiny_segmenter(name, "linear", **kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(torch.randn(1, 3, *size))


def test_a_backbone_without_transformer_blocks_or_of_video_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="cannot attach a segmentation head to ResNet"):
        create_segmentation_model("resnet18", CLASSES, method="linear")
    with pytest.raises(UnsupportedModelError, match="takes video clips; segmentation takes image backbones"):
        create_segmentation_model("video_vit_small_patch16_224", CLASSES, **VIDEO_KWARGS)
