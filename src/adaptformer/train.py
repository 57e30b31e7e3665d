"""The training entry point: ``train(TrainConfig)`` reads top to bottom: data, model, loaders, optimizer, resume,
loop, final test (MAE's main_finetune, with the configuration as one validated dataclass instead of ``args``).

What a run writes to ``run.output_dir`` (only the main process writes):

    config.yaml     the effective configuration; ``adaptformer train --config config.yaml`` repeats the run
    metrics.jsonl   one JSON object per epoch: epoch, lr, train_loss, val_acc1, val_acc5, val_loss, seconds, images/s
    adapter/        the selected adapter (``save_adapter``; full weights for method "full"), its adapter_config.json
                    recording the class names, how the backbone was built and how training evaluated it
    checkpoint.pt   the training state for ``run.resume`` (every epoch, and every ``run.save_every_steps`` steps)
    test.json       the test split, evaluated once at the end with the selected adapter (video datasets: multi-view
                    acc1/acc5 over test_clips x test_crops views per video, plus single_view_acc1/acc5)

Model selection uses only the validation split carved from the training data (seeded, ``data.val_split``): with
``select: best`` the adapter of the epoch with the best validation top-1 is kept (the earliest on ties), with
``select: last`` the final one. The test split never influences training or selection.

Image and video datasets run through the same code: ``engine.datasets`` loads a split, builds it for the model
(transforms from the backbone's preprocessing) and scores it; only those three steps know which kind of data it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data import train_val_split
from .engine.checkpointing import (
    STATE_FILE,
    TrainingStateError,
    load_task_tensors,
    load_training_state,
    save_training_state,
)
from .engine.config import TrainConfig
from .engine.data import TrainBatchSampler, eval_loader, resolve_num_workers, train_loader
from .engine.datasets import DataSpec, load_split
from .engine.distributed import (
    DistributedContext,
    all_gather_objects,
    barrier,
    init_distributed,
    local_world_size,
    shutdown,
    wrap_model,
)
from .engine.loop import EpochStats, StepInfo, classification_metrics, evaluate, train_one_epoch
from .engine.optim import build_optimizer, scaled_lr
from .engine.progress import Progress
from .engine.records import TEST_FILE, MetricsLog, write_json
from .engine.rng import capture_rng_state, derive_seed, restore_rng_state, seed_everything
from .engine.schedule import WarmupCosine
from .factory import create_model
from .methods import method_of
from .model import parameter_report, task_state_dict
from .precision import resolve_precision
from .saving import TrainingRecord, load_adapter, save_adapter
from .speed import apply_speed

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CONFIG_FILE = "config.yaml"


@dataclass
class RunPosition:
    """Where the run stands; saved in the training state."""

    epoch: int = 0  # the epoch in progress (or next to start)
    step_in_epoch: int = 0  # optimizer steps of ``epoch`` already done
    best_val_acc1: float | None = None
    best_epoch: int | None = None
    stats: EpochStats = field(default_factory=EpochStats)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`. ``test`` is None when the run stopped early (``stop_after_steps``)."""

    output_dir: Path
    test: dict[str, Any] | None
    best_epoch: int | None
    best_val_acc1: float | None
    stopped_early: bool = False
    is_main: bool = True  # False on the other processes of a torchrun job


class _StopRequested(Exception):
    """Raised from the step callback when ``stop_after_steps`` is reached."""


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The backbone with its pre-trained weights, the task head and the adaptation method of ``cfg``.

    Without a checkpoint the backbone's random initialisation follows the run's seed, set here, so that the same
    backbone can be built again from the seed alone (``adaptformer eval`` does, for such an adapter).
    """
    m = cfg.model
    if m.checkpoint is None and not method_of(m.method).trains_backbone:
        logger.warning("no model.checkpoint: the frozen backbone is randomly initialised (seed %d)", cfg.run.seed)
    return create_model(
        m.backbone, num_classes, method=m.method, head=m.head, checkpoint=m.checkpoint,
        checkpoint_source=m.checkpoint_source, init_seed=cfg.run.seed if m.checkpoint is None else None,
        drop_path_rate=m.drop_path, **cfg.backbone_kwargs(),
    )  # fmt: skip


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on each process so that the step holds ``effective_batch`` samples."""
    if cfg.optim.effective_batch is None:
        return 1
    per_step = cfg.optim.batch_size * world_size
    if cfg.optim.effective_batch % per_step:
        raise ValueError(
            f"optim.effective_batch {cfg.optim.effective_batch} is not a multiple of optim.batch_size "
            f"{cfg.optim.batch_size} x {world_size} "
            "processes"
        )
    return cfg.optim.effective_batch // per_step


def train(cfg: TrainConfig) -> TrainResult:
    """Run the training that ``cfg`` describes (one process, or one rank of a ``torchrun`` job)."""
    ctx = init_distributed(cfg.run.device)
    try:
        return _train(cfg, ctx)
    finally:
        shutdown(ctx)


