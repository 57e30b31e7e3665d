"""The ``adaptformer`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer for timm Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="short end-to-end example on built-in defaults (no downloads)")
    demo.add_argument("--output-dir", default=None, help="keep the backbone and adapter files here (default: temp)")
    demo.add_argument("--steps", type=int, default=30, help="training steps")
    demo.set_defaults(func=_cmd_demo)

    params = sub.add_parser("params", help="print the trainable-parameter report of a model and method")
    params.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    params.add_argument("--num-classes", type=int, default=100, help="classes of the task head")
    params.add_argument(
        "--method", default="adaptformer", choices=["adaptformer", "linear", "full", "vpt"], help="adaptation method"
    )
    params.add_argument("--bottleneck", type=int, default=64, help="AdaptMLP hidden width")
    params.add_argument("--vpt-tokens", type=int, default=1, help="VPT prompt tokens per layer")
    params.add_argument("--vpt-shallow", action="store_true", help="VPT-shallow instead of VPT-deep")
    params.add_argument("--head", default="paper", choices=["paper", "linear"], help="task head")
    params.set_defaults(func=_cmd_params)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
