"""How much faster a no-grad bf16 ViT block could run on this CPU: timm's block against oneDNN pre-packed weights,
without and with fused post-ops (GELU on fc1, the residual add on proj and fc2). A study for a possible inference
path, not a library feature: the library's no-grad forward is timm's (plus the class-token tail).

    .venv/bin/python benchmarks/eval_block.py [--rounds 30] [--batch 8] [--model vit_base_patch16_224]

Prints each variant's median time per block call (interleaved rounds), its ratio to timm's block and its largest
deviation from timm's output; exits with an error where oneDNN bf16 is unavailable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F

Variant = Callable[[torch.Tensor], torch.Tensor]


def variants(block: torch.nn.Module, rows: int) -> dict[str, Variant]:
    """timm's block and two re-implementations of it through oneDNN's pre-packed linear ops."""
    packed = {
        name: torch.ops.mkldnn._reorder_linear_weight(w, rows) for name, w in block.named_parameters() if w.ndim == 2
    }
    linear = torch.ops.mkldnn._linear_pointwise
    attn, mlp = block.attn, block.mlp

    def attention(x2: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        batch, tokens, width = shape
        qkv = linear(block.norm1(x2), packed["attn.qkv.weight"], attn.qkv.bias, "none", [], "")
        q, k, v = qkv.view(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, width)

    def packed_only(x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        x2 = x2 + linear(attention(x2, x.shape), packed["attn.proj.weight"], attn.proj.bias, "none", [], "")
        hidden = F.gelu(linear(block.norm2(x2), packed["mlp.fc1.weight"], mlp.fc1.bias, "none", [], ""))
        return (x2 + linear(hidden, packed["mlp.fc2.weight"], mlp.fc2.bias, "none", [], "")).view(x.shape)

    def fused(x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        x2 = linear.binary(attention(x2, x.shape), x2, packed["attn.proj.weight"], attn.proj.bias, "add")
        hidden = linear(block.norm2(x2), packed["mlp.fc1.weight"], mlp.fc1.bias, "gelu", [], "none")
        return linear.binary(hidden, x2, packed["mlp.fc2.weight"], mlp.fc2.bias, "add").view(x.shape)

    return {"timm block": block, "pre-packed weights": packed_only, "pre-packed + fused GELU and adds": fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default="vit_base_patch16_224", help="a timm ViT; its fourth block is timed")
    args = parser.parse_args()
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        raise SystemExit("oneDNN bf16 is not available on this CPU")
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval().to(torch.bfloat16)
    block = model.blocks[min(3, len(model.blocks) - 1)]
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    x = torch.randn(args.batch, tokens, model.embed_dim, dtype=torch.bfloat16)
    cases = variants(block, args.batch * tokens)
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        reference = block(x).float()
        for run in cases.values():
            for _ in range(3):
                run(x)
        for _ in range(args.rounds):
            for name, run in cases.items():
                started = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - started)
        deviation = {name: (run(x).float() - reference).abs().max().item() for name, run in cases.items()}
    base = statistics.median(times["timm block"])
    report = {
        name: {
            "median_ms": round(statistics.median(t) * 1e3, 3),
            "vs_timm": round(statistics.median(t) / base, 3),
            "max_abs_deviation": deviation[name],
        }
        for name, t in times.items()
    }
    setting = {"model": args.model, "batch": args.batch, "tokens": tokens, "rounds": args.rounds}
    print(json.dumps({**setting, "torch": torch.__version__, "blocks": report}, indent=1))


if __name__ == "__main__":
    main()
