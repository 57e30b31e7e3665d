"""``TrainConfig``: every knob of a training run in one validated dataclass, saved as YAML next to the results.

Values come from three layers, later ones winning: the defaults below < a recipe or config file (YAML) < command
line flags. The merged result is written to ``<output_dir>/config.yaml``; passing that file back with ``--config``
repeats the run. Every field carries a one-line help text, which is what ``adaptformer train --help`` shows.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..data import IMAGE_DATASETS, PAPER_CROP_SCALE, ImageAugment
from ..data.video import STRATEGIES, VIDEO_DATASETS
from ..heads import HEADS
from ..methods import method_names
from ..methods.adaptformer import FORMS
from ..precision import PRECISIONS as STORAGE_DTYPES
from ..pretrained import CONVERTERS
from ..speed import ATTENTIONS, AUTO, SWITCHES, SpeedConfig

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("best", "last")
DATASET_KINDS = (*IMAGE_DATASETS, *VIDEO_DATASETS)
# Video-only fields and their defaults: setting one for an image dataset is an error rather than silently ignored.
VIDEO_FIELDS = {
    "num_frames": None, "sampling": None, "sampling_stride": None, "test_clips": 4, "test_crops": 3,
    "skip_bad_videos": False,
}  # fmt: skip
# Image-only fields and their defaults, likewise an error when changed for a video dataset.
IMAGE_FIELDS = {"crop_scale": list(PAPER_CROP_SCALE)}
# Fields that steer how a run executes but not what it computes; a resumed run may change them.
RUN_CONTROL_FIELDS = (
    "resume", "stop_after_steps", "num_workers", "log_every", "tensorboard", "recipe", "output_dir",
    "grad_checkpointing", "compile",
)  # fmt: skip
SPEED_HELP = {
    "frozen_dtype": "storage dtype of frozen weights: fp32, bf16, fp16, or auto (= the precision)",
    "attention": "attention: fused (SDPA), math (matmul-softmax), split (math with autograd, else fused), auto",
    "frozen_prefix": "run blocks before the first trainable one without autograd: on, off, auto",
    "frozen_backward": "hand-written backward for frozen halves of adapted/VPT ViT blocks (exact): on, off, auto",
    "class_token_tail": "last block for the class token only when the head reads only it (exact): on, off, auto",
    "grad_checkpointing": "recompute block activations in backward: less memory, slower steps",
    "compile": "torch.compile the model (slow first steps; measure first)",
}


def _f(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with an immutable default, its CLI help text, help group and allowed values."""
    return field(default=default, metadata=_meta(help, group, choices))


def _meta(help: str, group: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"help": help, "group": group, "choices": choices}


