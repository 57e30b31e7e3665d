"""Export a multi-task model (one frozen backbone, many tasks' adapters and heads) to ONE ONNX graph, checked with ONNX
Runtime.

The graph takes the images (``input``, (batch, C, H, W)) and a task index per sample (``task``, (batch,) int64, into
the task order the sidecar lists) and returns each sample's logits padded to the largest head (``logits``, (batch,
max classes), the padding -inf so softmax and argmax read only the task's classes) and each sample's class count
(``num_classes``, (batch,) int64). Inside, the batch runs as :class:`~.multitask.MultiTaskModel` runs it: the frozen
trunk once, each task's modules on its rows (the rows are data in the graph: a task's row indices are a ``NonZero``,
and every task's modules run, on no rows when it has none), each head on the pooled features. A full fine-tuning
task's own backbone runs on every row of the batch and its logits are kept on its rows: the exporter cannot trace a
whole backbone over a data-dependent number of rows (timm's head checks its row count), so each full fine-tuning task
costs one backbone forward over the whole batch in the graph (none of it in the PyTorch model). Nothing is merged:
LoRA's updates stay per task, as in the mixed batch.

Every built-in method exports (AdaptFormer, Adapter+, LoRA, VPT, linear, full); what a method's route does at trace
time is its own (VPT always masks its prompt slots in the graph, since which rows fill them is data). Video tasks are
refused (the graph takes images of one preprocessing), as are tasks whose preprocessing differs from the first one's
(one input tensor serves every task), each naming the task. Like :func:`~.export.export_onnx`, the file is checked
against PyTorch on random mixed batches (every task present, tasks interleaved) before it is moved into place, and a
sidecar ``<file>.json`` records the inputs, outputs, preprocessing and, per task in index order, its name, method,
class count and classes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..files import atomic_write_bytes, check_file_path, discard, make_folder, temporary_name, writing
from .export import ExportError, ExportReport, require_onnx
from .multitask import MultiTaskModel

logger = logging.getLogger(__name__)

__all__ = ["MultiTaskGraph", "export_multitask_onnx"]


class MultiTaskGraph(nn.Module):
    """A :class:`MultiTaskModel` as one traceable function: ``(x (B, C, H, W), task (B,) int64) -> (logits (B, K)
    padded with -inf, num_classes (B,) int64)``, K the largest head."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model
        counts = [len(model.task(n).classes) for n in model.tasks]
        self.register_buffer("classes", torch.tensor(counts, dtype=torch.long), persistent=False)
        self.width = max(counts)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, names = self.model, self.model.tasks
        out = x.new_full((x.shape[0], self.width), float("-inf"))  # (B, K)
        shared = {n: (task == k).nonzero().squeeze(1) for k, n in enumerate(names) if n not in model.own_models}
        if shared:
            features = model.trunk_features(x, shared, traced=True)  # (B, F): every row, routed by task
            for k, name in enumerate(names):
                if name in shared:  # every head on every row (a head is one small matmul), kept where it is the task
                    logits = self._padded(model.heads[name](features))
                    out = torch.where((task == k)[:, None], logits, out)
        for k, name in enumerate(names):
            if name in model.own_models:  # its own backbone on every row, kept on its rows (see the module docstring)
                logits = self._padded(model.own_models[name](x))
                out = torch.where((task == k)[:, None], logits, out)
        return out, self.classes.index_select(0, task)

    def _padded(self, logits: torch.Tensor) -> torch.Tensor:
        return F.pad(logits, (0, self.width - logits.shape[1]), value=float("-inf"))  # (n, C) -> (n, K)


def _check_exportable(model: MultiTaskModel) -> None:
    first = model.task(model.tasks[0]).preprocessing
    for name in model.tasks:
        info = model.task(name)
        if info.is_video:
            raise ExportError(f"task {name!r} ({info.directory}) classifies video clips; a multi-task graph takes "
                              "images: export it alone (adaptformer export --adapter DIR)")  # fmt: skip
        if info.preprocessing != first:
            raise ExportError(
                f"task {name!r} ({info.directory}) preprocesses its images otherwise ({info.preprocessing}) than task "
                f"{model.tasks[0]!r} ({first}): one graph input serves every task; export them in separate graphs"
            )


def _mixed_batch(size: int, tasks: int, shape: tuple[int, ...], generator: torch.Generator) -> tuple[Any, Any]:
    """``size`` random images and task ids covering every task (when ``size`` allows), interleaved."""
    ids = torch.cat([torch.arange(tasks), torch.randint(0, tasks, (max(size - tasks, 0),), generator=generator)])
    ids = ids[torch.randperm(len(ids), generator=generator)][:size]
    return torch.randn(size, *shape, generator=generator), ids


