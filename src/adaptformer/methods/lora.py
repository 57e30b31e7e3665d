"""LoRA (Hu et al., ICLR 2022, arXiv 2106.09685): low-rank updates of the frozen attention projections.

A frozen projection ``W`` (out x in) computes ``W x + (alpha / r) B A x`` instead, with trainable ``A`` (r x in,
kaiming-uniform) and ``B`` (out x r, zeros): ``B A = 0`` at init, so an adapted model computes exactly the frozen
backbone's function until the first step. timm's ViT and Swin attention compute q, k and v with ONE fused ``qkv``
Linear (d -> 3d); LoRA on q and v (the paper's default) adds low-rank updates to the q and v thirds of its output only,
each with its own ``A``. Target ``qkv`` gives it ONE update instead, ``A`` (r x d) shared by q, k, v and ``B`` (3d x r):
PEFT's LoRA on such a Linear, so that PEFT adapters move in and out exactly (:mod:`.peft_lora`).

Where the update lives: the ``qkv`` (and, for target "o", the ``proj``) Linear of each chosen attention becomes a
:class:`LoRALinear`, an ``nn.Linear`` subclass (its class is swapped in place, as AdaptFormer swaps block classes)
that owns its updates as a child ``lora`` ModuleDict keyed by target (``blocks.0.attn.qkv.lora.q.A``; the whole-output
update of target qkv is ``blocks.0.attn.qkv.lora.qkv.A``). Why this way:

- names: the Linear stays where it was with its own ``weight`` and ``bias`` (``blocks.0.attn.qkv.weight``), so
  checkpoints load unchanged; the updates have their own prefix (``.lora.``) and are found again by type;
- the attention's forward is timm's, unchanged (it calls ``self.qkv(x)`` and ``self.proj(x)``): nothing of timm's
  attention is copied, so q/k norms, fused or math attention and Swin's relative position bias work as they are;
- torch.compile, deepcopy and pickling see ordinary module classes defined at module level (no hooks, no
  parametrizations, which would rename the weight to ``parametrizations.weight.original``).

The layers of transformers' vision models (``hf:`` backbones) have q, k, v and o as separate ``nn.Linear`` layers,
which their family names (:attr:`~adaptformer.backbones.families.BlockFamily.projections`); each target's Linear
becomes a LoRALinear of one chunk (``vit.layers.0.attention.q_proj.lora.q.A``).

Only attentions whose forward calls those Linears are supported (``SUPPORTED_ATTENTION``; VideoMAE's q/v-bias
attention calls its qkv Linear once it is adapted): an attention that reads ``qkv.weight`` itself (BEiT, EVA) or
torchvision's ``MultiheadAttention`` would bypass the update, and is refused with UnsupportedModelError naming its
class.

:func:`merge_lora` folds ``(alpha / r) B A`` into the frozen weights for inference (no extra work per step) and
:func:`unmerge_lora` takes it out again.

In a mixed-task batch (the protocol's :class:`~adaptformer.methods.protocol.ModuleSite`, :func:`route`) the frozen
projection runs once over the whole batch and each task's update is added to its own rows only: the present tasks'
``A`` and ``B`` stacked, each row gathering its task's (S-LoRA/Punica's gathered form), one batched matmul per factor
for every row and target at once, each target's update added to its chunk of the output in one pass (adding per task
into a column slice of the fused output made the CPU copy the whole output per task: 3.5x a single-task forward at
N = 64, BENCHMARKS.md). A weight merge per task never happens (it would write into the weight every task shares);
tasks of different ranks, scalings, targets and layers share one batch. LoRA changes no block class, so it composes
with every other method's modules on the same blocks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers.attention import Attention
from timm.models.swin_transformer import WindowAttention

from ..backbones.families import family_blocks, qualified_name
from ..backbones.video_vit import QVBiasAttention
from ..errors import UnsupportedModelError
from ..validation import check_block_indices, check_probability
from .lora_layer import LoRA, LoRALinear, route
from .protocol import Interpolation, ModuleSite
from .registry import Method, MethodConfig
from .state import FINGERPRINT_ATTR, remember_fingerprint

logger = logging.getLogger(__name__)

QKV_TARGETS = ("q", "k", "v")  # the three thirds of a fused qkv projection's output, in timm's order
FUSED_TARGET = "qkv"  # one update of the fused projection's whole output (A shared by q, k and v): PEFT's form
OUTPUT_TARGET = "o"  # the output projection (``proj``)
TARGET_ALIASES = {"proj": OUTPUT_TARGET}
TARGET_ORDER = (*QKV_TARGETS, FUSED_TARGET, OUTPUT_TARGET)
# attention classes whose forward computes ``self.qkv(x)`` (q, k, v thirds) and ``self.proj(x)``
SUPPORTED_ATTENTION: tuple[type[nn.Module], ...] = (Attention, WindowAttention, QVBiasAttention)


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """Low-rank updates of the attention projections (defaults: Hu et al.'s q, v with rank 8).

    Args:
        rank: the rank r of every update B A.
        alpha: the update is scaled by alpha / rank; null: alpha = rank (scale 1).
        targets: the projections that get an update: q, k, v (thirds of the fused qkv Linear, each its own A), or
            qkv (one update of the whole fused Linear, A shared by q, k and v: PEFT's LoRA on a qkv Linear; not with
            q, k, v), and o (or proj: the attention's output projection).
        dropout: dropout probability on the input of each update (the frozen projection sees the input as it is).
        layers: the blocks whose attention gets updates, as block indices in forward order (e.g. [10, 11] for the
            last two of a 12-block ViT); null: every block.
    """

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if self.alpha is not None:
            a = self.alpha
            if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) or a <= 0:
                raise ValueError(f"alpha must be a finite number > 0 (0 scales every update away) or null, got {a!r}")
            object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.targets, str) or not isinstance(self.targets, list | tuple) or not self.targets:
            raise ValueError(f"targets must be a non-empty list of q, k, v, qkv, o (or proj), got {self.targets!r}")
        known = (*TARGET_ORDER, *TARGET_ALIASES)
        unknown = [t for t in self.targets if t not in known]
        if unknown:
            raise ValueError(f"targets must be some of {list(known)}, got {list(self.targets)} ({unknown} unknown)")
        targets = tuple(TARGET_ALIASES.get(t, t) for t in self.targets)
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets names a projection twice: {list(self.targets)} (proj is o)")
        thirds = [t for t in targets if t in QKV_TARGETS]
        if FUSED_TARGET in targets and thirds:
            raise ValueError(
                f"targets {list(self.targets)}: qkv (one update of the whole fused projection, A shared) and {thirds} "
                "(an update per third) adapt the same Linear; give one form"
            )
        object.__setattr__(self, "targets", tuple(sorted(targets, key=TARGET_ORDER.index)))
        check_probability("dropout", self.dropout)
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "layers", check_block_indices("layers", self.layers))

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor of every update."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank


def lora_modules(model: nn.Module) -> list[nn.Module]:
    """The model's LoRA updates, found by type."""
    return [m for m in model.modules() if isinstance(m, LoRA)]


def _attention_of(block: nn.Module) -> nn.Module:
    """The block's attention module (``attn`` in timm; the first child whose class name says attention else)."""
    found = getattr(block, "attn", None)
    if isinstance(found, nn.Module):
        return found
    found = next((m for m in block.children() if "attention" in type(m).__name__.lower()), None)
    if found is None:
        raise UnsupportedModelError(f"{qualified_name(type(block))} has no attention module for LoRA")
    return found


@dataclass(frozen=True)
class Projection:
    """A Linear of an attention that LoRA can adapt: its block, its path in the model and the chunks its output is
    read as (q, k, v for a fused qkv; o for the output projection). An update of the whole Linear is target
    ``"".join(chunks)`` (qkv, o): the form PEFT's LoRA gives any Linear it targets."""

    block: int
    path: str
    chunks: tuple[str, ...]

    @property
    def whole(self) -> str:
        return "".join(self.chunks)


def projections(model: nn.Module) -> list[Projection]:
    """Every projection LoRA can adapt in ``model``, block by block in forward order (qkv, then proj).

    A backbone family that names its attention's projections otherwise (separate q, k, v Linears) adds them here:
    attach and the PEFT conversion (:mod:`.peft_lora`) both read this list. Raises UnsupportedModelError for a block
    whose attention is not in ``SUPPORTED_ATTENTION`` (naming its class).
    """
    family, blocks = family_blocks(model, what="LoRA")
    paths = {id(m): n for n, m in model.named_modules()}
    found = []
    for index, (_, block) in enumerate(blocks):
        if family.projections is not None:  # q, k, v and o are separate Linears (transformers): one update each
            found += [Projection(index, paths[id(block.get_submodule(family.projections[t]))], (t,))
                      for t in ("q", "k", "v", OUTPUT_TARGET) if t in family.projections]  # fmt: skip
            continue
        attn = _attention_of(block)
        if type(attn) not in SUPPORTED_ATTENTION:
            names = ", ".join(qualified_name(c) for c in SUPPORTED_ATTENTION)
            raise UnsupportedModelError(
                f"LoRA supports the attention classes {names} (their forward calls qkv and proj); block {index}'s "
                f"attention is {qualified_name(type(attn))}"
            )
        found.append(Projection(index, paths[id(attn.qkv)], QKV_TARGETS))
        found.append(Projection(index, paths[id(attn.proj)], (OUTPUT_TARGET,)))
    return found


def attach(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Give the attention projections of ``model``'s chosen blocks LoRA updates, in place; returns the model.

    Raises UnsupportedModelError for blocks whose attention is not in ``SUPPORTED_ATTENTION`` (naming its class),
    ValueError when ``layers`` names blocks the model does not have or the model already has LoRA updates.
    """
    if lora_modules(model):
        raise ValueError(f"{type(model).__name__} already has LoRA updates; attach them only once")
    found = projections(model)
    count = 1 + max((p.block for p in found), default=-1)
    wanted = range(count) if config.layers is None else config.layers
    missing = [i for i in wanted if i >= count]
    if missing:
        raise ValueError(f"layers {missing} out of range: {type(model).__name__} has {count} blocks (0..)")
    chosen = [p for p in found if p.block in wanted]
    offered = {t for p in chosen for t in (*p.chunks, p.whole)}
    absent = [t for t in config.targets if t not in offered]
    if absent:  # e.g. qkv on an attention with separate q, k, v Linears: refused, never silently left out
        raise UnsupportedModelError(
            f"LoRA targets {absent}: {type(model).__name__}'s attention projections offer {sorted(offered)}"
        )
    for projection in chosen:
        targets = tuple(t for t in config.targets if t in projection.chunks or t == projection.whole)
        if targets:
            linear = model.get_submodule(projection.path)
            LoRALinear.adapt(linear, projection.chunks, targets, config)  # type: ignore[arg-type]
    return model


def _lora_linears(model: nn.Module) -> list[LoRALinear]:
    found = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no LoRA updates to merge or unmerge")
    return found


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update ``(alpha / r) B A`` into its frozen projection weight, in place, for inference: the
    model then computes the same function with the cost of the plain backbone. Returns the model.

    The factors stay (a saved adapter still holds them) and the backbone fingerprint is remembered first, so an
    adapter saved from the merged model still belongs to the unmerged pre-trained backbone. Training a merged model
    is an error; :func:`unmerge_lora` subtracts the updates again (exact up to float rounding). Over frozen weights
    stored in bf16/fp16 the update is rounded to that dtype.
    """

    linears = _lora_linears(model)
    if getattr(model, FINGERPRINT_ATTR, None) is None:  # once: after an unmerge the weights differ by rounding
        remember_fingerprint(model)
    for linear in linears:
        linear.set_merged(True)
    logger.info("merged the LoRA updates of %d projections into their weights", len(linears))
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract the updates :func:`merge_lora` folded in, in place (training works again); returns the model."""
    for linear in _lora_linears(model):
        linear.set_merged(False)
    return model


# ------------------------------------------------------------------------------------------------ the protocol


def adapted_projections(model: nn.Module) -> list[str]:
    """The paths of ``model``'s LoRA projections (a task's modules at LoRA's mixed-batch site)."""
    return [path for path, m in model.named_modules() if isinstance(m, LoRALinear)]


@torch.no_grad()
def interpolate(model: nn.Module, alpha: float, pretrained: object = None) -> None:
    """Every update ``scaling * B A`` times ``alpha``, in place (its scaling times alpha). A merged projection is
    unmerged, scaled and merged again: its weight is then ``W + alpha * scaling * B A``, the weight interpolation
    between the frozen and the merged weight (up to the rounding of the unmerge)."""
    for linear in [m for m in model.modules() if isinstance(m, LoRALinear)]:
        merged = linear.merged
        linear.set_merged(False)
        for update in linear.lora.values():
            assert isinstance(update, LoRA)
            update.scaling = update.scaling * alpha
        linear.set_merged(merged)


METHOD = Method(
    name="lora",
    config=LoRAConfig,
    attach=attach,
    modules=lora_modules,
    summary="LoRA: low-rank updates of the attention's q/v (k, o; or the fused qkv) projections (Hu et al., 2022)",
    group="lora",
    title="LoRA",
    module_sites=(ModuleSite(find=adapted_projections, route=route, label="attention projection"),),
    batch_refusal=None,
    merge=merge_lora,
    unmerge=unmerge_lora,
    interpolation=Interpolation(interpolate, how="each low-rank update's scaling times alpha"),
    noise_sites=lora_modules,  # each LoRA module's output is its update's contribution
)
