"""The argument types and groups that several commands share: typed values at the edge (an int at least N, a YAML
mapping, a device name), the group of flags that names a trained adapter and the backbone it needs, and the data
section of an adapter's evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..backbones.checkpoints.load import CONVERTERS
from ..data.video import PAPER_TEST_VIEWS
from ..precision import PRECISION_CHOICES
from ..saving import AdapterInfo
from ..validation import check_free_form


def yaml_mapping(text: str) -> dict[str, Any]:
    """An argparse type (``--model.kwargs``, ``prepare --options``): a YAML/JSON mapping (keys checked:
    ``{img_size:32}`` lacks YAML's space after ':')."""
    try:
        value = yaml.safe_load(text)
        check_free_form("the mapping", value)
    except (yaml.YAMLError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e
    return value


def at_least(low: int, what: str | None = None) -> Any:
    """An argparse type: an int >= ``low`` (``what`` names it in the error, default "an integer >= low")."""
    what = what or f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def device_name(text: str) -> str:
    """``--run.device``: auto or a torch device name (cpu, cuda, cuda:1, ...)."""
    from ..engine.distributed import check_device_name

    try:
        return check_device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def probability(text: str) -> float:
    """``--threshold``: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value:g}")
    return value


def folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def folder_path(text: str) -> Path:
    """A folder that exists, as a Path."""
    return Path(folder(text))


def extension(text: str) -> str:
    if not text.startswith(".") or len(text) < 2:
        raise argparse.ArgumentTypeError(
            f"expected a file extension with its dot, e.g. .{text.lstrip('.')}; got {text!r}"
        )
    return text


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class Spelled(argparse.Action):
    """Store a flag's value, remembering which spelling gave it: a 0.2 spelling (``renamed_to`` set) prints one
    warning line naming the new flag, and two spellings of one setting with different values are an error naming
    both (the same value twice is harmless: a script half-way through its update)."""

    def __init__(self, option_strings: list[str], dest: str, renamed_to: str | None = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.renamed_to = renamed_to

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        flag = option_string or self.dest
        given: dict[str, tuple[str, Any]] = vars(namespace).setdefault("given_spellings", {})
        if self.renamed_to is not None and not any(f == flag for f, _ in given.values()):
            print(f"warning: {flag} is deprecated since 0.3; use {self.renamed_to}", file=sys.stderr)
        earlier = given.get(self.dest)
        if earlier is not None and earlier[0] != flag and earlier[1] != values:
            new = self.renamed_to or flag
            parser.error(f"{earlier[0]} {earlier[1]!r} and {flag} {values!r} set the same thing; give only {new}")
        given[self.dest] = (flag, values)
        setattr(namespace, self.dest, values)


@dataclass(frozen=True)
class BackboneFlag:
    """A setting of the backbone group: its name (train's nested one), its 0.2 spelling, the namespace attribute
    it fills, and argparse's options for it."""

    name: str
    old: str
    dest: str
    options: dict[str, Any]


RECORDED = "(default: as recorded in the adapter's adapter_config.json)"
BACKBONE_FLAGS = (
    BackboneFlag("--model.backbone", "--model", "backbone", {
        "metavar": "NAME", "help": "backbone name, checked against the adapter's (default: not checked)"}),
    BackboneFlag("--model.checkpoint", "--checkpoint", "checkpoint", {
        "metavar": "PATH", "help": f"pre-trained backbone weights {RECORDED}"}),
    BackboneFlag("--model.checkpoint_source", "--checkpoint-source", "checkpoint_source", {
        "choices": tuple(CONVERTERS), "help": f"key layout of --model.checkpoint {RECORDED}"}),
    BackboneFlag("--model.kwargs", "--model-kwargs", "model_kwargs", {
        "type": yaml_mapping, "metavar": "YAML",
        "help": f"timm kwargs, e.g. '{{img_size: 32}}' (YAML: a space after ':') {RECORDED}"}),
    BackboneFlag("--model.init_seed", "--init-seed", "init_seed", {
        "type": at_least(0), "metavar": "N",
        "help": f"seed of a backbone trained without checkpoint (adaptformer 0.1 folders) {RECORDED}"}),
)  # fmt: skip
DEVICE_FLAG = BackboneFlag("--run.device", "--device", "device", {
    "type": device_name, "default": "auto", "metavar": "DEVICE", "help": "auto, cpu, cuda, cuda:1, ... (default: auto)"
})  # fmt: skip
RENAMED = {f.old: f.name for f in (*BACKBONE_FLAGS, DEVICE_FLAG)}  # 0.2 spelling -> the flag that replaces it


def add_backbone_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """The backbone group of every command that rebuilds an adapter's backbone (eval, predict, inspect, export,
    serve): train's names for the same settings, and ``--run.device`` where the command runs the model. Each 0.2
    spelling fills the same attribute (hidden from the help; a warning when given) until 0.4."""
    group = parser.add_argument_group(
        "backbone", "override single parts of how the adapter's backbone is rebuilt; the names are those of "
        f"`adaptformer train`. The 0.2 spellings ({', '.join(RENAMED)}) still work until 0.4, with a warning.",
    )  # fmt: skip
    for flag in (*BACKBONE_FLAGS, *((DEVICE_FLAG,) if device else ())):
        options = {"default": None, **flag.options}
        group.add_argument(flag.name, dest=flag.dest, action=Spelled, **options)
        hidden = {**options, "help": argparse.SUPPRESS}
        group.add_argument(flag.old, dest=flag.dest, action=Spelled, renamed_to=flag.name, **hidden)


class NamedAdapter(argparse.Action):
    """``--adapter DIR`` or ``--adapter NAME=DIR``: the folder goes to ``adapter``, the task name (None: named after
    its run folder) to ``adapter_names``, in the same order. A value is NAME=DIR when the part before its first
    ``=`` is a task name (no '/', no '.') and the whole value is not itself an existing folder."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        text = str(values)
        name, _, directory = text.partition("=")
        named = not Path(text).is_dir() and re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None and "=" in text
        if named and not directory:
            parser.error(f"{option_string} {text!r}: expected DIR or NAME=DIR, got NAME= without a folder")
        folders = [*(getattr(namespace, self.dest, None) or []), directory if named else text]
        setattr(namespace, self.dest, folders)
        names = [*(getattr(namespace, "adapter_names", None) or []), name if named else None]
        namespace.adapter_names = names


def adapter_names(args: argparse.Namespace) -> list[str] | None:
    """The task names of ``--adapter`` (a NAME=DIR's NAME, else the run folder's name); None when none is given by
    NAME=DIR (each is named after its run folder)."""
    from ..inference.multitask import default_task_name

    given = getattr(args, "adapter_names", None) or []
    if not any(given):
        return None
    return [n if n is not None else default_task_name(Path(d)) for n, d in zip(given, args.adapter, strict=True)]


def add_adapter_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--adapter`` (one or several, each DIR or NAME=DIR), the backbone group and ``--precision``: eval, predict and
    serve."""
    parser.add_argument(
        "--adapter", required=required, action=NamedAdapter, metavar="[NAME=]DIR",
        help="adapter folder written by training (OUT/adapter); predict and serve take several (one frozen backbone), "
        "each a task named after its run folder or NAME=DIR",
    )  # fmt: skip
    parser.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help=f"autocast {RECORDED}")
    add_backbone_arguments(parser)


def add_worker_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--worker`` and ``--stale-after``: benchmark and sweep, whose workers share OUT and claim each ``unit``
    ("task", "point") atomically."""
    parser.add_argument("--worker", default=None, help=f"this worker's name in {unit} claims (default: host:pid)")
    parser.add_argument(
        "--stale-after", type=at_least(1), default=10,
        help=f"minutes without heartbeat after which a claimed {unit} counts as abandoned and is taken over "
        "(default: 10)",
    )  # fmt: skip


def trained_model(args: argparse.Namespace, adapter: str, info: AdapterInfo | None = None) -> tuple[Any, AdapterInfo]:
    """The trained model of ``adapter`` (eval mode, CPU), its backbone rebuilt as recorded with the backbone group's
    overrides (:func:`adaptformer.inference.evaluate.load_trained_model`)."""
    from ..inference.evaluate import load_trained_model

    return load_trained_model(
        adapter, checkpoint=args.checkpoint, checkpoint_source=args.checkpoint_source, model_kwargs=args.model_kwargs,
        model_name=args.backbone, init_seed=args.init_seed, info=info,
    )  # fmt: skip


def adapter_data(args: argparse.Namespace, info: AdapterInfo) -> Any:
    """The data to evaluate (or inspect) on: the ``--data.*`` flags over what training recorded (for the same dataset
    kind)."""
    from ..engine.config.parser import parse_data_cli

    record = info.training
    flags = list(args.data_flags)
    kind = next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f == "--data.dataset"), None)
    kind = kind or next((f.split("=", 1)[1] for f in flags if f.startswith("--data.dataset=")), None)
    kind = kind or (record.dataset if record else None)
    if kind is None:
        raise ValueError("--data.dataset is required (the adapter folder does not record one)")
    defaults: dict[str, Any] = {"dataset": kind, "num_workers": 0}
    if record is not None and record.dataset == kind:  # the recorded options and views belong to that kind
        defaults["options"] = record.dataset_options
        if record.video:
            v = record.video  # VideoSettings: the data section's names, and the flip of training clips
            defaults["video"] = {
                "sampling": v.get("sampling"), "sampling_stride": v.get("sampling_stride"),
                "test_clips": v.get("test_clips", PAPER_TEST_VIEWS[0]),
                "test_crops": v.get("test_crops", PAPER_TEST_VIEWS[1]),
            }  # fmt: skip
        if record.segmentation:
            defaults["segmentation"] = record.segmentation
    return parse_data_cli(flags, defaults)


def add_executor_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--executor``, ``--executor-config`` and one flag per field of each scheduler's section (``--slurm.partition``,
    ``--ray.address``, ...; their help is the dataclass field's): benchmark and sweep, whose ``unit`` s ("task",
    "point") run on the chosen executor."""
    from ..suite.executors.settings import EXECUTORS, SECTIONS

    group = parser.add_argument_group(
        "executor", f"where each {unit} runs: local (this process), slurm (submitit jobs), ray (Ray tasks); the flags "
        "of a section override --executor-config's",
    )  # fmt: skip
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help=f"what runs each {unit} (default: local; slurm needs adaptformer[slurm], ray "
                       "adaptformer[ray])")  # fmt: skip
    group.add_argument("--executor-config", metavar="YAML", default=None,
                       help="a YAML file with the sections slurm: and ray: (the keys of their flags, e.g. "
                       "'slurm: {partition: gpu, gpus_per_node: 1}')")  # fmt: skip
    for section, settings in SECTIONS.items():
        hints = typing.get_type_hints(settings)
        for f in dataclasses.fields(settings):
            kind = next(t for t in (int, float, str) if t in typing.get_args(hints[f.name]) or t is hints[f.name])
            group.add_argument(f"--{section}.{f.name}", dest=f"{section}__{f.name}", type=kind, default=None,
                               metavar=kind.__name__.upper(), help=f.metadata["help"])  # fmt: skip


def executor_settings(args: argparse.Namespace) -> Any:
    """The :class:`~adaptformer.suite.executors.ExecutorSettings` of ``add_executor_arguments``' flags."""
    from ..suite.executors.settings import SECTIONS, load_executor_settings

    flags = {section: {k.split("__", 1)[1]: v for k, v in vars(args).items() if k.startswith(f"{section}__")}
             for section in SECTIONS}  # fmt: skip
    config = Path(args.executor_config) if args.executor_config else None
    return load_executor_settings(args.executor, config, flags)
