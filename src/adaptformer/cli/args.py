"""The argument types and groups that several commands share: typed values at the edge (an int at least N, a YAML
mapping, a device name), the group of flags that names a trained adapter and the backbone it needs, and the data
section of an adapter's evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..backbones.checkpoints.load import CONVERTERS
from ..data.video import PAPER_TEST_VIEWS
from ..precision import PRECISION_CHOICES
from ..saving import AdapterInfo
from ..validation import check_free_form


def yaml_mapping(text: str) -> dict[str, Any]:
    """An argparse type (``--model-kwargs``, ``prepare --options``): a YAML/JSON mapping (keys checked:
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
    """``--device``: auto or a torch device name (cpu, cuda, cuda:1, ...)."""
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

def extension(text: str) -> str:
    if not text.startswith(".") or len(text) < 2:
        raise argparse.ArgumentTypeError(
            f"expected a file extension with its dot, e.g. .{text.lstrip('.')}; got {text!r}"
        )
    return text

def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]

def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    recorded = "(default: as recorded in the adapter's adapter_config.json)"
    parser.add_argument(
        "--adapter", required=True, action="append",
        help="adapter folder written by training (OUT/adapter); predict takes several (one frozen backbone, every "
        "task's top-k per file)",
    )  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help=f"pre-trained backbone weights {recorded}")
    parser.add_argument(
        "--checkpoint-source", default=None, choices=tuple(CONVERTERS), help=f"key layout of --checkpoint {recorded}"
    )
    parser.add_argument(
        "--model-kwargs", type=yaml_mapping, default=None,
        help=f"timm kwargs, e.g. '{{img_size: 32}}' (YAML: a space after ':') {recorded}",
    )  # fmt: skip
    parser.add_argument(
        "--init-seed", type=at_least(0), default=None,
        help=f"seed of a backbone trained without checkpoint, needed for adaptformer 0.1 folders {recorded}",
    )  # fmt: skip
    parser.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help=f"autocast {recorded}")
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)"
    )

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
    return parse_data_cli(flags, defaults)