def export_multitask_onnx(
    model: MultiTaskModel, path: str | Path, opset: int | None = None, tolerance: float = 1e-4, overwrite: bool = False
) -> ExportReport:
    """Write ``model`` to ``path`` as one ONNX graph and check it with ONNX Runtime; see the module docstring."""
    ort = require_onnx()
    _check_exportable(model)
    path = check_file_path(path)
    sidecar = path.with_name(path.name + ".json")
    for target in (path, sidecar):
        if target.exists() and not overwrite:
            raise ExportError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    make_folder(path.parent)
    graph = MultiTaskGraph(model.float().eval()).eval()
    shape = tuple(model.task(model.tasks[0]).preprocessing.input_size)
    generator = torch.Generator().manual_seed(0)
    example = _mixed_batch(max(2, len(model.tasks)), len(model.tasks), shape, generator)
    batch = torch.export.Dim("batch", min=1, max=4096)
    temporary = temporary_name(path)
    try:
        with writing(path):
            temporary.touch(exist_ok=False)
        with torch.no_grad():
            program = torch.onnx.export(
                graph, example, dynamo=True, input_names=["input", "task"], output_names=["logits", "num_classes"],
                dynamic_shapes=({0: batch}, {0: batch}), opset_version=opset, verbose=False,
            )  # fmt: skip
        with writing(path):
            program.save(str(temporary))
        session = ort.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        worst, batches = 0.0, (len(model.tasks) + 3, 1)
        for size in batches:
            x, ids = _mixed_batch(size, len(model.tasks), shape, generator)
            with torch.no_grad():
                expected = model(x, ids)
            logits, counts = session.run(None, {"input": x.numpy(), "task": ids.numpy()})
            for k, name in enumerate(model.tasks):
                rows = (ids == k).nonzero().squeeze(1).numpy()
                if not len(rows):
                    continue
                want = expected[name].numpy()
                got = logits[rows]
                diff = float(np.abs(got[:, : want.shape[1]] - want).max())
                worst = max(worst, diff)
                if diff > tolerance or not np.isneginf(got[:, want.shape[1] :]).all():
                    raise ExportError(
                        f"the exported graph differs from PyTorch for task {name!r} at batch {size}: max-abs logit "
                        f"difference {diff:.3g} (tolerance {tolerance:g}); nothing was written"
                    )
                if not (counts[rows] == want.shape[1]).all():
                    raise ExportError(
                        f"the exported graph gives task {name!r} a wrong class count; nothing was written"
                    )
        atomic_write_bytes(sidecar, (json.dumps(_sidecar(model, shape, worst), indent=2) + "\n").encode())
        with writing(path):
            os.replace(temporary, path)
    finally:
        discard(temporary)
    logger.info("wrote %s: %d tasks (max-abs difference to PyTorch %.3g)", path, len(model.tasks), worst)
    return ExportReport(path, sidecar, "input", ["batch", *shape], worst, batches)


def _sidecar(model: MultiTaskModel, shape: tuple[int, ...], worst: float) -> dict[str, Any]:
    """What ``<file>.json`` records: the task order the ``task`` input indexes, and what running the file needs."""
    from ..version import __version__

    pre = model.task(model.tasks[0]).preprocessing
    width = max(len(model.task(n).classes) for n in model.tasks)
    return {
        "input": {"name": "input", "shape": ["batch", *shape], "dtype": "float32", "layout": "NCHW"},
        "task_input": {"name": "task", "shape": ["batch"], "dtype": "int64", "values": "indices into tasks"},
        "output": {"name": "logits", "shape": ["batch", width], "padding": "-inf beyond the task's classes",
                   "activation": "softmax"},
        "num_classes_output": {"name": "num_classes", "shape": ["batch"], "dtype": "int64"},
        "tasks": [{"name": n, "method": model.task(n).method, "num_classes": len(model.task(n).classes),
                   "classes": model.task(n).classes, "adapter": str(model.task(n).directory)} for n in model.tasks],
        "preprocessing": {"mean": list(pre.mean), "std": list(pre.std), "input_size": list(pre.input_size),
                          "interpolation": pre.interpolation, "crop_pct": pre.crop_pct},
        "backbone": model.backbone_name,
        "max_abs_diff": worst,
        "adaptformer_version": __version__,
    }  # fmt: skip
