"""The engine: ``train_one_epoch`` and ``evaluate`` (MAE's engine_finetune, for any classification input).

Inputs may be images ``(B, C, H, W)`` or clips ``(B, C, T, H, W)``: the loop never looks inside them. Batches are
``(inputs, labels, ids)`` (see :mod:`.loaders`). ``evaluate`` returns the gathered logits, labels and ids rather than
only accuracies, so a caller can first average the views of a video (``data.video.aggregate_views``) and then
score with :func:`classification_metrics`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.video import aggregate_views
from ..precision import Precision
from .distributed import DistributedContext, all_reduce_sum, gather_variable
from .progress import Progress
from .schedule import WarmupCosine

if TYPE_CHECKING:
    from .consistency import Consistency

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the step was not applied."""


@dataclass
class EpochStats:
    """Running statistics of one training epoch (all processes together); saved with a mid-epoch training state."""

    loss_sum: float = 0.0
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    lr: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else float("nan")

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepInfo:
    """What ``on_step`` learns after each optimizer step."""

    epoch: int
    step_in_epoch: int  # optimizer steps done in this epoch, this one included
    global_step: int  # optimizer steps done in the run, this one included
    loss: float
    lr: float
    stats: EpochStats


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    ctx: DistributedContext,
    *,
    epoch: int,  # 0-based, as the sampler and the training state count; messages say epoch + 1
    accum_steps: int = 1,
    clip_grad: float | None = None,
    stats: EpochStats | None = None,
    progress: Progress | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    consistency: Consistency | None = None,
) -> EpochStats:
    """Train over ``loader``'s micro-batches; one optimizer step per ``accum_steps`` of them.

    ``consistency`` (:class:`~adaptformer.engine.consistency.Consistency`) computes each micro-batch's loss with
    consistency regularisation instead of ``criterion`` on one pass; None: the plain loss.

    Before each step the loss (mean over the step's micro-batches and all processes) is checked: a NaN/inf raises
    :class:`NonFiniteLossError` before the update is applied. ``stats`` continues a resumed epoch's statistics.
    ``on_step`` runs after every optimizer step (the training state is consistent there: a good place to save it).
    """
    model.train()
    stats = stats if stats is not None else EpochStats()
    trainable = [p for p in model.parameters() if p.requires_grad]
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    step_loss = torch.zeros((), device=ctx.device)
    step_samples = 0
    micro = 0
    tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for inputs, labels, *ids in loader:
        inputs = inputs.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        micro += 1
        last = micro % accum_steps == 0
        # Between micro-batches of one step, skip DDP's gradient all-reduce: it runs once, on the last one.
        with model.no_sync() if ddp and not last else nullcontext():  # type: ignore[operator]
            if consistency is not None:
                loss = consistency.loss(model, inputs, labels, ids[0], criterion, precision, epoch)
            else:
                with precision.autocast():
                    logits = model(inputs)
                loss = criterion(logits.float(), labels)
            scaler.scale(loss / accum_steps).backward()
        step_loss += loss.detach()
        step_samples += labels.shape[0]
        if not last:
            continue

        loss_value = all_reduce_sum(step_loss, ctx).item() / (accum_steps * ctx.world_size)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"training loss is {loss_value} at epoch {epoch + 1}, step {stats.steps + 1} of the epoch "
                f"(global step {scheduler.step_count + 1}, lr {scheduler.lr_at(scheduler.step_count):.4g}); the run "
                "stopped without applying this step. The last saved training state is intact. Lower the lr, "
                "set --optim.clip_grad, or check the data."
            )
        lr = scheduler.apply()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        now = time.perf_counter()
        stats.loss_sum += loss_value
        stats.steps += 1
        stats.samples += step_samples * ctx.world_size
        stats.seconds += now - tick
        stats.lr = lr
        tick = now
        step_loss.zero_()
        step_samples = 0
        if progress is not None:
            progress.update(loss=loss_value, lr=lr, img_s=stats.images_per_second)
        if on_step is not None:
            on_step(StepInfo(epoch, stats.steps, scheduler.step_count, loss_value, lr, stats))
            tick = time.perf_counter()  # time spent saving state is not training time
    if micro % accum_steps:
        raise RuntimeError(
            f"the loader ended inside an accumulation step ({micro} micro-batches, {accum_steps} per step)"
        )
    return stats


