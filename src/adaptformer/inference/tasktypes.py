"""Every task type in one :class:`~adaptformer.inference.multitask.MultiTaskModel`: what each type answers, and how
the types that cannot share the mixed batch's trunk run.

The types (:data:`TaskKind`, read from the adapter folder's record):

- ``single-label``: one softmax over the classes; answers its top-k ``[(class, index, probability), ...]``
  (:data:`TopK`), best first, as :meth:`MultiTaskModel.classify` always has;
- ``multi-label``: one sigmoid per class; answers a :class:`MultiLabelAnswer`: every class at or above the task's
  threshold, and the top-k. Adapter folders record no threshold (``saving.py``), so a task's threshold is
  ``adaptformer predict``'s default (:data:`~adaptformer.engine.metrics.THRESHOLD`, 0.5, eval's F1 threshold) unless
  one is given (``add_task(threshold=...)``, ``set_threshold``; ``adaptformer serve --threshold NAME=VALUE``);
- ``video``: a video backbone's task; takes a video file, cut into the test views training recorded and classified
  by the average of the views' logits, exactly as ``adaptformer predict`` does (:func:`~.evaluate.view_reader`,
  :func:`~.evaluate.average_views`); answers as its head is single- or multi-label;
- ``segmentation``: answers a :class:`MaskAnswer`: the class map at the image's own size, as ``adaptformer predict``
  writes it (:func:`~.segmenting.segment_input`, :func:`~.segmenting.label_png`).

Single- and multi-label image tasks share the trunk's mixed batch. Video and segmentation tasks run on their own
single-task models (:class:`VideoTask`, :class:`SegmentationTask`), whose backbone tensors are the multi-task model's
own, grouped per task: a video's views through the trunk would be a batch of clips, not of images, and segmentation
reads several blocks' features through its own decode head.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn as nn

from ..factory import BackboneSource, get_source
from ..preprocessing import Preprocessing
from ..saving import AdapterFileError, AdapterInfo, task_type
from ..segmentation import load_segmentation_model

if TYPE_CHECKING:
    from ..engine.segmentation import SegmentationInference
    from .multitask import MultiTaskModel

__all__ = [
    "Answer",
    "MaskAnswer",
    "MultiLabelAnswer",
    "SegmentationTask",
    "TaskKind",
    "TaskTypeError",
    "TopK",
    "VideoTask",
    "answer_inputs",
    "check_threshold",
    "default_threshold",
    "is_video_input",
    "label_answer",
    "prepare_inputs",
    "task_kind",
    "top_k_of",
]

TaskKind = Literal["single-label", "multi-label", "video", "segmentation"]
SegmentationInput = tuple[torch.Tensor, tuple[int, int]]  # (x (3, h, w) preprocessed, the image's (H, W))
TopK = list[tuple[str, int, float]]
"""``(class, index, probability)``, best first."""


class TaskTypeError(ValueError):
    """A task asked of an input of another type than it takes (an image task of a video file, a video task of an
    image); the message names the task and its type."""


@dataclass(frozen=True)
class MultiLabelAnswer:
    """A multi-label task's answer for one input: ``above``, every class whose sigmoid probability is at least
    ``threshold``; ``top``, the ``top_k`` most probable classes; both best first."""

    threshold: float
    above: TopK
    top: TopK


@dataclass(frozen=True)
class MaskAnswer:
    """A segmentation task's answer for one image: ``labels``, its class map (H, W) uint8 at the image's own size
    (a pixel's value is its class index), and ``fractions``, each class's share of the pixels; :meth:`png` is the
    label PNG ``adaptformer predict`` writes."""

    labels: np.ndarray
    classes: list[str]
    fractions: tuple[float, ...]

    @property
    def present(self) -> list[tuple[str, int, float]]:
        """``(class, index, fraction of pixels)`` of every class in the map, most pixels first."""
        found = [(c, j, f) for j, (c, f) in enumerate(zip(self.classes, self.fractions, strict=True)) if f > 0]
        return sorted(found, key=lambda t: -t[2])

    def png(self) -> bytes:
        from .segmenting import label_png

        return label_png(self.labels, len(self.classes))


Answer = TopK | MultiLabelAnswer | MaskAnswer


def task_kind(info: AdapterInfo, is_video: bool) -> TaskKind:
    """The type of the task an adapter folder's record describes."""
    if task_type(info.task) == "segmentation":
        return "segmentation"
    if is_video:
        return "video"
    return "multi-label" if info.multi_label else "single-label"


def check_threshold(value: float, where: str) -> float:
    """``value`` as a threshold: a number in (0, 1); the error names ``where`` (the task)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{where}: a threshold must be a number in (0, 1), got {value!r}")
    return float(value)


def default_threshold(info: AdapterInfo) -> float | None:
    """A task's threshold when none is given: None for a single-label head; for a multi-label one ``adaptformer
    predict``'s default (:data:`~adaptformer.engine.metrics.THRESHOLD`, eval's F1 threshold): an adapter folder
    records no threshold of its own (``saving.py``)."""
    if not info.multi_label:
        return None
    from ..engine.metrics import THRESHOLD  # here: importing the library loads no training engine

    return THRESHOLD


def label_answer(logits: torch.Tensor, classes: Sequence[str], top_k: int, threshold: float | None) -> Answer:
    """One input's answer from its logits ``(K,)``: the softmax top-k (``threshold`` None: a single-label head), or a
    :class:`MultiLabelAnswer` of the per-class sigmoids."""
    logits = logits.float()
    probabilities = logits.softmax(dim=0) if threshold is None else logits.sigmoid()
    values, indices = probabilities.topk(min(top_k, len(classes)))
    top = [(classes[j], j, v) for j, v in zip(indices.tolist(), values.tolist(), strict=True)]
    if threshold is None:
        return top
    ranked_values, ranked = probabilities.sort(descending=True)
    above = [(classes[j], j, v) for j, v in zip(ranked.tolist(), ranked_values.tolist(), strict=True) if v >= threshold]
    return MultiLabelAnswer(threshold, above, top)


def top_k_of(answer: Answer, top_k: int) -> Answer:
    """``answer`` with its top-k cut to ``top_k`` (a batch of requests is answered at the largest top-k they ask)."""
    if isinstance(answer, MultiLabelAnswer):
        return replace(answer, top=answer.top[:top_k])
    return answer if isinstance(answer, MaskAnswer) else answer[:top_k]


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``: a task model shares the multi-task model's parameters, which ``MultiTaskModel.to``
    moves, but not its buffers (``to`` gives the trunk new buffer tensors) nor, for segmentation, its decode head (not
    a submodule of the multi-task model); both follow here (a no-op once they are there)."""
    return model.to(device)


