"""Speed and memory options for training an adapted model, applied in place after ``create_model``.

AdaptFormer (Chen et al., NeurIPS 2022) trains a few adapters and the head beside a large frozen backbone. Frozen
weights open doors that full fine-tuning does not have: they can be stored once in the autocast precision (no fp32
master copy is needed, so autocast stops re-casting 86M weights every step), and blocks before the first trainable one
need no autograd. :class:`SpeedConfig` names the options, :func:`resolve` turns its "auto" fields into choices for a
device and autocast precision (the engine's choice, see :mod:`adaptformer.engine.precision`), and
:func:`apply_speed` applies them:

    frozen_dtype        storage dtype of frozen parameters; trainable ones (adapters, prompts, head) stay fp32
    attention           timm's fused ``scaled_dot_product_attention`` or the explicit matmul-softmax path
    frozen_prefix       run the blocks before the first trainable block under ``torch.no_grad()``
    frozen_backward     run frozen attention/MLP halves of adapted or VPT-prompted ViT blocks through the hand-written
                        backward of :mod:`adaptformer.frozen_backward` (one-copy head layout, pre-packed bf16 weights)
    grad_checkpointing  recompute block activations in backward (timm's ``set_grad_checkpointing``)
    class_token_tail    compute the last block for the class token only when the head reads only it (timm ViTs with
                        ``global_pool="token"``; :mod:`adaptformer.class_token_tail`)
    compile             ``torch.compile`` the model in place (compile time is paid on the first steps)
    allocator           keep freed host memory in glibc malloc for reuse (process-wide; :mod:`adaptformer.allocator`)

Every option keeps the model's function: fp32-storage options are exact, low-precision storage matches the plain
autocast path within bf16/fp16 rounding (tests/test_speed.py). The "auto" choices come from measurements recorded in
BENCHMARKS.md (``python benchmarks/bench.py``); ``MATH_ATTENTION_MAX_TOKENS`` below is where they live.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn as nn

from .allocator import allocator_tunable, tune_allocator
from .class_token_tail import class_token_forward, class_token_tail_reason
from .errors import UnsupportedModelError
from .methods import get_spec, trainable_groups
from .saving import remember_fingerprint

logger = logging.getLogger(__name__)

AUTO = "auto"
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTIONS = ("fused", "math", "split")
SWITCHES = ("on", "off")
ALLOCATORS = ("tuned", "default")
SPEED_ATTR = "adaptformer_speed"
_HOOK_ATTR = "_adaptformer_attention_hook"
_TAIL_HOOKS_ATTR = "_adaptformer_tail_hooks"

# "auto" attention, from the side-by-side measurements in BENCHMARKS.md: the longest token sequence (per attention
# call) for which the explicit matmul-softmax path beat timm's fused scaled_dot_product_attention in training steps, per
# (device type, precision). Up to it "auto" is "split" (math while autograd records, fused for no-grad forwards, which
# were ~5% faster fused at 197 tokens); above it, and for every pair not listed, "fused". On this CPU in bf16 the math
# path made training steps ~1.2-1.35x faster at 197-325 tokens (the CPU flash-attention backward is the slow part);
# at 485 tokens the two were within noise and at 785 (the video ViT) the fused kernel was ~1.45x faster. In fp32 the
# two were even up to 325 tokens and fused won above. On CUDA the fused kernels are the fast path (not measured here:
# no GPU was available; PyTorch's and timm's default).
MATH_ATTENTION_MAX_TOKENS: dict[tuple[str, str], int] = {("cpu", "bf16"): 400}
# "auto" frozen_backward is on where it was measured faster (BENCHMARKS.md, option group "frozen_backward"), with the
# frozen weights stored in the compute dtype; its attention half only runs where "auto" attention is not "fused".
FROZEN_BACKWARD_DEVICES: frozenset[tuple[str, str]] = frozenset({("cpu", "bf16")})


def _help(text: str) -> Any:
    return {"help": text}


@dataclass(frozen=True)
class SpeedConfig:
    """How to run a model fast; the string fields may be "auto" (resolved per device and precision by :func:`resolve`).

    The autocast precision itself is the training engine's choice (``engine.precision``); it is passed to
    :func:`apply_speed` alongside this config.
    """

    frozen_dtype: str = field(
        default=AUTO, metadata=_help("storage dtype of frozen weights: fp32, bf16, fp16, or auto (= the precision)")
    )
    attention: str = field(
        default=AUTO,
        metadata=_help("attention: fused (SDPA), math (matmul-softmax), split (math with autograd, else fused), auto"),
    )
    frozen_prefix: str = field(
        default=AUTO, metadata=_help("run blocks before the first trainable one without autograd: on, off, auto")
    )
    frozen_backward: str = field(
        default=AUTO,
        metadata=_help("hand-written backward for frozen halves of adapted/VPT ViT blocks (exact): on, off, auto"),
    )
    class_token_tail: str = field(
        default=AUTO,
        metadata=_help("last block for the class token only when the head reads only it (exact): on, off, auto"),
    )
    grad_checkpointing: bool = field(
        default=False, metadata=_help("recompute block activations in backward: less memory, slower steps")
    )
    compile: bool = field(default=False, metadata=_help("torch.compile the model (slow first steps; measure first)"))
    allocator: str = field(
        default=AUTO,
        metadata=_help(
            "host malloc: tuned (keep freed memory for reuse, process-wide), default, or auto (default: tuned was "
            "measured no faster for whole training steps)"
        ),
    )

    def __post_init__(self) -> None:
        _check("frozen_dtype", self.frozen_dtype, (AUTO, *PRECISIONS))
        _check("attention", self.attention, (AUTO, *ATTENTIONS))
        _check("frozen_prefix", self.frozen_prefix, (AUTO, *SWITCHES))
        _check("frozen_backward", self.frozen_backward, (AUTO, *SWITCHES))
        _check("allocator", self.allocator, (AUTO, *ALLOCATORS))
        _check("class_token_tail", self.class_token_tail, (AUTO, *SWITCHES))
        for name in ("grad_checkpointing", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def resolved(self) -> bool:
        """True when no field is "auto"."""
        switches = (self.frozen_dtype, self.attention, self.frozen_prefix, self.frozen_backward, self.class_token_tail)
        return AUTO not in (*switches, self.allocator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SpeedConfig fields {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    @staticmethod
    def help() -> dict[str, str]:
        """One line of help per field, for command lines."""
        return {f.name: f.metadata["help"] for f in fields(SpeedConfig)}


def _check(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def resolve(
    config: SpeedConfig | None, device: torch.device | str, precision: str, tokens: int | None = None
) -> SpeedConfig:
    """``config`` with every "auto" replaced by the choice for ``device``, the autocast ``precision`` ("fp32", "bf16"
    or "fp16") and the attention sequence length ``tokens`` (see BENCHMARKS.md for the measurements behind them).

    frozen_dtype: the autocast precision (frozen weights never need more).  attention: split (math while autograd
    records) for sequences up to ``MATH_ATTENTION_MAX_TOKENS[(device type, precision)]`` tokens, else fused (also when
    ``tokens`` is unknown).
    frozen_prefix: on (it is exact and never measured slower).
    frozen_backward: on for the (device type, precision) pairs in ``FROZEN_BACKWARD_DEVICES`` when frozen weights are
    stored in the precision (no autocast casts) and the model is not compiled (the compiler fuses its own kernels; a
    compiled block always takes its plain path), else off.
    class_token_tail: on unless compiled or checkpointed (timm's checkpointed forward runs the blocks one by one, so
    the tail could not engage; a model whose head reads more than the class token keeps its full last block:
    :func:`apply_speed` turns "auto" off for it).
    allocator: default (whole training steps measured no faster tuned, though single GEMMs were: see
    :mod:`adaptformer.allocator`).
    Raises ValueError for a low-precision frozen_dtype that the autocast precision cannot run, for class_token_tail
    "on" with grad_checkpointing, and for a tuned allocator where the C library is not glibc.
    """
    config = config or SpeedConfig()
    _check("precision", precision, PRECISIONS)
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
    frozen_prefix = "on" if config.frozen_prefix == AUTO else config.frozen_prefix
    frozen_backward = config.frozen_backward
    if frozen_backward == AUTO:
        measured = (device.type, precision) in FROZEN_BACKWARD_DEVICES and frozen_dtype == precision
        frozen_backward = "on" if measured and not config.compile else "off"
    class_token_tail = config.class_token_tail
    if class_token_tail == AUTO:
        class_token_tail = "off" if config.compile or config.grad_checkpointing else "on"
    elif class_token_tail == "on" and config.grad_checkpointing:
        raise ValueError("class_token_tail 'on' cannot run with grad_checkpointing (timm checkpoints block by block)")
    allocator = config.allocator
    if allocator == AUTO:
        allocator = "default"
    elif allocator == "tuned" and not allocator_tunable():
        raise ValueError("allocator 'tuned' needs Linux with glibc (mallopt); use 'default' or 'auto' here")
    return replace(
        config,
        frozen_dtype=frozen_dtype,
        attention=attention,
        frozen_prefix=frozen_prefix,
        frozen_backward=frozen_backward,
        class_token_tail=class_token_tail,
        allocator=allocator,
    )


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen floating-point parameter in ``dtype``, once; returns how many parameters were cast.

    The backbone fingerprint is remembered first, so adapters saved from this model still match the fp32 backbone
    they were trained on. Trainable parameters (adapters, prompts, head) and all buffers (e.g. the head's BatchNorm
    statistics) keep their dtype.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point() and p.dtype != dtype]
    if frozen and get_spec(model) is not None:
        remember_fingerprint(model)
    for p in frozen:
        p.data = p.data.to(dtype)
    return len(frozen)


def attention_tokens(model: nn.Module) -> int | None:
    """The sequence length one attention call sees: patches + prefix tokens (+ VPT prompts) for a ViT, the window
    area for Swin; None if it cannot be told from the model."""
    from timm.models.swin_transformer import WindowAttention

    from .prompts import prompt_modules

    windows = [m.window_area for m in model.modules() if isinstance(m, WindowAttention)]
    if windows:
        return max(windows)
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if not isinstance(patches, int):
        return None
    prompts = max((m.num_tokens for m in prompt_modules(model)), default=0)
    return patches + int(getattr(model, "num_prefix_tokens", 0)) + prompts


def _records(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd records ``module``'s call on ``x``: grad mode, and ``x`` or a parameter needs a gradient."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _split_attention(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of "split" attention: the math path while autograd records, the fused kernel otherwise
    (no-grad forwards, and blocks whose input and weights need no gradient, like the first of a frozen backbone)."""
    module.fused_attn = not _records(module, args[0])


