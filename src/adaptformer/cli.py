"""The ``adaptformer`` command line: ``train``, ``eval``, ``predict``, ``prepare``, ``recipes``, ``params``, ``demo``,
``study``, ``benchmark``, ``sweep``, ``export``, ``serve``, ``inspect``.

Flags are turned into typed objects here, at the edge, and nothing below sees an argparse namespace. ``train`` and
``params`` read the nested :class:`~adaptformer.engine.config.TrainConfig` through jsonargparse
(:mod:`adaptformer.engine.config_parser`: ``--optim.epochs 5``, ``--model.method vpt``); ``eval`` and ``predict``
live in :mod:`adaptformer.cli_adapter`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli_adapter import add_adapter_commands, at_least
from .cli_benchmark import add_benchmark_command
from .cli_export import add_export_command
from .cli_inspect import add_inspect_command
from .cli_serve import add_serve_command
from .cli_sweep import add_sweep_command
from .data import ImageDecodeError
from .data.video import VideoDecodeError
from .errors import MissingDependencyError, UnsupportedModelError


def _cmd_demo(args: argparse.Namespace) -> int:
    from .study import run_demo  # research code, kept out of the library: imported only by this command

    run_demo(output_dir=args.output_dir, epochs=args.epochs, jobs=args.jobs, quick=args.quick)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import StudySettings, format_table, run_study

    settings = StudySettings(
        tasks=tuple(args.tasks), methods=tuple(args.methods), seeds=tuple(int(s) for s in args.seeds),
        epochs=args.epochs, output_dir=args.output_dir, runs_dir=args.runs_dir, quick=args.quick,
        pretrained=not args.random_init, jobs=args.jobs,
    )  # fmt: skip
    report = run_study(settings)
    print(format_table(report.rows, settings.tasks))
    print(f"{len(report.runs)} runs in {report.seconds / 60:.1f} min; " + ", ".join(map(str, report.files.values())))
    return 0


def _config_layers(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The recipe and the config file given, as layers under the flags (later ones win)."""
    from .engine.config_data import read_yaml_mapping
    from .engine.config_parser import ConfigError
    from .recipes import load_recipe

    layers = []
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
        layers.append((f"recipe {args.recipe}", recipe))
        if Path(args.recipe).is_file():  # a shipped recipe records its name itself (recipes.recipe_config)
            layers.append(("--recipe", {"run": {"recipe": args.recipe}}))
    if args.config is not None:
        if not Path(args.config).is_file():
            raise ConfigError(f"--config {args.config}: no such file")
        layers.append((args.config, read_yaml_mapping(args.config)))
    return layers


