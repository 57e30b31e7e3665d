"""The segmentation model: logits of the input's size for ViT and Swin with both heads (non-square inputs too), every
method trains its own modules and the decode head and nothing else, the linear probe leaves the backbone bit-identical,
the parameter report counts the decode head apart, and the config resolves its layers as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import SWIN, VIT
from tests.segmentation.tiny_segmenters import CLASSES, TV_VIT, tiny_segmenter
from tests.training_step import move_trainable

from adaptformer import count_trainable, get_method, method_names, parameter_report
from adaptformer.errors import UnsupportedModelError
from adaptformer.segmentation import FeatureLayout, LinearHead, SegmentationConfig, create_segmentation_model


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    target = torch.randint(0, CLASSES, (x.shape[0], *x.shape[-2:]), generator=torch.Generator().manual_seed(0))
    target[:, :4] = model.ignore_index  # rows that carry no loss
    return F.cross_entropy(model(x), target, ignore_index=model.ignore_index)


@pytest.mark.parametrize("size", [(32, 48), (40, 32)])
@pytest.mark.parametrize("head", ["linear", "upernet"])
@pytest.mark.parametrize("name", [VIT, SWIN])
def test_logits_have_the_input_size(name: str, head: str, size: tuple[int, int]) -> None:
    model = tiny_segmenter(name, "linear", head).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, CLASSES, *size) and torch.isfinite(logits).all()
    assert model.input_multiple == 8 and model.layout.fixed_size is None  # ViT: patch 8; Swin: patch 4, 2 stages


METHODS = [m for m in method_names() if m != "vpt"]
CASES = [
    *[(VIT, m, h) for m in (*METHODS, "vpt") for h in ("linear", "upernet")],
    *[(SWIN, m, h) for m in METHODS for h in ("linear", "upernet")],
    *[(TV_VIT, "adaptformer", h) for h in ("linear", "upernet")],
]


@pytest.mark.parametrize(("name", "method", "head"), CASES)
def test_every_method_trains_its_modules_and_the_decode_head(name: str, method: str, head: str) -> None:
    model = move_trainable(tiny_segmenter(name, method, head), 0.2).train()
    registered = get_method(method)
    if registered.trains_backbone:
        expected = {n for n, _ in model.named_parameters()}
    else:
        ids = {id(p) for m in registered.modules(model) for p in m.parameters()}
        ids |= {id(p) for p in model.decode_head.parameters()}
        expected = {n for n, p in model.named_parameters() if id(p) in ids}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected and any(n.startswith("decode_head.") for n in trainable)
    assert registered.trains_backbone or registered.modules(model) or method == "linear"

    _loss(model, torch.randn(2, 3, 32, 32)).backward()
    no_gradient = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_gradient == (["backbone.norm.weight", "backbone.norm.bias"] if method == "full" else [])  # raw blocks
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_vpt_on_swin_is_refused_by_the_method() -> None:
    with pytest.raises(UnsupportedModelError, match="VPT supports timm ViT blocks"):
        tiny_segmenter(SWIN, "vpt")


@pytest.mark.parametrize(("name", "head"), [(VIT, "linear"), (SWIN, "upernet")])
def test_a_linear_probe_leaves_the_backbone_bit_identical(name: str, head: str) -> None:
    model = tiny_segmenter(name, "linear", head).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    for step in range(3):
        optimizer.zero_grad()
        _loss(model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(step))).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head_parameters = {f"decode_head.{n}" for n, _ in model.decode_head.named_parameters()}
    assert head_parameters <= changed and all(k.startswith("decode_head.") for k in changed)


def test_the_parameter_report_counts_the_decode_head_apart() -> None:
    model = tiny_segmenter(VIT, "adaptformer", "upernet")
    report = parameter_report(model).to_dict()
    head = sum(p.numel() for p in model.decode_head.parameters())
    adapters = sum(p.numel() for m in get_method("adaptformer").modules(model) for p in m.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters()) - adapters
    assert report["groups"] == {
        "adapters": {"trainable": adapters, "total": adapters},
        "head": {"trainable": head, "total": head},
        "backbone": {"trainable": 0, "total": backbone},
    }
    assert report["trainable"] == count_trainable(model) == adapters + head


def test_the_linear_head_reads_the_last_four_blocks_concatenated() -> None:
    """DINOv2's linear protocol on the shipped tiny ViT (6 blocks of width 128)."""
    model = create_segmentation_model("vit_shapes_patch8_32", CLASSES, method="linear", layers=[-4, -3, -2, -1],
                                      checkpoint="timm")  # fmt: skip
    assert model.config.layers == (2, 3, 4, 5) and isinstance(model.decode_head, LinearHead)
    assert model.decode_head.norm.num_features == 4 * 128 and model.decode_head.classifier.out_channels == CLASSES
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, CLASSES, 32, 32)


VIT_12 = FeatureLayout("vit", False, (768,) * 12, (16, 16))
SWIN_4 = FeatureLayout("swin", True, (128, 256, 512, 1024), (4, 4))


@pytest.mark.parametrize(
    ("config", "layout", "layers"),
    [
        (SegmentationConfig("linear"), VIT_12, (11,)),
        (SegmentationConfig("upernet"), VIT_12, (2, 5, 8, 11)),
        (SegmentationConfig("upernet", layers=(3, 5, 7, -1)), VIT_12, (3, 5, 7, 11)),  # BEiT's and MAE's blocks
        (SegmentationConfig("linear"), SWIN_4, (3,)),
        (SegmentationConfig("upernet"), SWIN_4, (0, 1, 2, 3)),
    ],
)
def test_the_config_resolves_the_heads_default_layers(config, layout, layers) -> None:
    assert config.resolved(layout).layers == layers
    assert SWIN_4.stride(3) == (32, 32) and VIT_12.divisor == (16, 16)


@pytest.mark.parametrize(
    ("config", "layout", "message"),
    [
        (SegmentationConfig("upernet", layers=(9, 11)), VIT_12, "upernet on a plain ViT reads 4 blocks"),
        (SegmentationConfig("linear", layers=(12,)), VIT_12, r"layers \[12\] out of range: the backbone has 12 blocks"),
        (SegmentationConfig("upernet", layers=(1, 0)), SWIN_4, "reads stages from fine to coarse"),
    ],
)
def test_layers_the_backbone_or_head_cannot_take_are_refused(config, layout, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.resolved(layout)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"head": "fcn"}, r"head must be one of \['linear', 'upernet'\]"),
        ({"layers": []}, "layers must be a non-empty list"),
        ({"channels": 0}, "channels must be an int >= 1"),
        ({"ignore_index": -1}, "ignore_index must be an int >= 0"),
    ],
)
def test_a_bad_config_is_a_value_error(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SegmentationConfig(**fields)


def test_the_backbones_no_weight_decay_names_reach_the_optimizer() -> None:
    """Under full fine-tuning the position embedding and class token stay out of weight decay, as for a classifier."""
    from adaptformer.engine.optim import param_groups

    model = tiny_segmenter(VIT, "full")
    assert {"backbone.pos_embed", "backbone.cls_token"} <= model.no_weight_decay()
    decayed = {id(p) for group in param_groups(model, 0.05) if group["weight_decay"] for p in group["params"]}
    assert id(model.backbone.pos_embed) not in decayed and id(model.backbone.cls_token) not in decayed
    assert id(model.backbone.blocks[0].attn.qkv.weight) in decayed
