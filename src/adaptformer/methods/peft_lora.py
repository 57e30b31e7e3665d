"""PEFT's LoRA adapters in and out: two pure conversions between a PEFT LoRA (``adapter_config.json`` as a mapping,
``adapter_model.safetensors`` as tensors) and this library's LoRA (a :class:`~.lora.LoRAConfig` and its task tensors).

PEFT (huggingface/peft) wraps each Linear it targets in its own layer computing ``W x + (lora_alpha / r) B A x`` and
saves ``base_model.model.<module>.lora_A.weight`` (r x in) and ``...lora_B.weight`` (out x r), plus the modules of
``modules_to_save`` (the task head) under their own names. The base model's parameter names are kept on both sides,
so a module's path is the same in both files.

Which form maps to which:

- PEFT on a whole Linear is this library's update of that whole Linear (:attr:`.lora.Projection.whole`): on timm's
  fused ``attn.qkv`` that is target ``qkv`` (one A shared by q, k and v), on ``attn.proj`` target ``o``. A family
  whose attention has separate q, k, v Linears lists them in :func:`.lora.projections` and maps the same way.
- This library's per-third updates of a fused qkv (targets q, k, v, each its own A) have no PEFT module of their own;
  they go out as ONE PEFT update of the fused Linear whose A stacks the thirds' A's and whose B is block-diagonal
  (zeros elsewhere): the same function, exactly, at rank (updates x r). Every PEFT update gets the largest rank of the
  model (smaller ones padded with zero rows of A and zero columns of B, which change no output and, as their
  gradients are zero, stay zero if PEFT trains on), so the file needs no ``rank_pattern``. Read back, such a file is a
  ``qkv`` update of that rank: the same function in PEFT's form.

Anything the other side cannot reproduce exactly is refused, naming the key and its value: another ``peft_type``,
``rank_pattern`` / ``alpha_pattern``, rsLoRA, DoRA, trained biases, a LoRA on a module this library does not adapt
(an MLP Linear, say), ``target_modules`` that name nothing in the model, a head that is not a plain Linear saved
whole. ``lora_dropout`` only acts in training and is carried over.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..heads import classifier_paths
from .lora import LoRA, LoRAConfig, LoRALinear, Projection, projections
from .state import get_spec, get_task, trainable_groups

__all__ = ["PREFIX", "PeftConversionError", "from_peft", "to_peft"]

PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor: PeftModel.base_model (LoraModel).model
FACTORS = {"lora_A.weight": "A", "lora_B.weight": "B"}
# settings that change what a PEFT LoRA computes, and the values this library reproduces exactly
EXACT = {
    "bias": ("none",),  # "all" / "lora_only" train biases of the backbone
    "use_rslora": (False,),  # scaling alpha / sqrt(r)
    "use_dora": (False,),  # a magnitude vector per output
    "fan_in_fan_out": (False,),  # transposed (Conv1D) weights
    "lora_bias": (False,),  # a bias in lora_B
    "rank_pattern": ({},),  # a rank per module
    "alpha_pattern": ({},),  # an alpha per module
    "init_lora_weights": (True, False, "gaussian"),  # others (pissa, olora, loftq, corda, eva) change the base weights
}
# settings read for the conversion, or that say nothing about the trained function (where it was trained, from which
# base, which modules the weights name: the weights themselves are read for that)
READ = ("peft_type", "r", "lora_alpha", "target_modules", "modules_to_save", "lora_dropout")
# (qalora_group_size and megatron_core act only with use_qalora / megatron_config, which must be unset)
INFORMATIONAL = ("base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
                 "layers_to_transform", "layers_pattern", "exclude_modules", "qalora_group_size",
                 "megatron_core")  # fmt: skip


class PeftConversionError(ValueError):
    """A PEFT adapter (or an adapter for PEFT) that the other side cannot express exactly; the message names the key
    and its value."""


# ------------------------------------------------------------------------------------------------ PEFT -> ours


def check_peft_config(config: Mapping[str, Any]) -> None:
    """PeftConversionError for a PEFT config this library cannot reproduce exactly (naming the key and value)."""
    if config.get("peft_type") != "LORA":
        raise PeftConversionError(
            f"peft_type {config.get('peft_type')!r}: this library reads PEFT's LORA adapters only"
        )
    for key, allowed in EXACT.items():
        value = config.get(key, allowed[0])
        if value is None and key in ("rank_pattern", "alpha_pattern"):
            continue
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise PeftConversionError(
                f"{key} {value!r}: this library's LoRA cannot reproduce it exactly (it computes W x + (lora_alpha / r) "
                f"B A x with one r and alpha for every module); accepted: {list(allowed)}"
            )
    for key, value in config.items():
        if key in (*READ, *INFORMATIONAL, *EXACT) or value in (None, False, {}, [], ""):
            continue
        raise PeftConversionError(f"{key} {value!r}: a PEFT setting this library does not reproduce; leave it unset")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PeftConversionError(f"r {rank!r}: expected a positive int")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise PeftConversionError(f"lora_alpha {alpha!r}: expected a number > 0")


def _matches(path: str, targets: str | list[str]) -> bool:
    """PEFT's rule: a string is a regular expression the whole module path must match; a list entry matches a path
    that is the entry or ends with '.' + entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith(f".{t}") for t in targets)


