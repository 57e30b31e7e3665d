"""Benchmark harness: training-step time, throughput, peak memory and inference latency of AdaptFormer and its
baselines (full fine-tuning, linear probe, VPT-deep with 1 and 64 prompts) on one backbone, side by side.

    python benchmarks/bench.py --only image --options   # ViT-B/16 at 224, batch 8; plus each speed option
    python benchmarks/bench.py --only video             # the video ViT-B, 8 frames at 224, batch 8
    python benchmarks/bench.py --only video-swin        # Video Swin-B (torchvision Swin3D), 8 frames at 224, batch 8
    python benchmarks/bench.py --quick --json r.json --markdown   # tiny models, a few steps (CI)
    python benchmarks/bench.py --only image --skip-suites --groups frozen_backward,attention --precisions bf16

For each backbone and precision (fp32, bf16 autocast) every method's model is built with ``create_model`` and
``apply_speed(model, SpeedConfig(), device, precision)`` (the "auto" speed choices), then all cases are timed
interleaved (see measure.py). A training step is zero_grad + forward + cross-entropy + backward + SGD (momentum 0.9)
step. The "forward" case is the reference limit: the no-grad eval forward of the same backbone without adapters, which
is also the inference latency "without adapters"; "forward+adapters" is the AdaptFormer model's no-grad eval forward.
Weights are random (timing does not depend on them). Ratios are medians of per-round ratios. With ``--repeat N``
each suite is measured N times (fresh models, N separate interleaved groups): on a shared machine a whole group can
run slow, so the report then gives, per ratio, the median over the N groups and their range, and checks the targets
against that median.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import (
    METHODS,
    Backbone,
    inference_case,
    late_adapters,
    ratio_table,
    summarize,
    training_case,
)
from measure import load_average, machine_info, time_interleaved
from options import FULL_SIZE_ONLY, GROUPS, run_options

logger = logging.getLogger("bench")

ADAPTFORMER = "adaptformer"  # in TARGETS: the backbone's AdaptFormer case (Backbone.adaptformer)
FORWARD = "forward"
FORWARD_ADAPTERS = "forward+adapters"
TARGETS = (  # (name, numerator, denominator, quantity, limit) on bf16 ViT-B/16, batch 8, this CPU
    ("AdaptFormer step <= 0.5x full fine-tuning step", ADAPTFORMER, "full", "time", 0.5),
    ("AdaptFormer step <= 2.2x no-grad forward", ADAPTFORMER, FORWARD, "time", 2.2),
    ("adapters add <= 5% to inference latency", FORWARD_ADAPTERS, FORWARD, "time", 1.05),
    ("AdaptFormer peak memory <= 60% of full fine-tuning", ADAPTFORMER, "full", "memory", 0.6),
)


def full_backbones(batch: int, video_batch: int) -> list[Backbone]:
    return [
        Backbone("vit_base_patch16_224", (3, 224, 224), batch=batch),
        Backbone("video_vit_base_patch16_224", (3, 8, 224, 224), {"num_frames": 8}, batch=video_batch),
        Backbone("tv_swin3d_b", (3, 8, 224, 224), {"num_frames": 8}, batch=video_batch, **SWIN_METHODS),
    ]


# hierarchical backbones: no VPT (it needs ViT blocks), AdaptFormer with the paper's per-stage dim // 12 (Table 7)
SWIN_METHODS: dict[str, Any] = {
    "methods": ("full", "linear", "adaptformer-1/12"),
    "adaptformer": "adaptformer-1/12",
    "late_adapters": False,
}


def quick_backbones() -> list[Backbone]:
    image = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    video = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
    swin3d = {"num_frames": 4, "embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": [2, 4, 4]}
    return [
        Backbone("vit_tiny_patch16_224", (3, 32, 32), image, batch=4),
        Backbone("video_vit_small_patch16_224", (3, 4, 32, 32), video, batch=2),
        Backbone("tv_swin3d_t", (3, 4, 32, 32), swin3d, batch=2, **SWIN_METHODS),
    ]


def kind(backbone: Backbone) -> str:
    """What ``--only`` calls the backbone: image, video (the VideoMAE ViT) or video-swin."""
    if backbone.name.startswith("tv_swin3d"):
        return "video-swin"
    return "video" if backbone.is_video else "image"


def video_available() -> str | None:
    """None if the video ViT is registered with timm, else why not."""
    try:
        importlib.import_module("adaptformer.backbones")
    except ImportError as e:
        return f"adaptformer.backbones could not be imported ({e})"
    return None


def run_suite(backbone: Backbone, precision: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """All methods and the two forwards of one backbone in one precision, timed interleaved."""
    logger.info("building %s (%s, batch %d)", backbone.name, precision, backbone.batch)
    main = backbone.adaptformer
    methods = {label: METHODS[label] for label in backbone.methods}
    late = None
    if backbone.late_adapters:
        late, late_method = late_adapters(backbone.depth)
        methods[late] = late_method
    cases = [training_case(label, backbone, method, precision, device) for label, method in methods.items()]
    cases.append(inference_case(FORWARD, backbone, METHODS["linear"], precision, device))
    cases.append(inference_case(FORWARD_ADAPTERS, backbone, METHODS[main], precision, device))
    load_before = load_average()
    rounds, warmup = (args.video_rounds, min(args.warmup, 1)) if backbone.is_video else (args.rounds, args.warmup)
    time_interleaved(cases, rounds, warmup)
    results = summarize(cases, backbone.batch, memory=not args.no_memory)
    by_name = {c.name: c for c in cases}
    pairs = [(main, "full"), (main, FORWARD), (FORWARD_ADAPTERS, FORWARD)]
    pairs += [(m, "full") for m in methods if m not in ("full", main)] + ([(late, FORWARD)] if late else [])
    return {
        "backbone": backbone.name,
        "kwargs": backbone.kwargs,
        "batch": backbone.batch,
        "input_shape": [backbone.batch, *backbone.sample_shape],
        "precision": precision,
        "adaptformer": main,
        "speed": by_name[main].info["speed"],
        "rounds": rounds,
        "warmup": warmup,
        "load_average": {"before": load_before, "after": load_average()},
        "results": results,
        "ratios": ratio_table(by_name, results, pairs),
    }


def merge_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One suite from N measurements of it: per case the median of the groups' medians (min: the overall minimum,
    memory: the largest peak); per ratio the median over the groups, with their range and every group's value."""
    if len(repeats) == 1:
        return repeats[0]
    merged = {**repeats[0], "repeats": len(repeats)}
    merged["load_average"] = {
        "before": repeats[0]["load_average"]["before"],
        "after": repeats[-1]["load_average"]["after"],
    }
    merged["results"] = {}
    for name, first in repeats[0]["results"].items():
        rows = [r["results"][name] for r in repeats]
        median = statistics.median(r["median_s"] for r in rows)
        row = {**first, "median_s": median, "min_s": min(r["min_s"] for r in rows)}
        row["samples_per_s"] = merged["batch"] / median
        if "peak_memory_mib" in first:
            row["peak_memory_mib"] = max(r["peak_memory_mib"] for r in rows)
        merged["results"][name] = row
    merged["ratios"] = {}
    for key, first in repeats[0]["ratios"].items():
        entry: dict[str, Any] = {}
        for quantity in first:
            values = [r["ratios"][key][quantity] for r in repeats]
            entry[quantity] = statistics.median(values)
            entry[f"{quantity}_per_repeat"] = values
        merged["ratios"][key] = entry
    return merged


