"""Adaptation methods, one module each (config, what it attaches where, what trains), known through one registry.

    adaptformer  AdaptMLP bottlenecks beside every block's MLP (:mod:`.adaptformer`)
    vpt          visual prompt tuning (:mod:`.vpt`)
    linear       the head only (:mod:`.linear`)
    full         everything (:mod:`.full`)

``register_method(Method(...))`` adds a method defined anywhere; see :mod:`.registry`.
"""

from .adaptformer import AdaptFormerConfig, AdaptMLP, adapter_modules
from .full import FullConfig
from .linear import LinearConfig
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
    "FullConfig",
    "LinearConfig",
    "Method",
    "MethodConfig",
    "PromptTokens",
    "VPTConfig",
    "adapter_modules",
    "get_method",
    "method_names",
    "method_of",
    "prompt_modules",
    "register_method",
    "resolve_method",
    "unregister_method",
]
