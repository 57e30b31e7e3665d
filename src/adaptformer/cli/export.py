"""``adaptformer export --adapter DIR --format onnx``: the adapted network as an ONNX file, checked with ONNX Runtime
(:mod:`adaptformer.inference.export`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_export_model(args: argparse.Namespace) -> int:
    from ..inference.evaluate import load_trained_model
    from ..inference.export import export_onnx, require_onnx

    require_onnx()  # before the model is built
    model, info = load_trained_model(
        args.adapter, args.checkpoint, args.checkpoint_source, args.model_kwargs, init_seed=args.init_seed
    )
    out = Path(args.out) if args.out else Path(args.adapter).resolve().parent / "model.onnx"
    report = export_onnx(model, out, info, opset=args.opset, tolerance=args.tolerance, overwrite=args.overwrite)
    print(json.dumps(report.to_dict()))
    return 0


def add_export_command(sub: Any) -> None:
    """The ``export`` subcommand."""
    from ..backbones.checkpoints.load import CONVERTERS
    from .args import at_least, yaml_mapping

    parser = sub.add_parser(
        "export", help="write a trained adapter's whole network as ONNX, checked against PyTorch with ONNX Runtime",
        description="Builds the adapted model as eval/predict do (LoRA merged), exports it with a dynamic batch axis, "
        "runs the file in ONNX Runtime on random inputs of batch 2 and 3 and compares with PyTorch: the file is kept "
        "only if the max-abs logit difference is within --tolerance and the top-1 agrees (printed as max_abs_diff). "
        "Also writes FILE.json: input name and shape, preprocessing (mean, std, size, interpolation, crop), classes. "
        "Needs the export extra: pip install 'adaptformer[export]'.",
    )  # fmt: skip
    recorded = "(default: as recorded in the adapter's adapter_config.json)"
    parser.add_argument("--adapter", required=True, help="adapter folder written by training (OUT/adapter)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default: onnx)")
    parser.add_argument("--out", default=None, help="the file to write (default: OUT/model.onnx beside the adapter)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--opset", type=at_least(7), default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max-abs logit difference to PyTorch accepted (default: 1e-4, fp32)")  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help=f"pre-trained backbone weights {recorded}")
    parser.add_argument("--checkpoint-source", default=None, choices=tuple(CONVERTERS), help=f"key layout {recorded}")
    parser.add_argument("--model-kwargs", type=yaml_mapping, default=None, help=f"timm kwargs {recorded}")
    parser.add_argument("--init-seed", type=at_least(0), default=None, help=f"backbone seed (0.1 folders) {recorded}")
    parser.set_defaults(func=_cmd_export_model)
