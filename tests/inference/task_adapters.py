"""Tiny adapter folders of every task type, for the multi-task and serving tests: on one backbone build (the tiny
ViT with ``dynamic_img_size``, as a segmentation backbone is built), a single-label, a multi-label and a segmentation
adapter; on the tiny video ViT, a single-label and a multi-label video adapter recording 2 x 3 test views."""

from __future__ import annotations

from pathlib import Path

import torch
from tests.conftest import VIT, tiny_kwargs
from tests.segmentation.tiny_segmenters import tiny_segmenter
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.saving import TrainingRecord

KWARGS = tiny_kwargs(VIT, dynamic_img_size=True)  # the segmenter's backbone build: every image task is trained on it
SEG_RECORD = {"base_size": 32, "inference": "slide", "stride": 16, "eval_flip": True}
VIDEO = "video_vit_base_patch16_224"
VIDEO_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
VIDEO_RECORD = {"sampling": "dense", "sampling_stride": 2, "flip": False, "test_clips": 2, "test_crops": 3}


def _classifier(directory: Path, classes: list[str], multi_label: bool, seed: int) -> Path:
    torch.manual_seed(seed)
    model = move_trainable(create_model(VIT, len(classes), method="adaptformer", init_seed=0, **KWARGS), 0.5)
    return save_adapter(model.eval(), directory, classes, multi_label=multi_label)


def image_task_adapters(root: Path) -> dict[str, Path]:
    """``animals`` (single-label), ``tags`` (multi-label), ``scene`` (segmentation, linear head), 3 classes each."""
    segmenter = move_trainable(tiny_segmenter(VIT, "adaptformer", "linear"), 0.5).train()
    with torch.no_grad():
        segmenter(torch.randn(4, 3, 32, 32))  # BatchNorm statistics off their init
    record = TrainingRecord(dataset="segfolder", precision="fp32", segmentation=SEG_RECORD)
    return {
        "animals": _classifier(root / "animals" / "adapter", ["cat", "dog", "emu"], False, 1),
        "tags": _classifier(root / "tags" / "adapter", ["red", "round", "shiny"], True, 2),
        "scene": save_adapter(segmenter.eval(), root / "scene" / "adapter", ["sky", "road", "tree"], record),
    }


def video_task_adapters(root: Path) -> dict[str, Path]:
    """``motion`` (single-label) and ``labels`` (multi-label), 2 classes each (one class count: the backbone's
    seeded initialisation, and so its fingerprint, depends on it)."""
    record = TrainingRecord(dataset="videofolder", video=VIDEO_RECORD, precision="fp32", eval_batch_size=4)
    out = {}
    for name, multi_label, seed in (("motion", False, 0), ("labels", True, 1)):
        torch.manual_seed(seed)
        model = move_trainable(create_model(VIDEO, 2, init_seed=0, **VIDEO_TINY), scale=0.5)
        out[name] = save_adapter(model.eval(), root / name / "adapter", [f"{name}{i}" for i in range(2)], record,
                                 multi_label=multi_label)  # fmt: skip
    return out
