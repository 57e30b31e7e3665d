"""1,024 registered tasks, a bounded number resident: the real AdapterStore under a request stream.

For each N (tasks registered: adapter folders under one root) and each ``--max-resident`` R, a stream of requests
whose tasks are drawn from the popularity (uniform or Zipf(1.1), seeded) runs through ``AdapterStore`` (the class
``serve --adapter-root`` uses) in batches of B requests in arrival order. A batch is cut into consecutive groups of at
most R distinct tasks (a group's tasks are leased and made resident: ``store.using``, loading from the host cache or
the folder and evicting the least recently used; then one mixed-batch forward under ``store.model_lock``), as a
batcher with R device slots can run it. Side by side in one run (interleaved, the same batches):

- ``resident-R``: a store with ``max_resident=R`` and ``max_cached=--max-cached`` (cold at the start: the warm-up
  batches fill it, the timed ones measure it as it runs);
- ``all``: a store with every task resident (loaded before timing): the goal's reference.

Reported: requests/s of each over the timed batches and their ratio; the store's hits (device, host), misses (read
from the folder) and evictions during them; the parameter bytes the multi-task model holds (backbone + resident
adapters) against one single-task model's; the host cache's bytes. On a CPU-only run "device" and "host" memory are
the same RAM: the tiers are the store's bookkeeping (what is attached vs kept detached), the bytes are what each holds.

    python benchmarks/residency.py --tasks 1024 --max-resident 64 --popularity zipf --json reports/bench/res.json
    python benchmarks/residency.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Case, load_average, machine_info, median_ratio, time_interleaved
from multitask_scale import unique_bytes
from taskset import add_taskset_arguments, stream, write_tasks

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.serve.adapters import AdapterStore
from adaptformer.precision import resolve_precision
from adaptformer.saving import build_adapter_backbone, load_adapter, read_adapter_config


def groups(names: list[str], slots: int) -> list[list[int]]:
    """Consecutive runs of ``names``' indices with at most ``slots`` distinct names each."""
    out: list[list[int]] = [[]]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name not in seen and len(seen) == slots:
            out.append([])
            seen = set()
        seen.add(name)
        out[-1].append(i)
    return out


class Runner:
    """A store over ``root`` and a stream of batches through it."""

    def __init__(self, root: Path, first: Path, resident: int, cached: int, batch: int, autocast: Any) -> None:
        info = read_adapter_config(first)
        self.model = MultiTaskModel(build_adapter_backbone(first, info=info), info.spec.backbone, batch).eval()
        self.store = AdapterStore(self.model, root, max_resident=resident, max_cached=cached)
        self.loop = asyncio.new_event_loop()
        self.autocast = autocast
        self.requests = 0

    async def _group(self, x: torch.Tensor, names: list[str]) -> None:
        async with self.store.using(names):
            with self.store.model_lock, torch.no_grad(), self.autocast():
                self.model(x, self.model.task_ids(names))

    def run(self, x: torch.Tensor, names: list[str]) -> None:
        for rows in groups(names, self.store.max_resident):
            self.loop.run_until_complete(self._group(x[rows], [names[i] for i in rows]))
        self.requests += len(names)

    def preload(self, names: list[str]) -> None:
        for name in names:
            self.loop.run_until_complete(self.store.load(name))

    def cache_bytes(self) -> dict[str, int]:
        rows = self.store.listing()
        return {state: sum(r.get("bytes", 0) for r in rows if r["state"] == state) for state in ("resident", "cached")}


