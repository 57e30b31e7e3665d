"""``create_model``: a timm backbone, its pre-trained weights, a task head and an adaptation method, in one call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from .adapter import AdaptFormerConfig
from .methods import ModelSpec, apply_method
from .pretrained import load_pretrained
from .prompts import VPTConfig

logger = logging.getLogger(__name__)

TIMM_PRETRAINED = "timm"


def build_backbone(
    name: str,
    num_classes: int,
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    keep_head: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """A plain timm model with pre-trained weights: none, a local file (``checkpoint``), or timm's own mechanism.

    ``checkpoint="timm"`` asks timm for its pretrained weights (its cache, a hub download, or a local file given as
    ``pretrained_cfg_overlay={"file": path}``); any other value is a local file read by ``load_pretrained``.
    """
    use_timm = checkpoint == TIMM_PRETRAINED
    try:
        model = timm.create_model(name, pretrained=use_timm, num_classes=num_classes, **timm_kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model {name!r}: not a timm or adaptformer model name") from e
        raise
    except TypeError as e:  # a keyword the model's constructor does not take: the caller's kwargs, not a bug here
        if not timm_kwargs:
            raise
        raise ValueError(f"model kwargs {sorted(timm_kwargs)} do not fit {name!r}: {e}") from e
    except OSError as e:  # no network and nothing cached
        raise FileNotFoundError(
            f"timm could not fetch pretrained weights for {name!r} ({e}); pass a local file as checkpoint, or "
            "checkpoint='timm' with pretrained_cfg_overlay={'file': path}"
        ) from e
    if checkpoint is not None and not use_timm:
        load_pretrained(model, checkpoint, source=checkpoint_source, keep_head=keep_head)
    return model


def create_model(
    name: str,
    num_classes: int,
    method: str = "adaptformer",
    adapter: AdaptFormerConfig | None = None,
    vpt: VPTConfig | None = None,
    head: str = "paper",
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    **timm_kwargs: Any,
) -> nn.Module:
    """Build ``name`` from timm, load ``checkpoint``, attach ``method`` with a ``head`` for ``num_classes``, freeze.

    Args:
        name: a timm model name, e.g. "vit_base_patch16_224" or "vit_base_patch16_224.mae" (the pretrained tag sets
            the input normalisation), or an adaptformer-registered one.
        num_classes: classes of the task.
        method: "adaptformer", "linear" (head only), "full" (everything) or "vpt".
        adapter: AdaptMLP settings for method "adaptformer" (default: the authors' AdaptFormer-64).
        vpt: prompt settings for method "vpt" (default: VPT-deep with 1 token).
        head: "paper" (BatchNorm1d without affine + Linear, the paper's) or "linear".
        checkpoint: None (random init), a local weights file, or "timm" for timm's pretrained mechanism.
        checkpoint_source: how to read the file's keys: one of ``pretrained.CONVERTERS`` ("timm", "mae", ...).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. drop_path_rate, global_pool, img_size).
    """
    model = build_backbone(name, num_classes, checkpoint, checkpoint_source, keep_head=head == "linear", **timm_kwargs)
    extra = tuple(getattr(model, "task_modules", ()))
    spec = ModelSpec(name, method, num_classes, head, adapter, vpt, extra)
    return apply_method(model, spec)
