"""``adaptformer train``, ``params`` and ``recipes``: the commands that read the nested training configuration
(:class:`~adaptformer.engine.config.sections.TrainConfig`) through jsonargparse (``--optim.epochs 5``,
``--model.method vpt``), layered over a recipe and a config file."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from .args import at_least

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


def _config_layers(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The recipe and the config file given, as layers under the flags (later ones win)."""
    from ..engine.config.layers import read_yaml_mapping
    from ..engine.config.parser import ConfigError
    from ..recipes import load_recipe

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

    from ..engine.config.parser import parse_cli
    from ..engine.train import build_model
    from ..factory import require_checkpoint
    from ..model import parameter_report

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
    from ..engine.config.parser import parse_cli
    from ..engine.run_folder import run_config_folder
    from ..engine.train import train

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


def _cmd_recipes(args: argparse.Namespace) -> int:
    from ..recipes import recipe_names, recipe_summary, recipe_text

    if args.show:
        print(recipe_text(args.show), end="")
        return 0
    for name in recipe_names():
        print(f"{name:<24} {recipe_summary(name)}")
    return 0


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` / ``params`` besides the configuration flags (which jsonargparse reads; see
    :func:`config_command`); declared here for the help text."""
    recipe = "a shipped recipe (see `adaptformer recipes`) or a YAML file: the first layer"
    parser.add_argument("--recipe", default=None, metavar="NAME|FILE", help=recipe)
    config = "a YAML configuration, e.g. a run's OUT/config.yaml, over the recipe"
    parser.add_argument("--config", default=None, metavar="FILE", help=config)


def config_command(command: str, argv: list[str]) -> argparse.Namespace:
    """``train`` / ``params``: their own options (``--recipe``, ``--config``, ``--num-classes``) taken out of
    ``argv``, the rest left in ``flags`` for jsonargparse; ``-h`` prints both parts of the help and exits."""
    from ..engine.config.parser import train_parser

    parser = argparse.ArgumentParser(prog=f"adaptformer {command}", description=DESCRIPTIONS[command], add_help=False)
    add_layer_arguments(parser)
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


def add_train_commands(sub: Any) -> None:
    """The ``train``, ``params`` and ``recipes`` subcommands (the first two for their help: :func:`config_command`
    parses them)."""
    train = sub.add_parser(
        "train", help="fine-tune a backbone with a method on a dataset", description=DESCRIPTIONS["train"],
        add_help=False,
    )  # fmt: skip
    add_layer_arguments(train)
    train.set_defaults(func=_cmd_train)

    params = sub.add_parser(
        "params",
        help="print the trainable-parameter report of the model that the same flags would train",
        description=DESCRIPTIONS["params"],
        add_help=False,
    )
    add_layer_arguments(params)
    params.set_defaults(func=_cmd_params)

    recipes = sub.add_parser(
        "recipes", help="list the shipped recipes (paper Tables 1, 2, 6, 7, ablations; VTAB, FGVC; segmentation)"
    )
    recipes.add_argument("--show", default=None, metavar="NAME", help="print one recipe")
    recipes.set_defaults(func=_cmd_recipes)
