"""Checkpoint source ``hf``: transformers' ViT / DINOv2 folders onto timm ViTs (the features' parity is in
tests/backbones/test_hf_parity.py); here a classification model's folder with its head, and what cannot be converted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.hf_folders import inputs, write_hf_model
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

from adaptformer import CheckpointError, build_backbone

TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def test_a_classification_models_folder_loads_with_its_head_and_gives_its_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, layer_norm_eps=1e-6, num_labels=5)  # fmt: skip
    theirs = ViTForImageClassification(config).eval()
    theirs.save_pretrained(tmp_path / "vit")  # keys under vit., the head as classifier.
    ours = build_backbone("vit_tiny_patch16_224", 5, tmp_path / "vit", "hf", keep_head=True, **TINY_TIMM).eval()
    x = inputs("vit")
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(pixel_values=x).logits)


def test_a_distilled_deit_folder_loads_both_heads_and_gives_its_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, layer_norm_eps=1e-6, num_labels=5)  # fmt: skip
    theirs = DeiTForImageClassificationWithTeacher(config).eval()
    theirs.save_pretrained(tmp_path / "deit")  # distillation token, cls_classifier and distillation_classifier
    name = "deit_tiny_distilled_patch16_224"
    ours = build_backbone(name, 5, tmp_path / "deit", "hf", keep_head=True, **TINY_TIMM).eval()
    x = inputs("vit")
    with torch.no_grad():  # both: the mean of the two heads' logits
        assert torch.equal(ours(x), theirs(pixel_values=x).logits)


def test_a_dinov2_with_swiglu_mlps_is_refused_naming_why(tmp_path: Path) -> None:
    write_hf_model("dinov2-swiglu", tmp_path / "swiglu")
    with pytest.raises(CheckpointError, match="SwiGLU MLPs .* no timm ViT layout to convert to"):
        build_backbone("vit_small_patch14_dinov2", 0, tmp_path / "swiglu", "hf", **TINY_TIMM)


def test_a_folder_of_another_architecture_fails_listing_the_keys(tmp_path: Path) -> None:
    write_hf_model("clip", tmp_path / "clip")
    with pytest.raises(CheckpointError, match=r"\(hf checkpoint\) does not fit VisionTransformer: missing keys"):
        build_backbone("vit_tiny_patch16_224", 0, tmp_path / "clip", "hf", **TINY_TIMM)
