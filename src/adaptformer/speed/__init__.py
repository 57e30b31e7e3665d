"""Speed and memory options, installed from outside by :func:`apply_speed` (see :mod:`.apply` for the list)."""

from .apply import apply_speed, cast_frozen, set_grad_checkpointing, speed_config
from .attention import attention_tokens, set_attention
from .blocks import FastBlocks, set_class_token_tail
from .config import ATTENTIONS, AUTO, SWITCHES, SpeedConfig, resolve
from .frozen_blocks import FAST_BLOCKS, set_frozen_backward

__all__ = [
    "ATTENTIONS",
    "AUTO",
    "FAST_BLOCKS",
    "SWITCHES",
    "FastBlocks",
    "SpeedConfig",
    "apply_speed",
    "attention_tokens",
    "cast_frozen",
    "resolve",
    "set_attention",
    "set_class_token_tail",
    "set_frozen_backward",
    "set_grad_checkpointing",
    "speed_config",
]