def _fused_now(attn: nn.Module, x: torch.Tensor) -> bool:
    """The kernel ``attn(x)`` would use now: its ``fused_attn`` flag, or the "split" choice if it has that hook."""
    return not _records(attn, x) if _HOOK_ATTR in attn.__dict__ else bool(attn.fused_attn)


def set_attention(model: nn.Module, kind: str) -> int:
    """Choose the attention kernel of every timm-style attention module (those with a ``fused_attn`` flag):
    "fused", "math", or "split" (math while autograd records, e.g. training steps; fused for no-grad forwards).
    Returns the number of attention modules."""
    _check("attention", kind, ATTENTIONS)
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for m in modules:
        handle = m.__dict__.pop(_HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
        m.fused_attn = kind == "fused"
        if kind == "split":
            setattr(m, _HOOK_ATTR, m.register_forward_pre_hook(_split_attention))
    return len(modules)


class FastBlocks(nn.Sequential):
    """A model's ``blocks`` sequence with two speed options: its first ``frozen_prefix`` blocks run under
    ``torch.no_grad()``, and with ``class_token_tail`` the last block computes the class token only while the model's
    own ``forward`` runs (``tail_armed``, set by hooks on the model; see :mod:`adaptformer.class_token_tail`).

    Installed by swapping the class of the existing ``nn.Sequential`` (parameter names do not change).
    """

    frozen_prefix: int = 0
    class_token_tail: bool = False
    tail_armed: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tail = self.class_token_tail and self.tail_armed
        body = len(self) - 1 if tail else len(self)
        prefix = min(self.frozen_prefix, body)
        with torch.no_grad():
            for block in self[:prefix]:
                x = block(x)
        for block in self[prefix:body]:
            x = block(x)
        if tail:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_prefix < len(self)):
                x = class_token_forward(self[-1], x, _fused_now(self[-1].attn, x))
        return x


