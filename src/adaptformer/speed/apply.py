"""Speed and memory options for an adapted model, installed from outside by :func:`apply_speed`.

AdaptFormer (Chen et al., NeurIPS 2022) trains a few adapters and the head beside a large frozen backbone. Frozen
weights open doors that full fine-tuning does not have: they can be stored once in the autocast precision, and the
frozen halves of a block only have to carry the gradient to
their input. Each option lives in its own module of this package and changes a model only from outside (class swaps
that keep every parameter name, module flags, hooks); the methods never import this package, so deleting it leaves
every method computing the same function:

    frozen_dtype        storage dtype of frozen parameters; trainable ones stay fp32        (:func:`cast_frozen`)
    attention           fused SDPA, explicit math, or split (math while autograd records)   (:mod:`.attention`)
    class_token_tail    the last block for the class token only                             (:mod:`.class_token_tail`)
    frozen_backward     hand-written backward of adapted/VPT blocks' frozen halves          (:mod:`.frozen_blocks`)
    grad_checkpointing  recompute block activations in backward (timm's)
    compile             ``torch.compile`` the model in place

:class:`~.config.SpeedConfig` names them and :func:`~.config.resolve` turns "auto" into the measured choice for a
device and precision (BENCHMARKS.md, ``python benchmarks/bench.py --options``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from ..methods.state import get_spec, remember_fingerprint
from ..precision import DTYPES
from .attention import attention_tokens, set_attention
from .blocks import set_class_token_tail
from .class_token_tail import class_token_tail_reason
from .config import SpeedConfig, resolve
from .frozen_blocks import set_frozen_backward

logger = logging.getLogger(__name__)

SPEED_ATTR = "adaptformer_speed"


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen floating-point parameter in ``dtype``, once; returns how many parameters were cast.

    The backbone fingerprint is remembered first, so adapters saved from this model still match the fp32 backbone
    they were trained on. Trainable parameters (adapters, prompts, head) and all buffers (e.g. the head's BatchNorm
    statistics) keep their dtype.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point() and p.dtype != dtype]
    if frozen and get_spec(model) is not None:
        remember_fingerprint(model)
    for p in frozen:
        p.data = p.data.to(dtype)
    return len(frozen)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """timm's activation checkpointing, refusing the re-entrant variant: with frozen inputs it would silently give the
    first adapters no gradient."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise UnsupportedModelError(f"{type(model).__name__} has no set_grad_checkpointing(); cannot checkpoint")
    from timm.layers import use_reentrant_ckpt

    if enable and use_reentrant_ckpt():
        raise ValueError(
            "timm is set to re-entrant checkpointing (TIMM_REENTRANT_CKPT); with a frozen backbone the first adapted "
            "blocks would get no gradient. Unset it (timm.layers.set_reentrant_ckpt(False))."
        )
    model.set_grad_checkpointing(enable)


def speed_config(model: nn.Module) -> SpeedConfig | None:
    """The resolved SpeedConfig ``apply_speed`` applied to ``model``, or None."""
    return getattr(model, SPEED_ATTR, None)


def apply_speed(
    model: nn.Module,
    config: SpeedConfig | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    compile_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply ``config``, resolved for the device and the autocast ``precision``
    ("fp32", "bf16", "fp16"), in place; returns the model.

    Run the model under autocast in ``precision`` afterwards, for training and evaluation alike: frozen weights stored
    in bf16/fp16 need it. Call this once, after ``create_model`` / ``load_adapter`` have set up the method (freezing
    decides what is "frozen") and before building the optimizer. ``compile_kwargs`` go to ``nn.Module.compile``.
    """
    if speed_config(model) is not None:
        raise ValueError(f"apply_speed() was already applied to this model: {speed_config(model)}")
    tokens = attention_tokens(model)
    resolved = resolve(config, device, precision, tokens)
    tail_reason = class_token_tail_reason(model) if resolved.class_token_tail == "on" else None
    if tail_reason is not None:
        if config is not None and config.class_token_tail == "on":
            raise ValueError(f"class_token_tail 'on' does not apply to this model: {tail_reason}")
        resolved = replace(resolved, class_token_tail="off")
    model.to(device)
    cast = cast_frozen(model, DTYPES[resolved.frozen_dtype]) if resolved.frozen_dtype != "fp32" else 0
    attention_modules = set_attention(model, resolved.attention)
    set_class_token_tail(model, resolved.class_token_tail == "on")
    manual = set_frozen_backward(model, resolved.frozen_backward == "on", resolved.attention != "fused")
    if resolved.frozen_backward == "on" and manual == 0:  # e.g. EVA, BEiT, torchvision blocks, or a linear probe
        if config is not None and config.frozen_backward == "on":
            logger.warning("frozen_backward 'on' does not apply: no block of this model has a hand-written backward")
        resolved = replace(resolved, frozen_backward="off")  # record what runs
    if resolved.grad_checkpointing:
        set_grad_checkpointing(model, True)
    if resolved.compile:
        model.compile(**(compile_kwargs or {}))
    setattr(model, SPEED_ATTR, resolved)
    logger.info(
        "speed: %s on %s in %s (%d frozen tensors stored in %s, %d attention modules at %s tokens, %d blocks with the "
        "hand-written frozen backward, class-token tail %s)",
        resolved.to_dict(),
        device,
        precision,
        cast,
        resolved.frozen_dtype,
        attention_modules,
        tokens,
        manual,
        resolved.class_token_tail,
    )
    return model
