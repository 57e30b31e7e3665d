"""``create_model``: a timm backbone, its pre-trained weights, a task head and an adaptation method, in one call.

Every backbone built here carries its :class:`BackboneSource` (``model.adaptformer_source``): the timm kwargs, the
checkpoint, and for a backbone with no checkpoint the seed its random initialisation came from, so that a saved
adapter says how to build its frozen backbone again. :func:`architecture_difference` says how other kwargs change
that backbone's architecture (built on the meta device: no memory, no weights), before anything is loaded into it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from .backbones.checkpoints.load import load_pretrained
from .backbones.families import block_width, families
from .backbones.hf import HF_SOURCE, canonical_name, is_hf_name
from .errors import CheckpointError
from .methods import MethodConfig
from .model import ModelSpec, adapt
from .validation import check_types

logger = logging.getLogger(__name__)

TIMM_PRETRAINED = "timm"
SOURCE_ATTR = "adaptformer_source"


def missing_checkpoint(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` names a local file or folder (not None, not ``"timm"``) that does not exist."""
    return checkpoint not in (None, TIMM_PRETRAINED) and not Path(checkpoint).exists()


def require_checkpoint(checkpoint: str | None) -> None:
    """FileNotFoundError naming ``--model.checkpoint`` when :func:`missing_checkpoint`: checked before anything else
    is read or built."""
    if missing_checkpoint(checkpoint):
        raise FileNotFoundError(f"--model.checkpoint {checkpoint}: no such file or folder (the backbone's weights)")


@dataclass(frozen=True)
class BackboneSource:
    """How a backbone was built: enough to build the same frozen weights again.

    Args:
        kwargs: the ``timm.create_model`` kwargs besides the name and the class count.
        checkpoint: the pre-trained weights: a file (absolute path when it existed), "timm", or None.
        checkpoint_source: the key layout of ``checkpoint``.
        init_seed: with no checkpoint, the seed of torch's generator when the backbone was initialised (None: not
            seeded here, so it cannot be built again).
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_source: str = "timm"
    init_seed: int | None = None

    def __post_init__(self) -> None:
        check_types(self, {"kwargs": dict, "checkpoint": (str, type(None)), "checkpoint_source": str,
                           "init_seed": (int, type(None))})  # fmt: skip


def get_source(model: nn.Module) -> BackboneSource | None:
    return getattr(model, SOURCE_ATTR, None)


def build_backbone(
    name: str,
    num_classes: int,
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    keep_head: bool = False,
    init_seed: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A plain timm model with pre-trained weights: none, a local file (``checkpoint``), or timm's own mechanism.

    ``checkpoint="timm"`` asks timm for its pretrained weights (its cache, a hub download, or a local file given as
    ``pretrained_cfg_overlay={"file": path}``); any other value is a local file read by ``load_pretrained``.
    ``init_seed`` seeds torch's generator right before the model is initialised (for a backbone with no checkpoint,
    whose weights are then a function of the seed).
    """
    use_timm = checkpoint == TIMM_PRETRAINED
    if init_seed is not None:
        torch.manual_seed(init_seed)
    if is_hf_name(name):
        return _build_hf(name, num_classes, checkpoint, checkpoint_source, timm_kwargs)
    try:
        model = timm.create_model(name, pretrained=use_timm, num_classes=num_classes, **timm_kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model {name!r}: not a timm or adaptformer model name") from e
        if use_timm and "Error(s) in loading state_dict" in str(e):  # timm's weights, a model of other shapes
            raise CheckpointError(
                f"timm's pretrained weights for {name!r} do not fit the model built with kwargs {timm_kwargs}: "
                f"{_load_errors(str(e))}"
            ) from None
        raise
    except TypeError as e:  # a keyword the model's constructor does not take: the caller's kwargs, not a bug here
        if not timm_kwargs:
            raise
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))  # name only the one it refused
        named = [unexpected.group(1)] if unexpected else sorted(timm_kwargs)
        raise ValueError(f"model kwargs {named} do not fit {name!r}: {e}") from e
    except AssertionError as e:  # timm's constructors assert what their arguments must satisfy
        if not timm_kwargs:
            raise
        raise ValueError(f"model kwargs {timm_kwargs} do not build {name!r}: {e}") from None
    except OSError as e:  # no network and nothing cached
        raise FileNotFoundError(
            f"timm could not fetch pretrained weights for {name!r} ({e}); pass a local file as checkpoint, or "
            "checkpoint='timm' with pretrained_cfg_overlay={'file': path}"
        ) from e
    if checkpoint is not None and not use_timm:
        load_pretrained(model, checkpoint, source=checkpoint_source, keep_head=keep_head)
        checkpoint = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else str(checkpoint)
    source = BackboneSource(dict(timm_kwargs), None if checkpoint is None else str(checkpoint), checkpoint_source,
                            init_seed if checkpoint is None else None)  # fmt: skip
    setattr(model, SOURCE_ATTR, source)
    return model