def _check_names(key: str, targets: Any, model: nn.Module) -> list[str] | str:
    """``targets`` (target_modules or modules_to_save) as PEFT reads it, every entry naming a module of ``model``."""
    if isinstance(targets, str):
        names = [n for n, _ in model.named_modules() if n]
        if not any(_matches(n, targets) for n in names):
            raise PeftConversionError(f"{key} {targets!r}: matches no module of {type(model).__name__}")
        return targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise PeftConversionError(f"{key} {targets!r}: expected a non-empty list of module names or a regex")
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(_matches(n, [t]) for n in names)]
    if missing:
        raise PeftConversionError(f"{key} {targets!r}: {missing} name no module of {type(model).__name__}")
    return targets


def from_peft(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """A PEFT LoRA as this library's: its :class:`LoRAConfig` and the task tensors (updates and head) under this
    library's names, for ``model`` (the plain backbone the PEFT adapter was trained on, with a classifier at the place
    PEFT's ``modules_to_save`` names). The head class count is that of the saved head's weight.

    Raises PeftConversionError (naming the key and value) for anything not reproduced exactly.
    """
    check_peft_config(config)
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    targets = _check_names("target_modules", config.get("target_modules"), model)
    saved = config.get("modules_to_save")
    heads = classifier_paths(model)
    if saved is None:
        raise PeftConversionError(f"modules_to_save None: the adapter holds no trained head; expected {list(heads)}")
    saved = _check_names("modules_to_save", saved, model)
    unsaved = [h for h in heads if not _matches(h, saved)]
    if unsaved:
        raise PeftConversionError(f"modules_to_save {saved!r}: the classifier {unsaved} is not among them")
    where = {p.path: p for p in projections(model)}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise PeftConversionError(f"tensor {key!r}: expected PEFT's prefix {PREFIX!r}")
        name = key[len(PREFIX) :]
        factor = next((f for f in FACTORS if name.endswith(f".{f}")), None)
        if factor is not None:
            factors.setdefault(name[: -len(factor) - 1], {})[FACTORS[factor]] = tensor
        elif any(name.startswith(f"{h}.") for h in heads):
            ours[name] = tensor
        else:
            raise PeftConversionError(
                f"tensor {key!r}: neither a LoRA factor nor a tensor of the classifier {list(heads)}; this library "
                "keeps every other backbone tensor frozen (modules_to_save must name the head only)"
            )
    chosen: set[tuple[int, str]] = set()
    for path, pair in sorted(factors.items()):
        projection = _projection(path, where, targets, pair, rank)
        chosen.add((projection.block, projection.whole))
        for letter, tensor in pair.items():
            ours[f"{path}.lora.{projection.whole}.{letter}"] = tensor
    if not chosen:
        raise PeftConversionError("the adapter holds no lora_A / lora_B tensors")
    return _config_of(chosen, where, rank, alpha, float(config.get("lora_dropout") or 0.0)), ours


def _projection(
    path: str, where: dict[str, Projection], targets: list[str] | str, pair: dict[str, torch.Tensor], rank: int
) -> Projection:
    """The projection PEFT's update at ``path`` adapts, after checking its factors' shapes."""
    if path not in where:
        known = sorted({p.path.rsplit(".", 1)[-1] for p in where.values()})
        raise PeftConversionError(
            f"target_modules {targets!r}: adapts {path}, which this library's LoRA does not adapt (it adapts each "
            f"attention's {known})"
        )
    if not _matches(path, targets):
        raise PeftConversionError(f"target_modules {targets!r}: does not name {path}, yet the weights adapt it")
    if set(pair) != {"A", "B"}:
        raise PeftConversionError(f"{path}: expected lora_A.weight and lora_B.weight, found {sorted(pair)}")
    a, b = pair["A"], pair["B"]
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
        raise PeftConversionError(
            f"r {rank}: {path}'s lora_A is {tuple(a.shape)} and lora_B {tuple(b.shape)}, expected (r, in) and "
            "(out, r) (a rank per module needs rank_pattern, which this library does not reproduce)"
        )
    return where[path]


def _config_of(
    chosen: set[tuple[int, str]], where: dict[str, Projection], rank: int, alpha: float, dropout: float
) -> LoRAConfig:
    """The LoRAConfig adapting exactly the (block, target) pairs ``chosen``: the same targets in each chosen block."""
    blocks = sorted({b for b, _ in chosen})
    targets = sorted({t for _, t in chosen})
    if chosen != {(b, t) for b in blocks for t in targets}:
        raise PeftConversionError(
            f"target_modules: the adapter adapts {sorted(chosen)} (block, projection); this library's LoRA adapts the "
            "same projections in every chosen block"
        )
    count = 1 + max(p.block for p in where.values())
    layers = None if blocks == list(range(count)) else tuple(blocks)
    try:
        alpha_given = None if alpha == rank else alpha  # lora_alpha = r is this library's default (scaling 1)
        return LoRAConfig(rank=rank, alpha=alpha_given, targets=tuple(targets), dropout=dropout, layers=layers)
    except ValueError as e:
        raise PeftConversionError(f"lora_dropout {dropout!r}: {e}") from e


# ------------------------------------------------------------------------------------------------ ours -> PEFT


def _factors(path: str, linear: LoRALinear, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of the whole ``linear`` equal to all of its updates: A (rank x in) and B (out x rank), the per-chunk
    updates stacked in A and placed block-diagonally in B, zero-padded to ``rank``."""
    a = torch.zeros(rank, linear.in_features)
    b = torch.zeros(linear.out_features, rank)
    row = 0
    for name, update in linear.lora.items():
        assert isinstance(update, LoRA)
        r = update.A.shape[0]
        start, stop = linear.span(name)
        a[row : row + r] = update.A.detach().float().cpu()
        b[start:stop, row : row + r] = update.B.detach().float().cpu()
        if update.scaling != scaling:  # e.g. a model scaled by robustness --interpolate
            raise PeftConversionError(f"{path}.lora.{name}: scaling {update.scaling!r}, its config says {scaling!r}")
        row += r
    return a, b


def _target_modules(model: nn.Module, paths: list[str]) -> list[str]:
    """PEFT's target_modules naming exactly ``paths`` among the backbone's modules (PEFT adapts any module a name
    selects, a patch embedding's Conv2d ``proj`` too): the shortest trailing names that select them and nothing
    else ("qkv"; "attn.proj"), at worst the full paths."""
    names = [n for n, _ in model.named_modules() if n and ".lora" not in n]
    for depth in range(1, 1 + max(p.count(".") + 1 for p in paths)):
        short = sorted({".".join(p.split(".")[-depth:]) for p in paths})
        if sorted(n for n in names if _matches(n, short)) == sorted(paths):
            return short
    return sorted(paths)


def to_peft(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An adapted model's LoRA as a PEFT LoRA: the ``adapter_config.json`` mapping and the tensors of
    ``adapter_model.safetensors`` that ``PeftModel.from_pretrained`` loads onto the plain backbone (its head a plain
    Linear for the same classes). Raises PeftConversionError for a method or head PEFT's LoRA cannot express."""
    spec = get_spec(model)
    if spec is None or spec.method != "lora":
        method = None if spec is None else spec.method
        raise PeftConversionError(f"method {method!r}: a PEFT LoRA adapter holds a LoRA adapter only (method lora)")
    if spec.head != "linear":
        raise PeftConversionError(
            f"head {spec.head!r}: PEFT's model keeps the backbone's plain Linear head; the paper head's BatchNorm "
            "statistics would have to be folded into that Linear, which is not exact (train with --model.head linear)"
        )
    if get_task(model) is not None:
        raise PeftConversionError(f"task {get_task(model)['type']!r}: PEFT's base model here is a timm classifier")
    if spec.extra_trainable:
        raise PeftConversionError(f"extra_trainable {list(spec.extra_trainable)}: modules new for the task, which "
                                  "PEFT's base model does not have")  # fmt: skip
    config = spec.method_config
    assert isinstance(config, LoRAConfig)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    rank = max(len(m.lora) * config.rank for m in linears.values())
    tensors: dict[str, torch.Tensor] = {}
    scaling = config.scaling
    for path, linear in linears.items():
        a, b = _factors(path, linear, rank, scaling)
        tensors[f"{PREFIX}{path}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{path}.lora_B.weight"] = b.contiguous()
    lora_alpha = scaling * rank
    if lora_alpha / rank != scaling:  # PEFT computes its scaling as lora_alpha / r
        raise PeftConversionError(f"alpha {config.alpha!r}: (alpha / rank) x {rank} / {rank} does not round-trip")
    heads = [name for name, _ in trainable_groups(model)["head"]]
    state = model.state_dict()
    for head in heads:
        own = {k: v for k, v in state.items() if k.startswith(f"{head}.")}
        tensors.update({f"{PREFIX}{k}": v.detach().cpu().contiguous() for k, v in own.items()})
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": spec.backbone,
        "r": rank,
        "lora_alpha": int(lora_alpha) if float(lora_alpha).is_integer() else lora_alpha,
        "lora_dropout": config.dropout,
        "target_modules": _target_modules(model, list(linears)),
        "modules_to_save": heads,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    return peft_config, tensors
