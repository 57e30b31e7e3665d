"""The pure PEFT <-> LoRA conversions (methods/peft_lora.py) without PEFT itself: the block-diagonal form of per-third
updates, the zero padding to one rank, what is refused by name (tests/inference/test_peft_files.py runs them against
a real PEFT)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import move_trainable

from adaptformer import LoRAConfig, build_backbone, create_model
from adaptformer.inference.robustness.interpolation import interpolated
from adaptformer.methods.peft_lora import PREFIX, PeftConversionError, check_peft_config, from_peft, to_peft

KWARGS = tiny_kwargs(VIT, depth=2)


def _model(config: LoRAConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return move_trainable(create_model(VIT, 5, method=config, head="linear", init_seed=0, **KWARGS), 0.3).eval()


def test_per_third_updates_go_out_stacked_in_a_and_block_diagonal_in_b() -> None:
    model = _model(LoRAConfig(rank=2, alpha=3, targets=("q", "v", "o")))
    config, tensors = to_peft(model)
    assert config["r"] == 4 and config["lora_alpha"] == 6 and config["target_modules"] == ["attn.proj", "attn.qkv"]
    qkv = model.blocks[0].attn.qkv
    a, b = tensors[f"{PREFIX}blocks.0.attn.qkv.lora_A.weight"], tensors[f"{PREFIX}blocks.0.attn.qkv.lora_B.weight"]
    assert torch.equal(a, torch.cat([qkv.lora["q"].A, qkv.lora["v"].A]))
    d = qkv.in_features
    assert torch.equal(b[:d, :2], qkv.lora["q"].B) and torch.equal(b[2 * d :, 2:], qkv.lora["v"].B)
    assert b[:d, 2:].abs().sum() == 0 and b[d : 2 * d].abs().sum() == 0 and b[2 * d :, :2].abs().sum() == 0
    proj_a = tensors[f"{PREFIX}blocks.0.attn.proj.lora_A.weight"]  # rank 2, padded to 4 with zero rows
    assert torch.equal(proj_a[:2], model.blocks[0].attn.proj.lora["o"].A) and proj_a[2:].abs().sum() == 0
    expected = 1.5 * b @ a  # the whole update, as PEFT computes it
    ours = torch.cat(
        [1.5 * qkv.lora["q"].B @ qkv.lora["q"].A, torch.zeros(d, d), 1.5 * qkv.lora["v"].B @ qkv.lora["v"].A]
    )
    torch.testing.assert_close(expected, ours)
    assert set(tensors) >= {f"{PREFIX}head.weight", f"{PREFIX}head.bias"}


def test_a_model_scaled_by_interpolation_is_not_exported_as_its_config() -> None:
    with pytest.raises(PeftConversionError, match=r"lora.q: scaling 0.5, its config says 1.0"):
        to_peft(interpolated(_model(LoRAConfig(rank=2)), 0.5))


def test_what_peft_wrote_imports_and_projections_must_be_the_same_in_each_block() -> None:
    model = _model(LoRAConfig(rank=2, targets=("qkv", "o"), layers=(1,)))
    config, tensors = to_peft(model)
    plain = build_backbone(VIT, 5, **KWARGS)
    lora, ours = from_peft(config, tensors, plain)
    assert lora == LoRAConfig(rank=2, targets=("qkv", "o"), layers=(1,))
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items() if k in ours) and len(ours) == 6
    uneven = {k: v for k, v in tensors.items() if "blocks.1.attn.proj" not in k}
    uneven |= {k.replace("blocks.1.attn.qkv", "blocks.0.attn.proj"): v[:, :32] if "lora_A" in k else v[:32]
               for k, v in tensors.items() if "blocks.1.attn.qkv" in k}  # fmt: skip
    with pytest.raises(PeftConversionError, match=r"adapts \[\(0, 'o'\), \(1, 'qkv'\)\] \(block, projection\)"):
        from_peft({**config, "target_modules": ["qkv", "attn.proj"]}, uneven, plain)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"peft_type": None}, "peft_type None: this library reads PEFT's LORA adapters only"),  # e.g. our own folder
        ({"peft_type": "LOKR"}, "peft_type 'LOKR'"),
        ({"r": "8"}, "r '8': expected a positive int"),
        ({"lora_alpha": 0}, "lora_alpha 0: expected a number > 0"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out True"),
        ({"lora_bias": True}, "lora_bias True"),
        ({"layer_replication": [[0, 1]]}, r"layer_replication \[\[0, 1\]\]: a PEFT setting this library does not"),
    ],
)
def test_config_settings_are_refused_by_key_and_value(changes: dict[str, Any], message: str) -> None:
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["qkv"], "modules_to_save": ["head"]}
    check_peft_config(base)
    with pytest.raises(PeftConversionError, match=message):
        check_peft_config({**base, **changes})
