"""Tiny timm backbones shared by the tests (width 32-64, depth 2-4), built through the public factory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

VIT = "vit_tiny_patch16_224"
SWIN = "swin_tiny_patch4_window7_224"

TINY_KWARGS: dict[str, dict[str, Any]] = {
    VIT: {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
    SWIN: {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)},
}


def tiny_kwargs(name: str, **extra: Any) -> dict[str, Any]:
    return {**TINY_KWARGS[name], **extra}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
