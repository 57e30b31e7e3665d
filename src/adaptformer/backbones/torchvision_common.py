"""What torchvision's models registered here (:mod:`.torchvision_image`, :mod:`.video_swin`) share: argument checks
in the library's words and the linear head ``reset_classifier`` puts back. Plain functions, called from each model's
own constructor and methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

AXES = {2: "(H, W)", 3: "(T, H, W)"}


def sizes(value: int | Sequence[int], count: int, name: str) -> list[int]:
    """``value`` as ``count`` positive sizes (an int repeats); ValueError naming ``name`` otherwise."""
    values = [value] * count if isinstance(value, int) else [int(v) for v in value]
    if len(values) != count or min(values) < 1:
        expected = "a positive size or (H, W)" if count == 2 else f"{count} positive sizes {AXES.get(count, '')}"
        raise ValueError(f"{name} must be {expected.strip()}, got {value!r}")
    return values


def check_rgb(in_chans: int, model: str) -> None:
    if in_chans != 3:
        raise ValueError(f"in_chans must be 3 (torchvision's {model} patch embedding is RGB), got {in_chans}")


def check_avg_pool(global_pool: str | None, over: str) -> None:
    """The only pooling of torchvision's Swin models: the mean over ``over`` ("H and W", "T, H, W")."""
    if global_pool is not None and global_pool != "avg":
        raise ValueError(f"global_pool must be 'avg' (mean over {over}), got {global_pool!r}")


def check_stages(depths: Sequence[int], num_heads: Sequence[int]) -> None:
    """A stage list torchvision's Swin can build: one head count per stage, a block in every stage, two in all
    (torchvision spreads drop path over ``sum(depths) - 1`` steps)."""
    if len(depths) != len(num_heads):
        raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must name the same stages")
    if sum(depths) < 2 or min(depths) < 1:
        raise ValueError(f"depths {list(depths)}: every stage needs a block, and the model at least two blocks")


def linear_head(in_features: int, num_classes: int, device: torch.device) -> nn.Module:
    """A fresh Linear classifier, or Identity for ``num_classes=0`` (pooled features out), timm's convention."""
    return nn.Linear(in_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
