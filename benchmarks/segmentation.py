"""Segmentation benchmark: the training step of ViT-B/16 + UperNet at 512 x 512 with AdaptFormer-64 against full
fine-tuning (and the frozen backbone, the head's share), the GEMM floor of that ratio for this shape, and the
throughput of sliding-window evaluation.

    python benchmarks/segmentation.py --json reports/bench/segmentation_cpu.json --markdown   # bf16, batch 2
    python benchmarks/segmentation.py --quick                                                 # tiny sizes (CI)

The models are the segmentation recipes' (``create_segmentation_model`` with ``head="upernet"``, UperNet width 512,
150 classes, 4 blocks read through ViTDet's simple pyramid) built as ``adaptformer train`` builds them: random weights
(timing does not depend on them), ``apply_speed(model, SpeedConfig(), device, precision)`` (the "auto" options), and
the recipes' optimizer, AdamW over the trainable parameters. A training step is zero_grad + forward under autocast +
per-pixel cross-entropy (``engine.segmentation.segmentation_loss``, 255 ignored) + backward + AdamW step; the cases are
timed interleaved and their peak tensor memory measured as ``bench.py`` does (``measure.py``).

The GEMM floor (``floor.py``'s idea for this shape): the products of 12 ViT-B blocks at 1,025 tokens per image (three
per linear layer for full fine-tuning, two under AdaptFormer, attention's six for both) plus every convolution of the
UperNet head, forward and both backward products (the head trains under both methods and the backbone needs its input
gradient), as oneDNN / cuDNN calls; the two methods' products are timed as two interleaved cases and the floor is the
median of their per-round ratio; ``backbone floor`` is one block's, without the head.

Sliding-window evaluation: ``engine.segmentation.segment`` on one 512 x 683 image (ADE20K's typical 3:4 shape at short
side 512): 2 windows of 512 x 512 at stride 341, no grad, autocast, AdaptFormer-64's model.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor import DTYPES, block_products
from measure import Case, load_average, machine_info, median_ratio, model_tensors, peak_memory, time_interleaved

from adaptformer import AdaptFormerConfig, count_trainable
from adaptformer.engine.segmentation import SegmentationInference, segment, segmentation_loss
from adaptformer.precision import Precision
from adaptformer.segmentation import create_segmentation_model
from adaptformer.speed import SpeedConfig, apply_speed

MiB = 2**20
METHODS: dict[str, Any] = {"full": "full", "linear": "linear", "adaptformer-64": AdaptFormerConfig(bottleneck=64)}
TARGETS = (  # (name, numerator, denominator, quantity, limit): issue 25, bf16, this CPU
    ("AdaptFormer-64 step <= 0.65x full fine-tuning step", "adaptformer-64", "full", "time", 0.65),
    ("AdaptFormer-64 peak memory <= 0.6x full fine-tuning", "adaptformer-64", "full", "memory", 0.6),
)


def shapes(quick: bool) -> dict[str, Any]:
    """The backbone and its kwargs, classes, crop and evaluation image of one measurement."""
    if quick:
        kwargs = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
        return {
            "backbone": "vit_tiny_patch16_224",
            "kwargs": kwargs,
            "classes": 10,
            "crop": 64,
            "eval_image": (64, 85),
        }
    return {
        "backbone": "vit_base_patch16_224",
        "kwargs": {"img_size": 512},
        "classes": 150,
        "crop": 512,
        "eval_image": (512, 683),
    }


def build(method: Any, shape: dict[str, Any], channels: int, precision: str, device: torch.device) -> Any:
    model = create_segmentation_model(
        shape["backbone"],
        shape["classes"],
        method=method,
        head="upernet",
        channels=channels,
        init_seed=0,
        **shape["kwargs"],
    )
    return apply_speed(model, SpeedConfig(), device, precision)


def training_case(label: str, shape: dict[str, Any], args: argparse.Namespace, device: torch.device) -> Case:
    """One AdamW training step of METHODS[label]'s segmentation model on a batch of random crops and masks."""
    model = build(METHODS[label], shape, args.channels, args.precision, device).train()
    autocast = Precision(args.precision, device.type).autocast
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=6e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    crop = shape["crop"]
    x = torch.randn(args.batch, 3, crop, crop, generator=g).to(device)
    masks = torch.randint(0, shape["classes"], (args.batch, crop, crop), generator=g)
    masks[:, : crop // 8] = 255  # a band of ignored pixels, as padding leaves
    masks = masks.to(device)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = segmentation_loss(model(x), masks)
        loss.backward()
        optimizer.step()

    return Case(
        label,
        run,
        device,
        tensors=lambda: [*model_tensors(model, optimizer), x, masks],
        prepare=lambda: optimizer.zero_grad(set_to_none=True),
        info={
            "kind": "train",
            "trainable_params": count_trainable(model),
            "head_params": sum(p.numel() for p in model.decode_head.parameters()),
        },
    )


def sliding_case(shape: dict[str, Any], args: argparse.Namespace, device: torch.device) -> Case:
    """``segment`` of one image by sliding windows (AdaptFormer-64's model, no grad, autocast)."""
    model = build(METHODS["adaptformer-64"], shape, args.channels, args.precision, device).eval()
    autocast = Precision(args.precision, device.type).autocast
    image = torch.randn(1, 3, *shape["eval_image"], generator=torch.Generator().manual_seed(1)).to(device)
    crop = (shape["crop"], shape["crop"])

    def run() -> None:
        with torch.no_grad(), autocast():
            segment(
                model,
                image,
                SegmentationInference("slide"),
                shape["eval_image"],
                input_size=crop,
                num_classes=shape["classes"],
            )

    return Case("sliding-window eval", run, device, tensors=lambda: [*model_tensors(model), image])


# ---------------------------------------------------------------------------------------------- the GEMM floor


def head_convolutions(width: int, channels: int, grid: int, classes: int) -> list[tuple[str, int, int, int, int]]:
    """UperNet's convolutions over a ViT's (width, grid, grid) maps (``segmentation.heads``): (kind, in, out, kernel,
    side of the map it reads); kind "t" is a stride-2 transposed convolution."""
    levels = (4 * grid, 2 * grid, grid, grid // 2)  # the simple pyramid's strides 4, 8, 16, 32
    convs = [("t", width, width, 2, grid), ("t", width, width, 2, 2 * grid), ("t", width, width, 2, grid)]
    convs += [("c", width, channels, 1, side) for side in (1, 2, 3, 6)]  # pyramid pooling branches
    convs += [("c", width + 4 * channels, channels, 3, levels[3])]  # pyramid pooling bottleneck
    convs += [("c", width, channels, 1, side) for side in levels[:3]]  # laterals
    convs += [("c", channels, channels, 3, side) for side in levels[:3]]  # FPN convolutions
    convs += [("c", 4 * channels, channels, 3, levels[0]), ("c", channels, classes, 1, levels[0])]  # fuse, classifier
    return convs


def head_products(
    convs: list[tuple[str, int, int, int, int]], batch: int, dtype: torch.dtype, device: torch.device
) -> Callable[[], None]:
    """One closure running every convolution's forward and its input- and weight-gradient products."""
    g = torch.Generator().manual_seed(0)
    calls = []
    for kind, cin, cout, k, side in convs:
        x = torch.randn(batch, cin, side, side, generator=g).to(device, dtype)
        transposed = kind == "t"
        w = torch.randn(*((cin, cout) if transposed else (cout, cin)), k, k, generator=g).to(device, dtype)
        stride, padding = (2, 0) if transposed else (1, k // 2)
        y = (F.conv_transpose2d if transposed else F.conv2d)(x, w, stride=stride, padding=padding)
        dy = torch.randn(y.shape, generator=g).to(device, dtype)
        calls.append((x, w, dy, transposed, stride, padding))

    def run() -> None:
        for x, w, dy, transposed, stride, padding in calls:
            (F.conv_transpose2d if transposed else F.conv2d)(x, w, stride=stride, padding=padding)
            torch.ops.aten.convolution_backward(
                dy, x, w, None, [stride] * 2, [padding] * 2, [1, 1], transposed, [0, 0], 1, [True, True, False]
            )

    return run


def gemm_floor(shape: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The floor of the AdaptFormer / full step ratio for this shape (module docstring)."""
    kw = shape["kwargs"]
    width, depth, heads = kw.get("embed_dim", 768), kw.get("depth", 12), kw.get("num_heads", 12)
    grid = shape["crop"] // kw.get("patch_size", 16)
    seq = grid * grid + 1  # patches + class token
    dtype = DTYPES[args.precision]
    forward, input_grad, weight_grad, attn_forward, attn_backward = block_products(
        dim=width, tokens=args.batch * seq, heads=heads, seq=seq, dtype=dtype, device=device
    )
    head = head_products(head_convolutions(width, args.channels, grid, shape["classes"]), args.batch, dtype, device)

    def block_adaptformer() -> None:
        forward(), input_grad(), attn_forward(), attn_backward()

    def block_full() -> None:
        forward(), input_grad(), weight_grad(), attn_forward(), attn_backward()

    def step(block: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(depth):
                block()
            head()

        return run

    cases = [
        Case("AdaptFormer step products", step(block_adaptformer), device),
        Case("full step products", step(block_full), device),
        Case("block, AdaptFormer", block_adaptformer, device),
        Case("block, full", block_full, device),
    ]
    time_interleaved(cases, args.floor_rounds, warmup=1)
    t = {c.name: statistics.median(c.times) for c in cases}
    head_share = max(0.0, 1.0 - depth * t["block, full"] / t["full step products"])
    backbone_floor = median_ratio(cases[2], cases[3])
    return {
        "median_s": t,
        "head_share_of_full": head_share,
        "floor": median_ratio(cases[0], cases[1]),
        # the same floor from its parts: the head's share as is, the blocks' at their (short, many) ratio
        "floor_from_parts": head_share + (1.0 - head_share) * backbone_floor,
        "backbone_floor": backbone_floor,
        "rounds": args.floor_rounds,
    }


# ---------------------------------------------------------------------------------------------- the report


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape = shapes(args.quick)
    shape["channels"] = args.channels
    cases = [training_case(label, shape, args, device) for label in METHODS]
    load_before = load_average()
    time_interleaved(cases, args.rounds, args.warmup)
    results = {}
    for case in cases:
        median = statistics.median(case.times)
        memory = peak_memory(case) / MiB
        results[case.name] = {
            **case.info,
            "median_s": median,
            "min_s": min(case.times),
            "samples_per_s": args.batch / median,
            "peak_memory_mib": memory,
        }
    by_name = {c.name: c for c in cases}
    ratios = {
        f"{a}/full": {
            "time": median_ratio(by_name[a], by_name["full"]),
            "memory": results[a]["peak_memory_mib"] / results["full"]["peak_memory_mib"],
        }
        for a in ("adaptformer-64", "linear")
    }
    sliding = sliding_case(shape, args, device)
    time_interleaved([sliding], args.eval_rounds, warmup=1)
    eval_median = statistics.median(sliding.times)
    floor = gemm_floor(shape, args, device)
    targets = []
    for name, a, b, quantity, limit in TARGETS:
        value = ratios[f"{a}/{b}"][quantity]
        targets.append({"target": name, "value": value, "limit": limit, "met": value <= limit})
    return {
        "shape": {**shape, "batch": args.batch, "precision": args.precision},
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_average": {"before": load_before, "after": load_average()},
        "results": results,
        "ratios": ratios,
        "sliding_eval": {
            "image": list(shape["eval_image"]),
            "windows": 2,
            "median_s": eval_median,
            "images_per_s": 1.0 / eval_median,
            "rounds": args.eval_rounds,
        },
        "gemm_floor": floor,
        "targets": targets,
    }


def to_markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["shape"]
    device = m["device"] + (f", {m['gpu']}" if "gpu" in m else "")
    load = report["load_average"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), device {device}; torch "
        f"{m['torch']}, timm {m['timm']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{s['backbone']} {json.dumps(s['kwargs'])} + UperNet (width {s['channels']}, {s['classes']} classes), "
        f"batch {s['batch']} x {s['crop']} x {s['crop']}, {s['precision']}, AdamW; {report['rounds']} interleaved "
        f"rounds after {report['warmup']} warm-up steps; load average before/after {load['before']} / "
        f"{load['after']}.",
        "",
        "| case | trainable params | of which head | median step (s) | min (s) | img/s | peak memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['trainable_params']:,} | {r['head_params']:,} | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f} | {r['samples_per_s']:.2f} | {r['peak_memory_mib']:.0f} |"
        )
    lines += ["", "| ratio (median of per-round ratios) | time | peak memory |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {r['time']:.3f} | {r['memory']:.3f} |" for k, r in report["ratios"].items()]
    f = report["gemm_floor"]
    lines += [
        "",
        f"GEMM floor (products only, {f['rounds']} rounds): AdaptFormer / full {f['floor']:.3f}, from its parts "
        f"{f['floor_from_parts']:.3f} (backbone alone {f['backbone_floor']:.3f}); the head's convolutions are "
        f"{100 * f['head_share_of_full']:.0f}% of the full step's products.",
        "",
        f"Sliding-window evaluation, {tuple(report['sliding_eval']['image'])} image, 2 windows: "
        f"{report['sliding_eval']['images_per_s']:.3f} images/s ({report['sliding_eval']['median_s']:.2f} s).",
        "",
        "| target | measured | met |",
        "| --- | ---: | :---: |",
    ]
    lines += [f"| {t['target']} | {t['value']:.3f} | {'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny ViT at 64 px, 2 rounds (CI: the script runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=tuple(DTYPES), default="bf16", help="autocast precision")
    p.add_argument("--batch", type=int, default=2, help="crops per training step")
    p.add_argument("--channels", type=int, default=None, help="UperNet width (default 512, the recipes'; quick 16)")
    p.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds (default 3, quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per case first")
    p.add_argument("--eval-rounds", type=int, default=None, help="timed sliding-window evaluations (default 3)")
    p.add_argument("--floor-rounds", type=int, default=None, help="rounds of the GEMM floor (default 3, quick 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; quick: 1)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print the report as markdown")
    args = p.parse_args(argv)
    args.channels = args.channels if args.channels is not None else (16 if args.quick else 512)
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    args.eval_rounds = args.eval_rounds if args.eval_rounds is not None else (2 if args.quick else 3)
    args.floor_rounds = args.floor_rounds if args.floor_rounds is not None else (2 if args.quick else 3)
    if min(args.batch, args.rounds, args.eval_rounds, args.floor_rounds) < 1 or args.batch < 2:
        p.error("--batch must be >= 2 (UperNet's BatchNorm in training) and the rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("adaptformer").setLevel(logging.WARNING)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    command = "python benchmarks/segmentation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {"machine": machine_info(device), "command": command.strip(), **measure(args, device)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(to_markdown(report), end="")
    return report


if __name__ == "__main__":
    main()
