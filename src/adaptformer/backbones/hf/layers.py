"""The encoder layers of Hugging Face ``transformers`` vision models, as methods see them.

A method that works inside a layer's feed-forward half (AdaptFormer beside its MLP) needs the layer's forward in two
halves: the residual stream x' after attention, the feed-forward input LN(x') and the MLP branch h, whose sum x' + h
is the layer's output. For timm's blocks each method writes that split into its adapted block's ``forward``; the
transformers layers below differ only in their attribute names and extras (layer scale, drop path, BEiT's relative
position bias, Swin's windows), so each is described once here by a ``halves`` function, and a method's adapted layer
is the same few lines for all of them (:func:`adaptformer.backbones.families.adapted_class`).

Each ``halves`` function computes, operation for operation, what the layer's own ``forward`` computes up to its last
residual addition (transformers 5: ``layer(hidden_states, attention_mask, **kwargs)``); x' + h is bit for bit the
layer's output (float addition commutes), which tests/backbones/test_hf_parity.py checks against transformers' forward.

Where each method attaches, per layer (:data:`LAYERS`): AdaptFormer and Adapter+ on the MLP half (``mlp``, or
``intermediate`` + ``output`` in VideoMAE's BERT-style layer), LoRA on the separate q/k/v/o ``nn.Linear`` projections
(``HFLayer.projections``), VPT's prompt tokens where attention takes extra tokens (else refused, saying why:
``HFLayer.no_prompts``). Importing this module needs ``transformers`` (the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers.models.beit.modeling_beit import BeitLayer
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersLayer
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer
from transformers.models.swin.modeling_swin import SwinLayer, window_partition, window_reverse
from transformers.models.videomae.modeling_videomae import VideoMAELayer
from transformers.models.vit.modeling_vit import ViTLayer

Halves = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x', LN(x'), h): the layer's output is x' + h


def vit_halves(block: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None, **kwargs: Any) -> Halves:
    """ViT's and DeiT's layer (``layernorm_before``, ``attention``, ``layernorm_after``, ``mlp``, one ``dropout``)."""
    attended, _ = block.attention(block.layernorm_before(hidden_states), attention_mask, **kwargs)
    x = block.dropout(attended) + hidden_states  # (B, N, D)
    normed = block.layernorm_after(x)
    return x, normed, block.dropout(block.mlp(normed))


def dinov2_halves(block: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None, **kwargs: Any) -> Halves:
    """DINOv2's layer, with and without registers (``norm1``/``norm2``, layer scale, drop path; MLP or SwiGLU)."""
    attended, _ = block.attention(block.norm1(hidden_states), attention_mask=attention_mask, **kwargs)
    x = block.drop_path(block.layer_scale1(attended)) + hidden_states
    normed = block.norm2(x)
    return x, normed, block.drop_path(block.layer_scale2(block.mlp(normed)))


def clip_halves(block: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None, **kwargs: Any) -> Halves:
    """CLIP's and SigLIP's encoder layer (``layer_norm1``, ``self_attn``, ``layer_norm2``, ``mlp``)."""
    attended, _ = block.self_attn(
        hidden_states=block.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs
    )
    x = hidden_states + attended
    normed = block.layer_norm2(x)
    return x, normed, block.mlp(normed)


