"""Adapter files: the few task-specific tensors of a model, PEFT-style, next to one JSON file that describes them.

    <dir>/adapter_config.json        everything needed to rebuild and use the adapter: the model spec (backbone name,
                                     method and its config, head, classes), how the backbone was built (timm kwargs,
                                     checkpoint, or the seed of a checkpoint-less backbone), a fingerprint of the
                                     frozen backbone weights, the preprocessing, the class names, what training used
                                     for evaluation (dataset, its options, video views, precision, batch size), and
                                     the SHA-256 of the weights file; for a task other than classification, its
                                     record ("task": {"type": "segmentation", the decode head, ...})
    <dir>/adapter_model.safetensors  adapters + head (+ prompts, + task norms); the whole model for method "full"
    <dir>/README.md                  its model card (:mod:`.cards`), never read: like a Hub clone's other files

Each file is written to a temporary name and renamed into place, weights first, so a crash leaves the previous pair
readable; the weights' SHA-256 recorded in the config detects a weights file that does not belong to it. Folders
written by adaptformer 0.1 (format_version 1, with a separate task.json) are read too.
"""

from __future__ import annotations

import hashlib
import json
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .backbones.hf import is_hf_name
from .cards import CARD_NAME, model_card, read_test_metrics
from .factory import BackboneSource, architecture_difference, build_backbone, get_source, missing_checkpoint
from .files import atomic_write_files, make_folder, read_json_object
from .methods.state import backbone_fingerprint, get_spec, get_task, task_state_dict
from .model import ModelSpec, apply_method, task_tensor_mismatch
from .preprocessing import Preprocessing
from .validation import check_types, from_mapping

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
V01_TASK_NAME = "task.json"  # adaptformer 0.1's second description, read for old folders
FORMAT = "adaptformer-adapter"
FORMAT_VERSION = 2
_SPEC_FIELDS = ("backbone", "method", "method_config", "num_classes", "head", "extra_trainable")
_V01_FIELDS = ("adapter", "vpt")
_REQUIRED_FIELDS = ("backbone", "method", "num_classes")  # the rest have defaults (0.1 wrote these three too)
_V01_TASK_FIELDS = ("classes", "dataset", "model_kwargs", "checkpoint", "checkpoint_source", "precision",
                    "eval_batch_size", "dataset_options", "video")  # fmt: skip
_FILE_FIELDS = ("source", "classes", "training", "backbone_fingerprint", "preprocessing", "num_parameters",
                "weights_sha256", "multi_label", "task")  # fmt: skip
CLASSIFICATION = "classification"  # the task of an adapter whose config has no "task" record
# how to rebuild a model of each task from its adapter folder, for the error that refuses another task's folder
_REBUILD = {
    CLASSIFICATION: "rebuild it with adaptformer.saving.create_model_from_adapter (adaptformer eval / predict)",
    "segmentation": "rebuild it with adaptformer.segmentation.load_segmentation_model",
}


class AdapterFileError(ValueError):
    """An adapter directory that is missing, corrupt, or does not belong to the given model."""


@dataclass(frozen=True)
class TrainingRecord:
    """How training evaluated the adapter, so ``adaptformer eval`` reproduces its numbers without flags.

    Args:
        dataset: the dataset kind it was trained on.
        dataset_options: the per-kind dataset options training used.
        video: for video datasets, the clip sampling and test views (``VideoSettings`` fields, defaults resolved;
            0.2's ``stride`` is read as ``sampling_stride``).
        precision: the autocast precision evaluation ran in.
        eval_batch_size: the batch size evaluation ran with.
        segmentation: for segmentation datasets, the ``data.segmentation`` section (its eval resize and inference:
            whole or sliding window, flip, scales).
    """

    dataset: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    video: dict[str, Any] | None = None
    precision: str = "auto"
    eval_batch_size: int = 256
    segmentation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_types(self, {"dataset": (str, type(None)), "dataset_options": dict, "video": (dict, type(None)),
                           "precision": str, "eval_batch_size": int,
                           "segmentation": (dict, type(None))})  # fmt: skip
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.video is not None and "stride" in self.video:  # adaptformer 0.2's name of sampling_stride
            video = {("sampling_stride" if k == "stride" else k): v for k, v in self.video.items()}
            object.__setattr__(self, "video", video)


