"""Consistency regularisation's cost (``optim.consistency``, PACE): the training step's time with the pace variant
(two noisy passes of each batch in one forward) and the fast variant (one pass against the previous epoch's logits)
relative to plain training, measured side by side in one run.

    python benchmarks/consistency.py --json reports/bench/consistency_cpu.json --markdown
    python benchmarks/consistency.py --quick          # a tiny model (a smoke run)

Per method (AdaptFormer-8, Adapter+-8, LoRA-8) one model is built and the three losses take turns on it, step by
step in a rotating order (plain, pace, fast; pace, fast, plain; ...), so that a machine's drifting load and any
effect of what ran just before fall on all three alike. A step is what
``train_one_epoch`` does per micro-batch: forward, loss, backward, SGD step, under the precision given. The median of
``--steps`` timed steps after ``--warmup`` untimed ones is kept per variant; the ratio is that median over plain's.
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

import torch
import torch.nn.functional as F

from adaptformer import AdapterPlusConfig, AdaptFormerConfig, LoRAConfig, create_model
from adaptformer.engine.config.consistency import ConsistencyConfig
from adaptformer.engine.consistency import Consistency
from adaptformer.precision import Precision

METHODS = {
    "adaptformer8": AdaptFormerConfig(bottleneck=8),
    "adapter_plus8": AdapterPlusConfig(bottleneck=8),
    "lora8": LoRAConfig(rank=8),
}
VARIANTS = ("plain", "pace", "fast")


def _steps(method: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2} if args.quick else {}
    model = create_model(args.backbone, 100, method=method, init_seed=0, **kwargs).train()
    size = 32 if args.quick else 224
    x = torch.randn(args.batch, 3, size, size)
    y = torch.randint(0, 100, (args.batch,))
    ids = torch.arange(args.batch)
    precision = Precision(args.precision, "cpu")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = {}
    for variant in ("pace", "fast"):
        losses[variant] = Consistency(model, ConsistencyConfig(variant=variant), seed=0, rank=0,
                                      num_samples=args.batch, num_classes=100)  # fmt: skip
        losses[variant].remove()  # hooks are put on for that variant's steps only

    def step(variant: str, epoch: int) -> float:
        start = time.perf_counter()
        if variant == "plain":
            with precision.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        else:
            losses[variant].install()
            loss = losses[variant].loss(model, x, y, ids, F.cross_entropy, precision, epoch)
            losses[variant].remove()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for k in range(args.warmup + args.steps):
        for variant in VARIANTS[k % 3 :] + VARIANTS[: k % 3]:  # each variant first, second and third in turn
            seconds = step(variant, k)  # epoch k: the fast variant has the previous step's logits from k >= 1
            if k >= args.warmup:
                times[variant].append(seconds)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm backbone (default: ViT-B/16)")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch (default: 8)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="autocast (default: bf16)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (default: 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default: 2)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    parser.add_argument("--quick", action="store_true", help="a tiny ViT at 32 px (a smoke run)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args(argv)
    rows = []
    for name in args.methods.split(","):
        times = _steps(METHODS[name], args)
        median = {v: statistics.median(t) for v, t in times.items()}
        rows.append(
            {
                "method": name,
                **{f"{v}_ms": 1000 * median[v] for v in VARIANTS},
                "pace_ratio": median["pace"] / median["plain"],
                "fast_ratio": median["fast"] / median["plain"],
            }
        )
        print(rows[-1], file=sys.stderr)
    command = "python benchmarks/consistency.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {"command": command.strip(), "backbone": args.backbone, "batch": args.batch, "precision": args.precision,
              "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["| method | plain (ms) | pace (ms) | pace / plain | fast (ms) | fast / plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['plain_ms']:.0f} | {r['pace_ms']:.0f} | {r['pace_ratio']:.2f}x | "
                     f"{r['fast_ms']:.0f} | {r['fast_ratio']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
