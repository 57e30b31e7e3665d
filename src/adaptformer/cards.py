"""The model card of an adapter folder: ``README.md`` with the Hugging Face Hub's YAML metadata, so that the folder
can be pushed to the Hub as it is (``huggingface-cli upload``) and found there (library, base model, method, dataset,
metrics).

It is written from what the folder records (``adapter_config.json``, and the run's ``test.json`` when there is one)
and is documentation only: nothing in the library ever reads it back, so editing it by hand changes nothing at load.
The license is left for the user to fill in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .files import atomic_write_bytes

__all__ = ["CARD_NAME", "TEST_NAME", "model_card", "peft_card", "read_test_metrics", "write_model_card"]

CARD_NAME = "README.md"
DESCRIBED = "adapter_config.json"  # the file the card is written from (saving.CONFIG_NAME)
TEST_NAME = "test.json"  # a training run's test report, beside its adapter folder (OUT/test.json, OUT/adapter)
# test.json entries that describe the run rather than measure the adapter
_NOT_METRICS = ("epoch", "trainable_parameters", "peak_memory_mb")


def read_test_metrics(directory: Path) -> dict[str, float] | None:
    """The numbers of the ``test.json`` in the adapter folder or, for a training run's ``OUT/adapter``, in ``OUT``;
    None when there is none (or it cannot be read: the card is documentation, never a reason to fail a save)."""
    for path in (directory / TEST_NAME, directory.parent / TEST_NAME):
        if path.is_file():
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            if not isinstance(report, dict):
                return None
            return {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return None


def _task_tag(config: Mapping[str, Any]) -> str:
    task = config.get("task")
    if isinstance(task, dict) and task.get("type") == "segmentation":
        return "image-segmentation"
    training = config.get("training") or {}
    return "video-classification" if training.get("video") else "image-classification"


def model_card(config: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> str:
    """``README.md`` for an adapter folder whose ``adapter_config.json`` is ``config``, with ``metrics`` (the run's
    test numbers) in its metadata and a table."""
    method, backbone = str(config.get("method")), str(config.get("backbone"))
    training = config.get("training") or {}
    meta: dict[str, Any] = {
        "library_name": "adaptformer",
        "base_model": backbone,
        "tags": ["adaptformer", method, _task_tag(config)],
        "pipeline_tag": _task_tag(config),
    }
    if training.get("dataset"):
        meta["datasets"] = [training["dataset"]]
    measured = {k: v for k, v in (metrics or {}).items() if k not in _NOT_METRICS}
    if measured:
        meta["metrics"] = sorted(measured)
    front = yaml.safe_dump(meta, sort_keys=False).rstrip("\n")
    classes = config.get("classes")
    lines = [
        "---",
        front,
        "license:  # fill in (e.g. apache-2.0, or that of the base model's weights)",
        "---",
        "",
        f"# {backbone} + {method} adapter",
        "",
        f"An [adaptformer](https://pypi.org/project/adaptformer/) adapter: {config.get('num_parameters')} trained "
        f"numbers ({method} and a {config.get('head', 'paper')} head for {config.get('num_classes')} classes) for the "
        f"frozen backbone `{backbone}`. `adapter_config.json` describes it (what rebuilds the model: the method's "
        "configuration, how the backbone was built, its weights' fingerprint, the preprocessing, the class names); "
        "`adapter_model.safetensors` holds the tensors. This card is written from those files and never read back.",
        "",
        "## Use",
        "",
        "```python",
        "from adaptformer.saving import create_model_from_adapter",
        "",
        'model = create_model_from_adapter("path/to/this/folder").eval()',
        "```",
        "",
        "or `adaptformer eval --adapter path/to/this/folder` / `adaptformer predict --adapter ...`.",
        "",
        "## Method",
        "",
        "```json",
        json.dumps({"method": method, "method_config": config.get("method_config")}, indent=2),
        "```",
    ]
    if training.get("dataset"):
        options = json.dumps(training.get("dataset_options") or {})
        lines += ["", "## Training data", "", f"`{training['dataset']}`, options {options}"]
    if classes:
        more = f", ... ({len(classes)} in all)" if len(classes) > 20 else ""
        shown = ", ".join(str(c) for c in classes[:20]) + more
        lines += ["", "## Classes", "", shown]
    if metrics:
        lines += ["", "## Results (test.json)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def write_model_card(directory: str | Path) -> Path:
    """Write an adapter folder's ``README.md`` again from its ``adapter_config.json`` and the run's ``test.json``
    (training calls it once the test split is measured); returns the card's path."""
    directory = Path(directory)
    card = model_card(json.loads((directory / DESCRIBED).read_text()), read_test_metrics(directory))
    atomic_write_bytes(directory / CARD_NAME, card.encode())
    return directory / CARD_NAME


def peft_card(peft_config: Mapping[str, Any]) -> str:
    """``README.md`` for a PEFT LoRA folder written by ``adaptformer export --format peft``."""
    meta = {"library_name": "peft", "base_model": peft_config.get("base_model_name_or_path"),
            "tags": ["lora", "adaptformer", "image-classification"]}  # fmt: skip
    return "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip("\n"), "license:  # fill in", "---", "",
        f"# LoRA for {meta['base_model']} (PEFT)", "",
        "A PEFT LoRA adapter exported by `adaptformer export --format peft`: load it with "
        f"`PeftModel.from_pretrained(timm.create_model({meta['base_model']!r}, num_classes=...), folder)` onto the "
        f"same pre-trained weights; r = {peft_config.get('r')}, lora_alpha = {peft_config.get('lora_alpha')}, "
        f"target_modules = {peft_config.get('target_modules')}, the head in modules_to_save.", "",
    ])  # fmt: skip
