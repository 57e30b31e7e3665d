"""The tiny pre-trained backbone that ships with the package loads offline, by name, through timm's mechanism."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from tests.paths import ROOT

from adaptformer import count_trainable, create_model
from adaptformer.backbones.shapes_vit import SHAPES_VIT_FILE
from adaptformer.errors import CheckpointError

# scripts/pretrain_shapes.py printed this for the committed file (see BENCHMARKS.md)
SHIPPED_SHA256 = "8b1afa1a5ac7c2c651a86035a4939bf787387b53122a8e522137898ddd151096"


def test_shipped_file_is_the_recorded_one_and_small() -> None:
    assert hashlib.sha256(SHAPES_VIT_FILE.read_bytes()).hexdigest() == SHIPPED_SHA256
    assert SHAPES_VIT_FILE.stat().st_size < 10 * 2**20


def test_loads_by_name_with_timm_pretrained_mechanism() -> None:
    model = create_model("vit_shapes_patch8_32", 10, checkpoint="timm")
    shipped = load_file(str(SHAPES_VIT_FILE))
    for name in ("blocks.5.mlp.fc2.weight", "pos_embed", "patch_embed.proj.weight", "norm.bias"):
        assert torch.equal(model.state_dict()[name], shipped[name].float()), name
    assert count_trainable(model) == 6 * (128 * 64 + 64 + 64 * 128 + 128) + 129 * 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embed_dim": 64}, CheckpointError, r"timm's pretrained weights for 'vit_shapes_patch8_32' do not fit the "
         r"model built with kwargs \{'embed_dim': 64\}: shape mismatch for \d+ keys: cls_token: file \(1, 1, 128\) vs "
         r"model \(1, 1, 64\); pos_embed: file \(1, 17, 128\) vs model \(1, 17, 64\)"),
        ({"num_heads": 3}, ValueError, r"model kwargs \{'num_heads': 3\} do not build 'vit_shapes_patch8_32': dim "
         "should be divisible by num_heads"),
    ],
)  # fmt: skip
def test_kwargs_that_do_not_fit_the_timm_weights_are_named(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        create_model("vit_shapes_patch8_32", 10, checkpoint="timm", **kwargs)


def test_the_pretraining_script_passes_flags_that_parse(capsys) -> None:
    """scripts/pretrain_shapes.py trains through the CLI: its flags are the current ones (`params` reads the same)."""
    import importlib.util

    from adaptformer.cli import main

    path = ROOT / "scripts" / "pretrain_shapes.py"
    spec = importlib.util.spec_from_file_location("pretrain_shapes", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.TRAIN_ARGS[0] == "train"
    assert main(["params", *script.TRAIN_ARGS[1:], "--num-classes", "64"]) == 0
    head = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("head")]
    assert head == [["head", f"{128 * 64 + 64:,}", f"{128 * 64 + 64:,}"]]  # the linear head for 64 shapes