def _build_hf(
    name: str, num_classes: int, checkpoint: str | Path | None, checkpoint_source: str, kwargs: dict[str, Any]
) -> nn.Module:
    """A transformers backbone (``hf:<folder>``): its weights are a transformers folder, the named one or
    ``checkpoint``, read by transformers (checkpoint source ``hf``; ``timm``, the default, names the same: the
    backbone's own layout)."""
    if checkpoint_source not in (HF_SOURCE, TIMM_PRETRAINED) or checkpoint == TIMM_PRETRAINED:
        raise ValueError(
            f"backbone {name}: its weights are a transformers folder (checkpoint source {HF_SOURCE!r}), not "
            f"checkpoint {checkpoint!r} with checkpoint source {checkpoint_source!r}"
        )
    try:
        from .backbones.hf.folder import build_hf_backbone
    except ImportError as e:  # transformers is the `hf` extra
        raise ImportError(f"backbone {name} needs transformers >= 5.23: pip install 'adaptformer[hf]' ({e})") from e
    model, weights = build_hf_backbone(canonical_name(name), num_classes, checkpoint, **kwargs)
    setattr(model, SOURCE_ATTR, BackboneSource(dict(kwargs), weights, HF_SOURCE, None))
    return model


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape "
    r"in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def _load_errors(message: str) -> str:
    """torch's ``load_state_dict`` error as ``key: file (...) vs model (...)`` per shape mismatch (its other lines as
    they are)."""
    mismatched = [f"{k}: file {_shape(a)} vs model {_shape(b)}" for k, a, b in _SIZE_MISMATCH.findall(message)]
    if not mismatched:
        return " ".join(line.strip() for line in message.splitlines()[1:4])
    return f"shape mismatch for {len(mismatched)} keys: " + "; ".join(mismatched[:20])


def _shape(sizes: str) -> tuple[int, ...]:
    return tuple(int(size) for size in sizes.split(",") if size.strip())


def _outline(model: nn.Module) -> str:
    """The block count, widths and heads of a backbone's transformer blocks, as a reader compares them."""
    blocks = [block for family in families() for _, block in family.blocks(model)]
    widths = sorted({block_width(b) for b in blocks})
    heads = sorted({m.num_heads for b in blocks for m in b.modules() if isinstance(getattr(m, "num_heads", None), int)})
    return f"{len(blocks)} blocks of width {'/'.join(map(str, widths))} with {'/'.join(map(str, heads)) or '?'} heads"


def architecture_difference(name: str, num_classes: int, recorded: dict[str, Any], given: dict[str, Any]) -> str | None:
    """How the timm kwargs ``given`` change the architecture of backbone ``name`` built with ``recorded``: its blocks
    (count, widths, heads), or else the tensors that differ (names, shapes), or that they cannot build it; None when
    nothing differs (e.g. another drop_path_rate)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        theirs = build_backbone(name, num_classes, None, **recorded)
        recorded_outline = _outline(theirs)
        before = f"the architecture differs from the one the adapter recorded: {name} with kwargs {recorded} has "
        before += recorded_outline
        try:
            ours = build_backbone(name, num_classes, None, **given)
        except ValueError as e:
            return f"{before}; {e}"
    if _outline(ours) != recorded_outline:
        return f"{before}, the kwargs {given} make {_outline(ours)}"
    old, new = _shapes(theirs), _shapes(ours)
    tensors = [f"{k} {shape} -> {new[k]}" for k, shape in old.items() if k in new and new[k] != shape]
    tensors += [f"no {k}" for k in old if k not in new] + [f"a new {k}" for k in new if k not in old]
    if not tensors:
        return None
    shown = "; ".join(tensors[:5]) + (f"; and {len(tensors) - 5} more" if len(tensors) > 5 else "")
    return f"{before}, the kwargs {given} change its tensors: {shown}"


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def create_model(
    name: str,
    num_classes: int,
    method: str | MethodConfig = "adaptformer",
    head: str = "paper",
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    init_seed: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build ``name`` from timm, load ``checkpoint``, attach ``method`` with a ``head`` for ``num_classes``, freeze.

    Args:
        name: a timm model name, e.g. "vit_base_patch16_224" or "vit_base_patch16_224.mae" (the pretrained tag sets
            the input normalisation), an adaptformer-registered one, or ``hf:<folder>`` for a transformers vision
            model saved with ``save_pretrained`` (or ``hf:<Hub id>`` in the local Hugging Face cache; nothing is
            downloaded): ViT, DeiT, DINOv2 (with registers), CLIP/SigLIP vision towers, BEiT, VideoMAE, Swin.
        num_classes: classes of the task.
        method: a method config, e.g. ``AdaptFormerConfig(bottleneck=64)`` or ``VPTConfig(num_tokens=4)``, or a
            registered method name for its defaults ("adaptformer", "linear", "full", "vpt", ...).
        head: "paper" (BatchNorm1d without affine + Linear, the paper's) or "linear".
        checkpoint: None (random init), a local weights file, or "timm" for timm's pretrained mechanism.
        checkpoint_source: how to read the file's keys: one of ``pretrained.CONVERTERS`` ("timm", "mae", ...).
        init_seed: seed torch's generator right before the backbone is initialised (recorded for a backbone with no
            checkpoint, so that its adapter can be used later).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. drop_path_rate, global_pool, img_size).
    """
    stale = sorted({"adapter", "vpt"} & set(timm_kwargs))
    if stale:
        raise TypeError(
            f"create_model() takes the method's config as method=..., e.g. method=AdaptFormerConfig(...) or "
            f"method=VPTConfig(...), not {stale} (adaptformer 0.1's keywords)"
        )
    name = canonical_name(name)  # hf:<folder> recorded absolute
    ModelSpec.for_method(name, method, num_classes=num_classes, head=head)  # a bad method fails before the slow build
    model = build_backbone(
        name, num_classes, checkpoint, checkpoint_source, keep_head=head == "linear", init_seed=init_seed, **timm_kwargs
    )
    return adapt(model, method, num_classes, head, backbone=name)
