"""AdaptFormerConfig validation and the AdaptMLP branch, checked against the formula computed in the test."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from adaptformer.methods import AdaptFormerConfig, AdaptMLP


def test_defaults_are_the_authors_code() -> None:
    c = AdaptFormerConfig()
    assert (c.bottleneck, c.scale, c.input, c.layernorm, c.dropout, c.init, c.form, c.layers) == (
        64,
        0.1,
        "residual",
        "none",
        0.1,
        "lora",
        "parallel",
        None,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bottleneck": 0}, "bottleneck must be >= 1"),
        ({"bottleneck": 1.5}, "ratio"),
        ({"bottleneck": "64"}, "bottleneck must be"),
        ({"bottleneck": [8, 0]}, "per stage"),
        ({"scale": "0.1"}, "scale must be"),
        ({"scale": float("nan")}, "finite"),
        ({"input": "ln"}, "input must be one of"),
        ({"layernorm": "both"}, "layernorm must be one of"),
        ({"dropout": 1.0}, "dropout"),
        ({"init": "xavier"}, "init must be one of"),
        ({"form": "serial"}, "form must be one of"),
        ({"layers": [0, 0]}, "duplicate"),
        ({"layers": [-1]}, "layers"),
        ({"form": "sequential", "input": "normed"}, "parallel form only"),
    ],
)
def test_bad_values_raise_clear_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptFormerConfig(**kwargs)


def test_json_round_trip_and_unknown_fields() -> None:
    c = AdaptFormerConfig(bottleneck=(4, 8), scale="learnable", layers=(3, 1), layernorm="in")
    back = AdaptFormerConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.layers == (1, 3)
    with pytest.raises(ValueError, match="unknown AdaptFormerConfig fields \\['bottle'\\]"):
        AdaptFormerConfig.from_dict({"bottle": 4})


@pytest.mark.parametrize(
    "bottleneck, width, stage, expected",
    [(64, 768, 0, 64), (1 / 12, 768, 0, 64), (1 / 12, 128, 0, 10), ((3, 5), 64, 1, 5)],
)
def test_bottleneck_per_block(bottleneck: object, width: int, stage: int, expected: int) -> None:
    assert AdaptFormerConfig(bottleneck=bottleneck).bottleneck_for(width, stage) == expected


def test_lora_init_zeroes_output_and_biases() -> None:
    m = AdaptMLP(16, 4, AdaptFormerConfig())
    assert torch.count_nonzero(m.up_proj.weight) == 0
    assert torch.count_nonzero(m.down_proj.bias) == 0 and torch.count_nonzero(m.up_proj.bias) == 0
    assert torch.count_nonzero(m.down_proj.weight) > 0
    assert torch.count_nonzero(m.branch(torch.randn(2, 5, 16))) == 0


@pytest.mark.parametrize("layernorm", ["none", "in", "out"])
@pytest.mark.parametrize("scale", [0.1, "learnable"])
def test_forward_matches_formula(layernorm: str, scale: object) -> None:
    m = AdaptMLP(16, 4, AdaptFormerConfig(scale=scale, layernorm=layernorm)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2, 5, 16)
    s = m.scale.item() if scale == "learnable" else 0.1
    if scale == "learnable":
        assert s != 1.0  # the perturbation moved it, so the test sees the learned value being used
    h = F.layer_norm(x, (16,), m.norm.weight, m.norm.bias) if layernorm == "in" else x
    ref = F.relu(h @ m.down_proj.weight.T + m.down_proj.bias) @ m.up_proj.weight.T + m.up_proj.bias
    ref = ref * s
    if layernorm == "out":
        ref = F.layer_norm(ref, (16,), m.norm.weight, m.norm.bias)
    torch.testing.assert_close(m.branch(x), ref)


def test_dropout_after_relu_only_in_training() -> None:
    m = AdaptMLP(16, 64, AdaptFormerConfig(dropout=0.5))
    with torch.no_grad():
        m.up_proj.weight.normal_()
    x = torch.randn(3, 16)
    m.eval()
    assert torch.equal(m.branch(x), m.branch(x))
    m.train()
    assert not torch.equal(m.branch(x), m.branch(x))