@dataclass(frozen=True)
class AdapterInfo:
    """Everything ``adapter_config.json`` says (:func:`read_adapter_config`)."""

    spec: ModelSpec
    source: BackboneSource | None = None
    classes: list[str] | None = None
    training: TrainingRecord | None = None
    preprocessing: Preprocessing | None = None
    backbone_fingerprint: str | None = None
    weights_sha256: str | None = None
    num_parameters: int | None = None
    format_version: int = FORMAT_VERSION
    multi_label: bool = False  # several classes per image: one sigmoid per class (absent in older files: False)
    task: dict[str, Any] | None = None  # the task record of a model that is not a classifier (segmentation)


def _architecture(name: str) -> str:
    """A backbone name without its pretrained tag (``vit_base_patch16_224.mae``); an ``hf:`` folder as it is."""
    return name if is_hf_name(name) else name.split(".", 1)[0]


def _model_backbone_name(model: nn.Module) -> str:
    spec = get_spec(model)
    if spec is not None:
        return spec.backbone
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "architecture" not in cfg:
        raise AdapterFileError(f"cannot tell which backbone {type(model).__name__} is (no pretrained_cfg)")
    return cfg["architecture"]


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    classes: list[str] | None = None,
    training: TrainingRecord | None = None,
    multi_label: bool = False,
) -> Path:
    """Write the model's task-specific tensors and their description to ``directory``; returns the directory.

    ``classes`` (names, index = label), ``training`` (how training evaluated it) and ``multi_label`` (the head
    scores every class with its own sigmoid: a multi-label task) are recorded for later use; how the backbone was
    built comes from the model (``create_model`` records it).
    """
    spec = get_spec(model)
    if spec is None:
        raise ValueError("the model has no method applied; build it with create_model() or apply_method()")
    if classes is not None and len(classes) != spec.num_classes:
        raise ValueError(f"{len(classes)} class names for a head of {spec.num_classes} classes")
    directory = make_folder(directory)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in task_state_dict(model).items()}
    blob = save_safetensors(tensors, metadata={"format": FORMAT, "method": spec.method})
    source = get_source(model)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **spec.to_dict(),
        "source": asdict(source) if source is not None else None,
        "classes": list(classes) if classes is not None else None,
        "training": asdict(training) if training is not None else None,
        "backbone_fingerprint": backbone_fingerprint(model),
        "preprocessing": Preprocessing.from_model(model).to_dict(),
        "num_parameters": sum(t.numel() for t in tensors.values()),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "multi_label": bool(multi_label),
    }
    if get_task(model) is not None:
        config["task"] = get_task(model)
    described = (json.dumps(config, indent=2) + "\n").encode()
    card = model_card(config, read_test_metrics(directory)).encode()
    files = {directory / WEIGHTS_NAME: blob, directory / CONFIG_NAME: described, directory / CARD_NAME: card}
    atomic_write_files(files)  # all or none: a full disk leaves the previous save whole
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; AdapterFileError naming the file for anything else."""
    return read_json_object(path, AdapterFileError)


def _v01_task(directory: Path) -> dict[str, Any]:
    """0.1's task.json as 0.2's fields (source, classes, training); empty if the folder has none."""
    path = directory / V01_TASK_NAME
    if not path.is_file():
        return {}
    task = _read_json(path)
    unknown = sorted(set(task) - set(_V01_TASK_FIELDS))
    if unknown:
        raise AdapterFileError(f"{path}: unknown fields {unknown}; expected some of {list(_V01_TASK_FIELDS)}")
    if not isinstance(task.get("model_kwargs", {}), dict):
        raise AdapterFileError(f"{path}: model_kwargs must be a mapping of timm keyword arguments, got "
                               f"{task['model_kwargs']!r}")  # fmt: skip
    source = {"kwargs": task.get("model_kwargs", {}), "checkpoint": task.get("checkpoint"),
              "checkpoint_source": task.get("checkpoint_source", "timm"), "init_seed": None}  # fmt: skip
    training = {k: task[k] for k in (f.name for f in fields(TrainingRecord)) if k in task}
    try:  # validated here too, so that an error names this file
        BackboneSource(**source)
        TrainingRecord(**training)
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{path}: {e}") from e
    return {"source": source, "classes": task.get("classes"), "training": training}


def read_adapter_config(directory: str | Path) -> AdapterInfo:
    """Parse and validate ``adapter_config.json`` (0.2's, or 0.1's with its task.json)."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no adapter here: {path} does not exist (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise AdapterFileError(f'{path}: not an adaptformer adapter config (expected "format": "{FORMAT}")')
    version = data.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise AdapterFileError(f"{path}: format_version {version!r}, this library reads 1 and {FORMAT_VERSION}")
    classes_path = path
    if version == 1 and (directory / V01_TASK_NAME).is_file():
        data = {**data, **_v01_task(directory)}
        classes_path = directory / V01_TASK_NAME
    known = {"format", "format_version", *_SPEC_FIELDS, *(_V01_FIELDS if version == 1 else ()), *_FILE_FIELDS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AdapterFileError(f"{path}: unknown fields {unknown}")
    missing = [k for k in _REQUIRED_FIELDS if k not in data]
    if missing:
        raise AdapterFileError(f"{path}: missing fields {missing}; expected {list(_REQUIRED_FIELDS)} at least")
    try:
        spec = ModelSpec.from_dict({k: data[k] for k in (*_SPEC_FIELDS, *_V01_FIELDS) if k in data})
        source = from_mapping(BackboneSource, data["source"], "source") if data.get("source") else None
        training = from_mapping(TrainingRecord, data["training"], "training") if data.get("training") else None
        preprocessing = Preprocessing.from_dict(data["preprocessing"]) if data.get("preprocessing") else None
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{path}: {e}") from e
    classes = data.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != spec.num_classes):
        raise AdapterFileError(
            f"{classes_path}: classes must be a list of {spec.num_classes} names (the head's classes), got {classes!r}"
        )
    multi_label = data.get("multi_label", False)
    if not isinstance(multi_label, bool):
        raise AdapterFileError(f"{path}: multi_label must be true or false, got {multi_label!r}")
    task = data.get("task")
    if task is not None and not (isinstance(task, dict) and isinstance(task.get("type"), str)):
        raise AdapterFileError(f'{path}: task must be an object with a "type", got {task!r}')
    return AdapterInfo(
        spec, source, classes, training, preprocessing, data.get("backbone_fingerprint"), data.get("weights_sha256"),
        data.get("num_parameters"), version, multi_label, task,
    )  # fmt: skip


