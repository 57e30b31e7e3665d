"""The commands that use a trained adapter: ``adaptformer eval`` (a dataset split) and ``adaptformer predict`` (image
files). Everything defaults to what the adapter folder's adapter_config.json records (backbone, classes, dataset,
video views, precision, batch size); the flags override single parts of it."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import yaml

from .data.video import STRATEGIES, VIDEO_DATASETS
from .precision import PRECISION_CHOICES
from .saving import AdapterInfo


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {e}") from e


def _load(args: argparse.Namespace) -> tuple[Any, AdapterInfo]:
    from .engine.inference import load_trained_model

    return load_trained_model(
        args.adapter, args.checkpoint, args.checkpoint_source, args.model_kwargs, getattr(args, "model", None),
        init_seed=args.init_seed,
    )  # fmt: skip


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.distributed import init_distributed, shutdown
    from .engine.inference import evaluate_split
    from .speed import SpeedConfig

    ctx = init_distributed(args.device)
    try:
        model, info = _load(args)
        metrics = evaluate_split(
            model, info, _eval_data_spec(args, info), args.split, ctx, batch_size=args.batch_size,
            precision=args.precision, num_workers=args.num_workers, speed=SpeedConfig(),
        )  # fmt: skip
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics))
    return 0


def _eval_data_spec(args: argparse.Namespace, info: AdapterInfo) -> Any:
    """The data to evaluate on: the flags given, else what training recorded (for the same dataset kind)."""
    from .engine.datasets import DataSpec, VideoSettings

    record = info.training
    kind = args.dataset or (record.dataset if record else None)
    if kind is None:
        raise ValueError("--dataset is required (the adapter folder does not record one)")
    recorded = record if record is not None and record.dataset == kind else None
    options = (
        args.dataset_options if args.dataset_options is not None else (recorded.dataset_options if recorded else {})
    )
    try:
        video = VideoSettings(**recorded.video) if recorded is not None and recorded.video else VideoSettings()
    except TypeError as e:
        raise ValueError(f"{args.adapter}: the recorded video settings {recorded.video} are not valid ({e})") from e
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine.inference import check_classes, class_names, predict_images, read_class_names

    model, info = _load(args)
    classes = read_class_names(args.class_names) if args.class_names is not None else class_names(info)
    check_classes(model.num_classes, classes, None, "the class-name list")
    precision = args.precision or (info.training.precision if info.training is not None else "auto")
    results = predict_images(model, args.images, args.top_k, precision, args.device)
    for path, top in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": classes[i], "index": i, "prob": p} for i, p in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{classes[i]} {p:.3f}" for i, p in top))
    return 0


def _add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    recorded = "(default: as recorded in the adapter's adapter_config.json)"
    parser.add_argument("--adapter", required=True, help="adapter folder written by training (OUT/adapter)")
    parser.add_argument("--checkpoint", default=None, help=f"pre-trained backbone weights {recorded}")
    parser.add_argument("--checkpoint-source", default=None, help=f"key layout of --checkpoint {recorded}")
    parser.add_argument("--model-kwargs", type=_yaml_value, default=None, help=f"timm kwargs {recorded}")
    parser.add_argument(
        "--init-seed", type=int, default=None,
        help=f"seed of a backbone trained without checkpoint {recorded}; needed for adaptformer 0.1 folders",
    )  # fmt: skip
    parser.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help=f"autocast {recorded}")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")


def add_adapter_commands(sub: Any) -> None:
    """The ``eval`` and ``predict`` subcommands."""
    from .engine.config import DATASET_KINDS

    evaluate = sub.add_parser("eval", help="evaluate a trained adapter on a dataset split; prints one JSON line")
    _add_adapter_arguments(evaluate)
    evaluate.add_argument("--model", default=None, help="backbone name; checked against the adapter's")
    evaluate.add_argument("--dataset", default=None, choices=sorted(DATASET_KINDS), help="dataset kind (default: "
                          "the one training recorded)")  # fmt: skip
    evaluate.add_argument("--data-dir", default=None, help="folder holding the dataset in its standard layout")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="batch size (default: as in training)")
    evaluate.add_argument("--num-workers", type=int, default=0, help="data loading workers (default: 0)")
    evaluate.add_argument("--dataset-options", type=_yaml_value, default=None, help="per-kind dataset options as "
                          "YAML/JSON (default: as in training)")  # fmt: skip
    evaluate.add_argument(
        "--verify-checksums", action=argparse.BooleanOptionalAction, default=True, help="check CIFAR/SVHN md5 sums"
    )
    evaluate.add_argument("--skip-bad-images", action="store_true", help="image kinds with files: drop unreadable "
                          "ones (counted)")  # fmt: skip
    evaluate.add_argument("--skip-bad-videos", action="store_true", help="video kinds with files: drop undecodable "
                          "ones (counted)")  # fmt: skip
    video = evaluate.add_argument_group(
        "video", "multi-view testing: prints multi-view acc1/acc5 (logits averaged per video; n = videos) and "
        "single_view_acc1/acc5. Defaults: as training recorded, else the dataset kind's and 4 x 3 views.",
    )  # fmt: skip
    video.add_argument("--sampling", default=None, choices=STRATEGIES, help="temporal sampling: segment or dense")
    video.add_argument("--sampling-stride", type=int, default=None, help="frames between sampled frames (dense)")
    video.add_argument("--test-clips", type=int, default=None, help="temporal clips per video")
    video.add_argument("--test-crops", type=int, default=None, choices=[1, 3], help="spatial crops per clip")
    evaluate.set_defaults(func=_cmd_eval)

    predict = sub.add_parser("predict", help="classify image files with a trained adapter; prints top-k classes")
    _add_adapter_arguments(predict)
    predict.add_argument("--class-names", default=None, help="class names file (default: the adapter's)")
    predict.add_argument("--top-k", type=int, default=5, help="classes to print per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("images", nargs="+", help="image files")
    predict.set_defaults(func=_cmd_predict)
