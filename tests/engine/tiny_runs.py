"""A tiny training run for the engine's tests: the ViT settings, its weights written as a timm checkpoint, and a
configuration of a few seconds on the synthetic dataset (as a TrainConfig, or as ``adaptformer train`` flags)."""

from __future__ import annotations

import json
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


def cli_args(out: Path, backbone: Path) -> list[str]:
    """``adaptformer train`` and the flags of a one-epoch tiny run (4 optimizer steps) into ``out``."""
    return [
        "train", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY), "--model.checkpoint", str(backbone),
        "--data.dataset", "synthetic", "--data.options", "{num_samples: 32, image_size: 16}", "--data.val_split", "8",
        "--data.num_workers", "0", "--optim.epochs", "1", "--optim.warmup_epochs", "0", "--optim.batch_size", "8",
        "--optim.precision", "fp32", "--run.output_dir", str(out),
    ]  # fmt: skip
