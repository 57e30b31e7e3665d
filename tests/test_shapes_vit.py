"""The tiny pre-trained backbone that ships with the package loads offline, by name, through timm's mechanism."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import load_file

from adaptformer import count_trainable, create_model
from adaptformer.models.shapes_vit import SHAPES_VIT_FILE

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
