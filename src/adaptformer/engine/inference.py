"""Using a trained adapter: rebuild the model, evaluate it on a dataset split, classify image files.

Training writes ``<adapter_dir>/task.json`` next to the adapter files: the class names (index = label) and how the
backbone was built (timm kwargs, pre-trained checkpoint and its source), plus the evaluation batch size, precision,
dataset options and, for video, the clip sampling and test views, so ``adaptformer eval`` and ``predict`` need only
the adapter folder and reproduce training's numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data import build_image_transform, load_rgb
from ..precision import resolve_precision
from ..preprocessing import Preprocessing
from ..saving import atomic_write_bytes, create_model_from_adapter, read_adapter_config
from ..speed import SpeedConfig, apply_speed
from .data import eval_loader
from .datasets import DataSpec, clip_frames, load_split
from .distributed import DistributedContext, resolve_device
from .loop import evaluate

logger = logging.getLogger(__name__)

TASK_FILE = "task.json"


@dataclass(frozen=True)
class TaskInfo:
    """What an adapter folder needs besides the adapter itself to be used (see the module docstring).

    Args:
        classes: class names, index = label.
        dataset: the dataset kind it was trained on.
        model_kwargs: timm kwargs the backbone was built with.
        checkpoint: the pre-trained weights (a file path, "timm", or None).
        checkpoint_source: the key layout of ``checkpoint``.
        precision: the autocast precision evaluation ran in.
        eval_batch_size: the batch size evaluation ran with.
        dataset_options: the per-kind dataset options training used.
        video: for video datasets, the clip sampling and test views (``VideoSettings`` fields, defaults resolved).
    """

    classes: list[str]
    dataset: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_source: str = "timm"
    precision: str = "auto"
    eval_batch_size: int = 256
    dataset_options: dict[str, Any] = field(default_factory=dict)
    video: dict[str, Any] | None = None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TASK_FILE
        atomic_write_bytes(path, (json.dumps(asdict(self), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TaskInfo | None:
        """The folder's task info, or None if it has none (an adapter saved by the library, not by training)."""
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a JSON list, a task.json, or a text file with one name per line."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        names = data["classes"] if isinstance(data, dict) else data
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a list of class names")
    return names


def load_trained_model(
    adapter_dir: str | Path,
    checkpoint: str | None = None,
    checkpoint_source: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> tuple[nn.Module, TaskInfo | None]:
    """The trained model of ``adapter_dir`` (eval mode, CPU) and its task info.

    ``checkpoint``, ``checkpoint_source`` and ``model_kwargs`` default to those recorded in task.json; ``model_name``,
    if given, must be the backbone the adapter names (a guard against mixing up folders).
    """
    spec, _ = read_adapter_config(adapter_dir)
    if model_name is not None and model_name.split(".")[0] != spec.backbone.split(".")[0]:
        raise ValueError(f"{adapter_dir} holds an adapter for {spec.backbone!r}, not for {model_name!r}")
    task = TaskInfo.load(adapter_dir)
    if checkpoint is None and task is not None:
        checkpoint = task.checkpoint
    if checkpoint_source is None:
        checkpoint_source = task.checkpoint_source if task is not None else "timm"
    kwargs = model_kwargs if model_kwargs is not None else (task.model_kwargs if task is not None else {})
    model = create_model_from_adapter(adapter_dir, checkpoint, checkpoint_source, **kwargs)
    return model.eval(), task


def check_classes(num_outputs: int, classes: list[str], task: TaskInfo | None, where: str) -> None:
    """A head/class-count mismatch is an error; differing class names (same count) only a warning."""
    if num_outputs != len(classes):
        raise ValueError(
            f"the adapter's head has {num_outputs} classes but {where} has {len(classes)}; "
            "this adapter was trained for a different task"
        )
    if task is not None and task.classes and task.classes != classes:
        logger.warning("class names of %s differ from those the adapter was trained with", where)


def evaluate_split(
    model: nn.Module,
    task: TaskInfo | None,
    spec: DataSpec,
    split: str,
    ctx: DistributedContext,
    *,
    batch_size: int | None = None,
    precision: str | None = None,
    num_workers: int = 0,
    speed: SpeedConfig | None = None,
) -> dict[str, Any]:
    """acc1, acc5, loss and n of ``model`` on a dataset split, preprocessed as the backbone requires.

    Video datasets are tested on every view of every video: acc1/acc5/loss/n are multi-view (per video), with
    single_view_acc1/acc5, views_per_video and the number of ``skipped`` undecodable videos next to them. Under
    torchrun every view is predicted by exactly one process and every video is scored once. ``speed``, if given, is
    applied to ``model`` in place first (:func:`adaptformer.speed.apply_speed`, e.g. frozen weights stored in bf16).
    """
    data = load_split(spec, split)
    check_classes(model.num_classes, data.classes, task, f"{spec.kind} {split}")
    dataset = data.build(model, "test")
    batch_size = batch_size or (task.eval_batch_size if task else 256)
    loader = eval_loader(dataset, batch_size, num_workers, ctx.device, ctx.world_size, ctx.rank)
    chosen = resolve_precision(precision or (task.precision if task else "auto"), ctx.device)
    if speed is not None:
        apply_speed(model, speed, ctx.device, chosen.name)
    return data.score(evaluate(model.to(ctx.device), loader, chosen, ctx), dataset)


@torch.no_grad()
def predict_images(
    model: nn.Module, paths: list[str | Path], top_k: int = 5, precision: str = "auto", device: str = "auto"
) -> list[list[tuple[int, float]]]:
    """Top-``top_k`` (class index, probability) for each image file, best first."""
    if clip_frames(model) is not None:
        raise ValueError("predict classifies image files, but this adapter's backbone takes video clips")
    transform = build_image_transform(Preprocessing.from_model(model), train=False)
    batch = torch.stack([transform(load_rgb(p)) for p in paths])  # (N, 3, H, W)
    target = resolve_device(device)
    with resolve_precision(precision, target).autocast():
        logits = model.to(target).eval()(batch.to(target))
    probs = logits.float().softmax(dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(indices, values, strict=True)]