@dataclass(frozen=True)
class Predictions:
    """Everything an evaluation produced, gathered from all processes: logits ``(N, K)``, labels ``(N,)`` (class
    indices; multi-label: multi-hot ``(N, K)``) and ids ``(N,)``."""

    logits: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    precision: Precision,
    ctx: DistributedContext,
    progress: Progress | None = None,
    multi_label: bool = False,
) -> Predictions:
    """Run ``model`` over the loader (this process's shard) and gather the predictions of all processes.

    Labels are class indices ``(N,)``, or multi-hot ``(N, K)`` for a ``multi_label`` task (what an empty shard
    contributes must have the others' shape).

    With the shard sampler of :mod:`.loaders` every sample is predicted by exactly one process, so the gathered result
    holds each sample once; it is sorted by id (stable), so it does not depend on the number of processes.
    ``progress`` advances by one per batch and shows the samples done and the rate (all processes, estimated as this
    one's times their number).
    """
    model = _unwrap(model)
    model.eval()
    logits_parts, label_parts, id_parts = [], [], []
    samples, started = 0, time.perf_counter()
    for inputs, labels, ids in loader:
        with precision.autocast():
            logits = model(inputs.to(ctx.device, non_blocking=True))
        logits_parts.append(logits.float())
        label_parts.append(labels.to(ctx.device))
        id_parts.append(torch.as_tensor(ids).to(ctx.device))
        if progress is not None:
            samples += labels.shape[0] * ctx.world_size
            rate = samples / max(time.perf_counter() - started, 1e-9)
            progress.update(samples=samples, **{"samples/s": rate})
    num_outputs = int(getattr(model, "num_classes", 0))  # only needed for an empty shard
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros(0, num_outputs, device=ctx.device)
    if label_parts and (label_parts[0].ndim == 2) != multi_label:
        raise ValueError(
            f"evaluate(multi_label={multi_label}) got labels of shape {tuple(label_parts[0].shape[1:])} per sample: "
            "pass multi_label=True for multi-hot labels (an empty shard must know the label shape the others gather)"
        )
    no_labels = torch.zeros(0, num_outputs) if multi_label else torch.zeros(0, dtype=torch.long)
    empty = no_labels.to(ctx.device)
    labels = torch.cat(label_parts) if label_parts else empty
    ids = torch.cat(id_parts) if id_parts else torch.zeros(0, dtype=torch.long, device=ctx.device)
    logits, labels, ids = (gather_variable(t, ctx).cpu() for t in (logits, labels, ids))
    order = torch.argsort(ids, stable=True)
    return Predictions(logits[order], labels[order], ids[order])


def classification_metrics(predictions: Predictions) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy (percent), mean cross-entropy, and the number of predictions ``n`` (no predictions:
    a ValueError, never a NaN score)."""
    logits, labels = predictions.logits.float(), predictions.labels
    n = labels.shape[0]
    if n == 0:
        raise ValueError("no predictions to score: the evaluated split has no samples")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, k)
    hits = top == labels[:, None]
    return {
        "acc1": 100.0 * int(hits[:, 0].sum()) / n,
        "acc5": 100.0 * int(hits.any(dim=1).sum()) / n,
        "loss": F.cross_entropy(logits, labels).item(),
        "n": n,
    }


def multi_view_metrics(predictions: Predictions, views_per_video: int) -> dict[str, float | int]:
    """Multi-view testing: the logits of each video's views are averaged into one prediction per video.

    ``predictions`` holds one row per view, ``ids`` the video of each. Returns ``acc1``, ``acc5``, ``loss`` and ``n``
    over videos (multi-view, the paper's test numbers), ``single_view_acc1`` / ``single_view_acc5`` over the views
    scored one by one, and ``views_per_video``. Every video must have exactly ``views_per_video`` predictions, so a
    video duplicated (e.g. by a padding distributed sampler) or half-evaluated is an error, not a silent reweighting.
    """
    _, counts = torch.unique(predictions.ids, return_counts=True)
    if not bool((counts == views_per_video).all()):
        wrong = sorted(set(counts.tolist()) - {views_per_video})
        raise RuntimeError(f"expected {views_per_video} predictions per video, some videos have {wrong}")
    single = classification_metrics(predictions)
    videos = aggregate_views(predictions.logits, predictions.labels, predictions.ids)
    multi = classification_metrics(Predictions(videos.logits, videos.labels, videos.video_ids))
    return {
        **multi,
        "single_view_acc1": single["acc1"],
        "single_view_acc5": single["acc5"],
        "views_per_video": views_per_video,
    }
