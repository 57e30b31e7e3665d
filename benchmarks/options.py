"""Side-by-side measurements of each speed option of :mod:`adaptformer.speed` (what "auto" is decided from).

Every group builds the same method with one option changed and times the variants interleaved, so the ratios compare
like with like under the same machine load.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch
from cases import METHODS, Backbone, inference_case, ratio_table, summarize, training_case
from measure import Case, time_interleaved

from adaptformer import AdaptFormerConfig
from adaptformer.speed import SpeedConfig

logger = logging.getLogger("bench.options")

AF = METHODS["adaptformer-64"]
FULL = METHODS["full"]
LINEAR = METHODS["linear"]


def _group(
    name: str,
    description: str,
    cases: list[Case],
    pairs: list[tuple[str, str]],
    args: argparse.Namespace,
    batch: int,
    memory: bool,
) -> dict[str, Any]:
    logger.info("option group: %s", name)
    time_interleaved(cases, args.rounds, args.warmup)
    results = summarize(cases, batch, memory=memory and not args.no_memory)
    return {
        "name": name,
        "description": description,
        "results": results,
        "ratios": ratio_table({c.name: c for c in cases}, results, pairs),
    }


def _late_layers(backbone: Backbone) -> dict[str, Any]:
    """The paper's "layers 7-12 only" ablation: the first half of the blocks carry no adapter."""
    depth = backbone.kwargs.get("depth", 12)
    return {
        "method": "adaptformer",
        "adapter": AdaptFormerConfig(bottleneck=64, layers=tuple(range(depth // 2, depth))),
    }


def run_options(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Measure every speed option on ``backbone`` (bf16 autocast unless noted); returns one dict per option."""
    groups = []
    off = SpeedConfig(frozen_prefix="off")

    fp32_store = SpeedConfig(frozen_dtype="fp32")
    cases = [
        training_case("adaptformer, frozen fp32", backbone, AF, "bf16", device, fp32_store),
        training_case("adaptformer, frozen bf16", backbone, AF, "bf16", device),
        training_case("linear, frozen fp32", backbone, LINEAR, "bf16", device, fp32_store),
        training_case("linear, frozen bf16", backbone, LINEAR, "bf16", device),
        inference_case("forward, frozen fp32", backbone, LINEAR, "bf16", device, fp32_store),
        inference_case("forward, frozen bf16", backbone, LINEAR, "bf16", device),
    ]
    pairs = [(f"{m}, frozen bf16", f"{m}, frozen fp32") for m in ("adaptformer", "linear", "forward")]
    description = "bf16 autocast; frozen weights stored in fp32 (autocast re-casts them every step) or once in bf16."
    groups.append(_group("frozen_dtype", description, cases, pairs, args, backbone.batch, memory=True))

    for precision in ("bf16", "fp32"):
        cases, pairs = [], []
        for label, method, build in (
            ("adaptformer", AF, training_case),
            ("full", FULL, training_case),
            ("forward", LINEAR, inference_case),
        ):
            for attention in ("fused", "math"):
                cases.append(
                    build(
                        f"{label}, {attention}", backbone, method, precision, device, SpeedConfig(attention=attention)
                    )
                )
            pairs.append((f"{label}, fused", f"{label}, math"))
        description = f"{precision}: timm's fused scaled_dot_product_attention vs the explicit matmul-softmax path."
        groups.append(_group(f"attention ({precision})", description, cases, pairs, args, backbone.batch, memory=False))

    late = _late_layers(backbone)
    cases = [
        training_case("adaptformer late layers, prefix off", backbone, late, "bf16", device, off),
        training_case(
            "adaptformer late layers, prefix on", backbone, late, "bf16", device, SpeedConfig(frozen_prefix="on")
        ),
    ]
    description = (
        "bf16; adapters only in the second half of the blocks; the first half run plainly (autograd records nothing "
        "there anyway: frozen weights, input without grad) or explicitly under torch.no_grad()."
    )
    pairs = [(cases[1].name, cases[0].name)]
    groups.append(_group("frozen_prefix", description, cases, pairs, args, backbone.batch, memory=True))

    cases, pairs = [], []
    for label, method in (("adaptformer", AF), ("full", FULL)):
        cases.append(training_case(label, backbone, method, "bf16", device))
        checkpointed = SpeedConfig(grad_checkpointing=True)
        cases.append(training_case(f"{label}, checkpointed", backbone, method, "bf16", device, checkpointed))
        pairs.append((f"{label}, checkpointed", label))
    description = "bf16; timm's per-block activation checkpointing (non-reentrant) on or off."
    groups.append(_group("grad_checkpointing", description, cases, pairs, args, backbone.batch, memory=True))

    if args.compile:
        groups.append(_compile_group(backbone, args, device))
    return groups


def _compile_group(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    eager = training_case("adaptformer, eager", backbone, AF, "bf16", device)
    compiled = training_case("adaptformer, compiled", backbone, AF, "bf16", device, SpeedConfig(compile=True))
    start = time.perf_counter()
    compiled.run()  # the first step compiles the forward and backward graphs
    first_step = time.perf_counter() - start
    description = (
        "bf16; torch.compile (inductor, default mode) of the AdaptFormer model vs eager; the compile cost is in the "
        "first step's time."
    )
    group = _group(
        "compile", description, [eager, compiled], [(compiled.name, eager.name)], args, backbone.batch, False
    )
    group["extra"] = {"first compiled step (s, includes compilation)": round(first_step, 1)}
    return group
