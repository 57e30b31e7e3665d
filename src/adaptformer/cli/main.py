"""The ``adaptformer`` command line: ``train``, ``eval``, ``predict``, ``prepare``, ``recipes``, ``params``, ``demo``,
``study``, ``benchmark``, ``sweep``, ``export``, ``import-peft``, ``serve``, ``inspect``, ``robustness``.

Flags are turned into typed objects here, at the edge, and nothing below sees an argparse namespace. ``train`` and
``params`` read the nested :class:`~adaptformer.engine.config.sections.TrainConfig` through jsonargparse
(:mod:`adaptformer.engine.config.parser`: ``--optim.epochs 5``, ``--model.method vpt``); ``eval`` and ``predict``
live in :mod:`adaptformer.cli.evaluate`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from ..data import ImageDecodeError
from ..data.video import VideoDecodeError
from ..errors import MissingDependencyError, OutputError, UnsupportedModelError
from .benchmark import add_benchmark_command
from .evaluate import add_adapter_commands
from .export import add_export_command
from .inspect import add_inspect_command
from .peft import add_import_peft_command
from .prepare import add_prepare_command
from .robustness import add_robustness_command
from .serve import add_serve_command
from .study import add_study_commands
from .sweep import add_sweep_command
from .train import add_train_commands, config_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer for timm Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    add_train_commands(sub)
    add_adapter_commands(sub)

    add_prepare_command(sub)

    add_study_commands(sub)
    add_benchmark_command(sub)
    add_sweep_command(sub)
    add_export_command(sub)
    add_import_peft_command(sub)
    add_serve_command(sub)
    add_inspect_command(sub)
    add_robustness_command(sub)
    return parser


# What main() reports as "error: ..." with exit code 2: mistakes in the input, named by the library. Anything else, a
# TypeError from a bug say, keeps its traceback.
USER_ERRORS = (
    ValueError,  # the library's file/config errors (CheckpointError, AdapterFileError, ConfigError, ...) among them
    FileNotFoundError,
    FileExistsError,  # a new run or export into a folder that holds something
    OutputError,  # a file or folder that cannot be written: read-only, a full disk, a path below a file
    UnsupportedModelError,
    MissingDependencyError,
    ImageDecodeError,
    VideoDecodeError,
)


def interrupted(command: str | None, argv: list[str], stop: KeyboardInterrupt) -> str:
    """The one line Ctrl-C leaves (instead of a traceback): what stopped (with the run a driver names in ``stop``)
    and, for a command that resumes, the command line that does."""
    what = f"interrupted: adaptformer {command} stopped" + (f" {stop}" if str(stop) else "")
    if command == "train":
        resume = shlex.join(["adaptformer", *_without_run_mode(argv), "--run.resume", "true"])
        return f"{what}; to continue from its last saved state: {resume}"
    if command in ("sweep", "benchmark"):
        return f"{what}; to resume, run the same command again (what finished is kept): adaptformer {shlex.join(argv)}"
    if command in ("study", "demo"):
        return f"{what}; it does not resume: run the same command again to start it over"
    return what


def _without_run_mode(argv: list[str]) -> list[str]:
    """``argv`` without its ``--run.resume`` / ``--run.overwrite`` flags and their values."""
    flags = ("--run.resume", "--run.overwrite")
    kept, value_next = [], False
    for arg in argv:
        if not value_next and arg not in flags and not arg.startswith(tuple(f"{f}=" for f in flags)):
            kept.append(arg)
        value_next = arg in flags and not value_next
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    from ..engine.loop import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:1])
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ("train", "params"):  # nested configuration flags: read by jsonargparse, not argparse
        args = config_command(command, argv[argv.index(command) + 1 :])
        args.verbose = verbose
    else:
        after_dashes: list[str] = []
        if command in ("benchmark", "sweep") and "--" in argv:  # train flags for every stage / point
            argv, after_dashes = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        args.train_flags = after_dashes
        if unknown and command not in ("eval", "inspect", "robustness"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.data_flags = unknown  # eval's, inspect's, robustness' --data.* flags: the data section's (jsonargparse)
    level = logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the other processes only warn
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: one line, not the traceback of wherever it landed
        if int(os.environ.get("RANK", "0")) == 0:
            print(interrupted(command, given, stop), file=sys.stderr)
        return 130  # the shell's code for a process stopped by SIGINT
