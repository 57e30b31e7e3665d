"""Corruption benchmark (``adaptformer robustness``): what each of ImageNet-C's corruptions costs per image at the
digits' input size (32 x 32) and at 224 x 224, and evaluation throughput (images/s) with and without corruption, by
the number of data-loader workers the corruptions run in.

    python benchmarks/corruptions.py --json reports/bench/corruptions_cpu.json --markdown
    python benchmarks/corruptions.py --quick                                      # tiny sizes (a smoke run)

Per corruption: ``corrupt_image`` (the reference implementation, imagecorruptions-imaug, seeded per image) on
``--images`` different random images, after one warm-up call (glass blur compiles its numba kernel on the first call
of each process, reported apart as ``first_call_ms``); median milliseconds per image at severity 3.

Evaluation: ``evaluate_corruptions`` (one process, fp32, batch 64) over ``--eval-images`` images of a dataset at the
model's input size: the digits adapter's backbone (``vit_shapes_patch8_32`` on ``digits``, 32 px) and a ViT-S/16 at
224 px (random weights: timing does not depend on them) on ``synthetic`` 256 px images resized and centre-cropped as
evaluation does; clean only, then clean plus the 15 corruptions at severity 3, for each worker count; images/s counts
every image predicted (clean and corrupted copies alike), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptformer import create_model
from adaptformer.data.shift import COMMON_CORRUPTIONS, CORRUPTIONS, corrupt_image
from adaptformer.engine.distributed import init_distributed
from adaptformer.engine.splits import DataSpec
from adaptformer.inference.robustness import RobustnessSettings
from adaptformer.inference.robustness.evaluation import evaluate_corruptions


def corruption_costs(sizes: list[int], images: int, severity: int) -> dict[str, dict[str, Any]]:
    """Median ms per image of every corruption at each size, and the first call's ms (numba compiles glass blur)."""
    out: dict[str, dict[str, Any]] = {}
    for name in CORRUPTIONS:
        out[name] = {}
        for size in sizes:
            rng = np.random.default_rng(size)
            batch = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(images)]
            start = time.perf_counter()
            corrupt_image(batch[0], name, severity, seed=0)
            first = time.perf_counter() - start
            times = []
            for k, image in enumerate(batch):
                start = time.perf_counter()
                corrupt_image(image, name, severity, seed=k + 1)
                times.append(time.perf_counter() - start)
            out[name][str(size)] = {"ms": 1000 * statistics.median(times), "first_call_ms": 1000 * first}
        print(name, {s: round(v["ms"], 2) for s, v in out[name].items()}, file=sys.stderr)
    return out


def throughput(
    backbone: str, spec: DataSpec, num_images: int, workers: list[int], corruptions: tuple[str, ...], repeats: int,
    **kwargs: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """Images/s of ``evaluate_corruptions`` clean and corrupted, per worker count (best of ``repeats``)."""
    torch.manual_seed(0)
    model = create_model(backbone, 10, method="adaptformer", **kwargs).eval()
    ctx = init_distributed("cpu")
    rows = []
    for corrupted in (False, True):
        for count in workers:
            settings = RobustnessSettings(corruptions=corruptions, severities=(3,), synthetic=corrupted,
                                          num_samples=num_images, batch_size=64, precision="fp32",
                                          num_workers=count)  # fmt: skip
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                clean, _ = evaluate_corruptions(model, None, spec, "test", ctx, settings)
                best = min(best, time.perf_counter() - start)
            predicted = clean["n"] * (1 + (len(corruptions) if corrupted else 0))
            rows.append({"backbone": backbone, "corrupted": corrupted, "workers": count, "images": predicted,
                         "seconds": best, "images_per_s": predicted / best})  # fmt: skip
            print(rows[-1], file=sys.stderr)
    return rows


def markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    lines = ["| corruption | " + " | ".join(f"{s} px ms/image" for s in sizes) + " |",
             "| --- | " + " | ".join("---:" for _ in sizes) + " |"]  # fmt: skip
    for name, by_size in report["corruptions"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_size[str(s)]['ms']:.2f}" for s in sizes) + " |")
    lines += ["", "| backbone | input | corrupted | workers | images/s |", "| --- | --- | --- | ---: | ---: |"]
    for row in report["throughput"]:
        lines.append(f"| {row['backbone']} | {row['input']} | {'15 x sev 3' if row['corrupted'] else 'clean'} | "
                     f"{row['workers']} | {row['images_per_s']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="images per corruption and size (default: 20)")
    parser.add_argument("--eval-images", type=int, default=256, help="clean images per evaluation (default: 256)")
    parser.add_argument("--workers", default="0,2", help="loader worker counts (default: 0,2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed evaluations per case, best kept (default: 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 2 images, 8 evaluation images, 32 px only")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sizes = [32] if args.quick else [32, 224]
    images, eval_images = (2, 8) if args.quick else (args.images, args.eval_images)
    workers = [int(w) for w in args.workers.split(",")]
    corruptions = COMMON_CORRUPTIONS[:2] if args.quick else COMMON_CORRUPTIONS
    report: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/corruptions.py", *(argv if argv is not None else sys.argv[1:])]),
        "torch_threads": torch.get_num_threads(), "sizes": sizes, "severity": 3,
        "corruptions": corruption_costs(sizes, images, 3), "throughput": [],
    }  # fmt: skip
    digits = DataSpec("digits")
    for row in throughput("vit_shapes_patch8_32", digits, eval_images, workers, corruptions, args.repeats,
                          checkpoint="timm"):  # fmt: skip
        report["throughput"].append({**row, "input": "32 px digits"})
    if not args.quick:
        big = DataSpec("synthetic", options={"num_samples": eval_images, "image_size": 256})
        for row in throughput("vit_small_patch16_224", big, eval_images, workers, corruptions, args.repeats,
                              init_seed=0):  # fmt: skip
            report["throughput"].append({**row, "input": "224 px (256 px synthetic, resized + cropped)"})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