def task_type(task: dict[str, Any] | None) -> str:
    """The type of a task record ("segmentation", ...); "classification" for none."""
    return CLASSIFICATION if task is None else str(task["type"])


def check_task(directory: str | Path, info: AdapterInfo, task: dict[str, Any] | None) -> None:
    """AdapterFileError unless the adapter's task record is ``task`` (a model's :func:`get_task`): a segmentation
    adapter is no classifier, and the reverse."""
    if task_type(info.task) != task_type(task):
        raise AdapterFileError(
            f"{directory}: a {task_type(info.task)} adapter, but a {task_type(task)} model was asked for; "
            f"{_REBUILD.get(task_type(info.task), 'rebuild it for its own task')}"
        )
    if info.task != task:
        raise AdapterFileError(
            f"{directory}: the model's task differs from the adapter's (model, file): {task}, {info.task}"
        )


def load_adapter(
    model: nn.Module, directory: str | Path, allow_backbone_mismatch: bool = False, info: AdapterInfo | None = None
) -> nn.Module:
    """Restore an adapter saved by ``save_adapter`` into ``model`` (in place) and return it.

    A plain backbone gets the saved method and head applied first; a model that already has a method must have the
    same one. The backbone must have the saved architecture and the saved weights fingerprint, unless
    ``allow_backbone_mismatch`` (then the adapter is applied to whatever backbone this is). ``info``: the folder's
    :func:`read_adapter_config`, if the caller has read it already.

    Everything is checked before ``model`` is touched: when this raises, the model is as it was passed in.
    """
    directory = Path(directory)
    info = info or read_adapter_config(directory)
    check_task(directory, info, get_task(model))
    spec = info.spec
    name = _model_backbone_name(model)
    if _architecture(name) != _architecture(spec.backbone) and not allow_backbone_mismatch:
        raise AdapterFileError(
            f"{directory}: adapter was trained on {spec.backbone!r}, the model is {name!r} "
            "(pass allow_backbone_mismatch=True to apply it anyway)"
        )
    current = get_spec(model)
    if current is not None:
        ours, theirs = current.to_dict(), spec.to_dict()
        diff = {k: (ours[k], theirs[k]) for k in ours if k != "backbone" and ours[k] != theirs[k]}
        if diff:
            raise AdapterFileError(f"{directory}: the model's method differs from the adapter's (model, file): {diff}")
    tensors = _read_weights(directory, info)
    adapted = model if current is not None else _applied_to_a_copy(model, spec)
    expected_fp = info.backbone_fingerprint
    if expected_fp is not None and not allow_backbone_mismatch:
        actual_fp = backbone_fingerprint(adapted)
        if actual_fp != expected_fp:
            raise AdapterFileError(
                f"{directory}: the backbone weights differ from those the adapter was trained on "
                f"(fingerprint {actual_fp} != {expected_fp}); load the same pre-trained checkpoint (recorded: "
                f"{info.source}), or pass allow_backbone_mismatch=True"
            )
    problem = task_tensor_mismatch(tensors, task_state_dict(adapted))
    if problem:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME}: {problem}")
    if current is None:
        apply_method(model, spec)  # as on the copy, which showed that it works and that the tensors fit
    model.load_state_dict(tensors, strict=False)
    return model


