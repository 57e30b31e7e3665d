"""PEFT LoRA folders in and out (``adaptformer import-peft``, ``adaptformer export --format peft``): the folder I/O
around the pure conversions of :mod:`adaptformer.methods.peft_lora`.

A PEFT folder is ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's ``save_pretrained``); a pickled
``adapter_model.bin`` is refused, never unpickled. An imported adapter is built on the backbone it is given
(``--model.backbone`` and its checkpoint: PEFT's folder records no weights of its own), checked to hold exactly the
tensors of this library's model, and saved with :func:`~adaptformer.saving.save_adapter`, so that it records that
backbone's fingerprint like any trained adapter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..backbones.hf import is_hf_name
from ..cards import CARD_NAME, peft_card
from ..factory import BackboneSource, build_backbone, create_model, require_checkpoint
from ..files import atomic_write_files, make_folder, read_json_object
from ..heads import classifier_paths
from ..methods.peft_lora import PREFIX, PeftConversionError, check_peft_config, from_peft, to_peft
from ..methods.state import task_state_dict
from ..model import task_tensor_mismatch
from ..saving import CONFIG_NAME, save_adapter

logger = logging.getLogger(__name__)

__all__ = ["PeftConversionError", "export_peft", "import_peft", "read_peft_folder"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"


def read_peft_folder(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT folder's config and tensors; FileNotFoundError or PeftConversionError naming the file otherwise."""
    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    if not config_path.is_file():
        raise FileNotFoundError(f"no PEFT adapter here: {config_path} does not exist (PEFT's save_pretrained folder)")
    config = read_json_object(config_path, PeftConversionError)
    if not weights_path.is_file():
        pickled = " (adapter_model.bin is a pickle, never loaded: save with safe_serialization=True)"
        raise FileNotFoundError(f"{weights_path} does not exist{pickled if (directory / PEFT_PICKLE).exists() else ''}")
    try:
        tensors = load_safetensors(weights_path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise PeftConversionError(f"{weights_path}: not a valid safetensors file ({e})") from e
    return config, tensors


def _num_classes(tensors: dict[str, torch.Tensor], heads: tuple[str, ...]) -> int:
    """The class count of the saved head(s): the rows of each classifier's weight, the same for all."""
    counts = {tensors[f"{PREFIX}{h}.weight"].shape[0] for h in heads if f"{PREFIX}{h}.weight" in tensors}
    missing = [h for h in heads if f"{PREFIX}{h}.weight" not in tensors]
    if missing or len(counts) != 1:
        raise PeftConversionError(
            f"{PEFT_WEIGHTS}: expected the trained classifier {list(heads)} (modules_to_save), "
            f"{f'missing {missing}' if missing else f'found class counts {sorted(counts)}'}"
        )
    return counts.pop()


def import_peft(
    directory: str | Path,
    out: str | Path,
    backbone: str,
    source: BackboneSource | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn the PEFT LoRA folder ``directory`` into this library's adapter folder ``out`` for ``backbone`` built as
    ``source`` says (its timm kwargs and checkpoint: the base model PEFT adapted); returns ``out``."""
    directory, out = Path(directory), Path(out)
    source = source or BackboneSource()
    if (out / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out / CONFIG_NAME} exists; pass --overwrite to replace it, or choose another --out")
    require_checkpoint(source.checkpoint)
    # an unseeded backbone could never be built again (an hf: backbone's weights are its folder's)
    if source.checkpoint is None and source.init_seed is None and not is_hf_name(backbone):
        raise ValueError("give the base model's weights (--model.checkpoint PATH, or timm) or its --model.init_seed")
    config, tensors = read_peft_folder(directory)
    try:
        check_peft_config(config)  # first: a folder of another PEFT type is named as such
        with torch.device("meta"):  # names and shapes only
            plain = build_backbone(backbone, 1, None, **source.kwargs)
            num_classes = _num_classes(tensors, classifier_paths(plain))
            plain = build_backbone(backbone, num_classes, None, **source.kwargs)
        lora, ours = from_peft(config, tensors, plain)
    except PeftConversionError as e:
        raise PeftConversionError(f"{directory / PEFT_CONFIG}: {e}") from e
    model = create_model(
        backbone, num_classes, method=lora, head="linear", checkpoint=source.checkpoint,
        checkpoint_source=source.checkpoint_source, init_seed=source.init_seed, **source.kwargs,
    )  # fmt: skip
    problem = task_tensor_mismatch(ours, task_state_dict(model))
    if problem:
        raise PeftConversionError(f"{directory / PEFT_WEIGHTS}: {problem}")
    model.load_state_dict(ours, strict=False)
    save_adapter(model.eval(), out)
    logger.info("imported %s as %s (%s)", directory, out, lora)
    return out


def export_peft(model: nn.Module, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``model``'s LoRA adapter (an adapted model, e.g. ``create_model_from_adapter``) as a PEFT LoRA folder
    ``out`` that ``PeftModel.from_pretrained(backbone, out)`` loads onto the plain backbone; returns ``out``."""
    out = Path(out)
    config, tensors = to_peft(model)
    targets = [out / PEFT_CONFIG, out / PEFT_WEIGHTS]
    if any(t.exists() for t in targets) and not overwrite:
        raise FileExistsError(f"{out} holds a PEFT adapter already; pass --overwrite to replace it")
    make_folder(out)
    blob = save_safetensors(tensors, metadata={"format": "pt"})  # PEFT's own metadata
    described = (json.dumps(config, indent=2) + "\n").encode()
    atomic_write_files(
        {out / PEFT_WEIGHTS: blob, out / PEFT_CONFIG: described, out / CARD_NAME: peft_card(config).encode()}
    )
    logger.info("wrote the PEFT LoRA adapter %s (r=%d, target_modules %s)", out, config["r"], config["target_modules"])
    return out