def _cmd_params(args: argparse.Namespace) -> int:
    import torch

    from .engine.config_parser import parse_cli
    from .factory import require_checkpoint
    from .model import parameter_report
    from .train import build_model

    # the model `train` would build from the same flags, recipes and files (the dataset does not matter here); shapes
    # only: counting needs no weights, so no checkpoint is read and nothing is allocated
    cfg = parse_cli(["--data.dataset", "synthetic", *args.flags], _config_layers(args))
    require_checkpoint(cfg.model.checkpoint)
    cfg = replace(cfg, model=replace(cfg.model, checkpoint=None))
    with torch.device("meta"):
        model = build_model(cfg, args.num_classes)
    print(parameter_report(model))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.config_parser import parse_cli
    from .engine.run_folder import run_config_folder
    from .train import train

    layers = _config_layers(args)
    cfg = parse_cli(args.flags, layers)
    folder = run_config_folder(args.config) if cfg.run.resume else None
    if folder is not None:  # continue the run whose folder holds the config (a copied folder: the copy); flags win
        recorded = cfg.run.output_dir
        cfg = parse_cli(args.flags, [*layers, (f"the folder of {args.config}", {"run": {"output_dir": str(folder)}})])
        if Path(cfg.run.output_dir).resolve() != Path(recorded).resolve():
            logging.getLogger(__name__).info(
                "resuming the run in %s, the folder of --config %s, which records run.output_dir %s",
                cfg.run.output_dir, args.config, recorded,
            )  # fmt: skip
    result = train(cfg)
    if result.is_main:
        summary = {"output_dir": str(result.output_dir), "stopped_early": result.stopped_early, "test": result.test}
        print(json.dumps(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import yaml

    from .data.export import export_dataset
    from .validation import check_free_form

    options = yaml.safe_load(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a YAML mapping such as '{{num_samples: 256}}', got {args.options!r}")
    check_free_form("--options", options)  # {num_samples:8}: YAML's missing space after ':'
    print(json.dumps(export_dataset(args.release, args.out, options, num_frames=args.num_frames)))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.video import prepare_hmdb51, prepare_ssv2

    common = {"video_dir": args.video_dir, "skip_missing": args.skip_missing,
              "relative_to": args.out if args.relative else None}  # fmt: skip
    if args.release == "ssv2":
        prepared = prepare_ssv2(args.root, args.out, video_ext=args.video_ext, **common)
    else:
        prepared = prepare_hmdb51(args.root, args.out, split=args.split, split_dir=args.split_dir, **common)
    lists = {name: str(path) for name, path in prepared.lists.items()}
    print(json.dumps({"dataset": args.release, "data_dir": str(Path(args.out)), "lists": lists,
                      "classes": len(prepared.classes), "videos": prepared.counts}))  # fmt: skip
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import recipe_names, recipe_summary, recipe_text

    if args.show:
        print(recipe_text(args.show), end="")
        return 0
    for name in recipe_names():
        print(f"{name:<24} {recipe_summary(name)}")
    return 0


def _add_prepare_parser(sub: Any) -> None:
    prepare = sub.add_parser(
        "prepare", help="turn an official SSv2/HMDB51 release into list files, or write a built-in dataset as files",
        description="ssv2|hmdb51: write VideoMAE list files (train.txt, test.txt, classes.txt) for --data.dataset "
        "ssv2|hmdb51 --data.data_dir OUT; test.txt is the split the paper reports (SSv2: the official validation set; "
        "HMDB51: the test half of the chosen split). digits|synthetic|shapes|synthetic-video: write the built-in "
        "dataset as image or video files in the imagefolder/videofolder layout, to try the file pipeline offline.",
    )  # fmt: skip
    releases = prepare.add_subparsers(dest="release", required=True)
    ssv2 = releases.add_parser("ssv2", help="Something-Something v2: labels/train/validation json + videos")
    hmdb = releases.add_parser("hmdb51", help="HMDB51: testTrainMulti_7030_splits/ + class folders of .avi")
    for parser in (ssv2, hmdb):
        parser.add_argument("--root", required=True, help="the release as downloaded (the error shows its layout)")
        parser.add_argument("--out", required=True, help="folder for the list files: pass it as --data.data_dir")
        parser.add_argument(
            "--video-dir", type=_folder, default=None, help="folder of the videos (default: found under --root)"
        )
        parser.add_argument("--skip-missing", action="store_true", help="leave out listed videos that do not exist")
        parser.add_argument("--relative", action="store_true", help="write paths relative to --out (default: absolute)")
        parser.set_defaults(func=_cmd_prepare)
    ssv2.add_argument(
        "--video-ext", type=_extension, default=".webm",
        help="video file extension, e.g. .mp4 for re-encoded copies (default: .webm)",
    )  # fmt: skip
    hmdb.add_argument("--split", type=int, default=1, choices=[1, 2, 3], help="official split (paper: 1; default: 1)")
    hmdb.add_argument(
        "--split-dir", type=_folder, default=None, help="folder of the *_test_split<N>.txt files (default: found)"
    )
    from .data.export import EXPORTABLE, MULTI_LABEL

    for kind in EXPORTABLE:
        video = kind == "synthetic-video"
        layout = (
            "OUT/{train,test}/<class>/<n>.mp4 (--data.dataset videofolder)" if video
            else "OUT/images/, classes.txt, {train,test}.txt (--data.dataset multilabel-list)" if kind in MULTI_LABEL
            else "OUT/{train,test}/<class>/<n>.png (--data.dataset imagefolder)"
        )  # fmt: skip
        built_in = releases.add_parser(kind, help=f"write the built-in {kind} dataset as files: {layout}")
        built_in.add_argument("--out", required=True, help="a new (or empty) folder: pass it as --data.data_dir")
        built_in.add_argument("--options", default=None, help="the kind's --data.options as YAML, e.g. '{seed: 1}'")
        if video:
            built_in.add_argument("--num-frames", type=at_least(2), default=16, help="frames per clip (default: 16)")
        built_in.set_defaults(func=_cmd_export, num_frames=16)


CONFIG_HELP = (
    "Flags are the fields of the nested configuration (model, data, optim, speed, run): --optim.epochs 5, "
    "--model.method vpt --model.method.num_tokens 4, ... They override --config, which overrides --recipe, which "
    "overrides the defaults. `adaptformer train --help` lists every flag; --model.method.help NAME those of a method."
)
DESCRIPTIONS = {
    "train": "Train. Writes OUT/config.yaml, OUT/metrics.jsonl, OUT/curves.png, OUT/adapter/, OUT/checkpoint.pt and "
    "OUT/test.json (OUT = --run.output_dir: missing or empty, unless --run.resume true continues the run there or "
    "--run.overwrite true replaces it). Multi-process: torchrun --nproc_per_node N -m adaptformer.cli train ... "
    + CONFIG_HELP,
    "params": "The trainable-parameter report of the model section of the given flags/recipe/config, e.g. "
    "adaptformer params --model.method adaptformer --model.method.bottleneck 64 --num-classes 100. The file "
    "--model.checkpoint names must exist, but is not read: counting needs only the shapes. " + CONFIG_HELP,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer for timm Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="fine-tune a backbone with a method on a dataset", description=DESCRIPTIONS["train"],
        add_help=False,
    )  # fmt: skip
    _add_layer_arguments(train)
    train.set_defaults(func=_cmd_train)

    add_adapter_commands(sub)

    _add_prepare_parser(sub)

    recipes = sub.add_parser(
        "recipes", help="list the shipped recipes (paper Tables 1, 2, 6, 7, ablations; VTAB, FGVC)"
    )
    recipes.add_argument("--show", default=None, metavar="NAME", help="print one recipe")
    recipes.set_defaults(func=_cmd_recipes)

    params = sub.add_parser(
        "params",
        help="print the trainable-parameter report of the model that the same flags would train",
        description=DESCRIPTIONS["params"],
        add_help=False,
    )
    _add_layer_arguments(params)
    params.set_defaults(func=_cmd_params)

    demo = sub.add_parser(
        "demo", help="the main job: AdaptFormer vs linear probe vs full fine-tuning on digits (a few CPU minutes)"
    )
    demo.add_argument("--output-dir", default="runs/demo", help="runs, table and plot go here (default: runs/demo)")
    demo.add_argument("--epochs", type=at_least(1), default=None, help="training epochs (default: the study's)")
    demo.add_argument("--jobs", type=at_least(1), default=2, help="runs side by side, one CPU thread each (default: 2)")
    demo.add_argument("--quick", action="store_true", help="a few-second setting that only checks the pipeline")
    demo.set_defaults(func=_cmd_demo)
    _add_study_parser(sub)
    add_benchmark_command(sub)
    add_sweep_command(sub)
    add_export_command(sub)
    add_serve_command(sub)
    add_inspect_command(sub)
    return parser


def _add_study_parser(sub: Any) -> None:
    from .study import METHODS, StudySettings, default_tasks

    defaults = StudySettings()
    study = sub.add_parser(
        "study", help="miniature reproduction: every method x task x seed; writes a table and the paper's Figure 1",
        description="Train linear, VPT-deep 1/4/16/64, AdaptFormer 1/4/16/64, LoRA 2/8/32, Adapter+ 4/16/64 and full "
        "fine-tuning on real digits and on synthetic motion video (image backbone inflated to video), several seeds, "
        "through `adaptformer train`'s engine; optionally multi-label digits (mAP) and the paper's ablations "
        "(adaptformer-64-*: blocks, form, scale). Writes results.json, results.md, accuracy_vs_params.png and, for "
        "AdaptFormer adapters on image tasks, adapters_inside.png to --output-dir.",
    )  # fmt: skip
    study.add_argument("--tasks", type=_comma_list, default=list(defaults.tasks),
                       help=f"comma-separated, from {','.join(default_tasks())} (default: "
                       f"{','.join(defaults.tasks)})")  # fmt: skip
    study.add_argument("--methods", type=_comma_list, default=list(defaults.methods),
                       help=f"comma-separated, from {','.join(METHODS)} (default: all but the adaptformer-64-* "
                       "ablations)")  # fmt: skip
    study.add_argument("--seeds", type=_comma_list, default=[str(s) for s in defaults.seeds],
                       help="comma-separated training seeds (default: 0,1,2)")  # fmt: skip
    study.add_argument(
        "--epochs", type=at_least(1), default=None, help="training epochs of every run (default: per task)"
    )
    study.add_argument("--output-dir", default=defaults.output_dir, help="report folder (default: reports/study)")
    study.add_argument("--runs-dir", default=defaults.runs_dir, help="training runs (default: runs/study)")
    study.add_argument(
        "--jobs", type=at_least(1), default=defaults.jobs, help="runs side by side, 1 thread each (default: 2)"
    )
    study.add_argument("--quick", action="store_true", help="tiny data, 1 epoch: checks the pipeline, not the claims")
    study.add_argument("--random-init", action="store_true", help="randomly initialised backbones (a control)")
    study.set_defaults(func=_cmd_study)


def _add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` / ``params`` besides the configuration flags (which jsonargparse reads; see
    :func:`_config_command`); declared here for the help text."""
    recipe = "a shipped recipe (see `adaptformer recipes`) or a YAML file: the first layer"
    parser.add_argument("--recipe", default=None, metavar="NAME|FILE", help=recipe)
    config = "a YAML configuration, e.g. a run's OUT/config.yaml, over the recipe"
    parser.add_argument("--config", default=None, metavar="FILE", help=config)


def _config_command(command: str, argv: list[str]) -> argparse.Namespace:
    """``train`` / ``params``: their own options (``--recipe``, ``--config``, ``--num-classes``) taken out of
    ``argv``, the rest left in ``flags`` for jsonargparse; ``-h`` prints both parts of the help and exits."""
    from .engine.config_parser import train_parser

    parser = argparse.ArgumentParser(prog=f"adaptformer {command}", description=DESCRIPTIONS[command], add_help=False)
    _add_layer_arguments(parser)
    if command == "params":
        parser.add_argument(
            "--num-classes", type=at_least(1), default=100, help="classes of the task head (default: 100)"
        )
    args, flags = parser.parse_known_args(argv)
    if any(flag in ("-h", "--help") for flag in flags):
        parser.print_help()
        print("\nconfiguration flags (the same keys nest in --recipe and --config YAML files):\n")
        train_parser(f"adaptformer {command}").print_help()
        raise SystemExit(0)
    args.flags = flags
    args.func = _cmd_train if command == "train" else _cmd_params
    return args


def _folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def _extension(text: str) -> str:
    if not text.startswith(".") or len(text) < 2:
        raise argparse.ArgumentTypeError(
            f"expected a file extension with its dot, e.g. .{text.lstrip('.')}; got {text!r}"
        )
    return text


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# What main() reports as "error: ..." with exit code 2: mistakes in the input, named by the library. Anything else, a
# TypeError from a bug say, keeps its traceback.
USER_ERRORS = (
    ValueError,  # the library's file/config errors (CheckpointError, AdapterFileError, ConfigError, ...) among them
    FileNotFoundError,
    FileExistsError,  # a new run or export into a folder that holds something
    UnsupportedModelError,
    MissingDependencyError,
    ImageDecodeError,
    VideoDecodeError,
)


def main(argv: Sequence[str] | None = None) -> int:
    from .engine.loop import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:1])
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ("train", "params"):  # nested configuration flags: read by jsonargparse, not argparse
        args = _config_command(command, argv[argv.index(command) + 1 :])
        args.verbose = verbose
    else:
        after_dashes: list[str] = []
        if command in ("benchmark", "sweep") and "--" in argv:  # train flags for every stage / point
            argv, after_dashes = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        args.train_flags = after_dashes
        if unknown and command not in ("eval", "inspect"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.data_flags = unknown  # eval's and inspect's --data.* flags: the data section's, read by jsonargparse
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


if __name__ == "__main__":
    sys.exit(main())
