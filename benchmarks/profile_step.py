"""Where the time of one training step (or no-grad forward) goes: torch.profiler's self CPU time per operator.

    .venv/bin/python benchmarks/profile_step.py [--method adaptformer-64] [--precision bf16] [--steps 3] [--top 20]
    .venv/bin/python benchmarks/profile_step.py --forward       # the no-grad eval forward (linear probe's model)
    .venv/bin/python benchmarks/profile_step.py --quick         # a tiny ViT (CI: the script runs)

The case is built exactly as in bench.py (``create_model`` + ``apply_speed`` with the auto options, batch 8, random
input), warmed up, then profiled over ``--steps`` steps. Prints JSON: per operator its self time in ms per step and
its share of the profiled total, most expensive first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import full_backbones, quick_backbones
from cases import METHODS, inference_case, training_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="adaptformer-64", choices=tuple(METHODS))
    parser.add_argument("--forward", action="store_true", help="profile the no-grad forward instead of a step")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="the tiny image ViT of bench.py --quick, one thread")
    args = parser.parse_args()
    if args.quick:
        torch.set_num_threads(1)
    backbone = (quick_backbones() if args.quick else full_backbones(8, 8))[0]
    device = torch.device("cpu")
    if args.forward:
        case = inference_case("forward", backbone, METHODS["linear"], args.precision, device)
    else:
        case = training_case(args.method, backbone, METHODS[args.method], args.precision, device)
    for _ in range(2):
        case.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            case.run()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    top = {
        e.key: {
            "ms_per_step": round(e.self_cpu_time_total / 1e3 / args.steps, 3),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in events[: args.top]
    }
    name = "no-grad forward" if args.forward else f"{args.method} training step"
    print(
        json.dumps(
            {
                "case": f"{name}, {backbone.name}, {args.precision}, batch {backbone.batch}",
                "ms_per_step": round(total / 1e3 / args.steps, 1),
                "operators": top,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
