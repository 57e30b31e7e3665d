"""The ``adaptformer`` command line: ``train``, ``eval``, ``predict``, ``recipes``, ``params``, ``demo``.

Flags are turned into typed objects here, at the edge (``TrainConfig`` for training), and nothing below this module
sees an argparse namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from .data import IMAGE_DATASETS, ImageDecodeError

CHOICE_METHODS = ["adaptformer", "linear", "full", "vpt"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(output_dir=args.output_dir, steps=args.steps)
    return 0 if result["reloaded_identical"] else 1


def _cmd_params(args: argparse.Namespace) -> int:
    from .adapter import AdaptFormerConfig
    from .factory import create_model
    from .methods import parameter_report
    from .prompts import VPTConfig

    adapter = AdaptFormerConfig(bottleneck=args.bottleneck) if args.method == "adaptformer" else None
    vpt = VPTConfig(num_tokens=args.vpt_tokens, deep=not args.vpt_shallow) if args.method == "vpt" else None
    model = create_model(args.model, args.num_classes, method=args.method, adapter=adapter, vpt=vpt, head=args.head)
    print(parameter_report(model))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import TrainConfig, config_overrides
    from .recipes import load_recipe
    from .train import train

    values: dict[str, Any] = {}
    if args.recipe is not None:
        values = load_recipe(args.recipe)
        values["recipe"] = args.recipe
    cfg = TrainConfig.from_dict({**values, **config_overrides(args)})
    result = train(cfg)
    if result.is_main:
        summary = {"output_dir": str(result.output_dir), "stopped_early": result.stopped_early, "test": result.test}
        print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.distributed import init_distributed, shutdown
    from .engine.inference import evaluate_split, load_trained_model

    ctx = init_distributed(args.device)
    try:
        model, task = load_trained_model(
            args.adapter, args.checkpoint, args.checkpoint_source, args.model_kwargs, model_name=args.model
        )
        dataset = args.dataset or (task.dataset if task else None)
        if dataset is None:
            raise ValueError("--dataset is required (the adapter folder does not record one)")
        metrics = evaluate_split(
            model, task, dataset, args.data_dir, args.split, ctx, batch_size=args.batch_size,
            precision=args.precision, num_workers=args.num_workers, options=args.dataset_options,
            verify_checksums=args.verify_checksums, skip_bad_images=args.skip_bad_images,
        )  # fmt: skip
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine.inference import check_classes, load_trained_model, predict_images, read_class_names

    model, task = load_trained_model(args.adapter, args.checkpoint, args.checkpoint_source, args.model_kwargs)
    if args.class_names is not None:
        classes = read_class_names(args.class_names)
    elif task is not None:
        classes = task.classes
    else:
        classes = [str(i) for i in range(model.num_classes)]
    check_classes(model.num_classes, classes, None, "the class-name list")
    precision = args.precision or (task.precision if task is not None else "auto")
    results = predict_images(model, args.images, args.top_k, precision, args.device)
    for path, top in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": classes[i], "index": i, "prob": p} for i, p in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{classes[i]} {p:.3f}" for i, p in top))
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import recipe_names, recipe_path, recipe_summary

    if args.show:
        print(recipe_path(args.show).read_text(), end="")
        return 0
    for name in recipe_names():
        print(f"{name:<24} {recipe_summary(name)}")
    return 0


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {e}") from e


def _add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter folder written by training (OUT/adapter)")
    parser.add_argument(
        "--checkpoint", default=None, help="pre-trained backbone weights (default: the one recorded in task.json)"
    )
    parser.add_argument(
        "--checkpoint-source", default=None, help="key layout of --checkpoint (default: recorded in task.json)"
    )
    parser.add_argument(
        "--model-kwargs", type=_yaml_value, default=None, help="timm kwargs (default: recorded in task.json)"
    )
    parser.add_argument(
        "--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"], help="autocast (default: as trained)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    from .engine.config import add_config_arguments

    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer for timm Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="fine-tune a backbone with a method on a dataset",
        description="Train; flags override the recipe/config file, which overrides the defaults. Writes "
        "OUT/config.yaml, OUT/metrics.jsonl, OUT/adapter/, OUT/checkpoint.pt and OUT/test.json. "
        "Multi-process: torchrun --nproc_per_node N -m adaptformer.cli train ...",
    )
    train.add_argument(
        "--recipe", "--config", dest="recipe", default=None, metavar="NAME|FILE",
        help="a shipped recipe name (see `adaptformer recipes`) or a YAML config file, e.g. OUT/config.yaml",
    )  # fmt: skip
    add_config_arguments(train, skip=("recipe",))
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a trained adapter on a dataset split; prints one JSON line")
    _add_adapter_arguments(evaluate)
    evaluate.add_argument("--model", default=None, help="backbone name; checked against the adapter's")
    evaluate.add_argument("--dataset", default=None, choices=sorted(IMAGE_DATASETS), help="dataset kind")
    evaluate.add_argument("--data-dir", default=None, help="folder holding the dataset in its standard layout")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="batch size (default: as in training)")
    evaluate.add_argument("--num-workers", type=int, default=0, help="data loading workers (default: 0)")
    evaluate.add_argument(
        "--dataset-options", type=_yaml_value, default=None, help="per-kind dataset options as YAML/JSON"
    )
    evaluate.add_argument(
        "--verify-checksums", action=argparse.BooleanOptionalAction, default=True, help="check CIFAR/SVHN md5 sums"
    )
    evaluate.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images (counted in the log)")
    evaluate.set_defaults(func=_cmd_eval)

    predict = sub.add_parser("predict", help="classify image files with a trained adapter; prints top-k classes")
    _add_adapter_arguments(predict)
    predict.add_argument("--class-names", default=None, help="class names file (default: from task.json)")
    predict.add_argument("--top-k", type=int, default=5, help="classes to print per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("images", nargs="+", help="image files")
    predict.set_defaults(func=_cmd_predict)

    recipes = sub.add_parser("recipes", help="list the shipped recipes (paper Table 1 rows)")
    recipes.add_argument("--show", default=None, metavar="NAME", help="print one recipe")
    recipes.set_defaults(func=_cmd_recipes)

    params = sub.add_parser("params", help="print the trainable-parameter report of a model and method")
    params.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    params.add_argument("--num-classes", type=int, default=100, help="classes of the task head")
    params.add_argument("--method", default="adaptformer", choices=CHOICE_METHODS, help="adaptation method")
    params.add_argument("--bottleneck", type=int, default=64, help="AdaptMLP hidden width")
    params.add_argument("--vpt-tokens", type=int, default=1, help="VPT prompt tokens per layer")
    params.add_argument("--vpt-shallow", action="store_true", help="VPT-shallow instead of VPT-deep")
    params.add_argument("--head", default="paper", choices=["paper", "linear"], help="task head")
    params.set_defaults(func=_cmd_params)

    demo = sub.add_parser("demo", help="short end-to-end example on built-in defaults (no downloads)")
    demo.add_argument("--output-dir", default=None, help="keep the backbone and adapter files here (default: temp)")
    demo.add_argument("--steps", type=int, default=30, help="training steps")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .engine.loop import NonFiniteLossError

    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the other processes only warn
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, TypeError, ImageDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
