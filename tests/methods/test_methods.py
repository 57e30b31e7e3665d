"""Freezing rules, the paper's parameter counts, heads, and that one optimizer step moves only what should train."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.conftest import SWIN, VIT, tiny_kwargs

from adaptformer import (
    AdaptFormerConfig,
    ModelSpec,
    VPTConfig,
    adapt,
    count_trainable,
    create_model,
    parameter_report,
)
from adaptformer.methods import AdaptMLP, PromptTokens


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, classes, kwargs, expected",
    [
        ("adaptformer", 100, {}, 1_266_532),
        ("adaptformer", 10, {}, 1_197_322),
        ("adaptformer", 101, {}, 1_267_301),
        ("linear", 100, {}, 76_900),
        ("vpt", 100, {}, 86_116),  # 76,900 + 9,216 prompts
        (AdaptFormerConfig(bottleneck=1), 100, {}, 76_900 + 12 * (768 + 1 + 768 + 768)),
        ("full", 100, {}, 85_798_656 + 76_900),
    ],
)
def test_paper_parameter_counts_vit_b16(
    method: str | AdaptFormerConfig, classes: int, kwargs: dict, expected: int
) -> None:
    model = create_model("vit_base_patch16_224", classes, method=method, **kwargs)
    assert count_trainable(model) == expected
    report = parameter_report(model)
    groups = report.to_dict()["groups"]
    assert report.trainable == expected
    assert groups["backbone"]["total"] == 85_798_656 and groups["head"]["total"] == 769 * classes


def _tiny(method: str | AdaptFormerConfig | VPTConfig, **kwargs: object) -> nn.Module:
    return create_model(VIT, 5, method=method, **tiny_kwargs(VIT), **kwargs)


@pytest.mark.parametrize(
    "method, trainable_types",
    [("adaptformer", {AdaptMLP, nn.Sequential}), ("linear", {nn.Sequential}), ("vpt", {PromptTokens, nn.Sequential})],
)
def test_only_task_modules_require_grad(method: str, trainable_types: set) -> None:
    model = _tiny(method)
    owners = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        chain = [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]
        owner = next((type(m) for m in chain if isinstance(m, AdaptMLP | PromptTokens) or m is model.head), None)
        assert p.requires_grad == (owner is not None), name
        owners.add(owner)
    assert owners - {None} == trainable_types
    head_linear = model.head[1]
    assert all(p.requires_grad for p in head_linear.parameters())
    assert not any(p.requires_grad for p in model.patch_embed.parameters())


def test_adapt_applies_a_method_to_a_model_built_elsewhere(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    built = create_model(VIT, 5, method=AdaptFormerConfig(bottleneck=4), **tiny_kwargs(VIT))
    torch.manual_seed(0)
    own = adapt(timm.create_model(VIT, num_classes=5, **tiny_kwargs(VIT)), AdaptFormerConfig(bottleneck=4))
    assert count_trainable(own) == count_trainable(built) and own.adaptformer_spec == built.adaptformer_spec
    assert [n for n, p in own.named_parameters() if p.requires_grad] == [
        n for n, p in built.named_parameters() if p.requires_grad
    ]
    with torch.no_grad():
        assert torch.equal(own.eval()(images), built.eval()(images))  # same weights, same head init: same function
    with pytest.raises(ValueError, match="already has a method applied"):
        adapt(own, "linear")


def test_full_trains_everything() -> None:
    model = _tiny("full")
    assert all(p.requires_grad for p in model.parameters())
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["adaptformer", "linear", "vpt"])
def test_one_step_changes_only_task_parameters(method: str, images: torch.Tensor) -> None:
    model = _tiny(AdaptFormerConfig(dropout=0.0) if method == "adaptformer" else method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    for _ in range(2):  # the second step moves up_proj-dependent params (down_proj's grad is zero at step one)
        loss = F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = {k for k in changed if k not in trainable and "running_" not in k and "num_batches" not in k}
    assert frozen_changed == set()
    assert trainable <= changed  # every trainable tensor moved


def test_paper_head_and_linear_head() -> None:
    paper = _tiny("linear")
    bn, linear = paper.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.3) and torch.count_nonzero(linear.bias) == 0
    plain = _tiny("linear", head="linear")
    assert isinstance(plain.head, nn.Linear) and plain.head.out_features == 5
    swin = create_model(SWIN, 7, **tiny_kwargs(SWIN))
    assert isinstance(swin.head.fc, nn.Sequential) and swin(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_report_groups_sum_to_totals() -> None:
    model = _tiny("adaptformer")
    report = parameter_report(model)
    groups = report.to_dict()["groups"]
    assert groups["adapters"]["trainable"] == 3 * (32 * 64 + 64 + 64 * 32 + 32)
    assert groups["head"]["trainable"] == 33 * 5 and groups["backbone"]["trainable"] == 0
    assert report.total == sum(p.numel() for p in model.parameters())
    assert "adapters" in report.format() and "trainable" in report.format()


@pytest.mark.parametrize("deep, counts", [(True, [1, 1, 1]), (False, [1, 0, 0])])
def test_vpt_deep_and_shallow(deep: bool, counts: list[int], images: torch.Tensor) -> None:
    model = _tiny(VPTConfig(num_tokens=2, deep=deep)).eval()
    assert [int(hasattr(b.vpt, "tokens")) if hasattr(b, "vpt") else 0 for b in model.blocks] == counts
    seen = []
    model.norm.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    model(images)
    assert seen == [1 + 16]  # prompts were stripped before the final norm/pooling


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"method": "dora"},
            r"unknown method 'dora'; registered methods: "
            r"\['adaptformer', 'linear', 'full', 'vpt', 'lora', 'adapter_plus'\]",
        ),
        ({"head": "mlp"}, "head must be one of"),
        ({"num_classes": 0}, "num_classes"),
        ({"method": "linear", "method_config": AdaptFormerConfig()}, "method 'linear' takes a LinearConfig"),
    ],
)
def test_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(**{"backbone": VIT, **kwargs})


def test_spec_round_trip_rejects_unknown_fields() -> None:
    spec = ModelSpec(VIT, "vpt", VPTConfig(num_tokens=4, deep=False), num_classes=3)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"unknown model spec fields \['colour'\]"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": 1})
