"""Loading pre-trained backbone weights from local files, with exact key accounting.

Two steps, each explicit: ``read_state_dict`` opens the container (.safetensors, or a torch pickle read with
``weights_only=True``, optionally wrapped as ``{"model": ...}`` / ``{"module": ...}`` / ``{"state_dict": ...}``; or a
Hugging Face model directory holding ``model.safetensors`` or ``pytorch_model.bin``); a converter chosen by name from
the one table of sources (``CONVERTERS``: timm, MAE, transformers' ViT/DINOv2 folders (``hf``, :mod:`.hf`), and
the video ones of :mod:`.videomae` and :mod:`.video_swin`; ``register_converter`` adds one) turns that source's keys
into the backbone's own. ``load_pretrained`` then loads and fails, listing the keys, unless the only missing keys
belong to the new task head and nothing is left over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from ...errors import CheckpointError
from ...heads import classifier_paths
from .hf import convert_hf_vit
from .video_swin import convert_inflate_image_swin, convert_video_swin
from .videomae import convert_hf_videomae, convert_image_to_video, convert_videomae

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "module", "state_dict")
HF_WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor mapping from a .safetensors file, a torch pickle (no arbitrary code runs), or a
    Hugging Face model directory (``save_pretrained`` output: its single weights file)."""
    path = Path(path)
    if path.is_dir():
        path = _hf_weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling arbitrary bytes can raise nearly anything (IndexError, KeyError, ...)
        kind = "safetensors file" if path.suffix == ".safetensors" else "torch checkpoint readable with weights_only"
        raise CheckpointError(
            f"{path}: cannot be read ({first_line(e)}); expected a {kind} (truncated or corrupt?)"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entries {bad[:10]} are not tensors; expected a state_dict, optionally under one of {WRAPPER_KEYS}"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def first_line(error: BaseException) -> str:
    """An exception as ``Type: first sentence of its message`` (torch's unpickling errors run to a page of advice)."""
    lines = str(error).strip().splitlines()
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    cause = next((line.strip() for line in lines if "WeightsUnpickler error:" in line), None)  # what it refused
    return f"{type(error).__name__}: {first}" + (f" ({cause[:200]})" if cause else "")


def _hf_weights_file(directory: Path) -> Path:
    for name in HF_WEIGHTS_NAMES:
        if (directory / name).is_file():
            return directory / name
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    detail = f"sharded checkpoints ({', '.join(sharded)}) are not supported" if sharded else "found neither"
    raise CheckpointError(
        f"{directory}: expected a Hugging Face model directory with one of {HF_WEIGHTS_NAMES}; {detail}"
    )


def convert_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm checkpoints use the backbone's own names: nothing to rename."""
    return dict(state_dict)


def convert_torchvision(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision weight files (``vit_b_16-c867db91.pth``, ``swin3d_b_22k-7c6ae6fa.pth``, ...): the ``tv_*`` models
    subclass torchvision's and keep its names, so nothing is renamed."""
    return dict(state_dict)


def convert_swin(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Microsoft's Swin release files (``swin_base_patch4_window7_224_22k.pth``): they downsample at the end of a stage
    and name the classifier ``head``, timm at the start of the next stage and ``head.fc``; timm's own converter
    renames them (and resizes relative-position tables saved for another window)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(dict(state_dict), model)


def convert_mae(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """MAE (He et al.) pre-training/fine-tuning checkpoints: encoder keys are timm's; the decoder is dropped.

    A backbone that pools by average (``fc_norm``, no final ``norm``) gets a fresh fc_norm, as in MAE's fine-tuning,
    so the pre-training ``norm`` is dropped for it.
    """
    out = {k: v for k, v in state_dict.items() if not (k.startswith("decoder") or k == "mask_token")}
    own = model.state_dict()
    if "norm.weight" not in own and "fc_norm.weight" in own:
        out = {k: v for k, v in out.items() if not k.startswith("norm.")}
    return out


Converter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

# Every checkpoint source by name (``load_pretrained(source=...)``, ``--model.checkpoint_source``): one pure function
# each.
CONVERTERS: dict[str, Converter] = {
    "timm": convert_timm,
    "torchvision": convert_torchvision,
    "swin": convert_swin,
    "mae": convert_mae,
    "videomae": convert_videomae,
    "hf-videomae": convert_hf_videomae,
    "hf": convert_hf_vit,  # a transformers ViT / DINOv2 folder into a timm ViT; an hf: backbone's own source
    "inflate-image": convert_image_to_video,
    "video-swin": convert_video_swin,
    "inflate-image-swin": convert_inflate_image_swin,
}


def register_converter(name: str, fn: Converter) -> None:
    """Make ``fn`` (``state_dict, model -> state_dict``, renaming and reshaping only) the converter of checkpoint
    source ``name``; a ValueError if that name is taken."""
    if name in CONVERTERS:
        raise ValueError(f"checkpoint source {name!r} already has a converter ({CONVERTERS[name].__qualname__})")
    CONVERTERS[name] = fn


@dataclass(frozen=True)
class LoadReport:
    """What happened to each key: loaded, missing from the file, left over in the file, dropped on purpose."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    dropped: tuple[str, ...]


def _fit_pos_embed(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resample a ViT absolute position table saved for another grid size (e.g. 224 -> 384 input)."""
    own = getattr(model, "pos_embed", None)
    theirs = state_dict.get("pos_embed")
    if not isinstance(own, torch.Tensor) or theirs is None or theirs.shape == own.shape:
        return
    if theirs.ndim != 3 or theirs.shape[-1] != own.shape[-1]:
        return  # not a position table of another grid: reported as a shape mismatch
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    logger.info("resampling pos_embed %s -> %s", tuple(theirs.shape), tuple(own.shape))
    state_dict["pos_embed"] = resample_abs_pos_embed(theirs, new_size=list(grid), num_prefix_tokens=prefix)


def load_pretrained(model: nn.Module, path: str | Path, source: str = "timm", keep_head: bool = True) -> LoadReport:
    """Load backbone weights from ``path`` (a ``source`` checkpoint) into a plain timm model, strictly.

    Keys of the classifier are dropped (with a log line) when ``keep_head`` is False or their shape differs from the
    model's head; only those, and the keys of modules the model declares new for a task (its ``task_modules``, e.g.
    a video model's ``fc_norm``), may then be missing. Any other missing or unexpected key, or any other shape
    mismatch, raises CheckpointError listing them.
    """
    if source not in CONVERTERS:
        raise ValueError(f"unknown checkpoint source {source!r}; choose one of {sorted(CONVERTERS)}")
    try:
        state_dict = CONVERTERS[source](read_state_dict(path), model)
    except (CheckpointError, RuntimeError) as e:  # a converter reshapes what the file holds: its errors are the file's
        if isinstance(e, CheckpointError) and str(path) in str(e):
            raise
        raise CheckpointError(
            f"{path} ({source} checkpoint): {e if isinstance(e, CheckpointError) else first_line(e)}"
        ) from e
    own = model.state_dict()
    head_prefix = tuple(f"{path}." for path in classifier_paths(model))
    head_keys = {k for k in own if k.startswith(head_prefix)}
    task_prefixes = tuple(f"{name}." for name in getattr(model, "task_modules", ()))
    new_keys = head_keys | {k for k in own if task_prefixes and k.startswith(task_prefixes)}
    _fit_pos_embed(state_dict, model)

    dropped = [
        f"{k} {tuple(state_dict[k].shape)}"
        for k in sorted(state_dict)
        if k.startswith(head_prefix) and (not keep_head or k not in own or state_dict[k].shape != own[k].shape)
    ]
    for entry in dropped:
        del state_dict[entry.split(" ", 1)[0]]
    if dropped:
        logger.info("%s: dropped classifier keys %s (a new task head is trained)", path, ", ".join(dropped))
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"{path}: shape mismatch for {len(mismatched)} keys: " + "; ".join(mismatched[:20]))
    result = model.load_state_dict(state_dict, strict=False)
    missing = sorted(k for k in result.missing_keys if k not in new_keys)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} ({source} checkpoint) does not fit {type(model).__name__}: "
            f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} ({len(unexpected)}). "
            "Only the task head (and task modules) may be missing; check the checkpoint source and the model name."
        )
    loaded = tuple(sorted(k for k in state_dict if k in own))
    logger.info("%s: loaded %d tensors (%s checkpoint)", path, len(loaded), source)
    return LoadReport(loaded, tuple(sorted(result.missing_keys)), (), tuple(d.split(" ", 1)[0] for d in dropped))