class VideoTask:
    """A video task's input and computation: ``prepare(path)`` cuts a video file into the test views its adapter
    records, ``(V, C, T, H, W)`` (:func:`~.evaluate.view_reader`: predict's sampler, decoder and crops); ``logits``
    runs every prepared video of the task through its single-task model, ``max_batch`` views at a time, and averages
    each video's views (:func:`~.evaluate.average_views`)."""

    def __init__(self, model: nn.Module, info: AdapterInfo, classes: list[str]) -> None:
        from .evaluate import video_settings

        self.model, self.classes = model, classes
        self.settings = video_settings(info)

    def prepare(self, path: str | os.PathLike[str]) -> torch.Tensor:
        from .evaluate import view_reader

        return view_reader(self.model, [Path(path)], self.settings)(0)  # (V, C, T, H, W)

    def logits(self, videos: Sequence[torch.Tensor], max_batch: int, device: torch.device) -> list[torch.Tensor]:
        """``(K,)`` per video (fp32, CPU), run on ``device`` under the caller's autocast."""
        from .evaluate import average_views

        if not videos:
            return []
        model = _on(self.model, device)
        views = torch.cat(list(videos))  # (sum of V, C, T, H, W)
        out = torch.cat([model(views[s : s + max_batch].to(device)) for s in range(0, len(views), max_batch)])
        return [average_views(part) for part in out.split([len(v) for v in videos])]

    def answers(
        self, videos: Sequence[torch.Tensor], top_k: int, threshold: float | None, max_batch: int, device: torch.device
    ) -> list[Answer]:
        logits = self.logits(videos, max_batch, device)
        return [label_answer(one, self.classes, top_k, threshold) for one in logits]