def _train(cfg: TrainConfig, ctx: DistributedContext) -> TrainResult:
    out = Path(cfg.run.output_dir)
    state_path = out / STATE_FILE
    resume_state = _read_resume_state(cfg, state_path)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(
            replace(cfg, run=replace(cfg.run, resume=False, stop_after_steps=None)).to_yaml()
        )
    seed_everything(cfg.run.seed)

    # Data: the splits (images or videos), untransformed until the model says which input it needs.
    spec = DataSpec.from_config(cfg)
    train_split, test_split = load_split(spec, "train"), load_split(spec, "test")
    classes = train_split.classes
    if test_split.classes != classes:
        raise ValueError(f"{cfg.data.dataset}: the train and test splits have different classes")

    # Model: backbone + pre-trained weights + method + head, then the speed options for the device and precision.
    precision = resolve_precision(cfg.optim.precision, ctx.device)
    model = apply_speed(build_model(cfg, len(classes)), cfg.speed, ctx.device, precision.name)
    if ctx.is_main:
        logger.info("%s, method %s:\n%s", cfg.model.backbone, cfg.model.method, parameter_report(model))
    seed_everything(derive_seed(cfg.run.seed, ctx.rank))  # same init on every process; own dropout draws per process
    train_part, val_part = train_split.build(model, "train"), None
    if cfg.data.val_split:  # the same samples, deterministic single view, stratified by label
        val_source = train_split.build(model, "eval")
        train_part, val_part = train_val_split(
            train_part, cfg.data.val_split, cfg.data.split_seed, val_dataset=val_source
        )
    test_part = test_split.build(model, "test")

    # Loaders: the same sample order for any number of processes at the same effective batch.
    accum = accumulation_steps(cfg, ctx.world_size)
    o = cfg.optim
    sampler = TrainBatchSampler(len(train_part), o.batch_size, accum, ctx.world_size, ctx.rank, cfg.run.seed)
    workers = resolve_num_workers(cfg.data.num_workers, local_world_size())
    if ctx.is_main and cfg.data.num_workers is None:
        logger.info("data.num_workers null: %d loader workers per process (min(4, usable CPUs per process))", workers)
    loader = train_loader(train_part, sampler, cfg.run.seed, workers, ctx.device)
    eval_args = (o.eval_batch_size, workers, ctx.device, ctx.world_size, ctx.rank)
    val_loader = eval_loader(val_part, *eval_args) if val_part is not None else None
    test_loader = eval_loader(test_part, *eval_args)

    # Optimizer, schedule, precision.
    effective = sampler.samples_per_step
    lr = o.lr if o.lr is not None else scaled_lr(o.blr, effective)
    how = "given" if o.lr is not None else f"blr {o.blr:g} x {effective} / 256"
    if ctx.is_main:
        logger.info(
            "effective batch %d = %d per device x %d accumulation x %d devices; lr %.6g (%s); %d steps per epoch",
            effective, o.batch_size, accum, ctx.world_size, lr, how, sampler.steps_per_epoch,
        )  # fmt: skip
    optimizer = build_optimizer(model, o.optimizer, lr, o.weight_decay, o.momentum, tuple(o.betas))
    steps = sampler.steps_per_epoch
    if ctx.is_main and o.warmup_epochs is None:
        logger.info(
            "optim.warmup_epochs null: %g warmup epochs (20%% of %d, the paper's proportion)", o.warmup(), o.epochs
        )
    scheduler = WarmupCosine(optimizer, lr, round(o.warmup() * steps), o.epochs * steps, o.min_lr)
    scaler = precision.grad_scaler()
    criterion = nn.CrossEntropyLoss()
    ddp_model = wrap_model(model, ctx)

    # Resume: weights, optimizer, schedule, scaler, RNG, position. Data order follows from (seed, epoch, step).
    pos = RunPosition()
    if resume_state is not None:
        pos = _restore(resume_state, model, optimizer, scheduler, scaler, ctx, state_path)
        logger.info("resumed from %s at epoch %d, step %d", state_path, pos.epoch, pos.step_in_epoch)
    elif ctx.is_main:
        stale = [p for p in (state_path, out / "metrics.jsonl", out / TEST_FILE) if p.exists()]
        if stale:
            logger.warning("new run in %s: removing %s of an earlier run", out, ", ".join(p.name for p in stale))
        for path in stale:
            path.unlink()
    metrics = MetricsLog(out, enabled=ctx.is_main, tensorboard=cfg.run.tensorboard)
    metrics.keep_epochs_before(pos.epoch)
    evaluation = TrainingRecord(cfg.data.dataset, dict(cfg.data.options), spec.video_record(), precision.name,
                            o.eval_batch_size)  # fmt: skip

    def save_state() -> None:
        rng = all_gather_objects(capture_rng_state(), ctx)  # every process's generators
        if ctx.is_main:
            save_training_state(state_path, _state_dict(cfg, model, optimizer, scheduler, scaler, pos, rng))

    def on_step(info: StepInfo) -> None:
        pos.step_in_epoch, pos.stats = info.step_in_epoch, info.stats
        stop = cfg.run.stop_after_steps is not None and info.global_step >= cfg.run.stop_after_steps
        if stop or (cfg.run.save_every_steps and info.global_step % cfg.run.save_every_steps == 0):
            save_state()
        if stop:
            raise _StopRequested

    # The loop.
    try:
        for epoch in range(pos.epoch, o.epochs):
            started = time.perf_counter() - pos.stats.seconds  # a resumed epoch keeps its earlier time
            sampler.set_epoch(epoch, start_step=pos.step_in_epoch)
            progress = Progress(
                steps, f"epoch {epoch + 1}/{o.epochs}", ctx.is_main, cfg.run.log_every, initial=pos.step_in_epoch
            )
            stats = train_one_epoch(
                ddp_model, loader, criterion, optimizer, scheduler, precision, scaler, ctx, epoch=epoch,
                accum_steps=accum, clip_grad=o.clip_grad, stats=pos.stats, progress=progress, on_step=on_step,
            )  # fmt: skip
            progress.close()
            record: dict[str, Any] = {"epoch": epoch, "lr": stats.lr, "train_loss": stats.loss}
            last = epoch + 1 == o.epochs
            if val_loader is not None and ((epoch + 1) % cfg.run.eval_every == 0 or last):
                val = classification_metrics(evaluate(ddp_model, val_loader, precision, ctx))
                record.update({"val_acc1": val["acc1"], "val_acc5": val["acc5"], "val_loss": val["loss"]})
                if pos.best_val_acc1 is None or val["acc1"] > pos.best_val_acc1:
                    pos.best_val_acc1, pos.best_epoch = val["acc1"], epoch
                    if cfg.run.select == "best":
                        _save_selected(model, classes, evaluation, out, ctx)
            if cfg.run.select == "last" and last:
                _save_selected(model, classes, evaluation, out, ctx)
            record.update({"seconds": time.perf_counter() - started, "images/s": stats.images_per_second})
            metrics.append(record)
            if ctx.is_main:
                logger.info(
                    "epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                )
            pos = RunPosition(epoch + 1, 0, pos.best_val_acc1, pos.best_epoch)
            save_state()
    except _StopRequested:
        logger.info("stopped after %d optimizer steps (stop_after_steps); resume with --resume", scheduler.step_count)
        return TrainResult(out, None, pos.best_epoch, pos.best_val_acc1, True, ctx.is_main)
    finally:
        metrics.close()

    # The test split, once, with the selected adapter as saved on disk.
    barrier(ctx)
    load_adapter(model, out / ADAPTER_DIR)
    test = test_split.score(evaluate(model, test_loader, precision, ctx), test_part)
    selected_epoch = pos.best_epoch if cfg.run.select == "best" else o.epochs - 1
    selected_val = pos.best_val_acc1
    if cfg.run.select == "last" and ctx.is_main:
        selected_val = next((r.get("val_acc1") for r in metrics.read() if r["epoch"] == selected_epoch), None)
    report = {"split": "test", **test, "select": cfg.run.select, "epoch": selected_epoch, "val_acc1": selected_val}
    if ctx.is_main:
        write_json(out / TEST_FILE, report)
        logger.info("test (adapter of epoch %d, selected by %s): %s", selected_epoch, cfg.run.select, test)
    return TrainResult(out, report, pos.best_epoch, pos.best_val_acc1, False, ctx.is_main)


def _read_resume_state(cfg: TrainConfig, state_path: Path) -> dict[str, Any] | None:
    if not cfg.run.resume:
        return None
    if not state_path.is_file():
        logger.warning("run.resume: no training state at %s; starting from the beginning", state_path)
        return None
    state = load_training_state(state_path)
    saved = TrainConfig.from_dict(state["config"])
    differences = saved.training_differences(cfg)
    if differences:
        raise TrainingStateError(
            f"{state_path} was written by a run with a different configuration (saved, now): {differences}; "
            f"resume with the same settings (e.g. --config {state_path.parent / CONFIG_FILE} --run.resume true)"
        )
    return state


def _save_selected(
    model: nn.Module, classes: list[str], record: TrainingRecord, out: Path, ctx: DistributedContext
) -> None:
    if ctx.is_main:
        save_adapter(model, out / ADAPTER_DIR, classes, record)


def _state_dict(
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    scaler: torch.amp.GradScaler,
    pos: RunPosition,
    rng: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "epoch": pos.epoch,
        "step_in_epoch": pos.step_in_epoch,
        "global_step": scheduler.step_count,
        "best_val_acc1": pos.best_val_acc1,
        "best_epoch": pos.best_epoch,
        "epoch_stats": pos.stats.to_dict(),
        "model": {k: v.detach().cpu() for k, v in task_state_dict(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
    }


def _restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    scaler: torch.amp.GradScaler,
    ctx: DistributedContext,
    source: Path,
) -> RunPosition:
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
        seed_everything(TrainConfig.from_dict(state["config"]).run.seed + state["global_step"] + ctx.rank)
    return RunPosition(
        state["epoch"],
        state["step_in_epoch"],
        state["best_val_acc1"],
        state["best_epoch"],
        EpochStats(**state["epoch_stats"]),
    )
