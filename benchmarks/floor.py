"""The GEMM floor of the AdaptFormer/full fine-tuning step ratio: matrix products alone, nothing else.

A ViT block's training step is dominated by its matrix products. Full fine-tuning needs three per linear layer
(forward, input gradient, weight gradient); a frozen layer under AdaptFormer needs two (no weight gradient); attention's
batched products (two forward, four backward) are needed by both. Timing exactly those products for one ViT-B/16 block
at batch 8 (1,576 tokens), interleaved, gives the ratio the two steps would have if nothing but GEMMs cost time, and
likewise the AdaptFormer step against the no-grad forward (its linear and two attention products):

    .venv/bin/python benchmarks/floor.py [--precision bf16] [--rounds 15]

The adapters' own small products (~1% of the FLOPs) are left out, which favours AdaptFormer slightly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from measure import Case, machine_info, median_ratio, time_interleaved

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def block_products(
    dim: int = 768,
    tokens: int = 1576,
    heads: int = 12,
    seq: int = 197,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> tuple[Callable[[], None], ...]:
    """The (forward, input-gradient, weight-gradient, attention forward, attention backward) products of one pre-norm
    ViT block as closures, on ``device``."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    layers = [(dim, 3 * dim), (dim, dim), (dim, 4 * dim), (4 * dim, dim)]  # qkv, proj, fc1, fc2: (in, out)
    data = [(rand(tokens, i), rand(o, i), rand(tokens, o)) for i, o in layers]  # input, weight, output gradient
    batch, head_dim = tokens // seq * heads, dim // heads
    q, probs = rand(batch, seq, head_dim), rand(batch, seq, seq)

    def forward() -> None:
        for x, w, _ in data:
            x @ w.t()

    def input_grad() -> None:
        for _, w, dy in data:
            dy @ w

    def weight_grad() -> None:
        for x, _, dy in data:
            dy.t() @ x

    def attention_forward() -> None:  # q k^T, p v
        torch.bmm(q, q.transpose(1, 2))
        torch.bmm(probs, q)

    def attention_backward() -> None:  # dp = do v^T, dv = p^T do, dq = ds k, dk = ds^T q
        torch.bmm(q, q.transpose(1, 2))
        torch.bmm(probs.transpose(1, 2), q)
        torch.bmm(probs, q)
        torch.bmm(probs.transpose(1, 2), q)

    return forward, input_grad, weight_grad, attention_forward, attention_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a width-64 block, 2 rounds (CI: the script runs)")
    args = parser.parse_args()
    shape = {"dim": 64, "tokens": 2 * 17, "heads": 2, "seq": 17} if args.quick else {}
    rounds = 2 if args.quick else args.rounds
    forward, input_grad, weight_grad, attention_forward, attention_backward = block_products(
        **shape, dtype=DTYPES[args.precision]
    )
    cpu = torch.device("cpu")

    def adaptformer() -> None:
        forward(), input_grad(), attention_forward(), attention_backward()

    def full() -> None:
        forward(), input_grad(), weight_grad(), attention_forward(), attention_backward()

    def no_grad_forward() -> None:
        forward(), attention_forward()

    cases = [Case("adaptformer GEMMs", adaptformer, cpu), Case("full GEMMs", full, cpu)]
    cases.append(Case("forward GEMMs", no_grad_forward, cpu))
    time_interleaved(cases, rounds, warmup=1 if args.quick else 3)
    report = {
        "precision": args.precision,
        "block": shape or {"dim": 768, "tokens": 1576, "heads": 12, "seq": 197},
        "median_s": {c.name: sorted(c.times)[len(c.times) // 2] for c in cases},
        "adaptformer/full": median_ratio(cases[0], cases[1]),
        "adaptformer/forward": median_ratio(cases[0], cases[2]),
        "machine": machine_info(cpu),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