class SegmentationTask:
    """A segmentation task's input and computation, as ``adaptformer predict`` segments: ``prepare(image)`` is the
    evaluation transform its adapter records (:func:`~.segmenting.segmentation_input`), ``answers`` segments each
    prepared image (:func:`~.segmenting.segment_input`)."""

    def __init__(self, model: nn.Module, info: AdapterInfo, classes: list[str]) -> None:
        from .segmenting import segmentation_input, segmentation_settings

        settings = segmentation_settings(info)
        self.model, self.classes = model, classes
        self.inference: SegmentationInference = settings.inference_settings()
        self.prepare: Callable[[Any], SegmentationInput] = segmentation_input(model, settings.augment(False))

    def answers(
        self,
        images: Sequence[SegmentationInput],
        top_k: int,
        threshold: float | None,
        max_batch: int,
        device: torch.device,
    ) -> list[Answer]:
        """Each prepared image's :class:`MaskAnswer`, one image at a time (each has its own size) on ``device``;
        ``top_k``, ``threshold`` and ``max_batch`` do not apply."""
        from .segmenting import segment_input

        model = _on(self.model, device)
        answers: list[Answer] = []
        for x, size in images:
            labels, fractions = segment_input(model, x, size, self.inference)
            answers.append(MaskAnswer(labels, self.classes, fractions))
        return answers


def load_segmentation_task(copy: nn.Module, plain: nn.Module, directory: Path, info: AdapterInfo) -> nn.Module:
    """A segmentation adapter's single-task model on ``copy`` (a plain backbone sharing ``plain``'s tensors). The
    adapter must record the backbone kwargs ``plain`` was built with: a segmentation backbone is often built to take
    other input sizes (``dynamic_img_size``), which changes what its blocks compute."""
    mine = (info.source or BackboneSource()).kwargs
    theirs = (get_source(plain) or BackboneSource()).kwargs
    if mine != theirs:
        raise AdapterFileError(
            f"{directory}: a segmentation adapter whose backbone was built with kwargs {mine}, but this multi-task "
            f"model's backbone was built with {theirs}; train the tasks on one backbone build, or load it alone"
        )
    return load_segmentation_model(directory, info=info, backbone=copy)


def is_video_input(item: Any) -> bool:
    """A path is a video file (images are given decoded, as PIL images)."""
    return isinstance(item, (str, os.PathLike))


def prepare_inputs(model: MultiTaskModel, item: Any, tasks: Sequence[str]) -> dict[str, Any]:
    """:meth:`MultiTaskModel.prepare`: ``item`` (a PIL image, or a video file's path) as each task's input."""
    from ..data import build_image_transform

    video = is_video_input(item)
    tensors: dict[Preprocessing, torch.Tensor] = {}
    inputs: dict[str, Any] = {}
    for name in tasks:
        info = model.task(name)
        if (info.kind == "video") != video:
            takes = "video files, not images" if info.kind == "video" else f"images, not video files ({item})"
            raise TaskTypeError(f"task {name!r} is a {info.kind} task: it takes {takes}")
        runner = model.runner(name)
        if runner is not None:
            inputs[name] = runner.prepare(item)
            continue
        if info.preprocessing not in tensors:  # its ToRGBImage converts any mode
            tensors[info.preprocessing] = build_image_transform(info.preprocessing, train=False)(item)
        inputs[name] = tensors[info.preprocessing]
    return inputs


def answer_inputs(
    model: MultiTaskModel, inputs: Sequence[dict[str, Any]], top_k: int, precision: str
) -> list[dict[str, Answer]]:
    """:meth:`MultiTaskModel.classify_inputs`: the image classification rows as mixed-task batches of at most
    ``max_batch`` samples, then each task that runs on its own model with all its inputs; every answer in its type's
    shape, each input's tasks in the order it asked them."""
    from ..precision import resolve_precision

    device = next(model.trunk.parameters()).device
    autocast = resolve_precision(precision, device).autocast
    runners = {name: model.runner(name) for one in inputs for name in one}
    samples = [(i, name, x) for i, one in enumerate(inputs) for name, x in one.items() if runners[name] is None]
    results: list[dict[str, Answer]] = [{} for _ in inputs]
    model.eval()
    for start in range(0, len(samples), model.max_batch):
        chunk = samples[start : start + model.max_batch]
        x = torch.stack([s[2] for s in chunk]).to(device)
        names = [s[1] for s in chunk]
        with autocast():
            logits = model(x, model.task_ids(names))
        seen = dict.fromkeys(names, 0)
        for index, name, _ in chunk:
            info = model.task(name)
            results[index][name] = label_answer(logits[name][seen[name]], info.classes, top_k, info.threshold)
            seen[name] += 1
    for name, runner in runners.items():  # grouped per task, on the task's own model
        if runner is None:
            continue
        mine = [i for i, one in enumerate(inputs) if name in one]
        threshold = model.task(name).threshold
        with autocast():
            answers = runner.answers([inputs[i][name] for i in mine], top_k, threshold, model.max_batch, device)
        for i, answer in zip(mine, answers, strict=True):
            results[i][name] = answer
    return [{name: result[name] for name in one} for one, result in zip(inputs, results, strict=True)]