def _read_weights(directory: Path, info: AdapterInfo) -> dict[str, torch.Tensor]:
    """The adapter's tensors, after checking the file against the SHA-256 its config records."""
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"adapter weights missing: {weights_path} does not exist (expected next to {CONFIG_NAME})"
        )
    blob = weights_path.read_bytes()
    if blob.startswith(b"version https://git-lfs"):  # a Hub clone made without git-lfs holds the pointer only
        raise AdapterFileError(f"{weights_path}: a Git LFS pointer, not the weights; run `git lfs pull` in the clone")
    if info.weights_sha256 is not None and hashlib.sha256(blob).hexdigest() != info.weights_sha256:
        raise AdapterFileError(f"{weights_path}: SHA-256 differs from the one in {CONFIG_NAME} (corrupt or mixed up)")
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{weights_path}: not a valid safetensors file ({e})") from e


def _applied_to_a_copy(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """``spec`` applied to a copy of ``model``'s module tree that shares its tensors, so that the result can be
    checked without touching ``model`` (its requires_grad flags are restored, torch's RNG is not advanced)."""
    shared: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    copy = deepcopy(model, memo=shared)
    try:
        with torch.random.fork_rng(devices=[]):
            return apply_method(copy, spec)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def create_model_from_adapter(
    directory: str | Path,
    source: BackboneSource | None = None,
    allow_backbone_mismatch: bool = False,
    info: AdapterInfo | None = None,
) -> nn.Module:
    """Build the backbone ``directory``'s adapter was trained on, as its config records (or as ``source`` says, e.g.
    another path to the same checkpoint), then load the adapter into it. The backbone's fingerprint is checked; for
    method "full" the adapter holds every weight and the checkpoint is not needed. ``info``: the folder's
    :func:`read_adapter_config`, if the caller has read it already."""
    info = info or read_adapter_config(directory)
    check_task(directory, info, None)  # before the backbone is built
    backbone = build_adapter_backbone(directory, source, allow_backbone_mismatch, info)
    return load_adapter(backbone, directory, allow_backbone_mismatch=allow_backbone_mismatch, info=info)


def build_adapter_backbone(
    directory: str | Path,
    source: BackboneSource | None = None,
    allow_backbone_mismatch: bool = False,
    info: AdapterInfo | None = None,
) -> nn.Module:
    """The plain pre-trained backbone ``directory``'s adapter was trained on (see :func:`create_model_from_adapter`),
    without the adapter. Kwargs in ``source`` that change the recorded architecture are an AdapterFileError saying
    how, unless ``allow_backbone_mismatch``."""
    info = info or read_adapter_config(directory)
    recorded = info.source or BackboneSource()
    source = source or recorded
    if source.kwargs != recorded.kwargs and not allow_backbone_mismatch:  # before any weights are loaded into it
        difference = architecture_difference(info.spec.backbone, info.spec.num_classes, recorded.kwargs, source.kwargs)
        if difference is not None:
            raise AdapterFileError(f"{directory}: {difference}; give the kwargs it records, or leave them out")
    checkpoint = source.checkpoint
    if info.spec.registered.trains_backbone:
        checkpoint = None  # every weight is in the adapter
    elif checkpoint is None and source.init_seed is None and not allow_backbone_mismatch:
        raise AdapterFileError(
            f"{directory}: the adapter was trained on a backbone with no checkpoint whose initial seed is not "
            "recorded (an adaptformer 0.1 folder?); give the seed the run used (its config.yaml: seed), e.g. "
            "--model.init_seed N"
        )
    elif missing_checkpoint(checkpoint):
        raise FileNotFoundError(
            f"{directory}: the adapter's backbone checkpoint {checkpoint} does not exist; pass --model.checkpoint PATH "
            "(the same weights)"
        )
    return build_backbone(
        info.spec.backbone, info.spec.num_classes, checkpoint, source.checkpoint_source, init_seed=source.init_seed,
        **source.kwargs,
    )  # fmt: skip
