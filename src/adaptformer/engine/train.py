"""The training entry point: ``train(TrainConfig)`` reads top to bottom: data, model, loaders, optimizer, resume,
loop, final test (MAE's main_finetune, with the configuration as one validated dataclass instead of ``args``).

What a run writes to ``run.output_dir`` (only the main process writes; epochs are numbered from 1 wherever a user
reads them):

    config.yaml     the effective configuration; ``adaptformer train --config config.yaml`` repeats the run
    metrics.jsonl   one JSON object per epoch: epoch, lr, train_loss, the validation scores (val_acc1, val_acc5,
                    val_loss; multi-label: val_map, val_of1, val_cf1, ...), seconds, images/s
    curves.png      loss, lr and validation accuracy per epoch, drawn from metrics.jsonl when the loop ends
    adapter/        the selected adapter (``save_adapter``; full weights for method "full"), its adapter_config.json
                    recording the class names, how the backbone was built and how training evaluated it
    checkpoint.pt   the training state for ``run.resume`` (every epoch, and every ``run.save_every_steps`` steps)
    test.json       the test split, evaluated once at the end with the selected adapter (video datasets: multi-view
                    acc1/acc5 over test_clips x test_crops views per video, plus single_view_acc1/acc5), the
                    selected epoch, the trainable parameters and the peak memory (CUDA: max allocated; CPU: max RSS)

A new run needs a missing or empty ``run.output_dir`` (``run.resume`` continues the run there, ``run.overwrite``
removes it first; :mod:`.run_folder`), and nothing there changes before the run's inputs (weights file,
dataset, model, training state) have been read and checked.

Model selection uses only a validation split: the dataset's own ``val`` split when it has one next to its test split
(an ``imagefolder`` or ``videofolder`` with ``val/`` and ``test/``, list files with ``val.txt`` and ``test.txt``; then
``data.val_split`` is not used), else a part carved from the training data (seeded, ``data.val_split``). A dataset
with ``val`` but no ``test`` split (the ImageNet layout) is tested on ``val``. With ``select: best`` the adapter of the
epoch with the best validation score is kept (top-1; mAP for a multi-label task; the earliest on ties), with
``select: last`` the final one. The test
split never influences training or selection. Training samples that no epoch's batches draw (each epoch drops the
samples that do not fill an optimizer step) are read once at the start, so an unreadable file fails the run wherever
it lies in the split.

Image and video datasets run through the same code: ``engine.splits`` loads a split, builds it for the model
(transforms from the backbone's preprocessing) and scores it; only those three steps know which kind of data it is.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..backbones.hf import is_hf_name
from ..cards import write_model_card
from ..data import train_val_split
from ..factory import create_model, require_checkpoint
from ..files import atomic_write_text
from ..methods import method_of
from ..model import count_trainable, parameter_report
from ..precision import resolve_precision
from ..saving import TrainingRecord, load_adapter, save_adapter
from ..segmentation import create_segmentation_model
from ..speed import apply_speed
from ..validation import to_plain
from .checkpointing import STATE_FILE, save_training_state
from .config.sections import TrainConfig
from .consistency import Consistency
from .curves import draw_run_curves
from .distributed import (
    DistributedContext,
    all_gather_objects,
    barrier,
    init_distributed,
    local_world_size,
    shutdown,
    wrap_model,
)
from .loaders import TrainBatchSampler, eval_loader, read_undrawn, resolve_num_workers, train_loader
from .loop import NonFiniteLossError, StepInfo, train_one_epoch
from .optim import build_optimizer, scaled_lr
from .progress import Progress, RunEta
from .records import TEST_FILE, MetricsLog, peak_memory, write_json
from .resume import RunPosition, read_resume_state, restore_training_state, training_state
from .rng import capture_rng_state, derive_seed, seed_everything
from .run_folder import ADAPTER_DIR, CONFIG_FILE, check_run_folder, prepare_run_folder, run_folder_lock
from .schedule import WarmupCosine
from .segmentation import segmentation_loss
from .shared_folder import check_shared_folder
from .splits import DataSpec, SegmentationSplit, check_same_classes, given_val_split, load_split

logger = logging.getLogger(__name__)

# the validation scores metrics.jsonl records per epoch (as val_<name>): top-1/top-5, or mAP and F1 (multi-label)
VAL_RECORDED = ("acc1", "acc5", "map", "of1", "cf1", "loss", "miou", "macc", "aacc")


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`. ``test`` is None when the run stopped early (``stop_after_steps``);
    ``best_epoch`` is the epoch of the best validation score ``best_val`` (top-1, or mAP for a multi-label task:
    ``metric`` names it), numbered from 1 as in metrics.jsonl."""

    output_dir: Path
    test: dict[str, Any] | None
    best_epoch: int | None
    best_val: float | None
    stopped_early: bool = False
    is_main: bool = True  # False on the other processes of a torchrun job
    metric: str = "acc1"


