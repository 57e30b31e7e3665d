"""Checkpoint converters for the video ViT (:mod:`adaptformer.backbones.video_vit`), one pure function per source.

Each is ``fn(state_dict, model) -> state_dict`` and is listed by name in :data:`.load.CONVERTERS`:

    "videomae"       official VideoMAE .pth files (MCG-NJU/VideoMAE): pre-training (``encoder.`` + decoder) and
                     fine-tuning checkpoints. Names are already ours; the decoder side is dropped.
    "hf-videomae"    Hugging Face transformers VideoMAE (``VideoMAEModel``, ``...ForVideoClassification``,
                     ``...ForPreTraining``): separate query/key/value projections are fused into ``qkv``.
    "inflate-image"  an image ViT (timm / MAE names) inflated to video, as in the paper's Table 4.

A converter only renames and reshapes; it drops an explicit list of keys that have no place in the video model
(decoders, mask tokens, CLS tokens, ...) and passes every other key through under its converted name, so a key it does
not know reaches :func:`.load.load_pretrained` unchanged and fails there, named, as unexpected.
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

from ...errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["convert_hf_videomae", "convert_image_to_video", "convert_videomae"]

StateDict = dict[str, torch.Tensor]

# Pre-training-only parts: the MAE decoder, the projection into it and the token standing in for masked patches.
_PRETRAIN_ONLY = re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$)")


def _drop(state_dict: StateDict, pattern: re.Pattern[str], why: str) -> StateDict:
    kept = {k: v for k, v in state_dict.items() if not pattern.search(k)}
    dropped = sorted(set(state_dict) - set(kept))
    if dropped:
        logger.info(
            "dropped %d keys (%s): %s", len(dropped), why, ", ".join(dropped[:8]) + (" ..." * (len(dropped) > 8))
        )
    return kept


def _drop_fixed_pos_embed(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Accept a saved copy of the fixed sinusoid table (dropped); refuse a learned one, which this model cannot hold."""
    if "pos_embed" not in state_dict:
        return state_dict
    theirs = state_dict["pos_embed"].float().reshape(-1, state_dict["pos_embed"].shape[-1])
    ours = model.pos_embed.reshape(-1, model.pos_embed.shape[-1])
    if theirs.shape != ours.shape or not torch.allclose(theirs.cpu(), ours.cpu(), atol=1e-5):
        raise CheckpointError(
            f"the checkpoint has a learned pos_embed {tuple(state_dict['pos_embed'].shape)}; this model uses "
            f"VideoMAE's fixed sinusoid table for {ours.shape[0]} tokens (use_learnable_pos_emb is not supported)"
        )
    return {k: v for k, v in state_dict.items() if k != "pos_embed"}


