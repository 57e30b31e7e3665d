"""LoRA (Hu et al., ICLR 2022, arXiv 2106.09685): low-rank updates of the frozen attention projections.

A frozen projection ``W`` (out x in) computes ``W x + (alpha / r) B A x`` instead, with trainable ``A`` (r x in,
kaiming-uniform) and ``B`` (out x r, zeros): ``B A = 0`` at init, so an adapted model computes exactly the frozen
backbone's function until the first step. timm's ViT and Swin attention compute q, k and v with ONE fused ``qkv``
Linear (d -> 3d); LoRA on q and v (the paper's default) adds low-rank updates to the q and v thirds of its output only.

Where the update lives: the ``qkv`` (and, for target "o", the ``proj``) Linear of each chosen attention becomes a
:class:`LoRALinear`, an ``nn.Linear`` subclass (its class is swapped in place, as AdaptFormer swaps block classes)
that owns its updates as a child ``lora`` ModuleDict keyed by target (``blocks.0.attn.qkv.lora.q.A``). Why this way:

- names: the Linear stays where it was with its own ``weight`` and ``bias`` (``blocks.0.attn.qkv.weight``), so
  checkpoints load unchanged; the updates have their own prefix (``.lora.``) and are found again by type;
- the attention's forward is timm's, unchanged (it calls ``self.qkv(x)`` and ``self.proj(x)``): nothing of timm's
  attention is copied, so q/k norms, fused or math attention and Swin's relative position bias work as they are;
- torch.compile, deepcopy and pickling see ordinary module classes defined at module level (no hooks, no
  parametrizations, which would rename the weight to ``parametrizations.weight.original``).

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
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.swin_transformer import WindowAttention

from ..backbones.families import family_blocks, qualified_name
from ..backbones.video_vit import QVBiasAttention
from ..errors import UnsupportedModelError
from ..validation import check_block_indices, check_probability
from .protocol import Interpolation, ModuleSite, TaskRows
from .registry import Method, MethodConfig
from .state import FINGERPRINT_ATTR, remember_fingerprint

logger = logging.getLogger(__name__)

QKV_TARGETS = ("q", "k", "v")  # the three thirds of a fused qkv projection's output, in timm's order
OUTPUT_TARGET = "o"  # the output projection (``proj``)
TARGET_ALIASES = {"proj": OUTPUT_TARGET}
# attention classes whose forward computes ``self.qkv(x)`` (q, k, v thirds) and ``self.proj(x)``
SUPPORTED_ATTENTION: tuple[type[nn.Module], ...] = (Attention, WindowAttention, QVBiasAttention)


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """Low-rank updates of the attention projections (defaults: Hu et al.'s q, v with rank 8).

    Args:
        rank: the rank r of every update B A.
        alpha: the update is scaled by alpha / rank; null: alpha = rank (scale 1).
        targets: the projections that get an update: q, k, v (thirds of the fused qkv Linear) and o (or proj: the
            attention's output projection).
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
            raise ValueError(f"targets must be a non-empty list of q, k, v, o (or proj), got {self.targets!r}")
        known = (*QKV_TARGETS, OUTPUT_TARGET, *TARGET_ALIASES)
        unknown = [t for t in self.targets if t not in known]
        if unknown:
            raise ValueError(f"targets must be some of {list(known)}, got {list(self.targets)} ({unknown} unknown)")
        targets = tuple(TARGET_ALIASES.get(t, t) for t in self.targets)
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets names a projection twice: {list(self.targets)} (proj is o)")
        order = (*QKV_TARGETS, OUTPUT_TARGET)
        object.__setattr__(self, "targets", tuple(sorted(targets, key=order.index)))
        check_probability("dropout", self.dropout)
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "layers", check_block_indices("layers", self.layers))

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor of every update."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank


class LoRA(nn.Module):
    """One low-rank update ``scaling * B A`` of an (out x in) weight: ``forward(x)`` returns its contribution
    ``scaling * B A dropout(x)``, (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout)
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's init, as in the authors' loralib
        nn.init.zeros_(self.B)  # B A = 0: the adapted projection computes the frozen one exactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling  # (..., in) -> (..., r) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B A``, (out, in): what :func:`merge_lora` adds to the frozen weight."""
        return (self.B @ self.A) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.A.shape[1]}, out={self.B.shape[0]}, rank={self.A.shape[0]}, scaling={self.scaling:g}"


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose output, read as equal chunks named ``chunk_names`` (q, k, v for a fused qkv; o for an
    output projection), gets the low-rank update ``lora[name]`` added to the chunks it names.

    Made from an existing Linear by :meth:`adapt` (class swap: ``weight`` and ``bias`` keep their names and values).
    While ``merged`` (:func:`merge_lora`), the updates are inside ``weight`` and ``forward`` is the plain Linear's.
    """

    lora: nn.ModuleDict
    chunk_names: tuple[str, ...]
    merged: bool

    @classmethod
    def adapt(
        cls, linear: nn.Linear, chunk_names: tuple[str, ...], targets: tuple[str, ...], config: LoRAConfig
    ) -> LoRALinear:
        """Turn ``linear`` into a LoRALinear in place with an update for each of ``targets`` (among ``chunk_names``)."""
        if type(linear) is not nn.Linear:
            raise UnsupportedModelError(f"LoRA adapts plain nn.Linear projections, got {qualified_name(type(linear))}")
        if linear.out_features % len(chunk_names):
            raise UnsupportedModelError(
                f"a Linear with {linear.out_features} outputs does not split into {len(chunk_names)} equal chunks"
            )
        width = linear.out_features // len(chunk_names)
        updates = {
            t: LoRA(linear.in_features, width, config.rank, config.scaling, config.dropout) for t in targets
        }  # fp32 even over a low-precision backbone: they are the trained weights
        linear.add_module("lora", nn.ModuleDict(updates).to(device=linear.weight.device))
        linear.__class__ = cls
        assert isinstance(linear, LoRALinear)
        linear.chunk_names, linear.merged = chunk_names, False
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., chunks * width)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError("LoRA updates are merged into the weights (merge_lora); unmerge_lora() to train")
            return out
        if len(self.chunk_names) == 1:
            return out + self.lora[self.chunk_names[0]](x)
        chunks = out.chunk(len(self.chunk_names), dim=-1)  # q, k, v: (..., width) each
        return torch.cat(
            [c + self.lora[n](x) if n in self.lora else c for n, c in zip(self.chunk_names, chunks, strict=True)], -1
        )

    @torch.no_grad()
    def set_merged(self, merged: bool) -> None:
        """Add (``merged``) or subtract each update's ``scaling * B A`` to / from its chunk of ``weight``."""
        if merged == self.merged:
            return
        width = self.out_features // len(self.chunk_names)
        for name, update in self.lora.items():
            i = self.chunk_names.index(name)
            delta = update.delta_weight().to(self.weight.dtype)  # (width, in)
            rows = self.weight[i * width : (i + 1) * width]
            rows.add_(delta if merged else -delta)
        self.merged = merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunks={list(self.chunk_names)}, merged={self.merged}"


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


