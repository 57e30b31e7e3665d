"""Training state for ``--run.resume true``: everything needed to continue a run exactly where it stopped.

One file, ``<output_dir>/checkpoint.pt``, holding the task's tensors (the trainable modules with their buffers; the
whole model only for full fine-tuning), optimizer, schedule, gradient scaler, every process's RNG states, the
position in the run (epoch, optimizer steps done in it, total steps), the partial statistics of the current epoch and
the best validation result so far, and what consistency regularisation keeps between steps (``consistency``: the
fast variant's previous-epoch logits per training sample; absent in older files). Data order needs no state of its
own: it is a function of (seed, epoch), and the sampler skips the steps already done.

The file is written to a temporary name and renamed into place, so a crash while writing leaves the previous state
readable. It is read with ``torch.load(weights_only=True)``: plain values and tensors only, no pickled code.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..backbones.checkpoints.load import first_line
from ..files import atomic_write_bytes, make_folder
from ..methods.state import task_state_dict
from ..model import task_tensor_mismatch
from ..validation import is_of_type, type_names

logger = logging.getLogger(__name__)

STATE_FILE = "checkpoint.pt"
FORMAT = "adaptformer-training-state"
FORMAT_VERSION = 2  # 2: "best_val" (the selection score: top-1, or mAP for multi-label) was 1's "best_val_acc1"


# Every entry save_training_state is given by train.py, with its type.
STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "config": dict, "epoch": int, "step_in_epoch": int, "global_step": int, "best_val": (float, int, type(None)),
    "best_epoch": (int, type(None)), "epoch_stats": dict, "model": dict, "optimizer": dict, "scheduler": dict,
    "scaler": dict, "rng": list,
}  # fmt: skip


class TrainingStateError(ValueError):
    """A training-state file that cannot be read or does not fit the run being resumed."""


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (see the module docstring for its keys) to ``path``."""
    path = Path(path)
    make_folder(path.parent)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("training state saved to %s (epoch %s, step %s)", path, state.get("epoch"), state.get("global_step"))
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_training_state`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}: the file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling arbitrary bytes can raise nearly anything (IndexError, KeyError, ...)
        raise TrainingStateError(
            f"{path}: cannot be read ({first_line(e)}); expected a training state written by adaptformer "
            "(truncated or corrupt? delete it to start the run again)"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingStateError(f'{path}: not an adaptformer training state (expected "format": "{FORMAT}")')
    if state.get("format_version") not in (1, FORMAT_VERSION):
        raise TrainingStateError(f"{path}: format_version {state.get('format_version')!r}, this library reads 1 and "
                                 f"{FORMAT_VERSION}")  # fmt: skip
    if state["format_version"] == 1 and "best_val_acc1" in state:  # version 1 kept top-1 under this name
        state["best_val"] = state.pop("best_val_acc1")
    missing = sorted(set(STATE_TYPES) - set(state))
    present = {k: t for k, t in STATE_TYPES.items() if k in state}
    wrong = [f"{k} ({type(state[k]).__name__})" for k, t in present.items() if not is_of_type(state[k], t)]
    if missing or wrong:
        found = ", ".join(
            [*([f"missing entries {missing}"] if missing else []), *([f"wrong types: {wrong}"] if wrong else [])]
        )
        expected = ", ".join(f"{k}: {type_names(t)}" for k, t in STATE_TYPES.items())
        raise TrainingStateError(f"{path}: {found}; expected {expected}")
    return state


def load_task_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Put saved task tensors back into ``model``; the key sets must match exactly (listed if they do not)."""
    problem = task_tensor_mismatch(tensors, task_state_dict(model))
    if problem:
        raise TrainingStateError(f"{source}: {problem}")
    model.load_state_dict(tensors, strict=False)