def check_targets(suite: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, a, b, quantity, limit in TARGETS:
        a = suite["adaptformer"] if a == ADAPTFORMER else a
        ratio = suite["ratios"].get(f"{a}/{b}", {})
        value = ratio.get(quantity)
        row = {"target": name, "value": value, "limit": limit, "met": value is not None and value <= limit}
        if f"{quantity}_per_repeat" in ratio:
            row["per_repeat"] = ratio[f"{quantity}_per_repeat"]
        rows.append(row)
    return rows


def _spread(ratio: dict[str, Any], quantity: str) -> str:
    """`` (a-b)``: the range over repeats, when the suite was repeated."""
    values = ratio.get(f"{quantity}_per_repeat")
    return f" ({min(values):.3f}-{max(values):.3f})" if values else ""


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (one per backbone and precision), with machine, command and targets."""
    m = report["machine"]
    device = m["device"] + (f", {m['gpu']}" if "gpu" in m else "")
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, "
        f"flags {' '.join(m['cpu_flags'])}), device {device}; torch {m['torch']}, timm {m['timm']}, "
        f"Python {m['python']}.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    lines += [f"Note: {note}" for note in report.get("notes", [])]
    for suite in report["suites"]:
        unit = "clips/s" if len(suite["input_shape"]) == 5 else "img/s"
        load = suite["load_average"]
        repeats = suite.get("repeats", 1)
        measured = f"{suite['rounds']} interleaved rounds after {suite['warmup']} warm-up steps"
        if repeats > 1:
            measured = f"{repeats} groups of {measured}; times: median of the groups' medians"
        lines += [
            "",
            f"### {suite['backbone']}, {suite['precision']}, input {tuple(suite['input_shape'])}",
            "",
            f"Speed options (auto): `{json.dumps(suite['speed'])}`; {measured}; load average before/after "
            f"{load['before']} / {load['after']}.",
            "",
            f"| case | trainable params | median step (s) | min (s) | {unit} | peak memory (MiB) | time vs full |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in suite["results"].items():
            ratio = suite["ratios"].get(f"{name}/full", {}).get("time")
            ratio_text = "1.00" if name == "full" else (f"{ratio:.2f}" if ratio is not None else "")
            params = f"{r['trainable_params']:,}" if "trainable_params" in r else "(no grad)"
            mem = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "-"
            lines.append(
                f"| {name} | {params} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['samples_per_s']:.1f} | {mem} | "
                f"{ratio_text} |"
            )
        kind = "median of per-round ratios" + (f"; median (range) over {repeats} groups" if repeats > 1 else "")
        lines += ["", f"| ratio ({kind}) | time | peak memory |", "| --- | ---: | ---: |"]
        for key, r in suite["ratios"].items():
            memory = f"{r['memory']:.3f}{_spread(r, 'memory')}" if "memory" in r else "-"
            lines.append(f"| {key} | {r['time']:.3f}{_spread(r, 'time')} | {memory} |")
        if suite["precision"] == "bf16":
            lines += ["", "| target (bf16) | measured | met |", "| --- | ---: | :---: |"]
            for t in check_targets(suite):
                value = f"{t['value']:.3f}" if t["value"] is not None else "n/a"
                if "per_repeat" in t:
                    value += " (" + ", ".join(f"{v:.3f}" for v in t["per_repeat"]) + ")"
                lines.append(f"| {t['target']} | {value} | {'yes' if t['met'] else 'NO'} |")
    for group in report.get("options", []):
        lines += ["", f"### Option: {group['name']}", "", group["description"]]
        if "load_average" in group:
            load = group["load_average"]
            lines.append(
                f"{group['rounds']} interleaved rounds after {group['warmup']} warm-up steps; load average "
                f"before/after {load['before']} / {load['after']}."
            )
        lines += ["", "| case | median (s) | min (s) | peak memory (MiB) |", "| --- | ---: | ---: | ---: |"]
        for name, r in group["results"].items():
            mem = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "-"
            lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {mem} |")
        for key, r in group["ratios"].items():
            mem = f", memory {r['memory']:.3f}" if "memory" in r else ""
            rounds = r.get("time_per_round")
            spread = f" (rounds {min(rounds):.3f}-{max(rounds):.3f})" if rounds else ""
            lines.append(f"\n{key}: time {r['time']:.3f}{spread}{mem}")
        for key, value in group.get("extra", {}).items():
            lines.append(f"\n{key}: {value}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, 2 rounds (CI: checks that the harness works)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print the report as markdown tables")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated autocast precisions to measure")
    p.add_argument("--batch", type=int, default=8, help="image batch size")
    p.add_argument("--video-batch", type=int, default=8, help="video batch size (clips of 8 frames)")
    p.add_argument(
        "--only", choices=("image", "video", "video-swin"), help="measure only the image, video ViT or Video Swin"
    )
    p.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds (default 7, quick 2)")
    p.add_argument("--video-rounds", type=int, default=None, help="rounds for the video ViT (default 3, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per case first (default 2, quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; quick: 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--repeat", type=int, default=1, help="measure each suite this many times (separate groups); report medians"
    )
    p.add_argument("--options", action="store_true", help="also measure each speed option side by side")
    p.add_argument("--compile", action="store_true", help="with --options: also measure torch.compile (slow)")
    p.add_argument(
        "--groups",
        help="comma-separated option groups to measure (implies --options; default: all); known:\n  "
        + "\n  ".join(GROUPS),
    )
    p.add_argument(
        "--skip-suites", action="store_true", help="skip the per-method suites (with --options: the groups only)"
    )
    args = p.parse_args(argv)
    if args.groups is not None:
        args.groups = [name.strip() for name in args.groups.split(",") if name.strip()]
        unknown = [name for name in args.groups if name not in GROUPS]
        if unknown or not args.groups:
            p.error(f"unknown option groups {unknown}; known: {', '.join(map(repr, GROUPS))}")
        if "compile" in args.groups and not args.compile:
            p.error("the option group 'compile' needs --compile")
        if args.quick and set(args.groups) & set(FULL_SIZE_ONLY):
            p.error(f"{' and '.join(FULL_SIZE_ONLY)} need the full-size backbone (not --quick)")
        args.options = True
    if args.skip_suites and not args.options:
        p.error("--skip-suites without --options (or --groups) would measure nothing")
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 7)
    args.video_rounds = args.video_rounds if args.video_rounds is not None else (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device(args.device)
    # Tiny models gain nothing from a second thread, and on a busy machine OpenMP barriers make them crawl.
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        torch.set_num_threads(threads)
    logging.getLogger("adaptformer").setLevel(logging.WARNING)
    if args.compile:  # a fresh inductor cache, so the reported compile time is a cold compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
    backbones = quick_backbones() if args.quick else full_backbones(args.batch, args.video_batch)
    notes = []
    missing = video_available()
    if missing and args.only != "image":
        note = f"video ViT skipped: {missing}"
        print(note)
        notes.append(note)
    if missing:
        backbones = [b for b in backbones if not b.is_video]
    if args.only is not None:
        backbones = [b for b in backbones if kind(b) == args.only]
    command = "python benchmarks/bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"machine": machine_info(device), "command": command.strip(), "notes": notes}
    report["suites"] = [
        merge_repeats([run_suite(b, precision, args, device) for _ in range(args.repeat)])
        for b in ([] if args.skip_suites else backbones)
        for precision in args.precisions.split(",")
    ]
    report["targets"] = [
        {"backbone": s["backbone"], "rows": check_targets(s)} for s in report["suites"] if s["precision"] == "bf16"
    ]

    def save() -> None:  # after the suites and after every option group, so a failure late in a long run loses little
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    save()
    if args.options:
        report["options"] = []
        run_options(backbones[0], args, device, report["options"], save, args.groups)
    if args.markdown:
        print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
