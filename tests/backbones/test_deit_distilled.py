"""DeiT's distilled ViTs (``deit_*_distilled``): both heads (class token and distillation token) are task heads, the
model's output is their average in training as in evaluation, and everything else works as for the other ViTs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from adaptformer import (
    AdaptFormerConfig,
    SpeedConfig,
    UnsupportedModelError,
    adapt,
    apply_speed,
    build_backbone,
    create_model,
    load_adapter,
    parameter_report,
    save_adapter,
)
from adaptformer.heads import set_head
from adaptformer.methods.adaptformer import attach
from adaptformer.methods.state import task_state_dict
from adaptformer.speed.class_token_tail import class_token_tail_reason

DEIT = "deit_tiny_distilled_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
WIDTH, CLASSES = 32, 5


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(method: str | AdaptFormerConfig = "adaptformer", **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model(DEIT, CLASSES, method=method, init_seed=1, **TINY, **kwargs)


@pytest.mark.parametrize("head", ["paper", "linear"])
def test_both_heads_are_replaced_and_averaged(head: str) -> None:
    model = _model(head=head).eval()
    assert type(model.head) is type(model.head_dist) and model.head is not model.head_dist
    assert not model.distilled_training
    x = _images()
    for mode in (model.eval, model.train):
        mode()
        with torch.no_grad():
            tokens = model.forward_features(x)  # (B, 2 + N, D): class token, distillation token, patches
            expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
            assert torch.allclose(model(x), expected, atol=1e-6)  # training's loss reads this average too


def test_a_model_set_up_for_distillation_is_given_the_averaged_output() -> None:
    torch.manual_seed(1)
    model = build_backbone(DEIT, CLASSES, **TINY)
    model.set_distilled_training(True)  # timm would return (head, head_dist) logits in training
    adapted = adapt(model, "adaptformer").train()
    assert adapted(_images()).shape == (4, CLASSES)


def test_adapters_at_init_keep_the_backbone_function() -> None:
    torch.manual_seed(0)
    plain = timm.create_model(DEIT, num_classes=CLASSES, **TINY)
    set_head(plain, "paper", CLASSES)
    plain.eval()
    adapted = attach(copy.deepcopy(plain), AdaptFormerConfig()).eval()
    with torch.no_grad():
        assert torch.equal(adapted(_images()), plain(_images()))


@pytest.mark.parametrize("method", ["adaptformer", "vpt", "linear"])
def test_one_step_changes_only_the_method_and_both_heads(method: str) -> None:
    model = _model(AdaptFormerConfig(dropout=0.0) if method == "adaptformer" else method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} - {"blocks"} == {"head", "head_dist"}
    assert not any(p.requires_grad for p in (model.cls_token, model.dist_token, model.pos_embed))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(_images()), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert {k for k in changed if k not in trainable and "running_" not in k and "num_batches" not in k} == set()
    assert trainable <= changed


def test_save_load_round_trip_gives_equal_logits(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.train()(_images())  # BatchNorm statistics of both paper heads
    model.eval()
    save_adapter(model, tmp_path)
    saved = task_state_dict(model)
    assert {k.split(".")[0] for k in saved} == {"blocks", "head", "head_dist"}
    restored = load_adapter(build_backbone(DEIT, CLASSES, init_seed=1, **TINY), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(restored(_images()), model(_images()))


@pytest.mark.parametrize("bottleneck", [4, 8])
def test_parameter_count_is_the_adapters_plus_two_heads(bottleneck: int) -> None:
    model = _model(AdaptFormerConfig(bottleneck=bottleneck))
    report = parameter_report(model).to_dict()["groups"]
    heads = 2 * (WIDTH * CLASSES + CLASSES)  # two Linear heads (the paper head's BatchNorm has no affine)
    adapters = TINY["depth"] * (2 * WIDTH * bottleneck + bottleneck + WIDTH)  # down + up projections, with biases
    assert report["head"] == {"trainable": heads, "total": heads}
    assert report["adapters"]["trainable"] == adapters
    assert parameter_report(model).trainable == heads + adapters


def test_speed_options_leave_the_distilled_output_alone() -> None:
    model = _model().eval()
    assert class_token_tail_reason(model) == "its head also reads the distillation token"
    with torch.no_grad():
        expected = model(_images())
        assert torch.allclose(apply_speed(model, SpeedConfig(), "cpu", "fp32")(_images()), expected, atol=1e-5)


def test_an_unsupported_block_is_named_with_its_module() -> None:
    """timm has several classes named ``Block`` (ViT's, BEiT's, TNT's, ...): the error says which one."""
    tnt = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "inner_dim": 8, "depth": 2, "num_heads_inner": 2,
           "num_heads_outer": 2}  # fmt: skip
    model = timm.create_model("tnt_s_legacy_patch16_224", num_classes=CLASSES, **tnt)
    with pytest.raises(UnsupportedModelError, match=r"TNT with blocks: timm\.models\.tnt\.Block; supported: vit"):
        attach(model, AdaptFormerConfig())
    with pytest.raises(UnsupportedModelError, match=r"VPT .*TNT has \['timm\.models\.tnt\.Block'\]"):
        create_model("tnt_s_legacy_patch16_224", CLASSES, method="vpt", **tnt)


def test_a_distilled_checkpoint_loads_with_both_of_its_heads_dropped(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model(DEIT, num_classes=1000, **TINY)  # as published: 1000-class head and head_dist
    torch.save({"model": source.state_dict()}, tmp_path / "deit.pth")
    model = create_model(DEIT, CLASSES, checkpoint=tmp_path / "deit.pth", **TINY)
    for name, tensor in source.state_dict().items():
        if not name.startswith(("head.", "head_dist.")):
            assert torch.equal(model.state_dict()[name], tensor), name
