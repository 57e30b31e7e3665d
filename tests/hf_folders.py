"""Tiny random-weight ``transformers`` vision models written to real local folders with ``save_pretrained``
(``config.json`` + ``model.safetensors``): one per architecture ``hf:<folder>`` backbones support, width 16-64, two
layers, 32 px inputs (VideoMAE: 4 frames); no dropout or drop path, so that training mode computes the same
function. Shared by the hf backbone tests and the README test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BeitConfig,
    BeitModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinModel,
    VideoMAEConfig,
    VideoMAEModel,
    ViTConfig,
    ViTModel,
)

_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
_BERT = {**_ENCODER, "intermediate_size": 64}
_SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}

# architecture id -> (model class, its config, constructor kwargs)
TINY: dict[str, tuple[type[PreTrainedModel], Any, dict[str, Any]]] = {
    "vit": (ViTModel, ViTConfig(**_BERT), {}),
    "deit": (DeiTModel, DeiTConfig(**_BERT), {"add_pooling_layer": False}),
    "dinov2": (Dinov2Model, Dinov2Config(**_ENCODER, mlp_ratio=2, layerscale_value=0.5), {}),
    "dinov2-swiglu": (Dinov2Model, Dinov2Config(**_ENCODER, mlp_ratio=2, use_swiglu_ffn=True), {}),
    "dinov2-registers": (
        Dinov2WithRegistersModel,
        Dinov2WithRegistersConfig(**_ENCODER, mlp_ratio=2, num_register_tokens=2),
        {},
    ),
    "clip": (CLIPVisionModel, CLIPVisionConfig(**_BERT), {}),
    "siglip": (SiglipVisionModel, SiglipVisionConfig(**_BERT), {}),
    "beit": (
        BeitModel,
        BeitConfig(**_BERT, use_relative_position_bias=True, layer_scale_init_value=0.1, drop_path_rate=0.0),
        {},
    ),
    "beit-abs": (
        BeitModel,
        BeitConfig(**_BERT, use_absolute_position_embeddings=True, use_mean_pooling=False, drop_path_rate=0.0),
        {},
    ),
    "videomae": (VideoMAEModel, VideoMAEConfig(**_BERT, num_frames=4, tubelet_size=2), {}),
    "swin": (
        SwinModel,
        SwinConfig(**_SWIN, drop_path_rate=0.0),
        {},
    ),
}

VIDEO = ("videomae",)


def write_hf_model(kind: str, folder: Path, seed: int = 0) -> PreTrainedModel:
    """Write the tiny ``kind`` model to ``folder`` (every tensor drawn at random, so that no zero bias or unit norm
    hides a difference); returns it, in eval mode."""
    cls, config, kwargs = TINY[kind]
    torch.manual_seed(seed)
    model = cls(config, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    return model.eval()


def inputs(kind: str, batch: int = 2) -> torch.Tensor:
    """A batch in adaptformer's layout: (B, 3, 32, 32) images, or (B, 3, 4, 32, 32) clips for a video model."""
    shape = (batch, 3, 4, 32, 32) if kind in VIDEO else (batch, 3, 32, 32)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))
