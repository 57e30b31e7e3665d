"""``adaptformer robustness --adapter DIR``: a trained adapter under distribution shift
(:mod:`adaptformer.inference.robustness`): the clean test split, the split under ImageNet-C's corruptions applied on
the fly, released shifted ImageNet sets, and (``--reference``) the mean corruption error relative to another adapter;
and (``--interpolate``) the model with its method's contribution scaled by alpha; writes OUT/robustness.json and
robustness.png (and interpolation.png) and prints a one-line summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..data.shift import COMMON_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, check_corruptions
from ..data.shift.imagenet import LAYOUTS as SHIFTED_LAYOUTS
from ..precision import PRECISION_CHOICES
from .args import adapter_data, add_backbone_arguments, at_least, comma_list, trained_model

GROUPS = {"common": COMMON_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, "all": CORRUPTIONS}


def corruption_list(text: str) -> tuple[str, ...]:
    """``--corruptions``: names and the groups common (ImageNet-C's 15), extra (its 4 held-out) and all."""
    names = [n for part in comma_list(text) for n in GROUPS.get(part, (part,))]
    try:
        return check_corruptions(names)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; or a group: {', '.join(GROUPS)}") from None


def severity_list(text: str) -> tuple[int, ...]:
    """``--severities``: comma-separated severities, each 1-5."""
    try:
        values = tuple(int(v) for v in comma_list(text))
    except ValueError:
        values = ()
    if not values or any(v not in SEVERITIES for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct severities among {','.join(map(str, SEVERITIES))}, comma-separated; got {text!r}"
        )
    return values


def alpha_list(text: str) -> tuple[float, ...]:
    """``--interpolate``: comma-separated alphas, each in [0, 1]."""
    from ..inference.robustness.interpolation import check_alphas

    try:
        return check_alphas([float(v) for v in comma_list(text)])
    except ValueError as e:
        message = str(e) if str(e).startswith("--interpolate") else f"expected numbers in [0, 1], got {text!r}"
        raise argparse.ArgumentTypeError(message.removeprefix("--interpolate: ")) from None


def shifted_set(text: str) -> tuple[str, str]:
    """``--shifted KIND=DIR``."""
    kind, _, root = text.partition("=")
    if kind not in SHIFTED_LAYOUTS or not root:
        raise argparse.ArgumentTypeError(
            f"expected KIND=DIR with KIND one of {', '.join(SHIFTED_LAYOUTS)}; got {text!r}"
        )
    return kind, root


def _cmd_robustness(args: argparse.Namespace) -> int:
    from ..engine.distributed import init_distributed, shutdown
    from ..engine.splits import DataSpec
    from ..inference.evaluate import overridden_source
    from ..inference.robustness import RobustnessSettings, ShiftedSet, build_report, evaluate_robustness, write_report
    from ..inference.robustness.evaluation import check_reference
    from ..inference.robustness.interpolation import alpha_label, interpolated, interpolation_of, pretrained_state
    from ..inference.robustness.report import check_out_dir
    from ..saving import read_adapter_config

    info = read_adapter_config(args.adapter)
    alphas = args.interpolate or ()
    pretrained = None
    if alphas:
        interpolation_of(info.spec.registered)  # refused before any evaluation
    references = []
    if args.reference is not None:
        ref_info = read_adapter_config(args.reference)
        check_reference(args.adapter, info, args.reference, ref_info)
        references.append(("reference", args.reference, ref_info))
    out = check_out_dir(Path(args.out or Path(args.adapter).resolve().parent / "robustness"), args.overwrite)
    data = adapter_data(args, info)  # eval's --data.* flags over what training recorded
    spec = DataSpec.from_config(data)
    settings = RobustnessSettings(
        corruptions=args.corruptions, severities=args.severities, synthetic=not args.no_synthetic, seed=args.seed,
        num_samples=args.num_samples, batch_size=args.batch_size, precision=args.precision,
        num_workers=data.num_workers,
    )  # fmt: skip
    shifted = [ShiftedSet(kind, root) for kind, root in args.shifted]
    ctx = init_distributed(args.device)
    try:
        evaluations = {}
        for label, folder, record in [("adapter", args.adapter, info), *references]:
            model, record = trained_model(args, folder, record)
            evaluations[label] = evaluate_robustness(model, record, spec, args.split, ctx, settings, shifted)
            if label == "adapter":
                trained = model
        interpolation = {alpha: alpha_label(alpha) for alpha in alphas}
        if alphas and info.spec.registered.interpolation.pretrained:  # type: ignore[union-attr]
            source = overridden_source(info, checkpoint=args.checkpoint, checkpoint_source=args.checkpoint_source,
                                       kwargs=args.model_kwargs, init_seed=args.init_seed)  # fmt: skip
            pretrained = pretrained_state(args.adapter, info, source)
        for alpha, label in interpolation.items():
            if alpha == 1.0:  # the trained model itself (interpolated(model, 1) computes it bit for bit)
                evaluations[label] = evaluations["adapter"]
                continue
            model = interpolated(trained, alpha, pretrained)
            evaluations[label] = evaluate_robustness(model, info, spec, args.split, ctx, settings, shifted)
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return 0
    report = build_report(
        evaluations, "reference" if references else None, interpolation, adapter=str(args.adapter),
        reference_adapter=args.reference,
        dataset=spec.kind, split=args.split, seed=settings.seed, severities=list(settings.severities),
        corrupted_at="the model's input resolution: after the evaluation resize and centre crop, before normalisation",
    )  # fmt: skip
    files = write_report(report, out)
    adapter = report["models"]["adapter"]
    summary: dict[str, Any] = {"out": str(out), "files": [f.name for f in files], "clean_acc1": adapter["clean_acc1"]}
    for source, entry in adapter["corruptions"].items():
        summary[source] = {k: entry[k] for k in ("mean_acc1", "mean_error", "retention", "mce") if k in entry}
    summary.update({kind: entry["acc1"] for kind, entry in adapter["shifted"].items()})
    if "interpolation" in report:
        summary["interpolation"] = {p["label"]: {"clean_acc1": p["clean_acc1"], **p["shifted_acc1"]}
                                    for p in report["interpolation"]}  # fmt: skip
    print(json.dumps(summary))
    return 0


def add_robustness_command(sub: Any) -> None:
    """The ``robustness`` subcommand."""
    parser = sub.add_parser(
        "robustness",
        help="a trained adapter under distribution shift: ImageNet-C's corruptions of its test split, shifted "
        "ImageNet sets, mCE against a reference adapter, retention; writes robustness.json and robustness.png",
        description="Evaluates --adapter (every method; image classifiers) on a clean split (--split of the dataset "
        "training recorded, or eval's --data.* flags), on that split under ImageNet-C's corruptions at each severity "
        "(imagecorruptions-imaug, pip install 'adaptformer[robustness]'; each image corrupted at the model's input "
        "resolution, after the resize and centre crop and before normalisation, deterministically per image and "
        "--seed) and on released shifted sets (--shifted). Reports top-1 per corruption and severity, the mean error, "
        "retention (shifted / clean top-1) and, with --reference, the mean corruption error (mCE) normalised by "
        "another adapter of the same backbone and dataset. Runs under torchrun like eval.",
    )  # fmt: skip
    parser.add_argument("--adapter", required=True, help="adapter folder written by training (OUT/adapter)")
    parser.add_argument(
        "--reference", default=None,
        help="adapter folder that normalises the corruption errors (mCE), e.g. the linear probe of the same backbone "
        "and dataset (default: none; the unnormalised mean error is always reported)",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="the clean split (default: test)")
    parser.add_argument(
        "--corruptions", type=corruption_list, default=COMMON_CORRUPTIONS,
        help="comma-separated corruption names or groups: common (ImageNet-C's 15, default), extra (speckle_noise, "
        "gaussian_blur, spatter, saturate), all",
    )  # fmt: skip
    parser.add_argument(
        "--severities", type=severity_list, default=SEVERITIES, help="comma-separated, 1-5 (default: all)"
    )
    parser.add_argument(
        "--no-synthetic", action="store_true", help="do not corrupt the clean split (shifted sets only)"
    )
    parser.add_argument(
        "--shifted", type=shifted_set, action="append", default=[], metavar="KIND=DIR",
        help=f"a released shifted test set, repeatable; KIND: {', '.join(SHIFTED_LAYOUTS)} (imagenet-c: the selected "
        "corruption/severity folders)",
    )  # fmt: skip
    parser.add_argument(
        "--interpolate", type=alpha_list, default=None, metavar="ALPHAS",
        help="also evaluate the model with its method's contribution scaled by each alpha in [0, 1] (e.g. "
        "0,0.25,0.5,0.75,1; outside [0, 1] is refused): AdaptFormer's and Adapter+'s output scales and LoRA's "
        "update times alpha, full fine-tuning's weights (1 - alpha) * pre-trained + alpha * fine-tuned (the "
        "pre-trained weights rebuilt as recorded, or --model.checkpoint), the linear probe unchanged; VPT is refused. "
        "The head is the trained head at every alpha. Adds the clean vs shifted accuracy along alpha to the report "
        "and interpolation.png",
    )  # fmt: skip
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the corruptions (default: 0)")
    parser.add_argument(
        "--num-samples", type=at_least(1), default=None,
        help="images of each split, spread evenly over it (default: all)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="batch size (default: as in training)")
    parser.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help="autocast (default: as recorded)")
    parser.add_argument("--out", default=None, help="output folder (default: robustness/ beside the adapter folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    add_backbone_arguments(parser)
    parser.set_defaults(func=_cmd_robustness)