@dataclass
class TrainConfig:
    """The complete, validated description of a training run (see the module docstring)."""

    # model
    model: str = _f(
        "vit_base_patch16_224", "timm model name; a pretrained tag (e.g. .mae) sets the normalisation", "model"
    )
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=_meta("extra timm.create_model kwargs as YAML/JSON, e.g. '{img_size: 32}'", "model"),
    )
    method: str = _f("adaptformer", "adaptation method", "model", method_names())
    head: str = _f("paper", "task head: paper (BatchNorm1d without affine + Linear, MAE's) or linear", "model", HEADS)
    checkpoint: str | None = _f(
        None, "pre-trained backbone weights: a local file, 'timm' (timm's own), or none", "model"
    )
    checkpoint_source: str = _f("timm", "key layout of --checkpoint", "model", tuple(CONVERTERS))
    bottleneck: int | float | list[int] = field(
        default=64, metadata=_meta("AdaptMLP hidden width d^ (int), ratio of block width, or a list per stage", "model")
    )
    adapter_scale: float | str = _f(0.1, "adapter output scale s, or 'learnable'", "model")
    adapter_dropout: float = _f(0.1, "dropout after the adapter's ReLU (paper: 0.1 images, 0.0 video)", "model")
    adapter_form: str = _f("parallel", "adapter placement: beside the MLP or after it", "model", FORMS)
    adapter_layers: list[int] | None = field(
        default=None, metadata=_meta("block indices that get an adapter, e.g. '[6, 7, 8]' (default: all)", "model")
    )
    vpt_tokens: int = _f(1, "VPT prompt tokens per layer", "model")
    vpt_deep: bool = _f(True, "VPT-deep (prompts at every block) or, with --no-vpt-deep, VPT-shallow", "model")
    drop_path: float = _f(0.0, "stochastic depth rate of the backbone's residual branches", "model")
    # data
    dataset: str = _f("", "dataset kind (required); video kinds: " + ", ".join(VIDEO_DATASETS), "data", DATASET_KINDS)
    data_dir: str | None = _f(None, "folder holding the dataset in its standard layout", "data")
    dataset_options: dict[str, Any] = field(
        default_factory=dict, metadata=_meta("per-kind dataset options as YAML/JSON, e.g. '{num_samples: 64}'", "data")
    )
    verify_checksums: bool = _f(True, "check the md5 of CIFAR/SVHN files against the official release", "data")
    skip_bad_images: bool = _f(
        False, "image kinds with one file per image: drop unreadable ones (counted in log and test.json)", "data"
    )
    skip_bad_videos: bool = _f(
        False, "video kinds with files: probe every video, drop undecodable ones (counted in log and test.json)", "data"
    )
    val_split: int | float = _f(0.1, "validation carved from train: fraction, sample count, or 0 for none", "data")
    split_seed: int = _f(0, "seed of the train/validation split", "data")
    num_workers: int = _f(4, "data loading worker processes per device", "data")
    # augmentation
    crop_scale: list[float] = field(
        default_factory=lambda: list(PAPER_CROP_SCALE),
        metadata=_meta("[min, max] area fraction RandomResizedCrop keeps of a training image", "augmentation"),
    )
    flip: bool | None = _f(
        None, "random horizontal flip of training inputs; none: the paper's (images on, video off)", "augmentation"
    )
    # video
    num_frames: int | None = _f(None, "frames per clip, passed to the video backbone (none: its default, 8)", "video")
    sampling: str | None = _f(
        None, "temporal sampling: segment (TSN; ssv2's default) or dense (strided; the others')", "video", STRATEGIES
    )
    sampling_stride: int | None = _f(None, "frames between sampled frames, dense sampling (none: kind's, 4)", "video")
    test_clips: int = _f(4, "temporal clips per test video; their logits are averaged with the crops'", "video")
    test_crops: int = _f(3, "spatial crops per test clip: 1 (centre) or 3 (along the long side)", "video")
    # optimisation
    epochs: int = _f(100, "training epochs", "optimisation")
    warmup_epochs: float = _f(20.0, "epochs of linear lr warmup from 0 (per iteration), then cosine", "optimisation")
    batch_size: int = _f(128, "samples per device per forward pass (micro-batch)", "optimisation")
    effective_batch: int | None = _f(
        None, "samples per optimizer step over all devices (gradient accumulation)", "optimisation"
    )
    eval_batch_size: int = _f(256, "samples per device per forward pass in evaluation", "optimisation")
    optimizer: str = _f("sgd", "optimizer: sgd (with momentum) or adamw", "optimisation", OPTIMIZERS)
    blr: float = _f(0.1, "base lr; lr = blr * effective_batch / 256", "optimisation")
    lr: float | None = _f(None, "absolute lr (overrides --blr)", "optimisation")
    min_lr: float = _f(0.0, "lr at the end of the cosine schedule", "optimisation")
    momentum: float = _f(0.9, "SGD momentum", "optimisation")
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata=_meta("AdamW betas, e.g. '[0.9, 0.999]'", "optimisation")
    )
    weight_decay: float = _f(
        0.0, "weight decay (never applied to norms, biases, position embeddings, prompts)", "optimisation"
    )
    clip_grad: float | None = _f(None, "clip the gradient norm to this value; none: no clipping", "optimisation")
    precision: str = _f(
        "auto", "autocast dtype; auto: bf16 on CPU and bf16-capable GPUs, else fp16", "optimisation", PRECISIONS
    )
    device: str = _f("auto", "device: auto (cuda if available), cpu, cuda, cuda:1, ...", "optimisation")
    seed: int = _f(0, "seed of initialisation, data order, augmentation and dropout", "optimisation")
    # speed (adaptformer.speed.SpeedConfig; "auto" = the measured choice for the device and precision)
    frozen_dtype: str = _f(AUTO, SPEED_HELP["frozen_dtype"], "speed", (AUTO, *STORAGE_DTYPES))
    attention: str = _f(AUTO, SPEED_HELP["attention"], "speed", (AUTO, *ATTENTIONS))
    frozen_prefix: str = _f(AUTO, SPEED_HELP["frozen_prefix"], "speed", (AUTO, *SWITCHES))
    frozen_backward: str = _f(AUTO, SPEED_HELP["frozen_backward"], "speed", (AUTO, *SWITCHES))
    class_token_tail: str = _f(AUTO, SPEED_HELP["class_token_tail"], "speed", (AUTO, *SWITCHES))
    grad_checkpointing: bool = _f(False, SPEED_HELP["grad_checkpointing"], "speed")
    compile: bool = _f(False, SPEED_HELP["compile"], "speed")
    # output
    output_dir: str = _f("output", "where metrics.jsonl, config.yaml, adapter/ and the training state go", "output")
    select: str = _f("best", "adapter to keep and test: best (validation top-1) or last epoch", "output", SELECTIONS)
    eval_every: int = _f(1, "validate every N epochs (and always after the last)", "output")
    save_every_steps: int = _f(
        0, "also write the training state every N optimizer steps (0: at epoch ends only)", "output"
    )
    log_every: int = _f(20, "optimizer steps between progress log lines when output is not a terminal", "output")
    tensorboard: bool = _f(False, "also write TensorBoard scalars to <output_dir>/tensorboard (if installed)", "output")
    resume: bool = _f(False, "continue from <output_dir>/checkpoint.pt if it exists", "output")
    stop_after_steps: int | None = _f(None, "debug: save the training state and stop after N optimizer steps", "output")
    recipe: str | None = _f(None, "name or file of the recipe this configuration started from (a record)", "output")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    def _validate(self) -> None:
        _choice("method", self.method, method_names())
        _choice("head", self.head, HEADS)
        _choice("checkpoint_source", self.checkpoint_source, tuple(CONVERTERS))
        _choice("adapter_form", self.adapter_form, FORMS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("select", self.select, SELECTIONS)
        if not self.dataset:
            raise ValueError(f"dataset is required (--dataset KIND, one of {sorted(DATASET_KINDS)})")
        _choice("dataset", self.dataset, DATASET_KINDS)
        self._validate_video()
        self.speed()
        if isinstance(self.adapter_scale, str) and self.adapter_scale != "learnable":
            raise ValueError(f"adapter_scale must be a number or 'learnable', got {self.adapter_scale!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "vpt_tokens", "eval_every", "log_every"):
            _at_least(name, getattr(self, name), 1)
        for name in (
            "num_workers",
            "save_every_steps",
            "split_seed",
            "seed",
            "warmup_epochs",
            "min_lr",
            "weight_decay",
        ):
            _at_least(name, getattr(self, name), 0)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        for name in ("blr", "lr", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        probabilities = {
            "momentum": self.momentum,
            "adapter_dropout": self.adapter_dropout,
            "drop_path": self.drop_path,
        }
        probabilities.update({f"betas[{i}]": b for i, b in enumerate(self.betas)})
        for name, value in probabilities.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.effective_batch is not None and (self.effective_batch % self.batch_size or self.effective_batch < 1):
            raise ValueError(
                f"effective_batch ({self.effective_batch}) must be a multiple of batch_size ({self.batch_size})"
            )
        if self.stop_after_steps is not None:
            _at_least("stop_after_steps", self.stop_after_steps, 1)
        v = self.val_split
        if v < 0 or (isinstance(v, float) and not v < 1.0):
            raise ValueError(f"val_split must be 0, a fraction in (0, 1) or a sample count >= 1, got {v!r}")
        if v == 0 and self.select == "best":
            raise ValueError("select 'best' needs a validation split; set val_split > 0 or select 'last'")

    def _validate_video(self) -> None:
        if self.dataset not in VIDEO_DATASETS:
            changed = [name for name, default in VIDEO_FIELDS.items() if getattr(self, name) != default]
            if changed:
                raise ValueError(f"{changed} apply to video datasets only; {self.dataset!r} is an image dataset")
            self.image_augment()  # validates crop_scale
            return
        if self.skip_bad_images:
            raise ValueError(
                f"skip_bad_images applies to image datasets; {self.dataset!r} is a video dataset: use skip_bad_videos "
                "(--skip-bad-videos), which probes every video and drops the undecodable ones (counted)"
            )
        changed = [name for name, default in IMAGE_FIELDS.items() if getattr(self, name) != default]
        if changed:
            raise ValueError(
                f"{changed} apply to image datasets only; {self.dataset!r} is a video dataset (its training crops are "
                "the multi-scale crop of the paper's video recipe)"
            )
        if self.sampling is not None:
            _choice("sampling", self.sampling, STRATEGIES)
        for name in ("num_frames", "sampling_stride"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        _at_least("test_clips", self.test_clips, 1)
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 (centre) or 3 (along the long side), got {self.test_crops}")
        given = self.model_kwargs.get("num_frames")
        if self.num_frames is not None and given is not None and given != self.num_frames:
            raise ValueError(f"num_frames {self.num_frames} contradicts model_kwargs num_frames {given}")

    def speed(self) -> SpeedConfig:
        """The speed options as a :class:`~adaptformer.speed.SpeedConfig` (validated)."""
        return SpeedConfig(**{f.name: getattr(self, f.name) for f in fields(SpeedConfig)})

    def flips(self) -> bool:
        """Whether training inputs are flipped: ``flip``, or the paper's default for the modality (video: off)."""
        return self.flip if self.flip is not None else self.dataset not in VIDEO_DATASETS

    def image_augment(self) -> ImageAugment:
        """The random geometry of training images (image datasets)."""
        return ImageAugment(tuple(self.crop_scale), self.flips())  # type: ignore[arg-type]  # checks the length

    def backbone_kwargs(self) -> dict[str, Any]:
        """The timm kwargs of the backbone: ``model_kwargs``, plus ``num_frames`` when set."""
        extra = {"num_frames": self.num_frames} if self.num_frames is not None else {}
        return {**self.model_kwargs, **extra}

    # -- serialisation ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping of field values; unknown keys are an error that lists the known ones."""
        if not isinstance(data, dict):
            raise ValueError(f"a training configuration must be a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known keys: {known}")
        return cls(**data)

    def to_yaml(self) -> str:
        header = "# adaptformer training configuration: `adaptformer train --config THIS_FILE` repeats the run\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml_mapping(path))

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (validated again)."""
        return replace(self, **overrides)

    def training_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (other than run-control ones) whose values differ: (self, other)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RUN_CONTROL_FIELDS and a[k] != b[k]}


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of configuration keys, got {type(data).__name__}")
    return data


# -- type checking ----------------------------------------------------------------------------------------------


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _at_least(name: str, value: float | int, low: float) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the declared type (ints widen to float), else ValueError naming the field."""
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if origin is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if origin is int and isinstance(value, int):
            return value
        if origin is float and isinstance(value, (int, float)):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is dict and isinstance(value, dict):
            return dict(value)
        if origin is list and isinstance(value, (list, tuple)):
            (item,) = typing.get_args(option)
            try:
                return [_coerce(f"{name}[]", v, item) for v in value]
            except ValueError:
                continue
    raise ValueError(f"{name} must be of type {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _type_name(hint: Any) -> str:
    return " | ".join(getattr(o, "__name__", str(o)).replace("NoneType", "none") for o in _options(hint))


# -- command line ------------------------------------------------------------------------------------------------


def _cli_value(hint: Any) -> typing.Callable[[str], Any]:
    """Parse a flag's text as YAML (so 0.1 is a number, '[1, 2]' a list, 'none' None); str-only fields stay text."""
    options = _options(hint)

    def parse(text: str) -> Any:
        if text.lower() in ("none", "null") and type(None) in options:
            return None
        if set(options) <= {str, type(None)}:  # names and paths stay text, even '123'
            return text
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {e}") from e
        if isinstance(value, str) and float in options:  # YAML 1.1 reads '1e-3' as text
            try:
                return float(value)
            except ValueError:
                pass
        return value

    parse.__name__ = _type_name(hint)
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per TrainConfig field (except ``skip``), grouped, with its help text and default.

    Flags default to ``argparse.SUPPRESS``, so the parsed namespace holds only the flags actually given: those
    override the recipe/config file, which overrides the defaults.
    """
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        group_name = f.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        shown = "none" if default is None else default
        kwargs["help"] = f"{f.metadata['help']} (default: {shown})" if default != "" else f.metadata["help"]
        if hints[f.name] in (bool, bool | None):  # --flag / --no-flag; absent: the file's value or the default
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["type"] = _cli_value(hints[f.name])
            kwargs["metavar"] = _type_name(hints[f.name]).upper().replace(" | ", "|").replace("NONE", "none")
        groups[group_name].add_argument(flag, **kwargs)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields present in ``args`` (the flags the user gave)."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}
