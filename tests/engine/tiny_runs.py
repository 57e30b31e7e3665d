"""A tiny training run for the engine's tests: the ViT settings, its weights written as a timm checkpoint, and a
configuration of a few seconds on the synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.conftest import VIT, changed

from adaptformer.engine import TrainConfig
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.factory import build_backbone

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writes the tiny ViT of ``TINY`` (seed 0) as a timm safetensors file; used by the engine's tests."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIT, 10, **TINY).state_dict(), str(path))
    return path


def tiny_config(out: Path, backbone: Path, **changes) -> TrainConfig:
    """A tiny run; ``changes`` by their flat names (tests.conftest.nested)."""
    base = parse_mapping({
        "model": {"backbone": VIT, "kwargs": TINY, "checkpoint": str(backbone)},
        "data": {"dataset": "synthetic", "options": {"num_samples": 48, "image_size": 16}, "val_split": 0.25,
                 "num_workers": 0},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "effective_batch": 16, "blr": 2.0,
                  "precision": "fp32"},
        "run": {"output_dir": str(out)},
    })  # fmt: skip
    return changed(base, **changes)