class _StopRequested(Exception):
    """Raised from the step callback when ``stop_after_steps`` is reached."""


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The backbone with its pre-trained weights, the task head and the adaptation method of ``cfg``; for a
    segmentation dataset a :class:`~adaptformer.segmentation.SegmentationModel` (its decode head over the adapted
    backbone's patch features).

    Without a checkpoint the backbone's random initialisation follows the run's seed, set here, so that the same
    backbone can be built again from the seed alone (``adaptformer eval`` does, for such an adapter).
    """
    m = cfg.model
    if m.checkpoint is None and not method_of(m.method).trains_backbone and not is_hf_name(m.backbone):
        logger.warning("no model.checkpoint: the frozen backbone is randomly initialised (seed %d)", cfg.run.seed)
    if cfg.data.is_segmentation:
        return create_segmentation_model(
            m.backbone, num_classes, method=m.method, head=m.head or "linear", layers=m.decode.layers,
            channels=m.decode.channels, checkpoint=m.checkpoint, checkpoint_source=m.checkpoint_source,
            init_seed=cfg.run.seed if m.checkpoint is None else None, drop_path_rate=m.drop_path,
            **cfg.backbone_kwargs(),
        )  # fmt: skip
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


_LOST_PEER = (
    "process %d of %d stopped (%s: %s). If a process or node of this run was lost, start the run again on every node "
    "with --run.resume true added: it continues from %s, saved every epoch and every --run.save_every_steps steps"
)


def train(cfg: TrainConfig) -> TrainResult:
    """Run the training that ``cfg`` describes (one process, or one rank of a ``torchrun`` job)."""
    ctx = init_distributed(cfg.run.device)
    try:
        with ExitStack() as held:  # the run folder, held by the main process while it trains
            return _train(cfg, ctx, held)
    except RuntimeError as e:  # under torchrun: also what every process's collectives raise when a peer is lost
        if ctx.enabled and not isinstance(e, NonFiniteLossError):
            logger.error(_LOST_PEER, ctx.rank, ctx.world_size, e.__class__.__name__, str(e).split("\n", 1)[0][:200],
                         Path(cfg.run.output_dir) / STATE_FILE)  # fmt: skip
        raise
    finally:
        shutdown(ctx)


def _train(cfg: TrainConfig, ctx: DistributedContext, held: ExitStack) -> TrainResult:
    # The inputs first, cheapest first: the output folder is written only once they all check out.
    out = Path(cfg.run.output_dir)
    state_path = out / STATE_FILE
    require_checkpoint(cfg.model.checkpoint)
    earlier = check_run_folder(out, cfg.run.resume, cfg.run.overwrite)
    resume_state = read_resume_state(cfg, state_path)
    seed_everything(cfg.run.seed)

    # Data: the splits (images or videos), untransformed until the model says which input it needs.
    spec = DataSpec.from_config(cfg)
    train_split, test_split = load_split(spec, "train"), load_split(spec, "test")
    given_val = given_val_split(spec, cfg.data.val_split)  # the dataset's own val split, else None: carve from train
    val_split = load_split(spec, given_val) if given_val is not None else None
    if given_val is None and not cfg.data.val_split and cfg.run.select == "best":
        raise ValueError(
            f"--run.select best needs a validation split: {cfg.data.dataset} {spec.root} has no val split next to its "
            "test split; set --data.val_split > 0 (carved from train) or --run.select last"
        )
    classes, multi_label, primary = train_split.classes, train_split.multi_label, train_split.primary
    segmenting = isinstance(train_split, SegmentationSplit)
    for other in (test_split, val_split):
        if other is not None:
            check_same_classes(train_split, other, cfg.data.dataset)

    # Model: backbone + pre-trained weights + method + head, then the speed options for the device and precision.
    precision = resolve_precision(cfg.optim.precision, ctx.device)
    model = apply_speed(build_model(cfg, len(classes)), cfg.speed, ctx.device, precision.name)
    if ctx.is_main:
        logger.info("%s, method %s:\n%s", cfg.model.backbone, cfg.model.method, parameter_report(model))
    seed_everything(derive_seed(cfg.run.seed, ctx.rank))  # same init on every process; own dropout draws per process
    train_part, val_part = train_split.build(model, "train"), None
    if val_split is not None:
        val_part = val_split.build(model, "eval")
    elif cfg.data.val_split:  # the same samples, deterministic single view, stratified by label
        val_source = train_split.build(model, "eval")
        train_part, val_part = train_val_split(
            train_part, cfg.data.val_split, cfg.data.split_seed, val_dataset=val_source
        )
    test_part = test_split.build(model, "test")

    # Loaders: the same sample order for any number of processes at the same effective batch.
    accum = accumulation_steps(cfg, ctx.world_size)
    o = cfg.optim
    sampler = TrainBatchSampler(len(train_part), o.batch_size, accum, ctx.world_size, ctx.rank, cfg.run.seed)
    read_undrawn(train_part, sampler.never_drawn(o.epochs), cfg.run.seed)
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
    scheduler = WarmupCosine(
        optimizer, lr, round(o.warmup() * steps), o.epochs * steps, o.min_lr, decay=o.schedule, power=o.poly_power
    )
    scaler = precision.grad_scaler()
    # one softmax over the classes, or one sigmoid per class (multi-label: labels are multi-hot vectors), or one
    # softmax per labelled pixel (segmentation)
    criterion = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
    if segmenting:
        criterion = segmentation_loss
    ddp_model = wrap_model(model, ctx)
    consistency = None
    if o.consistency.enabled:
        if o.consistency.variant == "fast" and ctx.world_size > 1:
            raise ValueError(
                "optim.consistency.variant 'fast' keeps each sample's previous-epoch logits in one process; run it "
                f"on one process (this run has {ctx.world_size}) or use variant 'pace'"
            )
        consistency = Consistency(
            model, o.consistency, seed=cfg.run.seed, rank=ctx.rank, num_samples=len(train_part),  # type: ignore[arg-type]
            num_classes=len(classes),
        )  # fmt: skip

    # Resume: weights, optimizer, schedule, scaler, RNG, position. Data order follows from (seed, epoch, step).
    pos = RunPosition()
    if resume_state is not None:
        pos = restore_training_state(resume_state, model, optimizer, scheduler, scaler, ctx, state_path)
        if consistency is not None:
            consistency.load_state_dict(resume_state.get("consistency", {}))
        logger.info("resumed from %s at epoch %d/%d, step %d", state_path, pos.epoch + 1, o.epochs, pos.step_in_epoch)

    # The output folder: every input checked, the run may now write (an earlier run's files go first, if asked to).
    barrier(ctx)  # every process has checked the folder before the main one changes it
    if ctx.is_main:
        held.enter_context(run_folder_lock(out, cfg.run.resume, cfg.run.overwrite, earlier))
        prepare_run_folder(out, earlier)
        saved_run = replace(cfg.run, resume=False, overwrite=False, stop_after_steps=None)
        atomic_write_text(out / CONFIG_FILE, replace(cfg, run=saved_run).to_yaml())
    check_shared_folder(out, ctx)  # several machines: each must read the state and adapter the main process writes
    metrics = MetricsLog(out, enabled=ctx.is_main, tensorboard=cfg.run.tensorboard)
    metrics.keep_finished(pos.epoch)
    evaluation = TrainingRecord(
        cfg.data.dataset, dict(cfg.data.options), spec.video_record(), precision.name, o.eval_batch_size,
        segmentation=to_plain(cfg.data.segmentation) if segmenting else None,
    )  # fmt: skip

    def save_selected() -> None:
        if ctx.is_main:
            save_adapter(model, out / ADAPTER_DIR, classes, evaluation, multi_label=multi_label)

    def save_state() -> None:
        rng = all_gather_objects(capture_rng_state(), ctx)  # every process's generators
        if ctx.is_main:
            kept = consistency.state_dict() if consistency is not None else None
            save_training_state(state_path, training_state(cfg, model, optimizer, scheduler, scaler, pos, rng, kept))

    def on_step(info: StepInfo) -> None:
        pos.step_in_epoch, pos.stats = info.step_in_epoch, info.stats
        stop = cfg.run.stop_after_steps is not None and info.global_step >= cfg.run.stop_after_steps
        if stop or (cfg.run.save_every_steps and info.global_step % cfg.run.save_every_steps == 0):
            save_state()
        if stop:
            raise _StopRequested

    def eval_progress(loader: Any, desc: str) -> Progress:
        return Progress(len(loader), desc, ctx.is_main, cfg.run.log_every)

    # The loop (epoch counts from 0 here; what the user reads counts from 1).
    run_eta = RunEta(o.epochs * steps, pos.epoch * steps + pos.step_in_epoch)
    stopped = False
    try:
        for epoch in range(pos.epoch, o.epochs):
            started = time.perf_counter() - pos.stats.seconds  # a resumed epoch keeps its earlier time
            sampler.set_epoch(epoch, start_step=pos.step_in_epoch)
            with Progress(
                steps, f"epoch {epoch + 1}/{o.epochs}", ctx.is_main, cfg.run.log_every, initial=pos.step_in_epoch,
                run_eta=run_eta, run_offset=epoch * steps,
            ) as progress:  # fmt: skip
                stats = train_one_epoch(
                    ddp_model, loader, criterion, optimizer, scheduler, precision, scaler, ctx, epoch=epoch,
                    accum_steps=accum, clip_grad=o.clip_grad, stats=pos.stats, progress=progress, on_step=on_step,
                    consistency=consistency,
                )  # fmt: skip
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": stats.lr, "train_loss": stats.loss}
            last = epoch + 1 == o.epochs
            if val_loader is not None and ((epoch + 1) % cfg.run.eval_every == 0 or last):
                with eval_progress(val_loader, f"validation after epoch {epoch + 1}/{o.epochs}") as progress:
                    val = train_split.validate(ddp_model, val_loader, precision, ctx, progress)
                record.update({f"val_{k}": v for k, v in val.items() if k in VAL_RECORDED})
                if pos.best_val is None or val[primary] > pos.best_val:
                    pos.best_val, pos.best_epoch = val[primary], epoch
                    if cfg.run.select == "best":
                        save_selected()
            if cfg.run.select == "last" and last:
                save_selected()
            record.update({"seconds": time.perf_counter() - started, "images/s": stats.images_per_second})
            metrics.append(record)
            if ctx.is_main:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items() if k != "epoch"}
                logger.info("epoch %d/%d: %s", epoch + 1, o.epochs, shown)
            pos = RunPosition(epoch + 1, 0, pos.best_val, pos.best_epoch)
            save_state()
    except _StopRequested:
        stopped = True
        logger.info("stopped after %d optimizer steps (run.stop_after_steps); continue with --run.resume true",
                    scheduler.step_count)  # fmt: skip
    finally:
        metrics.close()
        if consistency is not None:
            consistency.remove()
    best_epoch = None if pos.best_epoch is None else pos.best_epoch + 1  # as the user reads it
    if ctx.is_main:
        draw_run_curves(cfg, metrics.read(), out)
    if stopped:
        return TrainResult(out, None, best_epoch, pos.best_val, True, ctx.is_main, primary)

    # The test split, once, with the selected adapter as saved on disk.
    barrier(ctx)
    load_adapter(model, out / ADAPTER_DIR)
    with eval_progress(test_loader, "test") as progress:
        test = test_split.test(model, test_loader, precision, ctx, progress, test_part)
    selected_epoch = best_epoch if cfg.run.select == "best" else o.epochs
    selected_val = pos.best_val
    if cfg.run.select == "last" and ctx.is_main:
        selected_val = next((r.get(f"val_{primary}") for r in metrics.read() if r["epoch"] == selected_epoch), None)
    report = {
        "split": test_split.name,
        "task": "segmentation" if segmenting else "multi-label" if multi_label else "single-label",
        **test,
        "select": cfg.run.select,
        "epoch": selected_epoch,
        f"val_{primary}": selected_val,
        "trainable_parameters": count_trainable(model),
        **peak_memory(ctx.device),
    }
    if ctx.is_main:
        write_json(out / TEST_FILE, report)
        write_model_card(out / ADAPTER_DIR)  # the card's metrics: the test numbers
        logger.info("test (adapter of epoch %d, selected by %s): %s", selected_epoch, cfg.run.select, test)
    return TrainResult(out, report, best_epoch, pos.best_val, False, ctx.is_main, primary)
