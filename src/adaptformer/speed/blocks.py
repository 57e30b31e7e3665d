"""Two options on a ViT's ``blocks`` sequence, installed by swapping the class of the existing ``nn.Sequential``
(parameter names do not change): its leading frozen blocks run under ``torch.no_grad()`` ("frozen_prefix"), and the
last block computes the class token only while the model's own ``forward`` runs ("class_token_tail",
:mod:`.class_token_tail`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..model import get_spec, trainable_groups
from .attention import fused_now
from .class_token_tail import class_token_forward, class_token_tail_reason

_TAIL_HOOKS_ATTR = "_adaptformer_tail_hooks"


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
