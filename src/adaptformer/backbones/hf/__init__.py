"""Hugging Face ``transformers`` vision models as backbones: ``hf:<folder>`` (:mod:`.folder`), the timm interface
around them (:mod:`.model`) and their encoder layers as methods see them (:mod:`.layers`)."""

from .folder import HF_PREFIX, HF_SOURCE, build_hf_backbone, canonical_name, is_hf_name
from .model import ARCHITECTURES, HFArchitecture, HFBackbone

__all__ = [
    "ARCHITECTURES",
    "HF_PREFIX",
    "HF_SOURCE",
    "HFArchitecture",
    "HFBackbone",
    "build_hf_backbone",
    "canonical_name",
    "is_hf_name",
]
