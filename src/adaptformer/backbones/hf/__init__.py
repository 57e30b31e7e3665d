"""Hugging Face ``transformers`` vision models as backbones: ``hf:<folder>`` (:mod:`.names`), built from the folder
(:mod:`.folder`) with timm's interface around them (:mod:`.model`), their encoder layers as methods see them
(:mod:`.layers`). Only :mod:`.names` is imported here: the other modules need transformers (the ``hf`` extra)."""

from .names import HF_PREFIX, HF_SOURCE, canonical_name, is_hf_name

__all__ = ["HF_PREFIX", "HF_SOURCE", "canonical_name", "is_hf_name"]
