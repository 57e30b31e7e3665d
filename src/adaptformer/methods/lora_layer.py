"""LoRA's layer (Hu et al., ICLR 2022; the method and its config: :mod:`.lora`): the low-rank update ``LoRA``, the
``LoRALinear`` that adds updates to chunks of a projection's output, and ``route``, a mixed-task batch at one
projection with every task's updates applied to its own rows in one batched pass (S-LoRA/Punica's gathered form)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.families import qualified_name
from ..errors import UnsupportedModelError
from .protocol import TaskRows

if TYPE_CHECKING:
    from .lora import LoRAConfig


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
    output projection), gets the low-rank update ``lora[name]`` added to the chunk it names; an update named by all
    chunk names joined (``qkv``; ``o`` for a one-chunk Linear) spans the whole output (:meth:`span`).

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
        whole = "".join(chunk_names)
        unknown = [t for t in targets if t not in chunk_names and t != whole]
        if unknown:
            raise ValueError(f"LoRA targets {unknown} are neither a chunk of {list(chunk_names)} nor {whole!r}")
        width = linear.out_features // len(chunk_names)
        outputs = {t: linear.out_features if t == whole else width for t in targets}
        updates = {
            t: LoRA(linear.in_features, out, config.rank, config.scaling, config.dropout) for t, out in outputs.items()
        }  # fp32 even over a low-precision backbone: they are the trained weights
        linear.add_module("lora", nn.ModuleDict(updates).to(device=linear.weight.device))
        linear.__class__ = cls
        assert isinstance(linear, LoRALinear)
        linear.chunk_names, linear.merged = chunk_names, False
        return linear

    @property
    def whole(self) -> str:
        """The name of an update of the whole output: the chunk names joined ("qkv"; "o" for an output projection)."""
        return "".join(self.chunk_names)

    def span(self, name: str) -> tuple[int, int]:
        """The output rows ``[start, stop)`` that update ``name`` adds to: its chunk, or all for :attr:`whole`."""
        if name == self.whole:
            return 0, self.out_features
        width = self.out_features // len(self.chunk_names)
        i = self.chunk_names.index(name)
        return i * width, (i + 1) * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., chunks * width)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError("LoRA updates are merged into the weights (merge_lora); unmerge_lora() to train")
            return out
        if self.whole in self.lora:  # (..., chunks * width): one update of the whole output (q, k, v share its A)
            out = out + self.lora[self.whole](x)
        if len(self.chunk_names) == 1 or not any(n in self.lora for n in self.chunk_names):
            return out
        chunks = out.chunk(len(self.chunk_names), dim=-1)  # q, k, v: (..., width) each
        return torch.cat(
            [c + self.lora[n](x) if n in self.lora else c for n, c in zip(self.chunk_names, chunks, strict=True)], -1
        )

    @torch.no_grad()
    def set_merged(self, merged: bool) -> None:
        """Add (``merged``) or subtract each update's ``scaling * B A`` to / from its rows of ``weight``."""
        if merged == self.merged:
            return
        for name, update in self.lora.items():
            start, stop = self.span(name)
            delta = update.delta_weight().to(self.weight.dtype)  # (stop - start, in)
            self.weight[start:stop].add_(delta if merged else -delta)
        self.merged = merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunks={list(self.chunk_names)}, merged={self.merged}"


def _stacked(
    linears: list[LoRALinear], names: list[str], rank: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every present task's updates at one projection as stacked tensors, one slot per task plus a last all-zero slot
    (rows of no task here): ``A`` (P + 1, C * rank, in), ``B`` (P + 1, C, width, rank) and the scalings
    (P + 1, C), C = len(names). A task's update of rank < ``rank`` is zero-padded; a target it does not have
    is all zeros (both add exact zeros)."""
    first = linears[0]
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
    slot = torch.full((x.shape[0],), len(linears), dtype=torch.long, device=x.device)  # the zero slot
    for k, (_, rows) in enumerate(present):
        slot.index_fill_(0, rows, k)
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
    grid = out.view(out.shape[0], -1, out.shape[-1])  # (B, T, out), a view: added to in place
    chunk_names, whole = linears[0].chunk_names, linears[0].whole
    width = linears[0].out_features // len(chunk_names)
    # the chunk updates (q, k, v, o) of equal width, then an update of the whole fused output (qkv) if any task has one
    groups = [([n for n in chunk_names if any(n in linear.lora for linear in linears)], width)]
    if whole not in chunk_names and any(whole in linear.lora for linear in linears):
        groups.append(([whole], linears[0].out_features))
    for names, size in groups:
        if names:
            _add_updates(grid, flat, slot, linears, names, size)
    return out


def _add_updates(
    grid: torch.Tensor, flat: torch.Tensor, slot: torch.Tensor, linears: list[LoRALinear], names: list[str], width: int
) -> None:
    """Add every row's updates ``names`` (each ``width`` wide, at its span of the output) into ``grid`` (B, T, out):
    one batched matmul per factor over the rows, each row with its task's stacked factors (``slot``)."""
    rank = max(int(lin.lora[n].A.shape[0]) for lin in linears for n in names if n in lin.lora)
    a, b, scale = _stacked(linears, names, rank, width)
    h = torch.bmm(flat, a.index_select(0, slot).transpose(1, 2))  # (B, T, C * rank): every target's A x
    h = (h * scale.index_select(0, slot).repeat_interleave(rank, 1)[:, None, :]).to(h.dtype)  # its scaling: small
    b = b.index_select(0, slot)  # (B, C, width, rank)
    for j, name in enumerate(names):
        start, stop = linears[0].span(name)
        delta = torch.bmm(h[..., j * rank : (j + 1) * rank], b[:, j].transpose(1, 2))  # (B, T, width): B A x
        grid[..., start:stop].add_(delta.to(grid.dtype))  # one pass, no copy of the output
