"""Using a trained adapter: rebuild the model, evaluate it on a dataset split, classify image or video files.

Everything needed comes from the adapter folder's ``adapter_config.json`` (:class:`~adaptformer.saving.AdapterInfo`):
how to build the backbone, the class names, and how training evaluated the adapter (dataset, its options, video
views, precision, batch size), so ``adaptformer eval`` and ``predict`` need only the folder and reproduce training's
numbers; each of those can be overridden.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data import ACCEPTED_FORMATS, ImageDecodeError, build_image_transform, load_rgb
from ..data.files import read_class_names as read_text_class_names
from ..data.video import VIDEO_DATASETS, VideoClipDataset, VideoDecodeError, VideoEntry, aggregate_views, probe_video
from ..engine.distributed import DistributedContext, resolve_device
from ..engine.loaders import eval_loader
from ..engine.loop import Predictions, evaluate
from ..engine.progress import Progress
from ..engine.splits import DataSpec, VideoSettings, load_split, video_pipeline
from ..factory import BackboneSource
from ..precision import resolve_precision
from ..preprocessing import Preprocessing, clip_frames
from ..saving import AdapterInfo, create_model_from_adapter, read_adapter_config, task_type
from ..segmentation import load_segmentation_model
from ..segmentation.model import TASK as SEGMENTATION
from ..speed import SpeedConfig, apply_speed
from ..validation import from_mapping

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
DEFAULT_VIDEO_KIND = "videolist"  # the video kind whose sampling defaults apply when an adapter records none


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a JSON list, a JSON object with "classes" (e.g. adapter_config.json), or a text file with one
    name per line (:func:`adaptformer.data.files.read_class_names`: at least one, no repeats)."""
    path = Path(path)
    if path.suffix != ".json":
        return read_text_class_names(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e}); expected a list of class names") from e
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'{path}: expected a JSON list of class names, or an object with a "classes" list')
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: repeated class names; each class needs its own name")
    return names


def check_backbone_name(adapter_dir: str | Path, info: AdapterInfo, name: str | None) -> None:
    """A guard against mixing up folders: ``name`` (None: no check), pretrained tag aside, must be the backbone the
    adapter in ``adapter_dir`` names."""
    if name is not None and name.split(".")[0] != info.spec.backbone.split(".")[0]:
        raise ValueError(f"{adapter_dir} holds an adapter for {info.spec.backbone!r}, not for {name!r}")


def overridden_source(info: AdapterInfo, **overrides: Any) -> BackboneSource:
    """The backbone an adapter records (:class:`BackboneSource`), with the parts given as non-None ``overrides``
    (``checkpoint``, ``checkpoint_source``, ``kwargs``, ``init_seed``) replaced."""
    return replace(info.source or BackboneSource(), **{k: v for k, v in overrides.items() if v is not None})


def load_trained_model(
    adapter_dir: str | Path,
    checkpoint: str | None = None,
    checkpoint_source: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    model_name: str | None = None,
    init_seed: int | None = None,
    info: AdapterInfo | None = None,
) -> tuple[nn.Module, AdapterInfo]:
    """The trained model of ``adapter_dir`` (eval mode, CPU) and what its config records (``info``: already read).

    The backbone is built as recorded; ``checkpoint``, ``checkpoint_source``, ``model_kwargs`` and ``init_seed``
    override single parts of that (e.g. the same weights at another path). ``model_name``, if given, must be the
    backbone the adapter names (a guard against mixing up folders).
    """
    info = info if info is not None else read_adapter_config(adapter_dir)
    check_backbone_name(adapter_dir, info, model_name)
    source = overridden_source(
        info, checkpoint=checkpoint, checkpoint_source=checkpoint_source, kwargs=model_kwargs, init_seed=init_seed
    )
    if task_type(info.task) == SEGMENTATION:
        return load_segmentation_model(adapter_dir, source, info=info), info
    model = create_model_from_adapter(adapter_dir, source, info=info)
    return model.eval(), info


def class_names(info: AdapterInfo) -> list[str]:
    """The adapter's class names, or "0", "1", ... when none were recorded."""
    return list(info.classes) if info.classes else [str(i) for i in range(info.spec.num_classes)]


def match_classes(num_outputs: int, classes: list[str], info: AdapterInfo | None, where: str) -> list[int] | None:
    """Where each of ``classes`` (a dataset's, or a class-name list's) sits among the adapter's outputs.

    None when they are the adapter's own list, or the adapter records no names (then they are taken in order); for
    the same names in another order, the adapter's index of each (labels are then matched by name, logged). Another
    class count, or other names, is an error naming the difference: scoring by index would be silently wrong.
    """
    if num_outputs != len(classes):
        raise ValueError(
            f"the adapter's head has {num_outputs} classes but {where} has {len(classes)}; "
            "this adapter was trained for a different task"
        )
    recorded = list(info.classes) if info is not None and info.classes else None
    if recorded is None or recorded == classes:
        return None
    if sorted(recorded) != sorted(classes) or len(set(classes)) != len(classes):
        only_adapter = [c for c in recorded if c not in set(classes)]
        only_given = [c for c in classes if c not in set(recorded)]
        raise ValueError(
            f"the classes of {where} are not those the adapter was trained with (only the adapter's: "
            f"{_some(only_adapter)}; only in {where}: {_some(only_given)}"
            f"{'; repeated names cannot be matched by name' if not only_adapter and not only_given else ''}); "
            f"the adapter's classes are {_some(recorded)}"
        )
    logger.info("%s lists the adapter's classes in another order: labels are matched to them by name", where)
    position = {name: k for k, name in enumerate(recorded)}
    return [position[name] for name in classes]


