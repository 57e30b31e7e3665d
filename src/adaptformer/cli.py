"""The ``adaptformer`` command line: ``train``, ``eval``, ``predict``, ``prepare``, ``recipes``, ``params``, ``demo``.

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .data import ImageDecodeError
from .data.video import STRATEGIES, VIDEO_DATASETS, VideoDecodeError
from .errors import MissingDependencyError, UnsupportedModelError

if TYPE_CHECKING:
    from .engine.datasets import DataSpec
    from .engine.inference import TaskInfo

CHOICE_METHODS = ["adaptformer", "linear", "full", "vpt"]


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


def _cmd_params(args: argparse.Namespace) -> int:
    from .factory import create_model
    from .methods import AdaptFormerConfig, VPTConfig
    from .model import parameter_report

    method: Any = args.method
    if args.method == "adaptformer":
        method = AdaptFormerConfig(bottleneck=args.bottleneck)
    elif args.method == "vpt":
        method = VPTConfig(num_tokens=args.vpt_tokens, deep=not args.vpt_shallow)
    model = create_model(args.model, args.num_classes, method=method, head=args.head)
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
    from .speed import SpeedConfig

    ctx = init_distributed(args.device)
    try:
        model, task = load_trained_model(
            args.adapter, args.checkpoint, args.checkpoint_source, args.model_kwargs, model_name=args.model
        )
        metrics = evaluate_split(
            model, task, _eval_data_spec(args, task), args.split, ctx, batch_size=args.batch_size,
            precision=args.precision, num_workers=args.num_workers, speed=SpeedConfig(),
        )  # fmt: skip
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics))
    return 0


def _eval_data_spec(args: argparse.Namespace, task: TaskInfo | None) -> DataSpec:
    """The data to evaluate on: the flags given, else what training recorded in task.json (same dataset kind)."""
    from .engine.datasets import DataSpec, VideoSettings

    kind = args.dataset or (task.dataset if task else None)
    if kind is None:
        raise ValueError("--dataset is required (the adapter folder does not record one)")
    recorded = task if task is not None and task.dataset == kind else None
    options = (
        args.dataset_options if args.dataset_options is not None else (recorded.dataset_options if recorded else {})
    )
    video = VideoSettings(**recorded.video) if recorded is not None and recorded.video else VideoSettings()
    flags = {"sampling": args.sampling, "stride": args.sampling_stride, "test_clips": args.test_clips,
             "test_crops": args.test_crops}  # fmt: skip
    video = replace(video, **{k: v for k, v in flags.items() if v is not None})
    is_video = kind in VIDEO_DATASETS
    misplaced = args.skip_bad_images if is_video else args.skip_bad_videos
    if misplaced:
        given, wanted, what = ("images", "videos", "a video") if is_video else ("videos", "images", "an image")
        raise ValueError(f"--skip-bad-{given} does not apply to {kind!r}, {what} dataset; use --skip-bad-{wanted}")
    skip_bad = args.skip_bad_videos if is_video else args.skip_bad_images
    return DataSpec(kind, args.data_dir, options, args.verify_checksums, skip_bad, video)


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


def _add_prepare_parser(sub: Any) -> None:
    prepare = sub.add_parser(
        "prepare", help="write list files (train.txt, test.txt, classes.txt) from an official SSv2 or HMDB51 release",
        description="Write VideoMAE list files for --dataset ssv2|hmdb51 --data-dir OUT. test.txt is the split the "
        "paper reports (SSv2: the official validation set; HMDB51: the test half of the chosen split).",
    )  # fmt: skip
    releases = prepare.add_subparsers(dest="release", required=True)
    ssv2 = releases.add_parser("ssv2", help="Something-Something v2: labels/train/validation json + videos")
    hmdb = releases.add_parser("hmdb51", help="HMDB51: testTrainMulti_7030_splits/ + class folders of .avi")
    for parser in (ssv2, hmdb):
        parser.add_argument("--root", required=True, help="the release as downloaded (the error shows its layout)")
        parser.add_argument("--out", required=True, help="folder for the list files: pass it as --data-dir")
        parser.add_argument("--video-dir", default=None, help="folder of the videos (default: found under --root)")
        parser.add_argument("--skip-missing", action="store_true", help="leave out listed videos that do not exist")
        parser.add_argument("--relative", action="store_true", help="write paths relative to --out (default: absolute)")
        parser.set_defaults(func=_cmd_prepare)
    ssv2.add_argument(
        "--video-ext", default=".webm", help="video file extension, e.g. .mp4 for re-encoded copies (default: .webm)"
    )
    hmdb.add_argument("--split", type=int, default=1, choices=[1, 2, 3], help="official split (paper: 1; default: 1)")
    hmdb.add_argument("--split-dir", default=None, help="folder of the *_test_split<N>.txt files (default: found)")


def build_parser() -> argparse.ArgumentParser:
    from .engine.config import DATASET_KINDS, add_config_arguments

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
    evaluate.add_argument(
        "--dataset", default=None, choices=sorted(DATASET_KINDS), help="dataset kind (default: recorded in task.json)"
    )
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
    evaluate.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="image kinds with files: drop unreadable ones (counted)",
    )
    evaluate.add_argument(
        "--skip-bad-videos",
        action="store_true",
        help="video kinds with files: drop undecodable ones (counted)",
    )
    video = evaluate.add_argument_group(
        "video", "multi-view testing: prints multi-view acc1/acc5 (logits averaged per video; n = videos) and "
        "single_view_acc1/acc5. Defaults: as recorded in task.json, else the dataset kind's and 4 x 3 views.",
    )  # fmt: skip
    video.add_argument("--sampling", default=None, choices=STRATEGIES, help="temporal sampling: segment or dense")
    video.add_argument("--sampling-stride", type=int, default=None, help="frames between sampled frames (dense)")
    video.add_argument("--test-clips", type=int, default=None, help="temporal clips per video")
    video.add_argument("--test-crops", type=int, default=None, choices=[1, 3], help="spatial crops per clip")
    evaluate.set_defaults(func=_cmd_eval)

    predict = sub.add_parser("predict", help="classify image files with a trained adapter; prints top-k classes")
    _add_adapter_arguments(predict)
    predict.add_argument("--class-names", default=None, help="class names file (default: from task.json)")
    predict.add_argument("--top-k", type=int, default=5, help="classes to print per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("images", nargs="+", help="image files")
    predict.set_defaults(func=_cmd_predict)

    _add_prepare_parser(sub)

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

    demo = sub.add_parser(
        "demo", help="the main job: AdaptFormer vs linear probe vs full fine-tuning on digits (a few CPU minutes)"
    )
    demo.add_argument("--output-dir", default="runs/demo", help="runs, table and plot go here (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the study's)")
    demo.add_argument("--jobs", type=int, default=2, help="runs side by side, one CPU thread each (default: 2)")
    demo.add_argument("--quick", action="store_true", help="a few-second setting that only checks the pipeline")
    demo.set_defaults(func=_cmd_demo)
    _add_study_parser(sub)
    return parser


def _add_study_parser(sub: Any) -> None:
    from .study import METHODS, StudySettings, default_tasks

    defaults = StudySettings()
    study = sub.add_parser(
        "study", help="miniature reproduction: every method x task x seed; writes a table and the paper's Figure 1",
        description="Train linear, VPT-deep 1/4/16/64, AdaptFormer 1/4/16/64 and full fine-tuning on real digits and "
        "on synthetic motion video (image backbone inflated to video), several seeds, through `adaptformer train`'s "
        "engine; writes results.json, results.md and accuracy_vs_params.png to --output-dir.",
    )  # fmt: skip
    study.add_argument("--tasks", type=_comma_list, default=list(defaults.tasks),
                       help=f"comma-separated, from {','.join(default_tasks())} (default: all)")  # fmt: skip
    study.add_argument("--methods", type=_comma_list, default=list(defaults.methods),
                       help=f"comma-separated, from {','.join(METHODS)} (default: all)")  # fmt: skip
    study.add_argument("--seeds", type=_comma_list, default=[str(s) for s in defaults.seeds],
                       help="comma-separated training seeds (default: 0,1,2)")  # fmt: skip
    study.add_argument("--epochs", type=int, default=None, help="training epochs of every run (default: per task)")
    study.add_argument("--output-dir", default=defaults.output_dir, help="report folder (default: reports/study)")
    study.add_argument("--runs-dir", default=defaults.runs_dir, help="training runs (default: runs/study)")
    study.add_argument("--jobs", type=int, default=defaults.jobs, help="runs side by side, 1 thread each (default: 2)")
    study.add_argument("--quick", action="store_true", help="tiny data, 1 epoch: checks the pipeline, not the claims")
    study.add_argument("--random-init", action="store_true", help="randomly initialised backbones (a control)")
    study.set_defaults(func=_cmd_study)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# What main() reports as "error: ..." with exit code 2: mistakes in the input, named by the library. Anything else, a
# TypeError from a bug say, keeps its traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    UnsupportedModelError,
    MissingDependencyError,
    ImageDecodeError,
    VideoDecodeError,
)


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
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
