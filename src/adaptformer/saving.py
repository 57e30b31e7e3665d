"""Adapter files: the few task-specific tensors of a model, PEFT-style, next to a JSON description.

    <dir>/adapter_config.json        method, adapter/prompt config, head, num_classes, backbone name, a fingerprint of
                                     the frozen backbone weights, preprocessing, and the SHA-256 of the weights file
    <dir>/adapter_model.safetensors  adapters + head (+ prompts, + task norms); the whole model for method "full"

Each file is written to a temporary name and renamed into place, weights first, so a crash leaves the previous pair
readable; the weights' SHA-256 recorded in the config detects a weights file that does not belong to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .model import ModelSpec, apply_method, get_spec, task_state_dict
from .preprocessing import Preprocessing

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "adaptformer-adapter"
FORMAT_VERSION = 1
FINGERPRINT_ATTR = "adaptformer_fingerprint"
_FILE_FIELDS = {"format", "format_version", "backbone_fingerprint", "preprocessing", "weights_sha256", "num_parameters"}


class AdapterFileError(ValueError):
    """An adapter directory that is missing, corrupt, or does not belong to the given model."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remember_fingerprint(model: nn.Module) -> str | None:
    """Compute the backbone fingerprint now and keep it on the model, for code that is about to change the frozen
    tensors' storage without changing what they mean (e.g. keeping the frozen backbone in bf16 for speed)."""
    setattr(model, FINGERPRINT_ATTR, None)
    fingerprint = backbone_fingerprint(model)
    setattr(model, FINGERPRINT_ATTR, fingerprint)
    return fingerprint


def backbone_fingerprint(model: nn.Module) -> str | None:
    """SHA-256 over the names, dtypes, shapes and bytes of every frozen (non-task) tensor; None if there is none.

    A fingerprint remembered by ``remember_fingerprint`` is returned as it was.
    """
    remembered = getattr(model, FINGERPRINT_ATTR, None)
    if remembered is not None:
        return remembered
    task_keys = set(task_state_dict(model)) if get_spec(model) is not None else set()
    digest = hashlib.sha256()
    count = 0
    for name, tensor in sorted(model.state_dict().items()):
        if name in task_keys:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        count += 1
    return f"sha256:{digest.hexdigest()}" if count else None


def _architecture(name: str) -> str:
    return name.split(".", 1)[0]


def _model_backbone_name(model: nn.Module) -> str:
    spec = get_spec(model)
    if spec is not None:
        return spec.backbone
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "architecture" not in cfg:
        raise AdapterFileError(f"cannot tell which backbone {type(model).__name__} is (no pretrained_cfg)")
    return cfg["architecture"]


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the model's task-specific tensors and their description to ``directory``; returns the directory."""
    spec = get_spec(model)
    if spec is None:
        raise ValueError("the model has no method applied; build it with create_model() or apply_method()")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in task_state_dict(model).items()}
    blob = save_safetensors(tensors, metadata={"format": FORMAT, "method": spec.method})
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **spec.to_dict(),
        "backbone_fingerprint": backbone_fingerprint(model),
        "preprocessing": Preprocessing.from_model(model).to_dict(),
        "num_parameters": sum(t.numel() for t in tensors.values()),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return directory


def read_adapter_config(directory: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """Parse and validate ``adapter_config.json``: the model spec, and the file-level fields."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no adapter here: {path} does not exist (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AdapterFileError(f'{path}: not an adaptformer adapter config (expected "format": "{FORMAT}")')
    if data.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(f"{path}: format_version {data.get('format_version')!r}, this library reads 1")
    extras = {k: data[k] for k in _FILE_FIELDS if k in data}
    try:
        spec = ModelSpec.from_dict({k: v for k, v in data.items() if k not in _FILE_FIELDS})
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{path}: {e}") from e
    if "preprocessing" in extras:
        extras["preprocessing"] = Preprocessing.from_dict(extras["preprocessing"])
    return spec, extras


def load_adapter(model: nn.Module, directory: str | Path, allow_backbone_mismatch: bool = False) -> nn.Module:
    """Restore an adapter saved by ``save_adapter`` into ``model`` (in place) and return it.

    A plain backbone gets the saved method and head applied first; a model that already has a method must have the
    same one. The backbone must have the saved architecture and the saved weights fingerprint, unless
    ``allow_backbone_mismatch`` (then the adapter is applied to whatever backbone this is).
    """
    directory = Path(directory)
    spec, extras = read_adapter_config(directory)
    name = _model_backbone_name(model)
    if _architecture(name) != _architecture(spec.backbone) and not allow_backbone_mismatch:
        raise AdapterFileError(
            f"{directory}: adapter was trained on {spec.backbone!r}, the model is {name!r} "
            "(pass allow_backbone_mismatch=True to apply it anyway)"
        )
    current = get_spec(model)
    if current is None:
        apply_method(model, spec)
    else:
        ours, theirs = current.to_dict(), spec.to_dict()
        diff = {k: (ours[k], theirs[k]) for k in ours if k != "backbone" and ours[k] != theirs[k]}
        if diff:
            raise AdapterFileError(f"{directory}: the model's method differs from the adapter's (model, file): {diff}")
    expected_fp = extras.get("backbone_fingerprint")
    if expected_fp is not None and not allow_backbone_mismatch:
        actual_fp = backbone_fingerprint(model)
        if actual_fp != expected_fp:
            raise AdapterFileError(
                f"{directory}: the backbone weights differ from those the adapter was trained on "
                f"(fingerprint {actual_fp} != {expected_fp}); load the same pre-trained checkpoint, or pass "
                "allow_backbone_mismatch=True"
            )
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"adapter weights missing: {weights_path}")
    blob = weights_path.read_bytes()
    if "weights_sha256" in extras and hashlib.sha256(blob).hexdigest() != extras["weights_sha256"]:
        raise AdapterFileError(f"{weights_path}: SHA-256 differs from the one in {CONFIG_NAME} (corrupt or mixed up)")
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{weights_path}: not a valid safetensors file ({e})") from e
    own = task_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdapterFileError(f"{weights_path}: missing keys {missing[:20]}, unexpected keys {unexpected[:20]}")
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise AdapterFileError(f"{weights_path}: shape mismatch: {'; '.join(wrong[:20])}")
    model.load_state_dict(tensors, strict=False)
    return model


def create_model_from_adapter(
    directory: str | Path,
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    allow_backbone_mismatch: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build the backbone named in ``directory``'s adapter config, load ``checkpoint`` into it, then the adapter.

    ``checkpoint``/``checkpoint_source``/``timm_kwargs`` must describe the same backbone the adapter was trained on
    (its fingerprint is checked); for method "full" the adapter holds every weight and no checkpoint is needed.
    """
    from .factory import build_backbone

    spec, _ = read_adapter_config(directory)
    backbone = build_backbone(spec.backbone, spec.num_classes, checkpoint, checkpoint_source, **timm_kwargs)
    return load_adapter(backbone, directory, allow_backbone_mismatch=allow_backbone_mismatch)