def _some(names: list[str]) -> str:
    return f"{names[:10]}{f' and {len(names) - 10} more' if len(names) > 10 else ''}"


def in_adapter_order(predictions: Predictions, order: list[int], multi_label: bool) -> Predictions:
    """``predictions`` whose labels index the data's classes, relabelled to index the adapter's (``order``: the
    adapter's index of each data class, :func:`match_classes`), so that every metric compares the same classes."""
    index = torch.tensor(order)
    if multi_label:  # multi-hot (N, K): the data's column k is the adapter's column order[k]
        labels = torch.zeros_like(predictions.labels)
        labels[:, index] = predictions.labels
    else:  # class indices (N,)
        labels = index[predictions.labels]
    return replace(predictions, labels=labels)


def evaluate_split(
    model: nn.Module,
    info: AdapterInfo | None,
    spec: DataSpec,
    split: str,
    ctx: DistributedContext,
    *,
    batch_size: int | None = None,
    precision: str | None = None,
    num_workers: int = 0,
    speed: SpeedConfig | None = None,
) -> dict[str, Any]:
    """acc1, acc5, loss and n of ``model`` on a dataset split, preprocessed as the backbone requires; the split's
    classes are matched to the adapter's by name (:func:`match_classes`).

    Video datasets are tested on every view of every video: acc1/acc5/loss/n are multi-view (per video), with
    single_view_acc1/acc5, views_per_video and the number of ``skipped`` undecodable videos next to them. Under
    torchrun every view is predicted by exactly one process and every video is scored once. ``speed``, if given, is
    applied to ``model`` in place first (:func:`adaptformer.speed.apply_speed`, e.g. frozen weights stored in bf16).
    """
    segments = getattr(model, "adaptformer_task", None) is not None
    if segments and not spec.is_segmentation:
        raise ValueError(
            f"{spec.kind} is a classification dataset but the model segments images (a segmentation adapter); "
            "evaluate it on a segmentation dataset kind (ade20k, voc, cityscapes, segfolder, digits-seg)"
        )
    if spec.is_segmentation and not segments:
        raise ValueError(
            f"{spec.kind} is a segmentation dataset but the adapter is a classifier; train a segmentation adapter "
            "(--model.head linear|upernet on a segmentation dataset)"
        )
    data = load_split(spec, split)
    order = match_classes(model.num_classes, data.classes, info, f"{spec.kind} {split}")
    if order is not None and spec.is_segmentation:
        raise ValueError(
            f"{spec.kind} {split} has the adapter's classes in another order; its masks' values would name other "
            "classes than the adapter's: write the classes (and masks) in the adapter's order"
        )
    if info is not None and info.multi_label != data.multi_label:
        task = ("multi-label", "single-label")
        raise ValueError(
            f"the adapter was trained for a {task[not info.multi_label]} task but {spec.kind} is "
            f"{task[not data.multi_label]}"
        )
    dataset = data.build(model, "test")
    training = info.training if info is not None else None
    batch_size = batch_size or (training.eval_batch_size if training else 256)
    loader = eval_loader(dataset, batch_size, num_workers, ctx.device, ctx.world_size, ctx.rank)
    chosen = resolve_precision(precision or (training.precision if training else "auto"), ctx.device)
    if speed is not None:
        apply_speed(model, speed, ctx.device, chosen.name)
    with Progress(len(loader), f"{spec.kind} {split}", ctx.is_main, log_every=max(1, len(loader) // 10)) as progress:
        if spec.is_segmentation:  # scored over the whole split as it streams: nothing to reorder afterwards
            return data.test(model.to(ctx.device), loader, chosen, ctx, progress, dataset)
        predictions = evaluate(model.to(ctx.device), loader, chosen, ctx, progress, data.multi_label)
    if order is not None:
        predictions = in_adapter_order(predictions, order, data.multi_label)
    return data.score(predictions, dataset)


@dataclass(frozen=True)
class FilePrediction:
    """What ``predict`` says about one input file: its top classes as (index, probability), best first (for a
    multi-label adapter: every class whose sigmoid probability reaches the threshold, best first), or why it could
    not be classified (then ``top`` is empty)."""

    path: str
    top: tuple[tuple[int, float], ...] = ()
    error: str | None = None


def video_settings(info: AdapterInfo | None) -> VideoSettings:
    """The clip sampling and test views training recorded for a video adapter (``eval`` uses the same), resolved; a
    record without them gets the ``videolist`` kind's defaults, with a warning."""
    record = info.training if info is not None else None
    if record is not None and record.video:
        settings = from_mapping(VideoSettings, record.video, "the adapter's training.video")
        return settings.resolved(record.dataset if record.dataset in VIDEO_DATASETS else DEFAULT_VIDEO_KIND)
    settings = VideoSettings().resolved(DEFAULT_VIDEO_KIND)
    logger.warning(
        "the adapter records no video settings; predicting with the %s defaults %s", DEFAULT_VIDEO_KIND, settings
    )
    return settings


def view_reader(
    model: nn.Module, paths: list[str | Path], video: VideoSettings | None
) -> Callable[[int], torch.Tensor]:
    """``read(i)``: file ``i`` as a batch of its views: ``(1, 3, H, W)`` for an image (eval's resize and centre crop),
    ``(V, 3, T, H, W)`` for a video (the test views of ``video``, cut by the dataset ``eval`` uses). A file that cannot
    be decoded raises its ImageDecodeError / VideoDecodeError."""
    if clip_frames(model) is None:
        transform = build_image_transform(Preprocessing.from_model(model), train=False)
        return lambda i: transform(load_rgb(paths[i], formats=ACCEPTED_FORMATS)).unsqueeze(0)
    sampler, clip_transform, views = video_pipeline(model, video or video_settings(None), "test")
    dataset = VideoClipDataset([VideoEntry(Path(p), 0) for p in paths], sampler, clip_transform, "test", views)
    n = dataset.views_per_video

    def read(i: int) -> torch.Tensor:
        if probe_video(paths[i]).num_frames < 2:  # PyAV opens a still image as a one-frame "video"
            raise VideoDecodeError(paths[i], "a single frame (a still image?); this adapter classifies video files")
        return torch.stack([clip for clip, _, _ in dataset.__getitems__(range(i * n, (i + 1) * n))])  # (V, C, T, H, W)

    return read


def average_views(logits: torch.Tensor) -> torch.Tensor:
    """One file's view logits ``(V, K)`` -> ``(K,)`` (fp32, on the CPU): eval's multi-view average (an image has one
    view)."""
    ids = torch.zeros(len(logits), dtype=torch.long)
    return aggregate_views(logits.float().cpu(), ids, ids).logits[0]


@torch.no_grad()
def predict_files(
    model: nn.Module,
    paths: list[str | Path],
    top_k: int | None = None,
    precision: str = "auto",
    device: str = "auto",
    video: VideoSettings | None = None,
    threshold: float | None = None,
) -> list[FilePrediction]:
    """The top-``top_k`` classes of every file, in order; a file that cannot be decoded gets its error instead, and
    the others are still classified. With ``threshold`` (a multi-label adapter) each file gets every class whose
    sigmoid probability is at least ``threshold`` instead (best first; at most ``top_k`` if given).

    Image files are preprocessed as evaluation does; for a video backbone every file is cut into the test views of
    ``video`` (default: :func:`video_settings` ``(None)``; give the adapter's, as ``adaptformer predict`` does) and the
    views' logits are averaged, as ``eval`` scores a video. ``top_k`` (default: 5, or every class if there are fewer)
    above the class count is lowered to it, with a warning.
    """
    num_classes = int(model.num_classes)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if threshold is not None and top_k is None:
        top_k = num_classes
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, num_classes)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if top_k > num_classes:
        logger.warning(
            "top-%d asked for, but the adapter has %d classes: showing all %d", top_k, num_classes, num_classes
        )
        top_k = num_classes
    target = resolve_device(device)
    chosen = resolve_precision(precision, target)
    model = model.to(target).eval()
    read = view_reader(model, paths, video)
    results = []
    for i, path in enumerate(paths):
        try:
            batch = read(i)
        except (ImageDecodeError, VideoDecodeError) as e:
            results.append(FilePrediction(str(path), error=str(e)))
            continue
        with chosen.autocast():
            logits = model(batch.to(target))  # (V, K)
        averaged = average_views(logits)  # (K,)
        probabilities = averaged.softmax(dim=0) if threshold is None else averaged.sigmoid()
        values, indices = probabilities.topk(top_k)
        top = [
            (i, p)
            for i, p in zip(indices.tolist(), values.tolist(), strict=True)
            if threshold is None or p >= threshold
        ]
        results.append(FilePrediction(str(path), tuple(top)))
    return results


def predict_images(
    model: nn.Module, paths: list[str | Path], top_k: int | None = None, precision: str = "auto", device: str = "auto"
) -> list[list[tuple[int, float]]]:
    """Top-``top_k`` (class index, probability) for each image file, best first; the first unreadable file raises
    (:func:`predict_files` reports every file instead)."""
    if clip_frames(model) is not None:
        raise ValueError(
            "predict_images classifies image files, but this backbone takes video clips; use predict_files"
        )
    results = predict_files(model, paths, top_k, precision, device)
    for result in results:
        if result.error is not None:
            raise ImageDecodeError(result.error)
    return [list(r.top) for r in results]
