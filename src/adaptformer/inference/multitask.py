"""One frozen backbone serving many tasks (the "scalable visual recognition" of the AdaptFormer paper's title).

:class:`MultiTaskModel` loads any number of saved adapter folders trained on the same backbone (name and weights
fingerprint checked) once, and runs **mixed-task batches**: one forward over samples of different tasks (a task id
per sample), where the frozen computation runs once for the whole batch and, at each adapted site, a router runs
every task's own module on that task's rows only; each task's head reads its rows. Per sample this is exactly what the
task's single-task model computes (to the rounding of batched matrix products).

How it is built: each task is loaded (:func:`adaptformer.saving.load_adapter`) into a copy of the backbone's module
tree that *shares its tensors* (no copy of the weights per task), which checks the files exactly as single-task loading
does and keeps that task's single-task model at hand (video tasks and ``task_model``). The trunk is one more such
copy whose adapted blocks hold :class:`Router` s over the tasks' modules and whose classifier is an identity (the
pooled features), so switching tasks costs nothing and adding or removing a task touches no other task's modules.

Methods: every built-in method, each routed as its protocol (:mod:`adaptformer.methods.protocol`) declares, in its
own module (this one names none; :mod:`.routing` says how each kind of site is routed and where two methods' modules
may meet); linear probes own only their head; a full fine-tuning task (``own_backbone``) loads into a backbone of its
own (counted in :attr:`TaskInfo.num_parameters`) and its rows run through its own model, the trunk only the others'.
Modules a backbone trains with the head (``task_modules``: the video ViT's ``fc_norm``, applied after pooling) become
part of the task's head. A method whose protocol refuses a mixed batch (``Method.batch_refusal``: a registered method
that declares nothing) is refused with that reason, naming the adapter.

Task types (:mod:`.tasktypes`): single- and multi-label image tasks share the mixed batch; video tasks (a video
backbone's) and segmentation tasks run on their own single-task models (sharing the backbone's tensors, grouped per
task), because a video's test views and a segmentation decode head's multi-block features are not the trunk's pooled
image features. :meth:`MultiTaskModel.classify` answers each task in its type's shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UnsupportedModelError
from ..factory import BackboneSource
from ..heads import classifier_paths
from ..methods.state import remember_fingerprint
from ..preprocessing import Preprocessing, clip_frames
from ..saving import (
    AdapterFileError,
    AdapterInfo,
    build_adapter_backbone,
    load_adapter,
    read_adapter_config,
    task_type,
)
from .routing import Router, Rows, attach_task, shared_copy
from .tasktypes import (
    Answer,
    SegmentationTask,
    TaskKind,
    TaskTypeError,
    VideoTask,
    answer_inputs,
    check_threshold,
    default_threshold,
    is_video_input,
    load_segmentation_task,
    prepare_inputs,
    task_kind,
)

logger = logging.getLogger(__name__)

__all__ = ["MultiTaskModel", "Router", "TaskInfo", "UnknownTaskError"]


class UnknownTaskError(KeyError):
    """A task name the model does not have; the message lists the ones it has."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class TaskInfo:
    """One task of a :class:`MultiTaskModel`: what its adapter folder records (``adapter``: its adapter_config.json,
    read once when the task was added). ``num_parameters``: the parameters the task holds beyond the shared backbone
    (its adapter and head; a full fine-tuning task's own backbone too)."""

    name: str
    classes: list[str]
    method: str
    num_parameters: int
    directory: Path
    is_video: bool
    preprocessing: Preprocessing
    adapter: AdapterInfo
    kind: TaskKind = "single-label"  # what the task takes and answers (:mod:`.tasktypes`)
    threshold: float | None = None  # a multi-label task's: classes whose sigmoid probability reaches it are answered


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")


def check_task_name(name: str, where: str) -> None:
    """A task name is a key of the model's ModuleDicts: non-empty, without '.' or '/', and not one of their
    attributes (``half``, ``eval``, ``forward``, ...). ``where`` names its source in the error."""
    if not name or "." in name or "/" in name:
        raise ValueError(f"task name {name!r} ({where}): give a non-empty name without '.' or '/'")
    if hasattr(nn.ModuleDict, name):
        raise ValueError(f"task name {name!r} ({where}) is reserved: an attribute of torch's nn.ModuleDict; rename it")


