"""Checkpoint source ``hf``: a ``transformers`` model folder (``save_pretrained``'s ``model.safetensors``).

For an ``hf:<folder>`` backbone transformers reads such a folder itself (:mod:`adaptformer.backbones.hf.folder`);
:func:`convert_hf_vit` lets a timm ViT load one instead: transformers' ViT, DeiT (distilled too: timm's
``deit_*_distilled``) and DINOv2 (with registers) file layout renamed to timm's ``VisionTransformer``, q, k and v fused
into its ``qkv`` (their rows stacked in that order, as timm's attention splits them), a classification model's heads
kept as timm's ``head`` (and ``head_dist``). The layer norms' epsilon is the model's own: build the timm model with
the file's ``layer_norm_eps`` (ViT's default in transformers is 1e-12, timm's 1e-6) for the same function.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ...errors import CheckpointError

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# transformers' per-layer names (ViT / DeiT, then DINOv2) -> timm's in blocks.{i}
_LAYER_NAMES = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "attention.output.dense.": "attn.proj.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.distillation_token": "dist_token",  # DeiT distilled: timm's deit_*_distilled
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# a classification model's heads -> timm's (DeiT distilled: a class-token and a distillation-token classifier)
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_DROPPED = ("embeddings.mask_token", "pooler.")  # masked-image-modelling token, ViT's tanh pooler: not in timm's ViT


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classification model's file (``vit.``, ``dinov2.``, ... before the base model's keys; ``classifier.``) as the
    base model's keys, the classifier kept under timm's ``head.``."""
    prefixes = {k.split(".", 1)[0] for k in state_dict if ".embeddings." in f".{k}" and not k.startswith("embeddings.")}
    out = {}
    for key, value in state_dict.items():
        first, _, rest = key.partition(".")
        if first in prefixes:
            out[rest] = value
        elif first in _HEADS:
            out[f"{_HEADS[first]}.{rest}"] = value
        else:
            out[key] = value
    return out


def convert_hf_vit(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """transformers ViT / DINOv2 (with registers) keys -> timm ``VisionTransformer`` keys, as the module says."""
    state_dict = _strip_prefix(state_dict)
    if any(".mlp.weights_in." in k for k in state_dict):
        raise CheckpointError("a DINOv2 with SwiGLU MLPs (use_swiglu_ffn) has no timm ViT layout to convert to")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith(_DROPPED):
            continue
        if key in _EMBEDDINGS:
            out[_EMBEDDINGS[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            out[key] = value  # head.* and anything unknown: the strict load lists what does not fit
            continue
        index, rest = int(match.group(1)), match.group(2)
        part = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if part is not None:
            qkv.setdefault((index, part.group(2)), {})[part.group(1)] = value
            continue
        renamed = next((rest.replace(a, b, 1) for a, b in _LAYER_NAMES.items() if rest.startswith(a)), None)
        out[f"blocks.{index}.{renamed if renamed is not None else rest}"] = value
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"layer {index}: attention {kind} has only {sorted(parts)} of query, key, value")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    if getattr(model, "no_embed_class", False) and "pos_embed" in out and "cls_token" in out:
        # transformers adds the first position to the class token; timm (no_embed_class: DINOv2 with registers)
        # embeds the patches only, so that position is folded into the class token
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out
