"""The training engine: configuration, optimizer and schedule, the epoch loop and evaluation, training state,
data-parallel helpers and progress reporting. ``adaptformer.engine.train.train`` wires them into a run. Image and video
datasets reach it through one interface (:mod:`.splits`: load a split, build it for the model, score it).

    cfg = TrainConfig(data=DataConfig(dataset="cifar100", data_dir="data/"), model=ModelConfig(backbone=...))
    stats = train_one_epoch(model, loader, criterion, optimizer, scheduler, precision, scaler, ctx, epoch=0)
    metrics = classification_metrics(evaluate(model, val_loader, precision, ctx))
"""

from ..precision import Precision, resolve_precision
from .checkpointing import STATE_FILE, TrainingStateError, load_training_state, save_training_state
from .config.sections import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, VideoConfig
from .distributed import DistributedContext, init_distributed, wrap_model
from .loaders import ShardSampler, TrainBatchSampler, eval_loader, load_image_split, train_loader, with_transform
from .loop import (
    EpochStats,
    NonFiniteLossError,
    Predictions,
    StepInfo,
    classification_metrics,
    evaluate,
    multi_view_metrics,
    train_one_epoch,
)
from .optim import build_optimizer, param_groups, scaled_lr
from .progress import Progress
from .schedule import WarmupCosine
from .splits import DataSpec, ImageSplit, VideoSettings, VideoSplit, load_split

__all__ = [
    "STATE_FILE",
    "DataConfig",
    "DataSpec",
    "DistributedContext",
    "EpochStats",
    "ImageSplit",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "Precision",
    "Predictions",
    "Progress",
    "RunConfig",
    "ShardSampler",
    "StepInfo",
    "TrainBatchSampler",
    "TrainConfig",
    "TrainingStateError",
    "VideoConfig",
    "VideoSettings",
    "VideoSplit",
    "WarmupCosine",
    "build_optimizer",
    "classification_metrics",
    "eval_loader",
    "evaluate",
    "init_distributed",
    "load_image_split",
    "load_split",
    "load_training_state",
    "multi_view_metrics",
    "param_groups",
    "resolve_precision",
    "save_training_state",
    "scaled_lr",
    "train_loader",
    "train_one_epoch",
    "with_transform",
    "wrap_model",
]
