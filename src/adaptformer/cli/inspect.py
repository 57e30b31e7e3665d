"""``adaptformer inspect --adapter DIR``: what a trained adapter's modules do inside the network, per block, on
real inputs of its dataset (:mod:`adaptformer.inference.inspection`): OUT/inspect.json, inspect.md and inspect.png.
A segmentation adapter is inspected on its backbone's blocks, with the drift per patch token."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data import IMAGE_DATASETS
    from ..data.segmentation import SEGMENTATION_DATASETS, collate_segmentation
    from ..data.video import VIDEO_DATASETS
    from ..engine.splits import DataSpec, load_split
    from ..inference.inspection import (
        check_out_dir,
        inspect_adapter,
        inspectable,
        inspectable_titles,
        write_inspection,
    )
    from ..saving import read_adapter_config
    from .args import adapter_data, trained_model

    info = read_adapter_config(args.adapter)
    if not inspectable(info.spec.registered):
        raise ValueError(
            f"--adapter {args.adapter}: an adapter of method {info.spec.method!r}, which declares nothing for inspect "
            f"to measure in its blocks; inspect supports {', '.join(inspectable_titles())} adapters"
        )
    out = check_out_dir(args.out or Path(args.adapter).resolve().parent / "inspect", args.overwrite)
    data = adapter_data(args, info)  # eval's --data.* flags over what training recorded
    kinds = VIDEO_DATASETS if data.is_video else SEGMENTATION_DATASETS if data.is_segmentation else IMAGE_DATASETS
    kind = kinds[data.dataset]
    if args.split not in kind.splits:
        raise ValueError(f"--split {args.split!r}: {data.dataset!r} has the splits {list(kind.splits)}")
    spec = DataSpec.from_config(data)
    model, info = trained_model(args, args.adapter, info)
    dataset = load_split(spec, args.split).build(model, "eval")  # one deterministic view per sample
    count = min(args.num_samples, len(dataset))  # type: ignore[arg-type]
    # evenly spread over the split (whose samples may be ordered by class), the same ones every time
    picked = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()  # type: ignore[arg-type]
    collate = collate_segmentation if spec.is_segmentation else None  # eval masks keep each image's own size
    loader = DataLoader(Subset(dataset, picked), batch_size=args.batch_size, collate_fn=collate)
    report = inspect_adapter(model, loader, device=args.device)
    files = write_inspection(report, out, overwrite=args.overwrite)
    summary = {"out": str(out), "files": sorted(files), "dataset": spec.kind, "split": args.split,
               "num_samples": report.num_samples, "feature": report.feature,
               "adapter_residual": {r.block: round(r.adapter_residual, 6) for r in report.adapters},
               "adapter_mlp": {r.block: round(r.adapter_mlp, 6) for r in report.adapters
                               if r.adapter_mlp is not None}}  # fmt: skip
    print(json.dumps(summary))
    return 0


def add_inspect_command(sub: Any) -> None:
    """The ``inspect`` subcommand."""
    from .args import add_backbone_arguments, at_least

    parser = sub.add_parser(
        "inspect", help="what a trained adapter (AdaptFormer, Adapter+, any method that declares a measurement) does "
        "per block: its size next to the MLP branch and the residual stream, and how far the class token (a "
        "segmentation model: each patch token) moves from the frozen backbone's",
        description="Runs the adapted model (fp32, eval mode) on --num-samples inputs of a dataset split, spread "
        "evenly over it, and once more with every adapter bypassed (the frozen backbone). Per adapted block: "
        "adapter/MLP = ||a|| / ||MLP(LN(x'))|| (AdaptFormer's a = s*A, beside the MLP) and adapter/residual = ||a|| / "
        "||x|| (per-token L2 norms; headline: the ratio of RMS norms, also the mean per-token ratio); per block: "
        "the relative L2 drift and cosine similarity of the class token (mean over tokens for backbones without one, "
        "e.g. video ViTs; for a segmentation adapter, of each patch token, averaged over tokens, its images cut into "
        "the windows the backbone takes) against the frozen backbone's, and of the feature the head reads. Writes "
        "inspect.json, inspect.md and inspect.png to --out. The dataset flags are eval's (--data.dataset, "
        "--data.data_dir, --data.options, --data.skip_bad_images, ...; default: what training recorded).",
    )  # fmt: skip
    parser.add_argument("--adapter", required=True, help="adapter folder written by training (OUT/adapter)")
    parser.add_argument("--split", default="test", help="split to read inputs from: test, val or train (default: test)")
    parser.add_argument("--num-samples", type=at_least(1), default=256, help="inputs to average over (default: 256)")
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="inputs per forward pass (default: 64)")
    parser.add_argument("--out", default=None, help="output folder (default: OUT/inspect beside the adapter folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    add_backbone_arguments(parser)
    parser.set_defaults(func=_cmd_inspect)