def _install_blocks(model: nn.Module) -> FastBlocks | None:
    """``model.blocks`` as :class:`FastBlocks` (class swapped in place), or None if it has no blocks sequence."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return None
    if not isinstance(blocks, FastBlocks):
        blocks.__class__ = FastBlocks
    return blocks


def frozen_prefix_length(model: nn.Module) -> int:
    """How many leading ``model.blocks`` have no trainable parameter and get only frozen input; 0 if not a ViT-like
    model with a ``blocks`` sequence, or if anything trainable feeds the blocks (e.g. a trainable patch embedding)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return 0
    in_blocks = {id(p) for p in blocks.parameters()}
    spec = get_spec(model)
    after = {id(p) for _, m in trainable_groups(model)["head"] for p in m.parameters()} if spec else set()
    if any(p.requires_grad and id(p) not in in_blocks and id(p) not in after for p in model.parameters()):
        return 0
    count = 0
    for block in blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        count += 1
    return count


def set_frozen_prefix(model: nn.Module, enable: bool) -> int:
    """Run the frozen leading blocks without autograd (or stop doing so); returns the number of blocks affected."""
    n = frozen_prefix_length(model) if enable else 0
    blocks = _install_blocks(model) if n else getattr(model, "blocks", None)
    if isinstance(blocks, FastBlocks):
        blocks.frozen_prefix = n
    return n


def _arm_tail(model: nn.Module, args: tuple[Any, ...]) -> None:
    model.blocks.tail_armed = True