def beit_halves(
    block: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: Any = None,
    interpolate_pos_encoding: bool = False,
    resolution: tuple[int, int] | None = None,
    **kwargs: Any,
) -> Halves:
    """BEiT's layer: its own relative position bias (if any) joins the attention mask, ``lambda_1``/``lambda_2``
    layer scale (1.0 when off), drop path."""
    if block.relative_position_bias is not None:
        assert resolution is not None  # BeitModel passes the input's (H, W)
        window = (resolution[0] // block.patch_size, resolution[1] // block.patch_size)
        bias = block.relative_position_bias(window, interpolate_pos_encoding, dim_size=hidden_states.shape[1])
        attention_mask = bias + attention_mask if attention_mask is not None else bias
    attended, _ = block.attention(block.layernorm_before(hidden_states), attention_mask=attention_mask, **kwargs)
    x = block.drop_path(block.lambda_1 * block.dropout(attended)) + hidden_states
    normed = block.layernorm_after(x)
    return x, normed, block.drop_path(block.lambda_2 * block.dropout(block.mlp(normed)))


def videomae_halves(block: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> Halves:
    """VideoMAE's BERT-style layer: the MLP is ``intermediate`` (dense + GELU) then ``output`` (dense, dropout; its
    residual addition is the x' + h)."""
    x = block.attention(block.layernorm_before(hidden_states), **kwargs) + hidden_states
    normed = block.layernorm_after(x)
    return x, normed, block.output.dropout(block.output.dense(block.intermediate(normed)))


def swin_halves(
    block: nn.Module,
    hidden_states: torch.Tensor,
    input_dimensions: tuple[int, int],
    always_partition: bool = False,
    **kwargs: Any,
) -> Halves:
    """Swin's layer: (shifted) window attention over the (H, W) token grid, padded to whole windows, with transformers'
    own helpers for the padding, the shift, the windows and their mask."""
    if not always_partition:
        block.set_shift_and_window_size(input_dimensions)
    height, width = input_dimensions
    batch, _, channels = hidden_states.shape  # (B, H*W, C)
    grid = block.layernorm_before(hidden_states).view(batch, height, width, channels)
    grid, pad = block.maybe_pad(grid, height, width)
    _, height_pad, width_pad, _ = grid.shape
    windows = window_partition(block.cyclic_shift(grid), block.window_size)
    windows = windows.view(-1, block.window_size * block.window_size, channels)  # (B * windows, ws*ws, C)
    mask = block.get_attn_mask(height_pad, width_pad, dtype=grid.dtype, device=windows.device)
    attended, _ = block.attention(windows, mask, **kwargs)
    attended = block.dropout(attended).view(-1, block.window_size, block.window_size, channels)
    attended = block.cyclic_shift(window_reverse(attended, block.window_size, height_pad, width_pad), reverse=True)
    if pad[3] > 0 or pad[5] > 0:
        attended = attended[:, :height, :width, :].contiguous()
    x = hidden_states + block.drop_path(attended.view(batch, height * width, channels))
    normed = block.layernorm_after(x)
    return x, normed, block.dropout(block.mlp(normed))


# q, k, v, o -> the layer's separate nn.Linear projections that LoRA adapts (paths from the layer)
_SELF_ATTENTION = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"}
_CLIP_ATTENTION = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj"}
_BERT_ATTENTION = {
    "q": "attention.attention.query",
    "k": "attention.attention.key",
    "v": "attention.attention.value",
    "o": "attention.output.dense",
}


def _windows(model: nn.Module) -> str:
    return "its attention runs inside windows of the patch grid, and a prompt token belongs to no window"


def _relative_position_bias(model: nn.Module) -> str | None:
    """BEiT's relative position bias (per layer or shared) is a table over exactly the patch grid and class token."""
    if any(type(m).__name__ == "BeitRelativePositionBias" for m in model.modules()):
        return "its relative position bias is sized for the patch grid and the class token, not for extra tokens"
    return None


@dataclass(frozen=True)
class HFLayer:
    """One transformers encoder layer class as methods see it.

    Args:
        layer: the transformers class (only modules of exactly this class are the family's blocks).
        halves: its forward split around the feed-forward branch, ``(block, *args, **kwargs) -> (x', LN(x'), h)``.
        projections: q, k, v, o -> the path of that ``nn.Linear`` from the layer (LoRA's targets).
        no_prompts: ``model -> why VPT cannot prepend prompt tokens to its layers`` (None: it can).
        tuple_output: whether the layer returns ``(hidden_states, attention weights)`` (Swin) instead of the states.
    """

    layer: type[nn.Module]
    halves: Callable[..., Halves]
    projections: dict[str, str]
    no_prompts: Callable[[nn.Module], str | None] | None = None
    tuple_output: bool = False


# family name -> its layer
LAYERS: dict[str, HFLayer] = {
    "hf_vit": HFLayer(ViTLayer, vit_halves, _SELF_ATTENTION),
    "hf_deit": HFLayer(DeiTLayer, vit_halves, _SELF_ATTENTION),
    "hf_dinov2": HFLayer(Dinov2Layer, dinov2_halves, _SELF_ATTENTION),
    "hf_dinov2_registers": HFLayer(Dinov2WithRegistersLayer, dinov2_halves, _SELF_ATTENTION),
    "hf_clip": HFLayer(CLIPEncoderLayer, clip_halves, _CLIP_ATTENTION),
    "hf_siglip": HFLayer(SiglipEncoderLayer, clip_halves, _CLIP_ATTENTION),
    "hf_beit": HFLayer(BeitLayer, beit_halves, _SELF_ATTENTION, no_prompts=_relative_position_bias),
    "hf_videomae": HFLayer(VideoMAELayer, videomae_halves, _BERT_ATTENTION),
    "hf_swin": HFLayer(SwinLayer, swin_halves, _SELF_ATTENTION, no_prompts=_windows, tuple_output=True),
}
