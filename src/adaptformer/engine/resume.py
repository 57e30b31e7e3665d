"""Resuming a run: where a run stands (:class:`RunPosition`), the training state that records it, and putting that
state back. The file itself (its format, atomic writes, checks) is :mod:`.checkpointing`'s."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..methods.state import task_state_dict
from .checkpointing import TrainingStateError, load_task_tensors, load_training_state
from .config.layers import dotted
from .config.parser import parse_mapping
from .config.sections import TrainConfig
from .distributed import DistributedContext
from .loop import EpochStats
from .rng import restore_rng_state, seed_everything
from .run_folder import CONFIG_FILE
from .schedule import WarmupCosine

logger = logging.getLogger(__name__)

# Sections and fields that steer how a run executes but not what it computes; a resumed run may change them.
RUN_CONTROL = ("speed.grad_checkpointing", "speed.compile", "run.resume", "run.stop_after_steps", "run.log_every",
               "run.tensorboard", "run.recipe", "run.output_dir", "run.overwrite", "data.num_workers")  # fmt: skip


def training_differences(saved: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted keys (other than run-control ones) whose values differ: (saved, current)."""
    a, b = dotted(saved.to_dict()), dotted(current.to_dict())
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not any(k == c or k.startswith(c + ".") for c in RUN_CONTROL)
    }


@dataclass
class RunPosition:
    """Where the run stands; saved in the training state."""

    epoch: int = 0  # the epoch in progress (or next to start), counted from 0 (the user reads epoch + 1)
    step_in_epoch: int = 0  # optimizer steps of ``epoch`` already done
    best_val: float | None = None  # the best validation score (top-1, or mAP for a multi-label task)
    best_epoch: int | None = None
    stats: EpochStats = field(default_factory=EpochStats)


def read_resume_state(cfg: TrainConfig, state_path: Path) -> dict[str, Any] | None:
    """The training state to resume from (None: start from the beginning); an error when it was written by a run of
    another configuration (run-control settings aside)."""
    if not cfg.run.resume:
        return None
    if not state_path.is_file():
        logger.warning("run.resume: no training state at %s; starting from the beginning", state_path)
        return None
    state = load_training_state(state_path)
    try:
        saved = parse_mapping(state["config"])
    except ValueError as e:
        raise TrainingStateError(f"{state_path}: its config is not one this library reads: {e}") from e
    differences = training_differences(saved, cfg)
    if differences:
        raise TrainingStateError(
            f"{state_path} was written by a run with a different configuration (saved, now): {differences}; "
            f"resume with the same settings (e.g. --config {state_path.parent / CONFIG_FILE} --run.resume true)"
        )
    return state


def training_state(
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    scaler: torch.amp.GradScaler,
    pos: RunPosition,
    rng: list[dict[str, Any]],
    consistency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything :func:`restore_training_state` needs to continue the run exactly where it is; ``consistency``:
    what consistency regularisation keeps between steps (:meth:`Consistency.state_dict`)."""
    return {
        "consistency": consistency or {},
        "config": cfg.to_dict(),
        "epoch": pos.epoch,
        "step_in_epoch": pos.step_in_epoch,
        "global_step": scheduler.step_count,
        "best_val": pos.best_val,
        "best_epoch": pos.best_epoch,
        "epoch_stats": pos.stats.to_dict(),
        "model": {k: v.detach().cpu() for k, v in task_state_dict(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
    }


def restore_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    scaler: torch.amp.GradScaler,
    ctx: DistributedContext,
    source: Path,
) -> RunPosition:
    """Put a saved training state back into the model, optimizer, schedule, scaler and RNGs; returns the position."""
    load_task_tensors(model, state["model"], source)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == ctx.world_size:
        restore_rng_state(state["rng"][ctx.rank])
    else:
        logger.warning(
            "resuming on %d processes a state saved by %d: RNG streams restart", ctx.world_size, len(state["rng"])
        )
        seed_everything(parse_mapping(state["config"]).run.seed + state["global_step"] + ctx.rank)
    return RunPosition(
        state["epoch"],
        state["step_in_epoch"],
        state["best_val"],
        state["best_epoch"],
        EpochStats(**state["epoch_stats"]),
    )
