"""Export a trained adapter's whole network (frozen backbone + method + head) to ONNX, checked with ONNX Runtime.

:func:`export_onnx` takes the adapted model as ``eval``/``predict`` build it, first folds into the frozen weights what
its method merges before inference (``Method.merge``: LoRA's updates), exports it with PyTorch's exporter
(``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``) with a dynamic batch axis, then runs the file in
ONNX Runtime on random inputs of two batch sizes and compares with PyTorch: only a file within ``tolerance`` (max-abs
logit difference, fp32) and with the same top-1 is kept. The file is written beside its destination and moved there
only after the check, so a failed export leaves nothing behind; an existing file is replaced only when asked. A
sidecar ``<file>.json`` records what a user without adaptformer needs: the input's name and shape, the preprocessing
(mean, std, size, interpolation, crop), the class names; for a segmentation model (logits (batch, K, H, W)) also
its task record.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import MissingDependencyError
from ..files import atomic_write_bytes, check_file_path, discard, make_folder, temporary_name, writing
from ..methods.state import get_spec, get_task
from ..preprocessing import Preprocessing, clip_frames
from ..saving import AdapterInfo

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "ExportReport", "export_onnx", "require_onnx"]

INSTALL_HINT = "pip install 'adaptformer[export]' (onnx, onnxruntime, onnxscript)"


class ExportError(ValueError):
    """An export that failed its check against PyTorch, or a destination that may not be written."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    sidecar: Path
    input_name: str
    input_shape: list[Any]  # "batch" for the dynamic axis
    max_abs_diff: float
    checked_batches: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": str(self.path), "sidecar": str(self.sidecar), "input": self.input_name,
                "input_shape": self.input_shape, "max_abs_diff": self.max_abs_diff,
                "checked_batches": list(self.checked_batches)}  # fmt: skip


MIN_TORCH = (2, 5)  # torch.onnx.export(dynamo=True, dynamic_shapes=...) as used here


def require_onnx(torch_version: str | None = None) -> Any:
    """The ``onnxruntime`` module, after checking that the exporter's dependencies are installed and that torch
    (``torch_version``, default the running one) has the dynamo exporter this module uses."""
    version = torch_version or torch.__version__
    parts = tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:2])
    if parts < MIN_TORCH:
        raise MissingDependencyError(
            f"ONNX export needs torch >= {'.'.join(map(str, MIN_TORCH))} (its dynamo exporter with dynamic shapes); "
            f"this is torch {version}: upgrade torch, or export on a machine that has it"
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"ONNX export needs {e.name}, which is not installed: {INSTALL_HINT}") from e
    return onnxruntime


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    """One sample's shape: (C, H, W) for images, (C, T, H, W) for a video backbone."""
    channels, height, width = Preprocessing.from_model(model).input_size
    frames = clip_frames(model)
    return (channels, height, width) if frames is None else (channels, frames, height, width)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    info: AdapterInfo | None = None,
    opset: int | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``model`` (an adapted model in eval mode, e.g. ``create_model_from_adapter``) to ``path`` as ONNX and
    check it with ONNX Runtime; see the module docstring. ``info``: the adapter's config, for the sidecar."""
    ort = require_onnx()

    path = check_file_path(path)  # not a folder, not below a file: said now, before the export's work
    sidecar = path.with_name(path.name + ".json")
    for target in (path, sidecar):
        if target.exists() and not overwrite:
            raise ExportError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    make_folder(path.parent)
    model = model.float().eval()
    spec = get_spec(model)
    if spec is not None and spec.registered.merge is not None:
        spec.registered.merge(model)  # e.g. one plain Linear per LoRA projection in the graph
    shape = _input_shape(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *shape, generator=generator)
    batch = torch.export.Dim("batch", min=1, max=4096)
    temporary = temporary_name(path)
    try:
        with writing(path):
            temporary.touch(exist_ok=False)  # a folder that refuses files (read-only) is said now, not after the work
        with torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
            )  # fmt: skip
        with writing(path):
            program.save(str(temporary))
        session = ort.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        worst, batches = 0.0, (2, 3)
        for size in batches:
            x = torch.randn(size, *shape, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            got = session.run(None, {"input": x.numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"ONNX Runtime returned logits of shape {got.shape}, PyTorch {expected.shape}")
            diff = float(np.abs(got - expected).max())
            worst = max(worst, diff)
            if diff > tolerance or not np.array_equal(got.argmax(1), expected.argmax(1)):
                raise ExportError(
                    f"the exported model differs from PyTorch at batch {size}: max-abs logit difference {diff:.3g} "
                    f"(tolerance {tolerance:g}); nothing was written"
                )
        # the sidecar first: a full disk then leaves the file pair as it was
        atomic_write_bytes(sidecar, (json.dumps(_sidecar(model, info, shape, worst), indent=2) + "\n").encode())
        with writing(path):
            os.replace(temporary, path)
    finally:
        discard(temporary)
    logger.info("wrote %s (max-abs difference to PyTorch %.3g over batches %s)", path, worst, batches)
    return ExportReport(path, sidecar, "input", ["batch", *shape], worst, batches)


def _sidecar(model: nn.Module, info: AdapterInfo | None, shape: tuple[int, ...], worst: float) -> dict[str, Any]:
    """What ``<file>.json`` records: what a user without adaptformer needs to run the file."""
    from ..version import __version__

    pre = Preprocessing.from_model(model)
    task = get_task(model)  # a segmentation model's logits keep the input's height and width
    output_shape = ["batch", int(model.num_classes), *(shape[-2:] if task is not None else ())]
    return {
        "input": {"name": "input", "shape": ["batch", *shape], "dtype": "float32",
                  "layout": "NCHW" if len(shape) == 3 else "NCTHW"},
        "output": {"name": "logits", "shape": output_shape,
                   "activation": "sigmoid" if info is not None and info.multi_label else "softmax"},
        "preprocessing": {"mean": list(pre.mean), "std": list(pre.std), "input_size": list(pre.input_size),
                          "interpolation": pre.interpolation, "crop_pct": pre.crop_pct},
        "classes": (info.classes if info is not None else None),
        "backbone": info.spec.backbone if info is not None else None,
        "method": info.spec.to_dict().get("method") if info is not None else None,
        "max_abs_diff": worst,
        "adaptformer_version": __version__,
        **({"task": task} if task is not None else {}),
    }  # fmt: skip
