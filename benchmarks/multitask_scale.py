"""N = 1 ... 1,024 tasks all resident: the mixed batch against per-task sub-batching and one model swapped per task.

For each N and task popularity (uniform, Zipf(1.1)), one batch of B requests whose tasks are drawn from the
popularity (seeded), no-grad forwards side by side in one run (interleaved rounds, medians; ``measure``):

- ``mixed``: the MultiTaskModel with all N tasks attached, one forward of the mixed batch;
- ``subbatch``: the same model once per task present, on that task's rows (what PEFT's mixed-adapter batches do);
- ``swap``: one single-task model; per task present, its adapter and head are loaded into it (``load_state_dict``
  from host memory) before its rows run (one model per task, swapped in);
- ``single``: one single-task model's forward of all B samples (the reference: the issue's goal is mixed at N = 64
  within 1.2x of it).

Memory: the distinct parameter and buffer bytes the multi-task model holds, against one single-task model's.

    python benchmarks/multitask_scale.py --backbone vit_base_patch16_224 --tasks 64 --json reports/bench/scale_b16.json
    python benchmarks/multitask_scale.py --depth 2 --tasks 1,8,64,256,1024 --markdown   # ViT-B/16's first 2 blocks
    python benchmarks/multitask_scale.py --quick                                         # tiny, N = 1, 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Case, load_average, machine_info, median_ratio, storage_bytes, time_interleaved
from taskset import add_taskset_arguments, stream, write_tasks

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.precision import resolve_precision
from adaptformer.saving import build_adapter_backbone, load_adapter

CASES = ("mixed", "subbatch", "swap", "single")


def unique_bytes(*models: torch.nn.Module) -> int:
    seen = {id(t): t for m in models for t in (*m.parameters(), *m.buffers())}
    return storage_bytes(seen.values())


def build(dirs: list[Path], batch: int) -> tuple[MultiTaskModel, torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """The multi-task model of every folder, one single-task model (task 0's) and each task's own tensors."""
    multi = MultiTaskModel.from_adapters(dirs, max_batch=batch).eval()
    single = load_adapter(build_adapter_backbone(dirs[0]), dirs[0]).eval()
    own = [{k: p.detach().clone() for k, p in multi.task_model(n).named_parameters() if p.requires_grad}
           for n in multi.tasks]  # fmt: skip
    return multi, single, own


def measure(n: int, kind: str, built: tuple, args: argparse.Namespace) -> dict[str, Any]:
    multi, single, own = built
    size = single.pretrained_cfg["input_size"][1] if not args.quick else 32
    x = torch.randn(args.batch, 3, size, size)
    ids = stream(kind, n, args.batch, seed=args.seed)
    present = torch.unique(ids).tolist()
    rows = {k: (ids == k).nonzero().squeeze(1) for k in present}
    autocast = resolve_precision(args.precision, torch.device("cpu")).autocast

    def swap() -> None:
        for k, r in rows.items():
            _, unexpected = single.load_state_dict(own[k], strict=False)
            assert not unexpected, unexpected
            single(x[r])

    def forward(run: Any) -> Any:
        def step() -> None:
            with torch.no_grad(), autocast():
                run()

        return step

    cases = [
        Case("mixed", forward(lambda: multi(x, ids)), torch.device("cpu")),
        Case("subbatch", forward(lambda: [multi(x[r], ids[r]) for r in rows.values()]), torch.device("cpu")),
        Case("swap", forward(swap), torch.device("cpu")),
        Case("single", forward(lambda: single(x)), torch.device("cpu")),
    ]
    cases = [c for c in cases if c.name in args.cases]
    time_interleaved(cases, args.rounds, args.warmup)
    by = {c.name: c for c in cases}
    held, one = unique_bytes(multi), unique_bytes(single)
    return {
        "tasks": n,
        "popularity": kind,
        "tasks_in_batch": len(present),
        "median_s": {c.name: sorted(c.times)[len(c.times) // 2] for c in cases},
        **{f"{c}/single": median_ratio(by[c], by["single"]) for c in CASES[:3] if c in by},
        "held_mb": held / 2**20,
        "one_model_mb": one / 2**20,
        "held/one_model": held / one,
        "load_average": load_average(),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| tasks N | popularity | tasks in the batch | mixed / single | sub-batching / single | swap / single "
             "| single-task forward s | model held / one model |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["results"]:
        ratio = {c: f"{r[f'{c}/single']:.3f}" if f"{c}/single" in r else "-" for c in CASES[:3]}
        lines.append(f"| {r['tasks']} | {r['popularity']} | {r['tasks_in_batch']} | {ratio['mixed']} | "
                     f"{ratio['subbatch']} | {ratio['swap']} | {r['median_s']['single']:.3f} | "
                     f"{r['held/one_model']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_taskset_arguments(parser)
    parser.add_argument("--tasks", default="1,8,64,256,1024", help="comma-separated N (tasks registered, all resident)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="of the batch's task draw")
    parser.add_argument("--cases", default=",".join(CASES[:3]),
                        help="comma-separated strategies timed beside single: mixed, subbatch, swap")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a tiny backbone, N = 1, 2, batch 8: checks it runs")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the table")
    args = parser.parse_args()
    args.cases = [*args.cases.split(","), "single"]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: {unknown} unknown; expected some of {list(CASES[:3])}")
    if args.quick:
        args.tasks, args.batch, args.rounds, args.warmup, args.precision = "1,2", 8, 2, 0, "fp32"
    results, build_s = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for n in map(int, args.tasks.split(",")):
            start = time.perf_counter()
            dirs = write_tasks(Path(folder) / f"n{n}", args.backbone, args.method, n, args.classes, args.depth,
                               args.quick)  # fmt: skip
            built = build(dirs, args.batch)
            build_s[n] = time.perf_counter() - start
            results += [measure(n, kind, built, args) for kind in args.popularity.split(",")]
            del built
    report = {"backbone": args.backbone + (" (tiny)" if args.quick else ""), "depth": args.depth,
              "method": args.method, "classes": args.classes, "batch": args.batch, "precision": args.precision,
              "rounds": args.rounds, "command": "python " + " ".join(sys.argv), "build_s": build_s,
              "machine": machine_info(torch.device("cpu")), "results": results}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report) if args.markdown else json.dumps(report))


if __name__ == "__main__":
    main()