def attach(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Give the attention projections of ``model``'s chosen blocks LoRA updates, in place; returns the model.

    Raises UnsupportedModelError for blocks whose attention is not in ``SUPPORTED_ATTENTION`` (naming its class),
    ValueError when ``layers`` names blocks the model does not have or the model already has LoRA updates.
    """
    if lora_modules(model):
        raise ValueError(f"{type(model).__name__} already has LoRA updates; attach them only once")
    _, blocks = family_blocks(model, what="LoRA")
    wanted = range(len(blocks)) if config.layers is None else config.layers
    missing = [i for i in wanted if i >= len(blocks)]
    if missing:
        raise ValueError(f"layers {missing} out of range: {type(model).__name__} has {len(blocks)} blocks (0..)")
    qkv_targets = tuple(t for t in config.targets if t in QKV_TARGETS)
    for index in wanted:
        attn = _attention_of(blocks[index][1])
        if type(attn) not in SUPPORTED_ATTENTION:
            names = ", ".join(qualified_name(c) for c in SUPPORTED_ATTENTION)
            raise UnsupportedModelError(
                f"LoRA supports the attention classes {names} (their forward calls qkv and proj); block {index}'s "
                f"attention is {qualified_name(type(attn))}"
            )
        if qkv_targets:
            LoRALinear.adapt(attn.qkv, QKV_TARGETS, qkv_targets, config)
        if OUTPUT_TARGET in config.targets:
            LoRALinear.adapt(attn.proj, (OUTPUT_TARGET,), (OUTPUT_TARGET,), config)
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


def _stacked(linears: list[LoRALinear], names: list[str], rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every present task's updates at one projection as stacked tensors, one slot per task plus a last all-zero slot
    (rows of no task here): ``A`` (P + 1, C * rank, in), ``B`` (P + 1, C, width, rank) and the scalings
    (P + 1, C), C = len(names). A task's update of rank < ``rank`` is zero-padded; a target it does not have
    is all zeros (both add exact zeros)."""
    first = linears[0]
    width = first.out_features // len(first.chunk_names)
    like = next(u.A for u in first.lora.values() if isinstance(u, LoRA))  # the updates' dtype and device
    zero_a, zero_b = like.new_zeros((rank, first.in_features)), like.new_zeros((width, rank))
    a, b, scale = [], [], []
    for linear in (*linears, None):
        for name in names:
            update = linear.lora[name] if linear is not None and name in linear.lora else None
            if update is None:
                a.append(zero_a), b.append(zero_b), scale.append(0.0)
                continue
            assert isinstance(update, LoRA)
            pad = rank - update.A.shape[0]
            a.append(F.pad(update.A, (0, 0, 0, pad)) if pad else update.A)
            b.append(F.pad(update.B, (0, pad)) if pad else update.B)
            scale.append(update.scaling)
    slots, count = len(linears) + 1, len(names)
    return (
        torch.stack(a).view(slots, count * rank, -1),
        torch.stack(b).view(slots, count, width, rank),
        torch.tensor(scale, dtype=torch.float32, device=like.device).view(slots, count),
    )


def route(frozen: nn.Module, present: TaskRows, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A mixed-task batch at one projection: the frozen Linear over every row (``frozen``, the weight every task
    shares), plus on each task's rows that task's own updates, each added to the chunk (q, k, v or o) it targets.

    Batched over rows, not looped over tasks (S-LoRA/Punica's gathered form): the present tasks' ``A`` and ``B`` are
    stacked, each row gathers its task's (a zero slot for rows of no task here), one batched matmul per factor gives
    every row's update of every target at once, and each target's update is added to its chunk of the output in one
    elementwise add. No step depends on which rows are whose (a traced graph holds it all)."""
    (x,) = inputs  # (B, ..., in)
    out = frozen(x)  # (B, ..., chunks * width), a fresh tensor: written in place below
    linears = [linear for linear, _ in present]
    for linear in linears:
        assert isinstance(linear, LoRALinear)
        if linear.merged:  # its updates would be in the shared weight already: refuse rather than add them twice
            raise RuntimeError("a task's LoRA updates are merged into the shared weight; unmerge_lora() it first")
        if any(u.dropout.training and u.dropout.p > 0 for u in linear.lora.values() if isinstance(u, LoRA)):
            raise RuntimeError("the mixed-batch LoRA route runs no dropout: eval() the tasks' modules first")
    chunk_names = linears[0].chunk_names
    names = [n for n in chunk_names if any(n in linear.lora for linear in linears)]
    rank = max(int(u.A.shape[0]) for linear in linears for u in linear.lora.values() if isinstance(u, LoRA))
    a, b, scale = _stacked(linears, names, rank)
    slot = torch.full((x.shape[0],), len(linears), dtype=torch.long, device=x.device)  # the zero slot
    for k, (_, rows) in enumerate(present):
        slot.index_fill_(0, rows, k)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
    h = torch.bmm(flat, a.index_select(0, slot).transpose(1, 2))  # (B, T, C * rank): every target's A x
    h = (h * scale.index_select(0, slot).repeat_interleave(rank, 1)[:, None, :]).to(h.dtype)  # its scaling: small
    b = b.index_select(0, slot)  # (B, C, width, rank)
    width = b.shape[2]
    grid = out.view(out.shape[0], -1, out.shape[-1])  # (B, T, chunks * width), a view: added to in place
    for j, name in enumerate(names):
        i = chunk_names.index(name)
        delta = torch.bmm(h[..., j * rank : (j + 1) * rank], b[:, j].transpose(1, 2))  # (B, T, width): B A x
        grid[..., i * width : (i + 1) * width].add_(delta.to(out.dtype))  # one pass, no copy of the output
    return out


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
    summary="LoRA: low-rank updates of the attention's q/v (k, o) projections (Hu et al., ICLR 2022)",
    group="lora",
    title="LoRA",
    module_sites=(ModuleSite(find=adapted_projections, route=route, label="attention projection"),),
    batch_refusal=None,
    merge=merge_lora,
    unmerge=unmerge_lora,
    interpolation=Interpolation(interpolate, how="each low-rank update's scaling times alpha"),
    noise_sites=lora_modules,  # each LoRA module's output is its update's contribution
)
