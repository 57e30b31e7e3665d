"""Adaptation methods, one module each (config, what it attaches where, what trains), known through one registry.

    adaptformer  AdaptMLP bottlenecks beside every block's MLP (:mod:`.adaptformer`)
    vpt          visual prompt tuning (:mod:`.vpt`)
    linear       the head only (:mod:`.linear`)
    full         everything (:mod:`.full`)
    lora         low-rank updates of the attention projections (:mod:`.lora`)
    adapter_plus Adapter+ bottlenecks after every block (:mod:`.adapter_plus`)

:mod:`.peft_lora` converts a PEFT LoRA to this library's LoRA and back (pure functions, for ``import-peft`` and
``export --format peft``).

``register_method(Method(...))`` adds a method defined anywhere; see :mod:`.registry`, and :mod:`.protocol` for how a
method declares its behaviour in a mixed-task batch, before export and under ``inspect``.
"""

from .adapter_plus import AdapterPlus, AdapterPlusConfig, adapter_plus_modules
from .adaptformer import AdaptFormerConfig, AdaptMLP, adapter_modules
from .full import FullConfig
from .linear import LinearConfig
from .lora import LoRA, LoRAConfig, LoRALinear, lora_modules, merge_lora, unmerge_lora
from .protocol import BlockModule, Measurement
from .registry import (
    Method,
    MethodConfig,
    get_method,
    method_names,
    method_of,
    register_method,
    resolve_method,
    unregister_method,
)
from .vpt import PromptTokens, VPTConfig, prompt_modules

__all__ = [
    "AdaptFormerConfig",
    "AdaptMLP",
    "AdapterPlus",
    "AdapterPlusConfig",
    "BlockModule",
    "FullConfig",
    "LinearConfig",
    "LoRA",
    "LoRAConfig",
    "LoRALinear",
    "Measurement",
    "Method",
    "MethodConfig",
    "PromptTokens",
    "VPTConfig",
    "adapter_modules",
    "adapter_plus_modules",
    "get_method",
    "lora_modules",
    "merge_lora",
    "method_names",
    "method_of",
    "prompt_modules",
    "register_method",
    "resolve_method",
    "unmerge_lora",
    "unregister_method",
]