def convert_videomae(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Official VideoMAE checkpoints (fine-tuning names are this model's names).

    Pre-training files keep the encoder under ``encoder.``: the prefix is removed, the decoder side dropped, and the
    encoder's final ``norm`` dropped too, because with mean pooling VideoMAE fine-tuning replaces it by a fresh
    ``fc_norm`` (loaded as missing, it trains with the head). LayerScale ``gamma_1/2`` become timm's ``ls1/2.gamma``.
    """
    out = _drop(state_dict, _PRETRAIN_ONLY, "VideoMAE pre-training decoder")
    out = _drop(out, re.compile(r"^encoder\.norm\."), "pre-training encoder's final norm, replaced by fc_norm")
    renamed: StateDict = {}
    for key, value in out.items():
        key = key.removeprefix("encoder.")
        key = re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", key)
        renamed[key] = value
    return _drop_fixed_pos_embed(renamed, model)


# Hugging Face VideoMAELayer -> timm Block; query/key/value weights are fused separately.
_HF_RULES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?:q_bias|query\.bias)$", r"blocks.\1.attn.q_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(?:v_bias|value\.bias)$", r"blocks.\1.attn.v_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^classifier\.", "head."),
)
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight$")


def convert_hf_videomae(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Hugging Face transformers VideoMAE checkpoints (a directory read by ``read_state_dict``).

    Accepts both bias spellings: ``q_bias`` / ``v_bias`` (files on the Hub) and ``query.bias`` / ``value.bias``
    (transformers >= 5 ``save_pretrained``). The encoder's final ``layernorm`` of a pre-training model
    (``use_mean_pooling=False``) is dropped for the fresh ``fc_norm``, as in ``convert_videomae``.

    Note: HF configs declare ``layer_norm_eps=1e-12`` and its ``fc_norm`` uses 1e-5; the original VideoMAE (and this
    model) uses 1e-6 everywhere. The weights are the same; outputs differ by far less than fp32 training noise.
    """
    out = {k.removeprefix("videomae."): v for k, v in state_dict.items()}
    out = _drop(out, _PRETRAIN_ONLY, "VideoMAE pre-training decoder")
    out = _drop(out, re.compile(r"^layernorm\."), "pre-training encoder's final norm, replaced by fc_norm")
    renamed: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in out.items():
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        for pattern, replacement in _HF_RULES:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        renamed[key] = value
    for layer, parts in sorted(qkv.items(), key=lambda item: int(item[0])):
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:
            raise CheckpointError(
                f"encoder.layer.{layer}: has {sorted(parts)} weights but not {absent}; cannot fuse qkv"
            )
        # Our qkv output is read as (3, heads, head_dim): rows q then k then v, each in HF's head-major order.
        renamed[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return renamed


# Image-only parts with no counterpart in the video model: CLS token, learned 2-D positions, MAE's decoder.
_IMAGE_ONLY = re.compile(r"^(cls_token$|pos_embed$|decoder|mask_token$)")


def convert_image_to_video(state_dict: StateDict, model: nn.Module) -> StateDict:
    """An image ViT (timm / MAE names, qkv with one fused bias) inflated to the video ViT (paper Table 4).

    - patch_embed: the 2-D kernel is repeated over the tubelet's frames and divided by the tubelet size, so a static
      clip (all frames equal) gets exactly the image model's patch embedding at every spatial position;
    - qkv bias: split into ``q_bias`` and ``v_bias``; the k bias is dropped, which is exact whatever its value: it adds
      ``q . b_k`` to every score of a query, a constant within each softmax row, and softmax is shift-invariant;
    - the learned 2-D ``pos_embed`` and the ``cls_token`` are dropped: the video model adds its fixed sinusoid
      table over (time, height, width) and pools by mean (so positions come from the table, not the image model);
    - the final ``norm`` is dropped: mean pooling goes through a fresh ``fc_norm`` (MAE's global-pool fine-tuning
      does the same); an ``fc_norm`` already in the file is kept.
    """
    out = _drop(state_dict, _IMAGE_ONLY, "image-only: CLS token, learned 2-D positions, MAE decoder")
    out = _drop(out, re.compile(r"^norm\."), "image model's final norm, replaced by fc_norm")
    tubelet = model.patch_embed.proj.weight.shape[2]
    renamed: StateDict = {}
    for key, value in out.items():
        if key == "patch_embed.proj.weight":
            if value.ndim != 4:
                raise CheckpointError(
                    f"patch_embed.proj.weight is {tuple(value.shape)}; an image ViT's is (D, C, p, p)"
                )
            value = value.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet  # (D, C, t, p, p)
        match = re.match(r"^(blocks\.\d+\.attn)\.qkv\.bias$", key)
        if match:
            q_bias, _k_bias, v_bias = value.chunk(3)  # (A,) each; _k_bias cannot change the output (see above)
            renamed[f"{match.group(1)}.q_bias"] = q_bias
            renamed[f"{match.group(1)}.v_bias"] = v_bias
            continue
        renamed[key] = value
    return renamed