def _disarm_tail(model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    model.blocks.tail_armed = False


def set_class_token_tail(model: nn.Module, enable: bool) -> str | None:
    """Let the last block compute the class token only during ``model.forward`` (or stop); returns None when done,
    else why the model does not allow it (then nothing changes). See :mod:`adaptformer.class_token_tail`."""
    for handle in model.__dict__.pop(_TAIL_HOOKS_ATTR, ()):
        handle.remove()
    if isinstance(getattr(model, "blocks", None), FastBlocks):
        model.blocks.class_token_tail = model.blocks.tail_armed = False
    if not enable:
        return None
    reason = class_token_tail_reason(model)
    if reason is not None:
        return reason
    blocks = _install_blocks(model)
    assert blocks is not None  # class_token_tail_reason checked it
    blocks.class_token_tail = True
    hooks = (model.register_forward_pre_hook(_arm_tail), model.register_forward_hook(_disarm_tail, always_call=True))
    setattr(model, _TAIL_HOOKS_ATTR, hooks)
    return None


def set_frozen_backward(model: nn.Module, enable: bool, attention: bool) -> int:
    """Let adapted and VPT-prompted ViT blocks run their frozen MLP half (and their attention half too if
    ``attention``) through :mod:`adaptformer.frozen_backward` while autograd records; returns the number of blocks that
    will. Each block still checks per call that the fast path computes its exact function and falls back to its own
    forward otherwise."""
    from .backbones import AdaptedViTBlock
    from .prompts import PromptedViTBlock

    blocks = [m for m in model.modules() if isinstance(m, AdaptedViTBlock | PromptedViTBlock)]
    for block in blocks:
        block.frozen_backward_mlp = enable
        block.frozen_backward_attention = enable and attention
    return len(blocks) if enable else 0


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """timm's activation checkpointing, refusing the re-entrant variant: with frozen inputs it would silently give the
    first adapters no gradient."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no set_grad_checkpointing(); cannot checkpoint activations"
        )
    from timm.layers import use_reentrant_ckpt

    if enable and use_reentrant_ckpt():
        raise ValueError(
            "timm is set to re-entrant checkpointing (TIMM_REENTRANT_CKPT); with a frozen backbone the first adapted "
            "blocks would get no gradient. Unset it (timm.layers.set_reentrant_ckpt(False))."
        )
    model.set_grad_checkpointing(enable)


def speed_config(model: nn.Module) -> SpeedConfig | None:
    """The resolved SpeedConfig ``apply_speed`` applied to ``model``, or None."""
    return getattr(model, SPEED_ATTR, None)


def apply_speed(
    model: nn.Module,
    config: SpeedConfig | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    compile_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply ``config``, resolved for the device and the autocast ``precision``
    ("fp32", "bf16", "fp16"), in place; returns the model.

    Run the model under autocast in ``precision`` afterwards, for training and evaluation alike: frozen weights stored
    in bf16/fp16 need it. Call this once, after ``create_model`` / ``load_adapter`` have set up the method (freezing
    decides what is "frozen") and before building the optimizer. ``compile_kwargs`` go to ``nn.Module.compile``.
    """
    if speed_config(model) is not None:
        raise ValueError(f"apply_speed() was already applied to this model: {speed_config(model)}")
    tokens = attention_tokens(model)
    resolved = resolve(config, device, precision, tokens)
    tail_reason = class_token_tail_reason(model) if resolved.class_token_tail == "on" else None
    if tail_reason is not None:
        if config is not None and config.class_token_tail == "on":
            raise ValueError(f"class_token_tail 'on' does not apply to this model: {tail_reason}")
        resolved = replace(resolved, class_token_tail="off")
    if resolved.allocator == "tuned":
        tune_allocator()
    model.to(device)
    cast = cast_frozen(model, DTYPES[resolved.frozen_dtype]) if resolved.frozen_dtype != "fp32" else 0
    attention_modules = set_attention(model, resolved.attention)
    prefix = set_frozen_prefix(model, resolved.frozen_prefix == "on")
    set_class_token_tail(model, resolved.class_token_tail == "on")
    manual = set_frozen_backward(model, resolved.frozen_backward == "on", resolved.attention != "fused")
    if resolved.grad_checkpointing:
        set_grad_checkpointing(model, True)
    if resolved.compile:
        model.compile(**(compile_kwargs or {}))
    setattr(model, SPEED_ATTR, resolved)
    logger.info(
        "speed: %s on %s in %s (%d frozen tensors stored in %s, %d attention modules at %s tokens, %d blocks without "
        "autograd, %d blocks with the hand-written frozen backward, class-token tail %s)",
        resolved.to_dict(),
        device,
        precision,
        cast,
        resolved.frozen_dtype,
        attention_modules,
        tokens,
        prefix,
        manual,
        resolved.class_token_tail,
    )
    return model
