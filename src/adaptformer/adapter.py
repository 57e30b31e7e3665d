"""AdaptMLP, the bottleneck module of AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535).

A trainable down-projection, ReLU, dropout and up-projection, scaled by ``s``, runs beside the frozen MLP of a
transformer block. The defaults reproduce the authors' released code (which they state is the reference, not the
paper figure): the adapter reads the residual stream x' itself (no LayerNorm on its input), ``s = 0.1`` is fixed,
dropout 0.1, and the "lora" initialisation makes the up-projection output exactly zero, so an adapted model computes
exactly the frozen backbone's function at initialisation.

    parallel:   x = x' + DropPath(MLP(LN(x'))) + s * A(x')        (A(LN(x')) with input="normed", the paper's Eq. 3)
    sequential: h = DropPath(MLP(LN(x')));  x = x' + (h + s * A(h))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn

SCALE_LEARNABLE = "learnable"
INPUTS = ("residual", "normed")
LAYERNORMS = ("none", "in", "out")
INITS = ("lora", "bert")
FORMS = ("parallel", "sequential")


@dataclass(frozen=True)
class AdaptFormerConfig:
    """What AdaptMLP modules to attach, and how they compute. Defaults are the authors' code.

    Args:
        bottleneck: hidden width d^ of every adapter (int), a fraction of each block's width (float in (0, 1),
            e.g. 1/12 as the authors suggest for Swin; floored like ``dim // 12``), or one int per stage of a
            hierarchical backbone (tuple, e.g. ``(10, 21, 42, 85)`` for Swin-B).
        scale: the fixed output scale s (float), or "learnable" for a trainable scalar initialised to 1.0.
        input: "residual" feeds the block's residual stream x' (authors' code); "normed" feeds LN(x') (paper Eq. 3).
            Only meaningful for the parallel form.
        layernorm: an adapter-owned LayerNorm: "none", "in" (before the down projection) or "out" (after scaling).
        dropout: dropout probability after the ReLU (0.1 for images, 0.0 for video in the paper).
        init: "lora" (kaiming-uniform down weight, zero up weight and both biases: exact identity at init) or
            "bert" (normal std 0.02 weights, zero biases: NOT function-preserving at init).
        form: "parallel" (beside the MLP, the default) or "sequential" (applied to the MLP branch's output).
        layers: indices of the blocks that get an adapter, counted over all blocks in forward order; None = all.
    """

    bottleneck: int | float | tuple[int, ...] = 64
    scale: float | str = 0.1
    input: str = "residual"
    layernorm: str = "none"
    dropout: float = 0.1
    init: str = "lora"
    form: str = "parallel"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        b = self.bottleneck
        if isinstance(b, list | tuple):
            object.__setattr__(self, "bottleneck", tuple(b))
            if not b or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in b):
                raise ValueError(f"bottleneck per stage must be a non-empty list of positive ints, got {b!r}")
        elif isinstance(b, bool) or not isinstance(b, int | float):
            raise ValueError(f"bottleneck must be an int, a float ratio or a list of ints per stage, got {b!r}")
        elif isinstance(b, int) and b < 1:
            raise ValueError(f"bottleneck must be >= 1, got {b}")
        elif isinstance(b, float) and not 0.0 < b < 1.0:
            raise ValueError(f"bottleneck as a ratio of the block width must be in (0, 1), got {b}")
        s = self.scale
        if isinstance(s, str):
            if s != SCALE_LEARNABLE:
                raise ValueError(f"scale must be a number or {SCALE_LEARNABLE!r}, got {s!r}")
        elif isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise ValueError(f"scale must be a finite number or {SCALE_LEARNABLE!r}, got {s!r}")
        else:
            object.__setattr__(self, "scale", float(s))
        _check_choice("input", self.input, INPUTS)
        _check_choice("layernorm", self.layernorm, LAYERNORMS)
        _check_choice("init", self.init, INITS)
        _check_choice("form", self.form, FORMS)
        if self.form == "sequential" and self.input != "residual":
            raise ValueError(
                'input="normed" applies to the parallel form only: the sequential adapter reads the MLP branch output'
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(
                    f"layers must be a non-empty list of block indices >= 0 (or null for all), got {layers}"
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers has duplicate block indices: {layers}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))

    def bottleneck_for(self, width: int, stage: int) -> int:
        """The hidden width of the adapter of a block of ``width`` channels in ``stage``."""
        b = self.bottleneck
        if isinstance(b, tuple):
            if stage >= len(b):
                raise ValueError(f"bottleneck gives {len(b)} stage widths {b}, but the backbone has a stage {stage}")
            return b[stage]
        if isinstance(b, float):
            return max(1, int(width * b + 1e-6))
        return b

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("bottleneck", "layers"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptFormerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdaptFormerConfig fields {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class AdaptMLP(nn.Module):
    """The AdaptFormer bottleneck: ``s * up(dropout(relu(down(x))))``, with optional LayerNorm in or out.

    It returns only the adapter's contribution; the block adds it to its residual stream (see ``adapted_ffn``).
    """

    def __init__(self, dim: int, bottleneck: int, config: AdaptFormerConfig) -> None:
        super().__init__()
        self.form = config.form
        self.input = config.input
        self.layernorm = config.layernorm
        self.norm = nn.LayerNorm(dim) if config.layernorm != "none" else nn.Identity()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.up_proj = nn.Linear(bottleneck, dim)
        if config.scale == SCALE_LEARNABLE:
            self.scale: nn.Parameter | float = nn.Parameter(torch.ones(1))
        else:
            self.scale = float(config.scale)
        self.reset_parameters(config.init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "lora") -> None:
        if init == "lora":
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
        else:  # "bert"
            nn.init.normal_(self.down_proj.weight, std=0.02)
            nn.init.normal_(self.up_proj.weight, std=0.02)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)
        if isinstance(self.scale, nn.Parameter):
            self.scale.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layernorm == "in":
            x = self.norm(x)
        out = self.up_proj(self.dropout(self.act(self.down_proj(x)))) * self.scale
        if self.layernorm == "out":
            out = self.norm(out)
        return out

    def extra_repr(self) -> str:
        scale = "learnable" if isinstance(self.scale, nn.Parameter) else self.scale
        return f"form={self.form}, input={self.input}, scale={scale}"


def adapted_ffn(
    x: torch.Tensor,
    norm: nn.Module,
    ffn: Callable[[torch.Tensor], torch.Tensor],
    drop_path: nn.Module,
    adapter: AdaptMLP,
) -> torch.Tensor:
    """The feed-forward half of a pre-norm block with an adapter; ``x`` is the residual stream x' after attention.

    Additions are ordered so that a zero adapter output leaves the result bit-identical to ``x + drop_path(ffn(...))``.
    """
    normed = norm(x)
    return adapted_sum(x, normed, drop_path(ffn(normed)), adapter)


def adapted_sum(x: torch.Tensor, normed: torch.Tensor, h: torch.Tensor, adapter: AdaptMLP) -> torch.Tensor:
    """The end of :func:`adapted_ffn` given ``normed = norm(x)`` and the (drop-path'ed) feed-forward output ``h``."""
    if adapter.form == "sequential":
        return x + (h + adapter(h))
    a = adapter(normed if adapter.input == "normed" else x)
    return x + h + a
