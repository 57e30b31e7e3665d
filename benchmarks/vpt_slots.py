"""VPT tasks with different prompt counts in one mixed-task batch: masked prompt slots against groups per prompt count.

Two ways to run VPT tasks of different prompt counts P (and rows of other tasks) through one frozen backbone:

- ``masked`` (what :mod:`adaptformer.methods.vpt` does): ONE forward; every row gets max(P) prompt slots, the slots a
  row does not use are masked out as attention keys (an additive mask in the blocks' attention);
- ``grouped``: one forward per prompt count, each over the rows of the tasks with that count (no mask; rows without
  prompts form their own group): ``MultiTaskModel`` on each group's rows;
- ``single``: one VPT task's own single-task model on all B rows (the reference the ratios divide by).

Side by side in one run (interleaved rounds, median; ``measure.time_interleaved``), no-grad forwards, randomly
initialised backbones (init_seed 0) with random prompts and heads, tasks round-robin over the batch:

    python benchmarks/vpt_slots.py --json reports/bench/vpt_slots_cpu.json --markdown   # tiny fp32 + ViT-B/16 bf16
    python benchmarks/vpt_slots.py --quick                                              # tiny only, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Case, machine_info, median_ratio, time_interleaved

from adaptformer import create_model, save_adapter
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.methods import VPTConfig
from adaptformer.precision import resolve_precision
from adaptformer.saving import create_model_from_adapter

# model name -> (backbone, its kwargs, image size, batch, precision)
MODELS = {
    "tiny": ("vit_base_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
             32, 64, "fp32"),
    "vit_b16": ("vit_base_patch16_224", {}, 224, 16, "bf16"),
}  # fmt: skip
# mix name -> the prompt counts of its VPT tasks (deep); every mix also holds a linear probe's rows
MIXES = {"close": (8, 10, 12), "spread": (1, 10, 50)}


def _task(folder: Path, backbone: str, kwargs: dict, method: Any, seed: int) -> Path:
    model = create_model(backbone, 100, method=method, init_seed=0, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return save_adapter(model, folder / f"task{seed}")


def measure(model_name: str, mix: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    backbone, kwargs, size, batch, precision = MODELS[model_name]
    counts = MIXES[mix]
    dirs = [_task(folder, backbone, kwargs, VPTConfig(num_tokens=p), k) for k, p in enumerate(counts)]
    dirs.append(_task(folder, backbone, kwargs, "linear", len(counts)))
    multi = MultiTaskModel.from_adapters(dirs, [f"p{p}" for p in counts] + ["linear"], max_batch=batch).eval()
    single = create_model_from_adapter(dirs[0]).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(batch) % len(dirs)
    by_count = [*counts, 0]
    groups = [(ids[..., None] == torch.tensor([k for k, c in enumerate(by_count) if c == p])).any(1).nonzero()[:, 0]
              for p in sorted(set(by_count))]  # fmt: skip
    autocast = resolve_precision(precision, torch.device("cpu")).autocast

    def forward(run: Any) -> Any:
        def step() -> None:
            with torch.no_grad(), autocast():
                run()

        return step

    cpu = torch.device("cpu")
    cases = [
        Case("masked", forward(lambda: multi(x, ids)), cpu),
        Case("grouped", forward(lambda: [multi(x[r], ids[r]) for r in groups]), cpu),
        Case("single", forward(lambda: single(x)), cpu),
    ]
    time_interleaved(cases, args.rounds, args.warmup)
    by = {c.name: c for c in cases}
    return {
        "model": model_name, "mix": mix, "prompt_counts": list(counts), "batch": batch, "precision": precision,
        "median_s": {c.name: sorted(c.times)[len(c.times) // 2] for c in cases},
        "masked/single": median_ratio(by["masked"], by["single"]),
        "grouped/single": median_ratio(by["grouped"], by["single"]),
        "masked/grouped": median_ratio(by["masked"], by["grouped"]),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = ["| model | prompt counts (+ a probe) | batch, precision | masked / single | grouped / single "
             "| masked / grouped |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["results"]:
        lines.append(f"| {r['model']} | {r['prompt_counts']} | {r['batch']}, {r['precision']} | "
                     f"{r['masked/single']:.3f} | {r['grouped/single']:.3f} | {r['masked/grouped']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,vit_b16", help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="the tiny model only, 2 rounds: checks it runs")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the table")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rounds, args.warmup = "tiny", 2, 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        results = [measure(m, mix, args, Path(folder) / f"{m}-{mix}") for m in args.models.split(",") for mix in MIXES]
    report = {"rounds": args.rounds, "machine": machine_info(torch.device("cpu")), "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report) if args.markdown else json.dumps(report))


if __name__ == "__main__":
    main()
