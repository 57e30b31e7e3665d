"""How a backbone name says it is a transformers model: ``hf:<folder or cached Hub id>``. Plain string handling, so
that the rest of the library can tell such a name without importing transformers (the ``hf`` extra)."""

from __future__ import annotations

from pathlib import Path

HF_PREFIX = "hf:"
HF_SOURCE = "hf"  # the checkpoint source of an hf: backbone: a transformers folder, read by transformers
# the block families of transformers' encoder layers (adaptformer.backbones.hf.layers.LAYERS, in that order)
HF_FAMILY_NAMES = (
    "hf_vit",
    "hf_deit",
    "hf_dinov2",
    "hf_dinov2_registers",
    "hf_clip",
    "hf_siglip",
    "hf_beit",
    "hf_videomae",
    "hf_swin",
)


def is_hf_name(name: str) -> bool:
    """Whether backbone ``name`` names a transformers model (``hf:<folder or cached Hub id>``)."""
    return name.startswith(HF_PREFIX)


def canonical_name(name: str) -> str:
    """``hf:<folder>`` with the folder made absolute (an adapter records where its backbone is, wherever it is used
    from); other names as they are."""
    where = name[len(HF_PREFIX) :]
    if is_hf_name(name) and Path(where).is_dir():
        return HF_PREFIX + str(Path(where).resolve())
    return name
