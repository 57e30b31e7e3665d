"""The "class_token_tail" option on a ViT's ``blocks`` sequence, installed by swapping the class of the existing
``nn.Sequential`` (parameter names do not change): the last block computes the class token only while the model's own
``forward`` runs (:mod:`.class_token_tail`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .attention import fused_now
from .class_token_tail import class_token_forward, class_token_tail_reason

_TAIL_HOOKS_ATTR = "_adaptformer_tail_hooks"


class FastBlocks(nn.Sequential):
    """A model's ``blocks`` sequence whose last block, with ``class_token_tail``, computes the class token only while
    the model's own ``forward`` runs (``tail_armed``, set by hooks on the model; see :mod:`.class_token_tail`).

    Installed by swapping the class of the existing ``nn.Sequential`` (parameter names do not change).
    """

    class_token_tail: bool = False
    tail_armed: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tail = self.class_token_tail and self.tail_armed
        for block in self[: len(self) - 1] if tail else self:
            x = block(x)
        if tail:
            x = class_token_forward(self[-1], x, fused_now(self[-1].attn, x))
        return x


def _install_blocks(model: nn.Module) -> FastBlocks | None:
    """``model.blocks`` as :class:`FastBlocks` (class swapped in place), or None if it has no blocks sequence."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return None
    if not isinstance(blocks, FastBlocks):
        blocks.__class__ = FastBlocks
    return blocks


def _arm_tail(model: nn.Module, args: tuple[Any, ...]) -> None:
    model.blocks.tail_armed = True


def _disarm_tail(model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    model.blocks.tail_armed = False


def set_class_token_tail(model: nn.Module, enable: bool) -> str | None:
    """Let the last block compute the class token only during ``model.forward`` (or stop); returns None when done,
    else why the model does not allow it (then nothing changes). See :mod:`.class_token_tail`."""
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