def default_task_name(directory: Path) -> str:
    """A run's ``OUT/adapter`` is named after ``OUT``; any other folder after itself."""
    directory = Path(directory).resolve()
    return directory.parent.name if directory.name == "adapter" else directory.name


class MultiTaskModel(nn.Module):
    """One frozen backbone + the adapters and heads of many tasks; see the module docstring.

    Build it with :meth:`from_adapters`. ``forward(x, task_ids)`` takes a batch and one task index per sample (into
    :attr:`tasks`) and returns each present task's logits for its rows, in batch order."""

    def __init__(self, backbone: nn.Module, backbone_name: str, max_batch: int = 64) -> None:
        super().__init__()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone_name = backbone_name
        self.max_batch = max_batch
        # the plain backbone every task copy shares its tensors with (not a submodule: its tensors are the trunk's)
        self._plain = (backbone.eval(),)
        self._rows = Rows()
        self.trunk = shared_copy(backbone).eval()
        paths = classifier_paths(self.trunk)
        if len(paths) != 1:
            raise UnsupportedModelError(f"{backbone_name} has {len(paths)} classifiers {list(paths)}; a multi-task "
                                        "model needs one (the pooled features feed every task's head)")  # fmt: skip
        self._head_path = paths[0]
        self.trunk.set_submodule(self._head_path, nn.Identity())
        self.heads = nn.ModuleDict()
        self.routers = nn.ModuleDict()  # "block path/attribute" or "module path" (dots as "/") -> its router
        self.own_models = nn.ModuleDict()  # tasks with a backbone of their own (full fine-tuning) -> their model
        self._owners: dict[str, str] = {}  # block path -> the title of the method whose class the trunk block has
        self._infos: dict[str, TaskInfo] = {}
        self._models: dict[str, nn.Module] = {}
        self._alone: dict[str, VideoTask | SegmentationTask] = {}  # tasks that run on their own models, not the trunk
        # the shared backbone's fingerprint per method spec (its frozen tensors are the same for every task of a spec):
        # hashing ViT-B's 343 MB for each of 1,024 tasks took longer than loading them
        self._fingerprints: dict[str, str | None] = {}

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_adapters(
        cls,
        dirs: Sequence[str | Path],
        names: Sequence[str] | None = None,
        source: BackboneSource | None = None,
        max_batch: int = 64,
        infos: Sequence[AdapterInfo] | None = None,
    ) -> MultiTaskModel:
        """Load every adapter folder in ``dirs`` on the backbone the first one records (or ``source``). ``infos``: the
        folders' adapter_config.json as the caller already read them (each is read here otherwise, once)."""
        if not dirs:
            raise ValueError("a multi-task model needs at least one adapter folder")
        names = list(names) if names is not None else [default_task_name(Path(d)) for d in dirs]
        if len(names) != len(dirs):
            raise ValueError(f"{len(names)} task names for {len(dirs)} adapter folders")
        seen: dict[str, Path] = {}
        for name, directory in zip(names, dirs, strict=True):
            if name in seen:
                raise ValueError(
                    f"two adapters would be task {name!r}: {seen[name]} and {directory}; name them (--adapter "
                    "NAME=DIR, or names=[...])"
                )
            seen[name] = Path(directory)
        infos = list(infos) if infos is not None else [read_adapter_config(d) for d in dirs]
        if len(infos) != len(dirs):
            raise ValueError(f"{len(infos)} adapter configs for {len(dirs)} adapter folders")
        # the shared backbone as the first task that shares it records it (a full fine-tuning folder records no
        # pre-trained weights: its own are all in the folder)
        base = next((i for i, info in enumerate(infos) if not info.spec.registered.own_backbone), 0)
        backbone = build_adapter_backbone(dirs[base], source, info=infos[base])
        model = cls(backbone, infos[base].spec.backbone, max_batch)
        for name, directory, info in zip(names, dirs, infos, strict=True):
            model.add_task(name, directory, info)
        return model

    def add_task(
        self, name: str, directory: str | Path, info: AdapterInfo | None = None, threshold: float | None = None
    ) -> TaskInfo:
        """Load the adapter in ``directory`` as task ``name``; the other tasks are not touched. ``info``: its
        adapter_config.json, if already read; ``threshold``: a multi-label task's (default: :func:`default_threshold`;
        :meth:`set_threshold` changes it)."""
        directory = Path(directory)
        self._check_new_name(name, directory)
        info = info if info is not None else read_adapter_config(directory)
        return self.add_task_model(name, self.load_task_model(directory, info), info, directory, threshold)

    def _check_new_name(self, name: str, directory: Path) -> None:
        check_task_name(name, f"adapter {directory}")
        if name in self._infos:
            raise ValueError(f"task {name!r} exists already ({self._infos[name].directory}); remove_task it first")

    def load_task_model(self, directory: str | Path, info: AdapterInfo) -> nn.Module:
        """The single-task model of the adapter in ``directory`` (``info``: its adapter_config.json), checked as
        :meth:`add_task` checks it and on this model's device, but not attached: this model is not touched, so a
        server can load in a worker thread while batches run, then attach it with :meth:`add_task_model`."""
        directory = Path(directory)
        registered = info.spec.registered
        method = registered.name
        if registered.batch_refusal is not None:
            raise UnsupportedModelError(
                f"{directory}: method {method!r} cannot share a backbone in a mixed-task batch: "
                f"{registered.batch_refusal}; load it as a single-task model (create_model_from_adapter)"
            )
        if task_type(info.task) not in ("classification", "segmentation"):
            raise UnsupportedModelError(f"{directory}: a {task_type(info.task)} adapter cannot join a multi-task model")
        if info.spec.backbone != self.backbone_name:
            raise AdapterFileError(
                f"{directory}: adapter was trained on {info.spec.backbone!r}, this multi-task model's backbone is "
                f"{self.backbone_name!r}"
            )
        # a task with its own backbone loads into a copy of its own; any other shares the backbone's tensors
        own = registered.own_backbone
        copy = deepcopy(self._plain[0]) if own else shared_copy(self._plain[0], own=info.spec.extra_trainable)
        if task_type(info.task) == "segmentation":  # its own model: a decode head over several blocks' features
            task_model = load_segmentation_task(copy, self._plain[0], directory, info)
            return task_model.eval().to(next(self.trunk.parameters()).device)
        spec = json.dumps(info.spec.to_dict(), sort_keys=True)
        if not own and spec in self._fingerprints:
            remember_fingerprint(copy, self._fingerprints[spec])
        task_model = load_adapter(copy, directory, info=info).eval()  # the fingerprint is checked there
        if not own and spec not in self._fingerprints:
            self._fingerprints[spec] = remember_fingerprint(task_model)
        task_model.to(next(self.trunk.parameters()).device)  # its new modules where the shared backbone is
        paths = classifier_paths(task_model)
        if paths != (self._head_path,):
            raise UnsupportedModelError(f"{directory}: its classifiers {list(paths)} differ from the backbone's")
        return task_model

    def add_task_model(
        self, name: str, task_model: nn.Module, info: AdapterInfo, directory: str | Path, threshold: float | None = None
    ) -> TaskInfo:
        """Attach ``task_model`` (from :meth:`load_task_model`, or one :meth:`remove_task` dropped: re-attaching
        reads no file) as task ``name``; the other tasks are not touched. ``threshold``: as :meth:`add_task`'s."""
        directory = Path(directory)
        self._check_new_name(name, directory)
        if threshold is not None and not info.multi_label:
            raise ValueError(f"task {name!r} ({directory}): a threshold applies to multi-label tasks; this one is not")
        threshold = check_threshold(threshold, f"task {name!r}") if threshold is not None else default_threshold(info)
        registered = info.spec.registered
        method = registered.name
        if task_type(info.task) == "segmentation":  # its own model: a decode head over several blocks' features
            return self._add_segmentation(name, task_model, directory, info, method)
        if registered.own_backbone:  # its rows run through its own model: nothing of the trunk's changes
            self.own_models[name] = task_model
            self._models[name] = task_model
            self._infos[name] = self._task_info(name, info, task_model, directory, method, threshold)
            if self._infos[name].kind == "video":  # its views go through its own model
                self._alone[name] = VideoTask(task_model, info, self._infos[name].classes)
            logger.info("task %s: %s from %s, on its own backbone", name, method, directory)
            return self._infos[name]
        attach_task(self.trunk, self._plain[0], self.routers, self._owners, self._rows, name, task_model, registered,
                    directory)  # fmt: skip
        # modules trained with the head (a video ViT's fc_norm, between the pooling and the head) are the task's: the
        # trunk stops before them and the task's head starts with them
        for module_name in info.spec.extra_trainable:
            self.trunk.set_submodule(module_name, nn.Identity())
        extras = [task_model.get_submodule(m) for m in info.spec.extra_trainable]
        head = task_model.get_submodule(self._head_path)
        self.heads[name] = nn.Sequential(*extras, head) if extras else head
        self._models[name] = task_model
        self._infos[name] = self._task_info(name, info, task_model, directory, method, threshold)
        if self._infos[name].kind == "video":  # its views go through its own model (the trunk takes images)
            self._alone[name] = VideoTask(task_model, info, self._infos[name].classes)
        logger.info("task %s: %s from %s", name, method, directory)
        return self._infos[name]

    def _add_segmentation(
        self, name: str, task_model: nn.Module, directory: Path, info: AdapterInfo, method: str
    ) -> TaskInfo:
        """A segmentation task is its single-task model only: no router in the trunk, no head in the mixed batch."""
        self._models[name] = task_model
        self._infos[name] = self._task_info(name, info, task_model, directory, method, None)
        self._alone[name] = SegmentationTask(task_model, info, self._infos[name].classes)
        logger.info("task %s: %s segmentation from %s", name, method, directory)
        return self._infos[name]

    def _task_info(
        self, name: str, info: AdapterInfo, model: nn.Module, directory: Path, method: str, threshold: float | None
    ) -> TaskInfo:
        classes = list(info.classes) if info.classes else [str(i) for i in range(int(model.num_classes))]
        shared = {id(p) for p in self._plain[0].parameters()}
        held = sum(p.numel() for p in model.parameters() if id(p) not in shared)  # its adapter, head, own backbone
        is_video = clip_frames(model) is not None
        return TaskInfo(name, classes, method, held, directory, is_video, Preprocessing.from_model(model), info,
                        task_kind(info, is_video), threshold)  # fmt: skip

    def set_threshold(self, name: str, threshold: float) -> None:
        """Change multi-label task ``name``'s threshold (a number in (0, 1))."""
        if self.task(name).threshold is None:
            raise ValueError(f"task {name!r} is a {self._infos[name].kind} task; a threshold applies to multi-label "
                             "tasks")  # fmt: skip
        self._infos[name] = replace(self._infos[name], threshold=check_threshold(threshold, f"task {name!r}"))

    def remove_task(self, name: str) -> None:
        """Drop task ``name``: its modules and head; the other tasks' outputs do not change."""
        self.task(name)
        for router in self.routers.values():
            if name in router.tasks:
                del router.tasks[name]
        if name in self.own_models:
            del self.own_models[name]
        elif name in self.heads:  # a segmentation task has none
            del self.heads[name]
        self._alone.pop(name, None)
        del self._models[name], self._infos[name]

    # ------------------------------------------------------------------------------------------------ reading

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self._infos)

    def task(self, name: str) -> TaskInfo:
        if name not in self._infos:
            raise UnknownTaskError(f"unknown task {name!r}; this model has {list(self._infos)}")
        return self._infos[name]

    def task_model(self, name: str) -> nn.Module:
        """Task ``name``'s single-task model (sharing this model's backbone tensors)."""
        self.task(name)
        return self._models[name]

    # ------------------------------------------------------------------------------------------------ running

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, ...) and ``task_ids`` (B,) indices into :attr:`tasks` -> {task: logits (n_t, classes_t)}."""
        if task_ids.shape != (x.shape[0],):
            raise ValueError(f"task_ids must have shape ({x.shape[0]},) (one per sample), got {tuple(task_ids.shape)}")
        names = self.tasks
        if len(task_ids) and (int(task_ids.min()) < 0 or int(task_ids.max()) >= len(names)):
            raise UnknownTaskError(f"task ids must be in 0..{len(names) - 1} (tasks {list(names)})")
        task_ids = task_ids.to(x.device)
        rows = {names[k]: (task_ids == k).nonzero().squeeze(1) for k in torch.unique(task_ids).tolist()}
        shared = {n: r for n, r in rows.items() if n not in self.own_models}
        out = {n: self.own_models[n](x.index_select(0, r)) for n, r in rows.items() if n in self.own_models}
        if shared:
            if out:  # the trunk runs only the rows of tasks that share it, renumbered 0..
                keep = torch.cat(list(shared.values())).sort().values
                local = torch.empty_like(task_ids).index_copy_(0, keep, torch.arange(len(keep), device=x.device))
                shared = {n: local.index_select(0, r) for n, r in shared.items()}
                x = x.index_select(0, keep)
            features = self.trunk_features(x, shared)  # (B, F)
            out.update({name: self.heads[name](features.index_select(0, r)) for name, r in shared.items()})
        return {name: out[name] for name in rows}  # in task order

    def trunk_features(self, x: torch.Tensor, rows: dict[str, torch.Tensor], traced: bool = False) -> torch.Tensor:
        """The shared trunk's pooled features of ``x`` (B, F), each task's ``rows`` (indices into the batch) through
        its modules. ``traced``: for a graph export, where the rows are data: every task in ``rows`` is routed, also
        one without rows."""
        self._rows.by_task, self._rows.traced = rows, traced
        try:
            return self.trunk(x)
        finally:
            self._rows.by_task, self._rows.traced = {}, False

    def task_ids(self, names: Sequence[str]) -> torch.Tensor:
        """The ids ``forward`` takes for a list of task names."""
        index = {n: i for i, n in enumerate(self.tasks)}
        for n in names:
            if self.task(n).kind == "segmentation":
                raise TaskTypeError(f"task {n!r} is a segmentation task: it runs on its own model (task_model({n!r}) "
                                    "or classify), not in forward's mixed batch")  # fmt: skip
        return torch.tensor([index[n] for n in names], dtype=torch.long)

    def tasks_for(self, item: Any) -> list[str]:
        """The tasks that take ``item`` (a video file's path: the video tasks; an image: every other task)."""
        video = is_video_input(item)
        return [n for n, i in self._infos.items() if (i.kind == "video") == video]

    @torch.no_grad()
    def classify(
        self,
        images: Sequence[Any],
        tasks: Sequence[Sequence[str]] | None = None,
        top_k: int = 5,
        precision: str = "fp32",
    ) -> list[dict[str, Answer]]:
        """For each input (a PIL image; for video tasks a video file's path), each requested task's answer in its
        type's shape (:mod:`.tasktypes`): a single-label task's top-k ``(class, index, probability)``, best first; a
        multi-label task's :class:`~.tasktypes.MultiLabelAnswer`; a segmentation task's
        :class:`~.tasktypes.MaskAnswer`. ``tasks``: one list of task names per input (None: every task that takes the
        input, :meth:`tasks_for`). Image classification rows run as mixed-task batches of at most ``max_batch``
        samples, the other tasks on their own models; all under ``precision``'s autocast (fp32, bf16, fp16, auto)."""
        _check_top_k(top_k)
        if tasks is None:
            tasks = [self.tasks_for(i) for i in images]
        if len(tasks) != len(images):
            raise ValueError(f"{len(tasks)} task lists for {len(images)} images")
        return self.classify_inputs([self.prepare(i, t) for i, t in zip(images, tasks, strict=True)], top_k, precision)

    def prepare(self, image: Any, tasks: Sequence[str]) -> dict[str, Any]:
        """One input as each task's input (:meth:`classify` in two steps, so a server can preprocess in its own
        threads and drop the full-size image before it waits for a batch): a PIL image (any mode) as each image task's
        tensor ``(C, H, W)`` (tasks of one preprocessing share it) or each segmentation task's ``(x, (H, W))``; a video
        file's path as each video task's views ``(V, C, T, H, W)``. A task that takes the other kind of input is a
        :class:`~.tasktypes.TaskTypeError` naming it and its type."""
        return prepare_inputs(self, image, tasks)

    @torch.no_grad()
    def classify_inputs(
        self, inputs: Sequence[dict[str, Any]], top_k: int = 5, precision: str = "fp32"
    ) -> list[dict[str, Answer]]:
        """:meth:`classify` of inputs already :meth:`prepare` d: one ``{task: input}`` per image or video."""
        _check_top_k(top_k)
        return answer_inputs(self, inputs, top_k, precision)

    def runner(self, name: str) -> VideoTask | SegmentationTask | None:
        """How task ``name`` runs on its own model (a video or segmentation task); None: in the mixed batch."""
        self.task(name)
        return self._alone.get(name)
