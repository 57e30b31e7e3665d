"""Evaluating a trained adapter under distribution shift: its top-1 accuracy on a clean test split, on that split
under ImageNet-C's corruptions at each severity (applied on the fly, :mod:`adaptformer.data.shift.corruptions`), and
on released shifted test sets (ImageNet-V2, -Sketch, -R, -A, and ImageNet-C's files).

Every image of the clean split goes through the evaluation geometry (resize + centre crop to the model's input size),
then the corruption, then normalisation. The clean images and every corrupted copy are one dataset behind one loader,
so the slow corruptions run in parallel over the loader's workers and, under torchrun, over the processes; each
image is predicted by exactly one process and the result does not depend on how many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ...data import build_image_transform, normalize_transform
from ...data.shift import COMMON_CORRUPTIONS, SEVERITIES, Condition, CorruptedImages, condition_grid
from ...data.shift.corruptions import MIN_SIZE, check_corruptions, check_severities
from ...data.shift.imagenet import LAYOUTS as SHIFTED_LAYOUTS
from ...engine.distributed import DistributedContext
from ...engine.loaders import eval_loader, with_transform
from ...engine.loop import Predictions, classification_metrics, evaluate
from ...engine.progress import Progress
from ...engine.splits import DataSpec, ImageSplit, load_split
from ...precision import resolve_precision
from ...preprocessing import Preprocessing, clip_frames
from ...saving import AdapterInfo
from ..evaluate import in_adapter_order, match_classes
from .classes import shifted_output_map

SHIFTED_KINDS = tuple(SHIFTED_LAYOUTS)  # imagenet-v2, imagenet-sketch, imagenet-c, imagenet-r, imagenet-a
SYNTHETIC = "synthetic"  # the name of the corruption table made on the fly (ImageNet-C's files: "imagenet-c")


@dataclass(frozen=True)
class RobustnessSettings:
    """What to evaluate and how.

    Args:
        corruptions: ImageNet-C corruption names (default: its 15).
        severities: severities, each in 1-5.
        synthetic: corrupt the clean split on the fly (False: clean split and shifted sets only).
        seed: the corruptions' seed (same seed, same pixels).
        num_samples: images of each split, spread evenly over it (None: all).
        batch_size: images per forward pass (None: the adapter's evaluation batch size).
        precision: autocast precision (None: the adapter's).
        num_workers: data-loading processes (the corruptions run in them).
    """

    corruptions: tuple[str, ...] = COMMON_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    synthetic: bool = True
    seed: int = 0
    num_samples: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "corruptions", check_corruptions(self.corruptions))
        object.__setattr__(self, "severities", check_severities(self.severities))
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 (or None: all), got {self.num_samples}")


@dataclass(frozen=True)
class ShiftedSet:
    """A released shifted test set: its dataset kind and folder."""

    kind: str
    root: str

    def __post_init__(self) -> None:
        if self.kind not in SHIFTED_KINDS:
            raise ValueError(f"unknown shifted test set {self.kind!r}; valid: {', '.join(SHIFTED_KINDS)}")


@dataclass(frozen=True)
class Scores:
    """One model's top-1 accuracies (percent): clean, per corruption table (``synthetic``, ``imagenet-c``) per
    corruption and severity, and per shifted set; ``n``: images scored per entry."""

    clean: float
    n: int
    corruptions: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    shifted: dict[str, float] = field(default_factory=dict)
    shifted_n: dict[str, int] = field(default_factory=dict)


def _spread(dataset: Dataset, count: int | None) -> Dataset:
    """``count`` samples evenly spread over ``dataset`` (which may be ordered by class), or all of it."""
    size = len(dataset)  # type: ignore[arg-type]
    if count is None or count >= size:
        return dataset
    picked = torch.linspace(0, size - 1, count).round().long().unique().tolist()
    return Subset(dataset, picked)


def _predict(
    model: nn.Module, info: AdapterInfo | None, dataset: Dataset, ctx: DistributedContext, settings: RobustnessSettings,
    desc: str,
) -> Predictions:  # fmt: skip
    training = info.training if info is not None else None
    batch_size = settings.batch_size or (training.eval_batch_size if training else 256)
    chosen = resolve_precision(settings.precision or (training.precision if training else "auto"), ctx.device)
    loader = eval_loader(dataset, batch_size, settings.num_workers, ctx.device, ctx.world_size, ctx.rank)
    with Progress(len(loader), desc, ctx.is_main, log_every=max(1, len(loader) // 10)) as progress:
        return evaluate(model.to(ctx.device), loader, chosen, ctx, progress)


def _image_split(model: nn.Module, info: AdapterInfo | None, spec: DataSpec, split: str) -> ImageSplit:
    """The split, if the model is a single-label image classifier and the dataset a single-label image dataset."""
    if clip_frames(model) is not None or getattr(model, "adaptformer_task", None) is not None:
        raise ValueError("robustness evaluates image classifiers; this adapter is a video or segmentation model")
    if spec.is_video or spec.is_segmentation:
        raise ValueError(f"robustness evaluates image classification datasets; {spec.kind!r} is not one")
    if info is not None and info.multi_label:
        raise ValueError("robustness scores single-label top-1 accuracy; this adapter is multi-label")
    data = load_split(spec, split)
    if not isinstance(data, ImageSplit) or data.multi_label:
        raise ValueError(f"robustness scores single-label top-1 accuracy; {spec.kind} is multi-label")
    return data


def evaluate_corruptions(
    model: nn.Module, info: AdapterInfo | None, spec: DataSpec, split: str, ctx: DistributedContext,
    settings: RobustnessSettings,
) -> tuple[dict[str, Any], dict[str, dict[int, float]]]:  # fmt: skip
    """The clean split's top-1 and n, and (``settings.synthetic``) its top-1 under every corruption and severity."""
    data = _image_split(model, info, spec, split)
    order = match_classes(model.num_classes, data.classes, info, f"{spec.kind} {split}")
    pre = Preprocessing.from_model(model)
    if settings.synthetic and min(pre.image_size) < MIN_SIZE:
        raise ValueError(
            f"the reference corruptions need inputs of at least {MIN_SIZE}x{MIN_SIZE}; this model takes "
            f"{pre.image_size[0]}x{pre.image_size[1]}"
        )
    geometry = build_image_transform(pre, False, data.augment, normalize=False)  # uint8 at the input size
    images = _spread(with_transform(data.dataset, geometry), settings.num_samples)
    grid = condition_grid(settings.corruptions, settings.severities) if settings.synthetic else (Condition(),)
    dataset = CorruptedImages(images, grid, normalize_transform(pre), settings.seed)
    predictions = _predict(model, info, dataset, ctx, settings, f"{spec.kind} {split} x {len(grid)} conditions")
    if order is not None:
        predictions = in_adapter_order(predictions, order, False)
    n = len(images)  # type: ignore[arg-type]
    which = predictions.ids // n
    accuracy: dict[str, dict[int, float]] = {}
    clean: dict[str, Any] = {}
    for k, condition in enumerate(grid):
        keep = which == k
        metrics = classification_metrics(Predictions(*(t[keep] for t in (predictions.logits, predictions.labels,
                                                                             predictions.ids))))  # fmt: skip
        if condition.corruption is None:
            clean = {"acc1": metrics["acc1"], "n": metrics["n"]}
        else:
            accuracy.setdefault(condition.corruption, {})[condition.severity] = metrics["acc1"]  # type: ignore[index]
    return clean, accuracy


def evaluate_shifted(
    model: nn.Module, info: AdapterInfo | None, spec: DataSpec, ctx: DistributedContext, settings: RobustnessSettings,
) -> dict[str, Any]:  # fmt: skip
    """Top-1 and n of one released shifted set (``spec``: its kind, folder and options), scored on the adapter's
    outputs as :func:`.classes.shifted_output_map` says."""
    data = _image_split(model, info, spec, "test")
    dataset = _spread(data.build(model, "test"), settings.num_samples)
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    labels = [base.targets[i] for i in (dataset.indices if isinstance(dataset, Subset) else range(len(base)))]
    names = list(info.classes) if info is not None and info.classes else None
    output_map = shifted_output_map(spec.kind, data.classes, labels, names, model.num_classes)
    predictions = output_map.apply(_predict(model, info, dataset, ctx, settings, f"{spec.kind} {spec.root}"))
    metrics = classification_metrics(predictions)
    return {"acc1": metrics["acc1"], "n": metrics["n"]}


def _imagenet_c_folders(root: str, settings: RobustnessSettings) -> list[Condition]:
    """The selected corruption/severity folders of an ImageNet-C release; a selected one missing is an error."""
    grid = condition_grid(settings.corruptions, settings.severities, clean=False)
    missing = [c.name for c in grid if not (Path(root) / c.name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"imagenet-c {root} lacks the selected folders {missing[:10]}{' and more' if len(missing) > 10 else ''}; "
            f"choose what it has with --corruptions / --severities\nexpected layout:\n{SHIFTED_LAYOUTS['imagenet-c']}"
        )
    return list(grid)


def evaluate_robustness(
    model: nn.Module,
    info: AdapterInfo | None,
    spec: DataSpec,
    split: str,
    ctx: DistributedContext,
    settings: RobustnessSettings,
    shifted: Sequence[ShiftedSet] = (),
) -> Scores:
    """All of one model's scores: the clean split (and its corruptions), then each shifted set; ImageNet-C's files
    are read folder by folder for the selected corruptions and severities."""
    clean, synthetic = evaluate_corruptions(model, info, spec, split, ctx, settings)
    scores = Scores(clean["acc1"], clean["n"], {SYNTHETIC: synthetic} if settings.synthetic else {})
    for shift in shifted:
        base = DataSpec(shift.kind, shift.root, skip_bad=spec.skip_bad)
        if shift.kind != "imagenet-c":
            result = evaluate_shifted(model, info, base, ctx, settings)
            scores.shifted[shift.kind], scores.shifted_n[shift.kind] = result["acc1"], result["n"]
            continue
        table: dict[str, dict[int, float]] = {}
        for condition in _imagenet_c_folders(shift.root, settings):
            options = {"corruption": condition.corruption, "severity": condition.severity}
            result = evaluate_shifted(model, info, replace(base, options=options), ctx, settings)
            table.setdefault(condition.corruption, {})[condition.severity] = result["acc1"]  # type: ignore[index]
        scores.corruptions[shift.kind] = table
    return scores


def check_reference(adapter: str, info: AdapterInfo, reference: str, ref_info: AdapterInfo) -> None:
    """A reference normalises corruption errors only if it saw the same task from the same starting point: the same
    backbone (name and weights), dataset kind and options, and classes; otherwise a ValueError naming what differs."""
    ours, theirs = info.training, ref_info.training
    differences = [
        (what, a, b)
        for what, a, b in (
            ("backbone", info.spec.backbone, ref_info.spec.backbone),
            ("backbone weights (fingerprint)", info.backbone_fingerprint, ref_info.backbone_fingerprint),
            ("dataset", ours.dataset if ours else None, theirs.dataset if theirs else None),
            ("dataset options", ours.dataset_options if ours else None, theirs.dataset_options if theirs else None),
            ("classes", info.classes, ref_info.classes),
        )
        if a != b
    ]
    if differences:
        shown = "; ".join(f"{what}: {a!r} vs {b!r}" for what, a, b in differences)
        raise ValueError(
            f"--reference {reference} was not trained on the same backbone and dataset as --adapter {adapter} "
            f"({shown}); a corruption error is normalised by a reference on the same task"
        )
