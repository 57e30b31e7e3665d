"""A tiny ViT pre-trained here, on procedurally generated shapes, so the library can show the method end to end
without downloading anything (pre-trained weights cannot be fetched on the machines this project runs on).

``vit_shapes_patch8_32``: width 128, depth 6, 4 heads, patch 8, 32x32 input, CLS token; about 1.2M parameters. Its
weights ship with the package (``assets/vit_shapes_patch8_32.safetensors``, fp16) and were produced by
``scripts/pretrain_shapes.py`` (command and SHA-256 in BENCHMARKS.md). Load them with timm's own mechanism:

    adaptformer.create_model("vit_shapes_patch8_32", num_classes=10, checkpoint="timm")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

SHAPES_VIT_FILE = Path(__file__).resolve().parent.parent / "assets" / "vit_shapes_patch8_32.safetensors"
SHAPES_VIT_ARGS: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4}

default_cfgs = generate_default_cfgs(
    {
        "vit_shapes_patch8_32.procedural": {
            "file": str(SHAPES_VIT_FILE),
            "num_classes": 64,
            "input_size": (3, 32, 32),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",
        }
    }
)


@register_model
def vit_shapes_patch8_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The tiny ViT pre-trained on procedural shapes (64 shape/palette classes)."""
    if pretrained and not SHAPES_VIT_FILE.is_file():
        raise FileNotFoundError(f"the shipped weights are missing: {SHAPES_VIT_FILE}; run scripts/pretrain_shapes.py")
    return build_model_with_cfg(
        VisionTransformer,
        "vit_shapes_patch8_32",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**SHAPES_VIT_ARGS, **kwargs},
    )
