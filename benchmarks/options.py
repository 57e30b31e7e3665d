"""Side-by-side measurements of each speed option of :mod:`adaptformer.speed` (what "auto" is decided from).

Every group builds the same method with one option changed and times the variants interleaved, so the ratios compare
like with like under the same machine load.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import torch
from cases import METHODS, Backbone, inference_case, late_adapters, ratio_table, summarize, training_case
from measure import Case, load_average, time_interleaved

from adaptformer.speed import SpeedConfig

logger = logging.getLogger("bench.options")

AF = METHODS["adaptformer-64"]
FULL = METHODS["full"]
LINEAR = METHODS["linear"]
Group = dict[str, Any]  # one option group's report: name, description, results, ratios (and extra)


def _group(
    name: str,
    description: str,
    cases: list[Case],
    pairs: list[tuple[str, str]],
    args: argparse.Namespace,
    batch: int,
    memory: bool,
) -> Group:
    logger.info("option group: %s", name)
    load_before = load_average()
    time_interleaved(cases, args.rounds, args.warmup)
    results = summarize(cases, batch, memory=memory and not args.no_memory)
    by_name = {c.name: c for c in cases}
    ratios = ratio_table(by_name, results, pairs)
    for a, b in pairs:  # every round's ratio too: their spread says how far to trust the median
        ratios[f"{a}/{b}"]["time_per_round"] = [x / y for x, y in zip(by_name[a].times, by_name[b].times, strict=True)]
    return {
        "name": name,
        "description": description,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_average": {"before": load_before, "after": load_average()},
        "results": results,
        "ratios": ratios,
    }


def _plain_vs_auto(backbone: Backbone, args: argparse.Namespace, device: torch.device, precision: str) -> Group:
    plain = SpeedConfig(frozen_dtype="fp32", attention="fused", frozen_backward="off", class_token_tail="off")
    cases = [
        training_case("adaptformer, plain", backbone, AF, precision, device, plain),
        training_case("adaptformer, auto", backbone, AF, precision, device),
        training_case("full, plain", backbone, FULL, precision, device, plain),
        training_case("full, auto", backbone, FULL, precision, device),
    ]
    pairs = [("adaptformer, auto", "adaptformer, plain"), ("full, auto", "full, plain")]
    if precision == "bf16":
        name = "all options: plain vs auto"
        description = (
            "bf16; every option off (fp32 weights re-cast by autocast, timm's fused attention, plain autograd: a "
            "straightforward implementation) vs the auto choices."
        )
    else:
        name = f"all options: plain vs auto ({precision})"
        description = f"{precision}; every option off (timm's fused attention, plain autograd) vs the auto choices."
    return _group(name, description, cases, pairs, args, backbone.batch, memory=True)


def _frozen_dtype(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    fp32_store = SpeedConfig(frozen_dtype="fp32", frozen_backward="off")
    bf16_store = SpeedConfig(frozen_backward="off")
    cases = [
        training_case("adaptformer, frozen fp32", backbone, AF, "bf16", device, fp32_store),
        training_case("adaptformer, frozen bf16", backbone, AF, "bf16", device, bf16_store),
        training_case("linear, frozen fp32", backbone, LINEAR, "bf16", device, fp32_store),
        training_case("linear, frozen bf16", backbone, LINEAR, "bf16", device, bf16_store),
        inference_case("forward, frozen fp32", backbone, LINEAR, "bf16", device, fp32_store),
        inference_case("forward, frozen bf16", backbone, LINEAR, "bf16", device, bf16_store),
    ]
    pairs = [(f"{m}, frozen bf16", f"{m}, frozen fp32") for m in ("adaptformer", "linear", "forward")]
    description = (
        "bf16 autocast, frozen_backward off; frozen weights stored in fp32 (autocast re-casts them every step) or "
        "once in bf16."
    )
    return _group("frozen_dtype", description, cases, pairs, args, backbone.batch, memory=True)


def _attention(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    cases, pairs = [], []
    for label, method, build in (
        ("adaptformer", AF, training_case),
        ("full", FULL, training_case),
        ("forward", LINEAR, inference_case),
    ):
        for attention in ("fused", "math"):
            cases.append(build(f"{label}, {attention}", backbone, method, "bf16", device, plain_attention(attention)))
        pairs.append((f"{label}, fused", f"{label}, math"))
    # The setting "auto" decides in: every other option auto (frozen_backward on, whose attention half runs only
    # when the attention is not "fused"), attention auto ("split" at ViT-B/16's 197 tokens) or "fused".
    cases.append(training_case("adaptformer auto, fused", backbone, AF, "bf16", device, SpeedConfig(attention="fused")))
    cases.append(training_case("adaptformer auto", backbone, AF, "bf16", device))
    pairs.append(("adaptformer auto, fused", "adaptformer auto"))
    description = (
        "bf16: timm's fused scaled_dot_product_attention vs the explicit matmul-softmax path (both through the "
        "plain autograd path, frozen_backward off); and the AdaptFormer step with every option auto (split "
        "attention at 197 tokens, frozen_backward on) vs the same with fused attention."
    )
    return _group("attention", description, cases, pairs, args, backbone.batch, memory=False)


def _frozen_backward(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    cases, pairs = [], []
    for label, method in (("adaptformer", AF), late_adapters(backbone.depth), ("vpt-64", METHODS["vpt-64"])):
        for switch in ("off", "on"):
            config = SpeedConfig(frozen_backward=switch)
            cases.append(training_case(f"{label}, frozen_backward {switch}", backbone, method, "bf16", device, config))
        pairs.append((f"{label}, frozen_backward on", f"{label}, frozen_backward off"))
    description = (
        "bf16, auto attention; the frozen attention/MLP halves of adapted (or VPT-prompted) blocks through plain "
        "autograd (off) or the hand-written backward of adaptformer.speed.frozen_backward (on: one-copy head layout, "
        "pre-packed bf16 weights)."
    )
    return _group("frozen_backward", description, cases, pairs, args, backbone.batch, memory=True)


def _class_token_tail(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    cases, pairs = [], []
    for label, method in (("adaptformer", AF), ("full", FULL), ("linear", LINEAR)):
        for switch in ("off", "on"):
            config = SpeedConfig(class_token_tail=switch)
            cases.append(training_case(f"{label}, tail {switch}", backbone, method, "bf16", device, config))
        pairs.append((f"{label}, tail on", f"{label}, tail off"))
    for switch in ("off", "on"):
        config = SpeedConfig(class_token_tail=switch)
        cases.append(inference_case(f"forward, tail {switch}", backbone, LINEAR, "bf16", device, config))
    pairs.append(("forward, tail on", "forward, tail off"))
    description = (
        "bf16, auto options; the last block computed for every token (off) or for the class token only, which is "
        "all the token-pooling head reads (on: adaptformer.speed.class_token_tail). Training steps and the no-grad "
        "forward."
    )
    return _group("class_token_tail", description, cases, pairs, args, backbone.batch, memory=True)


def _grad_checkpointing(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    cases, pairs = [], []
    for label, method in (("adaptformer", AF), ("full", FULL)):
        cases.append(training_case(label, backbone, method, "bf16", device))
        checkpointed = SpeedConfig(grad_checkpointing=True)
        cases.append(training_case(f"{label}, checkpointed", backbone, method, "bf16", device, checkpointed))
        pairs.append((f"{label}, checkpointed", label))
    description = "bf16; timm's per-block activation checkpointing (non-reentrant) on or off."
    return _group("grad_checkpointing", description, cases, pairs, args, backbone.batch, memory=True)


def plain_attention(kind: str) -> SpeedConfig:
    """``kind`` attention through the plain autograd path (the hand-written frozen backward has its own attention)."""
    return SpeedConfig(attention=kind, frozen_backward="off")


def _attention_length_group(
    backbone: Backbone, args: argparse.Namespace, device: torch.device, precision: str
) -> Group:
    """Fused vs math attention as the sequence grows: a 3-block cut of the backbone at growing input sizes."""
    cases, pairs = [], []
    for size in (224, 288, 352, 448):
        tokens = (size // 16) ** 2 + 1
        cut = Backbone(
            backbone.name, (3, size, size), {**backbone.kwargs, "img_size": size, "depth": 3}, backbone.batch
        )
        for label, method, build in (("adaptformer", AF, training_case), ("forward", LINEAR, inference_case)):
            for attention in ("fused", "math"):
                speed = SpeedConfig(attention=attention)
                cases.append(build(f"{tokens} tokens, {label}, {attention}", cut, method, precision, device, speed))
            pairs.append((f"{tokens} tokens, {label}, fused", f"{tokens} tokens, {label}, math"))
    description = (
        f"{precision}: fused vs math attention at 197, 325, 485 and 785 tokens (input 224-448 px), on the first 3 "
        "blocks of the backbone (attention's share of a block does not depend on the depth); frozen_backward auto."
    )
    return _group(f"attention vs sequence length ({precision})", description, cases, pairs, args, backbone.batch, False)


def _compile_group(backbone: Backbone, args: argparse.Namespace, device: torch.device) -> Group:
    """Eager vs ``torch.compile`` for the AdaptFormer and full training steps and the no-grad forward (bf16)."""
    cases, pairs, extra = [], [], {}
    for label, method, build in (
        ("adaptformer", AF, training_case),
        ("full", FULL, training_case),
        ("forward", LINEAR, inference_case),
    ):
        eager = build(f"{label}, eager", backbone, method, "bf16", device)
        compiled = build(f"{label}, compiled", backbone, method, "bf16", device, SpeedConfig(compile=True))
        start = time.perf_counter()
        compiled.run()  # the first call compiles (forward and, for training, backward graphs)
        extra[f"{label}: first compiled step (s, includes compilation)"] = round(time.perf_counter() - start, 1)
        cases += [eager, compiled]
        pairs.append((compiled.name, eager.name))
    description = "bf16; torch.compile (inductor, default mode) vs eager; the compile cost is in the first step's time."
    group = _group("compile", description, cases, pairs, args, backbone.batch, memory=False)
    group["extra"] = extra
    return group


# Every option group by the name --groups takes and the report shows, in the order run_options measures them.
GROUPS: dict[str, Callable[[Backbone, argparse.Namespace, torch.device], Group]] = {
    "all options: plain vs auto": partial(_plain_vs_auto, precision="bf16"),
    "all options: plain vs auto (fp32)": partial(_plain_vs_auto, precision="fp32"),
    "frozen_dtype": _frozen_dtype,
    "attention": _attention,
    "attention vs sequence length (bf16)": partial(_attention_length_group, precision="bf16"),
    "attention vs sequence length (fp32)": partial(_attention_length_group, precision="fp32"),
    "frozen_backward": _frozen_backward,
    "class_token_tail": _class_token_tail,
    "grad_checkpointing": _grad_checkpointing,
    "compile": _compile_group,
}
FULL_SIZE_ONLY = ("attention vs sequence length (bf16)", "attention vs sequence length (fp32)")  # not with --quick


def default_groups(args: argparse.Namespace) -> list[str]:
    """The groups ``--options`` measures when ``--groups`` names none: all, less the sequence-length groups with
    ``--quick`` (a tiny model's token counts say nothing) and compile without ``--compile``."""
    skip = (FULL_SIZE_ONLY if args.quick else ()) + (() if args.compile else ("compile",))
    return [name for name in GROUPS if name not in skip]


def run_options(
    backbone: Backbone,
    args: argparse.Namespace,
    device: torch.device,
    into: list[Group],
    save: Callable[[], None] = lambda: None,
    groups: Collection[str] | None = None,
) -> list[Group]:
    """Measure the speed options on ``backbone`` (bf16 autocast unless noted), group by group: ``groups`` (names
    from GROUPS, measured in GROUPS' order) or :func:`default_groups`. A group's models are built only when it runs.
    Appends one dict per group to ``into``, calling ``save`` after each, and returns ``into``."""
    unknown = sorted(set(groups or ()) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown option groups {unknown}; known: {list(GROUPS)}")
    chosen = default_groups(args) if groups is None else groups
    for name, measure in GROUPS.items():
        if name in chosen:
            into.append(measure(backbone, args, device))
            save()
    return into