def measure(n: int, resident: int, kind: str, root: Path, dirs: list[Path], args: argparse.Namespace) -> dict:
    autocast = resolve_precision(args.precision, torch.device("cpu")).autocast
    names = [d.name for d in dirs]
    size = 32 if args.quick else build_adapter_backbone(dirs[0]).pretrained_cfg["input_size"][1]
    batches = args.warmup + args.rounds
    ids = stream(kind, n, batches * args.batch, seed=args.seed).view(batches, args.batch)
    x = torch.randn(args.batch, 3, size, size)
    start = time.perf_counter()
    bounded = Runner(root, dirs[0], resident, args.max_cached, args.batch, autocast)
    every = Runner(root, dirs[0], n, 0, args.batch, autocast)
    every.preload(names)
    load_s = time.perf_counter() - start

    def step(runner: Runner) -> Any:
        def run() -> None:
            batch = ids[runner.requests // args.batch].tolist()
            runner.run(x, [names[k] for k in batch])

        return run

    cpu = torch.device("cpu")
    cases = [Case(f"resident-{resident}", step(bounded), cpu), Case("all", step(every), cpu)]
    for case in cases:  # warm-up batches: the bounded store fills its tiers
        for _ in range(args.warmup):
            case.run()
    before = asdict(bounded.store.stats)
    time_interleaved(cases, args.rounds, 0)
    after = asdict(bounded.store.stats)
    seconds = {c.name: sum(c.times) for c in cases}
    one = unique_bytes(load_adapter(build_adapter_backbone(dirs[0]), dirs[0]))
    tiers = bounded.cache_bytes()
    return {
        "tasks": n,
        "max_resident": resident,
        "max_cached": args.max_cached,
        "popularity": kind,
        "timed_requests": args.rounds * args.batch,
        "distinct_tasks_per_batch": sum(len(set(b.tolist())) for b in ids[args.warmup :]) / args.rounds,
        "requests_per_s": {name: args.rounds * args.batch / s for name, s in seconds.items()},
        "bounded/all_requests_per_s": seconds["all"] / seconds[cases[0].name],
        "median_batch_ratio": median_ratio(cases[1], cases[0]),
        "store_counters": {k: after[k] - before[k] for k in after},
        "held_mb": unique_bytes(bounded.model) / 2**20,
        "all_resident_held_mb": unique_bytes(every.model) / 2**20,
        "one_model_mb": one / 2**20,
        "held/one_model": unique_bytes(bounded.model) / one,
        "host_cache_mb": tiers["cached"] / 2**20,
        "resident_adapters_mb": tiers["resident"] / 2**20,
        "setup_s": load_s,
        "load_average": load_average(),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| tasks N | resident R | popularity | distinct tasks / batch | req/s R resident | req/s all resident "
             "| ratio | device hits / host hits / misses / evictions | model held / one model | host cache MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["results"]:
        rate, c = list(r["requests_per_s"].values()), r["store_counters"]
        lines.append(f"| {r['tasks']} | {r['max_resident']} | {r['popularity']} | {r['distinct_tasks_per_batch']:.1f} "
                     f"| {rate[0]:.2f} | {rate[1]:.2f} | {r['bounded/all_requests_per_s']:.3f} | {c['device_hits']} / "
                     f"{c['host_hits']} / {c['misses']} / {c['device_evictions']} | {r['held/one_model']:.3f} | "
                     f"{r['host_cache_mb']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_taskset_arguments(parser)
    parser.add_argument("--tasks", default="64,256,1024", help="comma-separated N (tasks registered)")
    parser.add_argument("--max-resident", default="8,64", help="comma-separated R (the store's max_resident)")
    parser.add_argument("--max-cached", type=int, default=1024, help="the store's host cache")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (they fill the bounded store)")
    parser.add_argument("--seed", type=int, default=0, help="of the request stream")
    parser.add_argument("--quick", action="store_true", help="a tiny backbone, N = 4, R = 2, batch 8: checks it runs")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the table")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.max_resident, args.batch, args.rounds, args.warmup = "4", "2", 8, 2, 1
        args.precision, args.max_cached = "fp32", 2
    results, write_s = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for n in map(int, args.tasks.split(",")):
            start = time.perf_counter()
            root = Path(folder) / f"n{n}"
            dirs = write_tasks(root, args.backbone, args.method, n, args.classes, args.depth, args.quick)
            write_s[n] = time.perf_counter() - start
            for resident in map(int, args.max_resident.split(",")):
                if resident < n:
                    results += [measure(n, resident, kind, root, dirs, args) for kind in args.popularity.split(",")]
    report = {"backbone": args.backbone + (" (tiny)" if args.quick else ""), "depth": args.depth,
              "method": args.method, "classes": args.classes, "batch": args.batch, "precision": args.precision,
              "rounds": args.rounds, "warmup": args.warmup, "command": "python " + " ".join(sys.argv),
              "write_s": write_s, "machine": machine_info(torch.device("cpu")), "results": results}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report) if args.markdown else json.dumps(report))


if __name__ == "__main__":
    main()
