"""The commands that use a trained adapter: ``adaptformer eval`` (a dataset split) and ``adaptformer predict`` (image
or video files). Everything defaults to what the adapter folder's adapter_config.json records (backbone, classes,
dataset, video views, precision, batch size); the flags override single parts of it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..data import IMAGE_DATASETS
from ..data.segmentation import SEGMENTATION_DATASETS
from ..data.video import VIDEO_DATASETS
from ..engine.metrics import THRESHOLD
from .args import adapter_data, add_adapter_arguments, at_least, probability, trained_model


def _cmd_eval(args: argparse.Namespace) -> int:
    if len(args.adapter) > 1:
        raise ValueError("eval takes one --adapter (its dataset is the adapter's); run it once per adapter")
    args.adapter = args.adapter[0]
    from ..engine.distributed import init_distributed, shutdown
    from ..engine.splits import DataSpec
    from ..inference.evaluate import evaluate_split
    from ..speed import SpeedConfig

    ctx = init_distributed(args.device)
    try:
        model, info = trained_model(args, args.adapter)
        data = adapter_data(args, info)
        splits = {**IMAGE_DATASETS, **VIDEO_DATASETS, **SEGMENTATION_DATASETS}[data.dataset].splits
        if args.split not in splits and not (args.split == "test" and "val" in splits):  # test: val if no test
            raise ValueError(f"--split {args.split!r}: {data.dataset!r} has the splits {list(splits)}")
        metrics = evaluate_split(
            model, info, DataSpec.from_config(data), args.split, ctx, batch_size=args.batch_size,
            precision=args.precision, num_workers=data.num_workers, speed=SpeedConfig(),
        )  # fmt: skip
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(json.dumps(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if len(args.adapter) > 1:
        from .multitask import predict_many

        if args.threshold is not None:
            raise ValueError(
                "--threshold applies to one multi-label --adapter; several adapters share one backbone as a "
                "multi-task model, which prints each single-label task's top-k"
            )

        return predict_many(args)
    args.adapter = args.adapter[0]
    from ..inference.evaluate import class_names, match_classes, predict_files, read_class_names, video_settings
    from ..preprocessing import clip_frames

    model, info = trained_model(args, args.adapter)
    classes = class_names(info)
    if args.class_names is not None:  # printed by the adapter's order: the names it records, else the file's in order
        given = read_class_names(args.class_names)
        match_classes(model.num_classes, given, info, f"--class-names {args.class_names}")
        classes = classes if info.classes else given
    precision = args.precision or (info.training.precision if info.training is not None else "auto")
    if getattr(model, "adaptformer_task", None) is not None:
        return _predict_masks(args, model, info, classes, precision)
    if args.out is not None or args.overwrite:
        raise ValueError("--out and --overwrite apply to segmentation adapters (their label PNGs); this one classifies")
    video = video_settings(info) if clip_frames(model) is not None else None
    if args.threshold is not None and not info.multi_label:
        raise ValueError(
            f"--threshold {args.threshold:g} applies to multi-label adapters; {args.adapter} is "
            "single-label (its top-k classes are printed)"
        )
    threshold = (args.threshold if args.threshold is not None else THRESHOLD) if info.multi_label else None
    results = predict_files(model, args.files, args.top_k, precision, args.device, video, threshold)
    kind = "image" if video is None else "video"
    for result in results:
        top = [{"class": classes[i], "index": i, "prob": p} for i, p in result.top]
        if args.json:
            print(json.dumps({kind: result.path, **({"error": result.error} if result.error else {"top": top})}))
        elif result.error is not None:
            print(f"{result.path}: error: {result.error}")
        else:
            shown = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in top)
            print(f"{result.path}: {shown or f'no class reaches the threshold {threshold:g}'}")
    failed = [r.path for r in results if r.error is not None]
    if failed:
        print(
            f"error: {len(failed)} of {len(results)} files could not be classified: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 2
    return 0


def _predict_masks(args: argparse.Namespace, model: Any, info: Any, classes: list[str], precision: str) -> int:
    """``predict`` with a segmentation adapter: a label PNG and an overlay PNG per image under ``--out``."""
    from pathlib import Path

    from ..inference.segmenting import mask_files, segment_files, segmentation_settings, write_mask_files

    for flag, value in (("--top-k", args.top_k), ("--threshold", args.threshold)):
        if value is not None:
            raise ValueError(f"{flag} applies to classification adapters; a segmentation adapter writes label PNGs")
    if args.out is None:
        raise ValueError("a segmentation adapter writes a label PNG and an overlay PNG per image: give --out DIR")
    out = Path(args.out)
    stems: dict[str, str] = {}
    for path in args.files:
        other = stems.setdefault(Path(path).stem, path)
        if other != path:
            raise ValueError(f"{other} and {path} would write the same files under --out {out}: rename one")
    existing = [str(f) for path in args.files for f in mask_files(out, path) if f.exists()]
    if existing and not args.overwrite:
        raise ValueError(
            f"--out {out} already holds {len(existing)} of the files to write ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); pass --overwrite to replace them, or choose another --out"
        )
    settings = segmentation_settings(info)
    failed = []
    for result in segment_files(model, args.files, settings.augment(False), settings.inference_settings(),
                                precision, args.device):  # fmt: skip
        if result.error is not None:
            failed.append(result.path)
            print(json.dumps({"image": result.path, "error": result.error}) if args.json else
                  f"{result.path}: error: {result.error}")  # fmt: skip
            continue
        label, overlay = write_mask_files(result, out, len(classes))
        fractions = dict(zip(classes, result.fractions, strict=True))
        if args.json:
            print(json.dumps({"image": result.path, "label": str(label), "overlay": str(overlay),
                              "fractions": fractions}))  # fmt: skip
        else:
            shown = sorted(((f, c) for c, f in fractions.items() if f > 0), reverse=True)[:5]
            print(f"{result.path}: {label}, {overlay}; " + ", ".join(f"{c} {f:.3f}" for f, c in shown))
    if failed:
        print(f"error: {len(failed)} of {len(args.files)} files could not be segmented: {', '.join(failed)}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


def add_adapter_commands(sub: Any) -> None:
    """The ``eval`` and ``predict`` subcommands."""
    evaluate = sub.add_parser(
        "eval",
        help="evaluate a trained adapter on a dataset split; prints one JSON line",
        description="The dataset flags are the data section of `adaptformer train` (--data.dataset, --data.data_dir, "
        "--data.options, --data.verify_checksums, --data.skip_bad_images/videos, --data.video.test_clips/test_crops/"
        "sampling/sampling_stride; `adaptformer train --help` lists them). Defaults: what training recorded for its "
        "dataset kind (for video the same views, multi-view acc1/acc5 with n = videos, plus single_view_acc1/acc5).",
    )
    add_adapter_arguments(evaluate)
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=at_least(1), default=None, help="batch size (default: as in training)")
    evaluate.set_defaults(func=_cmd_eval)

    predict = sub.add_parser(
        "predict",
        help="classify image or video files with a trained adapter (prints top-k classes), or segment images with a "
        "segmentation adapter (writes label and overlay PNGs)",
        description="Prints one line per file, in order: its top-k classes, or 'FILE: error: ...' for a file that "
        "cannot be decoded (the others are still classified; the exit status is then 2). A video adapter classifies "
        "video files: each is cut into the test views training recorded (clips x crops, as `adaptformer eval`), "
        "and the views' logits are averaged. A segmentation adapter writes, per image, a label PNG and an overlay PNG "
        "under --out (the image's own size; segmented as eval does) and prints each class's fraction of pixels "
        "(--json: all of them).",
    )
    add_adapter_arguments(predict)
    predict.add_argument(
        "--class-names", default=None,
        help="class names file, for an adapter that records none (default: the adapter's; one that records them "
        "takes only the same names, in any order)",
    )  # fmt: skip
    predict.add_argument(
        "--top-k", type=at_least(1, "a positive integer"), default=None,
        help="classes to print per file (default: 5, or all if fewer; more than the adapter's prints all, with a note; "
        "a multi-label adapter: at most this many of the classes above --threshold, default all of them)",
    )  # fmt: skip
    predict.add_argument(
        "--threshold", type=probability, default=None,
        help="multi-label adapters: print every class whose probability (sigmoid) is at least this, best first "
        f"(default: {THRESHOLD}, as eval's F1)",
    )  # fmt: skip
    predict.add_argument(
        "--json", action="store_true",
        help='print one JSON object per file: {"image" or "video": FILE, "top": [...]} or {..., "error": MESSAGE}',
    )  # fmt: skip
    predict.add_argument(
        "--out", default=None,
        help="segmentation adapters: the folder for each image's label PNG (<stem>.png: class indices, VOC colours) "
        "and overlay (<stem>_overlay.png)",
    )  # fmt: skip
    predict.add_argument(
        "--overwrite", action="store_true", help="segmentation adapters: replace label/overlay files already in --out"
    )
    predict.add_argument("files", nargs="+", metavar="FILE", help="image files (video files for a video adapter)")
    predict.set_defaults(func=_cmd_predict)
