"""One frozen backbone, N tasks: time and memory of the multi-task model against N single-task models.

For each N, side by side in one run (interleaved rounds, median; ``measure.time_interleaved``), no-grad forwards:

- ``mixed``: one mixed-task batch of B samples (tasks round-robin) through the MultiTaskModel;
- ``separate``: the same samples through N single-task models, each on its own task's samples;
- ``switching``: the MultiTaskModel on per-task sub-batches (one forward per task);
- ``single``: one single-task model on all B samples (the reference of the issue's target: mixed <= 1.15 x single).

Memory: bytes of the distinct parameters and buffers of the MultiTaskModel, of one single-task model and of the N
single-task models (each holds its own backbone).

    python benchmarks/multitask.py --json reports/bench/multitask_cpu.json --markdown   # ViT-B/16, AF-64, bf16
    python benchmarks/multitask.py --quick                                               # tiny, N = 1, 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Case, machine_info, median_ratio, storage_bytes, time_interleaved

from adaptformer import AdaptFormerConfig, create_model, save_adapter
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.precision import resolve_precision
from adaptformer.saving import build_adapter_backbone, load_adapter

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def _unique_bytes(*models: torch.nn.Module) -> int:
    seen = {id(t): t for m in models for t in (*m.parameters(), *m.buffers())}
    return storage_bytes(seen.values())


def measure(n: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    device = torch.device(args.device)
    kwargs = TINY if args.quick else {}
    # one randomly initialised backbone (init_seed 0) built once; each task's adapter and head: its initial values
    # plus its own random offsets (building a ViT-B per task would take minutes at N = 64)
    model = create_model(args.backbone, 100, method=AdaptFormerConfig(bottleneck=args.bottleneck), init_seed=0,
                         **kwargs)  # fmt: skip
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    dirs = []
    for k in range(n):
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(initial[name] + 0.02 * torch.randn(p.shape, generator=generator))
        dirs.append(save_adapter(model, folder / f"n{n}" / f"task{k}"))
    multi = MultiTaskModel.from_adapters(dirs, max_batch=args.batch).to(device).eval()
    backbone = build_adapter_backbone(dirs[0])  # N separate models: copies of one built backbone, each its adapter
    singles = [load_adapter(copy.deepcopy(backbone), d).to(device).eval() for d in dirs]
    size = multi.task_model(multi.tasks[0]).pretrained_cfg["input_size"][1] if not args.quick else 32
    x = torch.randn(args.batch, 3, size, size, device=device)
    ids = torch.arange(args.batch) % n
    rows = [(ids == k).nonzero().squeeze(1).to(device) for k in range(n)]
    autocast = resolve_precision(args.precision, device).autocast

    def forward(run: Any) -> Any:
        def step() -> None:
            with torch.no_grad(), autocast():
                run()

        return step

    cases = [
        Case("mixed", forward(lambda: multi(x, ids)), device),
        Case("separate", forward(lambda: [m(x[r]) for m, r in zip(singles, rows, strict=True)]), device),
        Case("switching", forward(lambda: [multi(x[r], ids[r.cpu()]) for r in rows]), device),
        Case("single", forward(lambda: singles[0](x)), device),
    ]
    time_interleaved(cases, args.rounds, args.warmup)
    by = {c.name: c for c in cases}
    return {
        "tasks": n,
        "median_s": {c.name: sorted(c.times)[len(c.times) // 2] for c in cases},
        "mixed/single": median_ratio(by["mixed"], by["single"]),
        "separate/single": median_ratio(by["separate"], by["single"]),
        "switching/single": median_ratio(by["switching"], by["single"]),
        "memory_mb": {
            "multitask": _unique_bytes(multi) / 2**20,
            "one_single": _unique_bytes(singles[0]) / 2**20,
            "n_singles": _unique_bytes(*singles) / 2**20,
        },
        "multitask/one_single_memory": _unique_bytes(multi) / _unique_bytes(singles[0]),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| tasks N | mixed batch / single-task forward | N separate models / single | task switching / single "
             "| multi-task model memory / one model | N models memory / one model |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["results"]:
        m = r["memory_mb"]
        lines.append(f"| {r['tasks']} | {r['mixed/single']:.3f} | {r['separate/single']:.3f} | "
                     f"{r['switching/single']:.3f} | {r['multitask/one_single_memory']:.3f} | "
                     f"{m['n_singles'] / m['one_single']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--bottleneck", type=int, default=64)
    parser.add_argument("--tasks", default="1,2,4,8,16", help="comma-separated N")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tiny backbone, N = 1, 2, batch 8: checks it runs")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the table")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.batch, args.rounds, args.warmup, args.precision = "1,2", 8, 2, 0, "fp32"
    with tempfile.TemporaryDirectory() as folder:
        results = [measure(int(n), args, Path(folder)) for n in args.tasks.split(",")]
    report = {"backbone": args.backbone + (" (tiny)" if args.quick else ""), "bottleneck": args.bottleneck,
              "batch": args.batch, "precision": args.precision, "rounds": args.rounds,
              "machine": machine_info(torch.device(args.device)), "results": results}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report) if args.markdown else json.dumps(report))


if __name__ == "__main__":
    main()
