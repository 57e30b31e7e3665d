"""``adaptformer export --adapter DIR --format onnx``: the adapted network as an ONNX file, checked with ONNX Runtime
(:mod:`adaptformer.inference.export`); with several ``--adapter [NAME=]DIR``, one multi-task graph of them all (images
and a task index per sample in, each sample's padded logits and class count out: :mod:`.export_multitask`).
``--format peft``: a LoRA adapter as a PEFT LoRA folder (:mod:`adaptformer.inference.peft_files`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_export_model(args: argparse.Namespace) -> int:
    from ..inference.export import export_onnx, require_onnx

    if args.format == "peft":
        return _export_peft(args)
    require_onnx()  # before the model is built
    if len(args.adapter) > 1 or args.adapter_names[0] is not None:
        return _export_multitask(args)
    args.adapter = args.adapter[0]
    model, info = _trained_model(args)
    out = Path(args.out) if args.out else Path(args.adapter).resolve().parent / "model.onnx"
    report = export_onnx(model, out, info, opset=args.opset, tolerance=args.tolerance, overwrite=args.overwrite)
    print(json.dumps(report.to_dict()))
    return 0


def _export_peft(args: argparse.Namespace) -> int:
    from ..inference.peft_files import export_peft

    if len(args.adapter) > 1:
        raise ValueError("--format peft writes one adapter: give one --adapter")
    args.adapter = args.adapter[0]
    model, _ = _trained_model(args)
    out = Path(args.out) if args.out else Path(args.adapter).resolve().parent / "peft"
    export_peft(model, out, overwrite=args.overwrite)
    print(json.dumps({"peft": str(out), "files": ["adapter_config.json", "adapter_model.safetensors"]}))
    return 0


def _export_multitask(args: argparse.Namespace) -> int:
    from ..inference.export_multitask import export_multitask_onnx
    from .multitask import load_multitask

    if not args.out:
        raise ValueError("several --adapter make one multi-task graph: give the file to write with --out FILE")
    model = load_multitask(args)  # its tasks named as --adapter [NAME=]DIR names them
    report = export_multitask_onnx(
        model, args.out, opset=args.opset, tolerance=args.tolerance, overwrite=args.overwrite
    )
    print(json.dumps({**report.to_dict(), "tasks": list(model.tasks)}))
    return 0


def _trained_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The adapter's model as eval/predict build it: a classifier, or a segmentation model for a segmentation
    adapter, with the backbone group's overrides."""
    from ..inference.evaluate import check_backbone_name, overridden_source
    from ..saving import read_adapter_config, task_type
    from ..segmentation.model import TASK, load_segmentation_model
    from .args import trained_model

    info = read_adapter_config(args.adapter)
    if task_type(info.task) != TASK:
        return trained_model(args, args.adapter, info)
    check_backbone_name(args.adapter, info, args.backbone)
    source = overridden_source(
        info,
        checkpoint=args.checkpoint,
        checkpoint_source=args.checkpoint_source,
        kwargs=args.model_kwargs,
        init_seed=args.init_seed,
    )
    return load_segmentation_model(args.adapter, source, info=info), info


def add_export_command(sub: Any) -> None:
    """The ``export`` subcommand."""
    from .args import NamedAdapter, add_backbone_arguments, at_least

    parser = sub.add_parser(
        "export", help="write a trained adapter's whole network as ONNX, checked against PyTorch with ONNX Runtime",
        description="Builds the adapted model as eval/predict do (LoRA merged), exports it with a dynamic batch axis, "
        "runs the file in ONNX Runtime on random inputs of batch 2 and 3 and compares with PyTorch: the file is kept "
        "only if the max-abs logit difference is within --tolerance and the top-1 agrees (printed as max_abs_diff). "
        "Also writes FILE.json: input name and shape, preprocessing (mean, std, size, interpolation, crop), classes. "
        "Several --adapter: one graph with inputs 'input' (images) and 'task' (a task index per sample) and outputs "
        "'logits' (padded with -inf to the largest head) and 'num_classes', checked on random mixed batches. "
        "Needs the export extra: pip install 'adaptformer[export]'. --format peft writes a LoRA adapter (head linear) "
        "as a PEFT LoRA folder (adapter_config.json, adapter_model.safetensors; default OUT/peft) that "
        "PeftModel.from_pretrained loads onto the plain timm backbone; per-third q/k/v updates become one update of "
        "the fused qkv Linear with a block-diagonal B (the same function).",
    )  # fmt: skip
    parser.add_argument("--adapter", required=True, action=NamedAdapter,
                        help="adapter folder written by training (OUT/adapter); repeat it, each as DIR or NAME=DIR, "
                        "for one multi-task graph of them all (task NAME, default: the run folder's name; needs "
                        "--out; FILE.json lists the task order and class counts)")  # fmt: skip
    parser.add_argument("--format", choices=("onnx", "peft"), default="onnx",
                        help="onnx (a file) or peft (a PEFT LoRA folder) (default: onnx)")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="the file (onnx) or folder (peft) to write (default: OUT/model.onnx, OUT/peft beside the "
                        "adapter)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--opset", type=at_least(7), default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max-abs logit difference to PyTorch accepted (default: 1e-4, fp32)")  # fmt: skip
    add_backbone_arguments(parser, device=False)  # exported on the CPU: ONNX Runtime checks it there
    parser.set_defaults(func=_cmd_export_model)
