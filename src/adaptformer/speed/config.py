"""``SpeedConfig``: the speed and memory options, and :func:`resolve`, which turns "auto" into measured choices.

Every "auto" choice comes from a side-by-side measurement recorded in BENCHMARKS.md (``python benchmarks/bench.py
--options``); the tables below are where they live.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from ..precision import PRECISIONS
from ..validation import check_choice, from_mapping, to_plain

AUTO = "auto"
ATTENTIONS = ("fused", "math", "split")
SWITCHES = ("on", "off")

# "auto" attention, from the side-by-side measurements in BENCHMARKS.md: the longest token sequence (per attention
# call) for which the explicit matmul-softmax path beat timm's fused scaled_dot_product_attention in training steps, per
# (device type, precision). Up to it "auto" is "split" (math while autograd records, fused for no-grad forwards); above
# it, and for every pair not listed, "fused". On CPU in bf16 the math path made training steps faster at 197-325 tokens
# (the CPU flash-attention backward is the slow part); at 785 (the video ViT) the fused kernel was faster. In fp32 the
# two were even up to 325 tokens and fused won above. On CUDA the fused kernels are the fast path (not measured here:
# no GPU was available; PyTorch's and timm's default).
MATH_ATTENTION_MAX_TOKENS: dict[tuple[str, str], int] = {("cpu", "bf16"): 400}
# "auto" frozen_backward is on where it was measured faster (BENCHMARKS.md, option group "frozen_backward"), with the
# frozen weights stored in the compute dtype; its attention half only runs where "auto" attention is not "fused".
FROZEN_BACKWARD_DEVICES: frozenset[tuple[str, str]] = frozenset({("cpu", "bf16")})


Switch = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class SpeedConfig:
    """How to run a model fast; every option keeps the model's function (exactly, or to the precision's rounding).

    The autocast precision itself is the training engine's choice; it is passed to ``apply_speed`` beside this.

    Args:
        frozen_dtype: storage dtype of frozen weights: fp32, bf16, fp16, or auto (= the autocast precision).
        attention: fused (SDPA), math (matmul-softmax), split (math while autograd records, else fused), or auto.
        frozen_backward: hand-written backward for the frozen halves of adapted/VPT ViT blocks: on, off, auto.
        class_token_tail: last block for the class token only when the head reads only it: on, off, auto.
        grad_checkpointing: recompute block activations in backward (less memory, slower steps).
        compile: torch.compile the model (slow first steps; measure first).
    """

    frozen_dtype: Literal["auto", "fp32", "bf16", "fp16"] = AUTO
    attention: Literal["auto", "fused", "math", "split"] = AUTO
    frozen_backward: Switch = AUTO
    class_token_tail: Switch = AUTO
    grad_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice("frozen_dtype", self.frozen_dtype, (AUTO, *PRECISIONS))
        check_choice("attention", self.attention, (AUTO, *ATTENTIONS))
        for name in ("frozen_backward", "class_token_tail"):
            check_choice(name, getattr(self, name), (AUTO, *SWITCHES))
        for name in ("grad_checkpointing", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def resolved(self) -> bool:
        """True when no field is "auto"."""
        return AUTO not in (getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedConfig:
        return from_mapping(cls, data, "SpeedConfig")


def resolve(
    config: SpeedConfig | None, device: torch.device | str, precision: str, tokens: int | None = None
) -> SpeedConfig:
    """``config`` with every "auto" replaced by the choice for ``device``, the autocast ``precision`` ("fp32", "bf16"
    or "fp16") and the attention sequence length ``tokens`` (see BENCHMARKS.md for the measurements behind them).

    frozen_dtype: the autocast precision (frozen weights never need more).  attention: split (math while autograd
    records) for sequences up to ``MATH_ATTENTION_MAX_TOKENS[(device type, precision)]`` tokens, else fused (also when
    ``tokens`` is unknown).
    frozen_backward: on for the (device type, precision) pairs in ``FROZEN_BACKWARD_DEVICES`` when frozen weights are
    stored in the precision and the model is not compiled (a compiled block always takes its plain path), else off.
    class_token_tail: on unless compiled or checkpointed (timm's checkpointed forward runs the blocks one by one; a
    model whose head reads more than the class token keeps its full last block: ``apply_speed`` turns "auto" off).
    Raises ValueError for a low-precision frozen_dtype that the autocast precision cannot run, and for
    class_token_tail "on" with grad_checkpointing.
    """
    config = config or SpeedConfig()
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    frozen_dtype = precision if config.frozen_dtype == AUTO else config.frozen_dtype
    if frozen_dtype not in ("fp32", precision):
        raise ValueError(
            f"frozen weights stored in {frozen_dtype} need autocast in {frozen_dtype}; the precision is {precision}"
        )
    attention = config.attention
    if attention == AUTO:
        limit = MATH_ATTENTION_MAX_TOKENS.get((device.type, precision), 0)
        attention = "split" if tokens is not None and tokens <= limit else "fused"
    frozen_backward = config.frozen_backward
    if frozen_backward == AUTO:
        measured = (device.type, precision) in FROZEN_BACKWARD_DEVICES and frozen_dtype == precision
        frozen_backward = "on" if measured and not config.compile else "off"
    class_token_tail = config.class_token_tail
    if class_token_tail == AUTO:
        class_token_tail = "off" if config.compile or config.grad_checkpointing else "on"
    elif class_token_tail == "on" and config.grad_checkpointing:
        raise ValueError("class_token_tail 'on' cannot run with grad_checkpointing (timm checkpoints block by block)")
    return replace(
        config,
        frozen_dtype=frozen_dtype,
        attention=attention,
        frozen_backward=frozen_backward,
        class_token_tail=class_token_tail,
    )
