"""The paper's training recipes: every row of Table 1 (images: CIFAR-100, SVHN, Food-101; video: SSv2, HMDB51; each
x full / linear / VPT / AdaptFormer-1/4/64) with the Table 5 settings of its column, Table 2 (multi-label NUS-WIDE,
mAP: full / linear / VPT / AdaptFormer-64), Table 6 (AdaptFormer-64 on the
supervised ImageNet-21k ViT-B/16, inflated to video for SSv2 and HMDB51), Table 7 (AdaptFormer on the hierarchical
Swin-B and Video Swin-B, per-stage bottleneck dim // 12) and the SSv2 ablations (adapter blocks, form, scale,
bottleneck; VPT prompt counts for the accuracy-vs-parameters figure); beside them the PETL community's VTAB-1k and
FGVC protocols (``vtab_fgvc.yaml``: each of the 19 VTAB-1k tasks and 5 FGVC datasets x AdaptFormer variants, LoRA,
Adapter+), which a benchmark driver runs per task, and semantic segmentation (``segmentation.yaml``: ADE20K and
Pascal VOC 2012 with UperNet on ViT-B/16 MAE / ImageNet-21k and Swin-B / Swin-L, full / frozen / AdaptFormer-64 /
LoRA / Adapter+, on the schedule V-PETL Bench and Mona use). ``sweeps.yaml`` groups recipes into the sets
``adaptformer sweep`` runs (one table and plot per paper table or ablation).

They are data, one YAML file per paper table (``table1.yaml``, ``table2.yaml``, ``table6.yaml``, ``table7.yaml``,
``ablations.yaml``), each in the same form: each dataset's settings once, each method row once, the few exceptions
per dataset (full fine-tuning's 0.1x lr on SVHN and Food-101, no adapter dropout for video). A recipe is a partial,
nested training configuration: a config file and command-line flags override it, and the fields it leaves out keep
their defaults.

    recipe_config("cifar100_adaptformer64")     # by name: the merged nested mapping
    load_recipe("my_runs/food_custom.yaml")      # or any YAML file (e.g. a run's config.yaml)
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..engine.config.layers import merge_config, read_yaml_mapping

TABLES = (
    "table1.yaml",
    "table2.yaml",
    "table6.yaml",
    "table7.yaml",
    "ablations.yaml",
    "vtab_fgvc.yaml",
    "segmentation.yaml",
)


@functools.cache
def _tables() -> tuple[dict[str, Any], ...]:
    return tuple(yaml.safe_load((resources.files(__name__) / name).read_text()) for name in TABLES)


def _names(table: dict[str, Any]) -> list[str]:
    return [f"{dataset}_{row}" for dataset in table["datasets"] for row in table["rows"]]


def recipe_names(paper_table: str | None = None) -> list[str]:
    """Names of the shipped recipes (``<dataset>_<row>``), sorted; only those of ``paper_table`` ("Table 1") if
    given."""
    return sorted(n for t in _tables() if paper_table in (None, t["paper_table"]) for n in _names(t))


def _split(name: str) -> tuple[dict[str, Any], str, str]:
    for table in _tables():
        for dataset in table["datasets"]:
            row = name.removeprefix(f"{dataset}_")
            if row != name and row in table["rows"]:
                return table, dataset, row
    raise ValueError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")


def recipe_config(name: str) -> dict[str, Any]:
    """The nested configuration of the shipped recipe ``name`` (see ``table1.yaml`` for how it is merged)."""
    table, dataset_name, row_name = _split(name)
    dataset, row = table["datasets"][dataset_name], table["rows"][row_name]
    config: dict[str, Any] = {}
    for layer in (
        table["common"],
        table["modalities"][dataset["modality"]]["config"],
        dataset["config"],
        row["config"],
        dataset.get("rows", {}).get(row_name, {}),
    ):
        config = merge_config(config, layer)
    return merge_config(config, {"run": {"recipe": name}})


def recipe_summary(name: str) -> str:
    """What the recipe reproduces, with the paper's number."""
    table, dataset_name, row_name = _split(name)
    dataset = table["datasets"][dataset_name]
    backbone = table["modalities"][dataset["modality"]]["backbone"]
    row = table["rows"][row_name]["title"]
    score = dataset.get("paper", {}).get(row_name)
    if score is None:  # a protocol table (vtab_fgvc.yaml) or a figure's point: no published number per recipe
        return f"{dataset['title']}, {row}: {table.get('unreported', table['paper_table'])} ({backbone})"
    reported_in = table.get("reported_in", f"paper {table['paper_table']} reports")  # ablations: no table number
    return f"{dataset['title']}, {row}: {reported_in} {score:.2f} {table.get('metric', 'top-1')} ({backbone})"


def recipe_paper_score(name: str) -> float | None:
    """The paper's number for the shipped recipe ``name`` (None where the paper gives none)."""
    table, dataset_name, row_name = _split(name)
    return table["datasets"][dataset_name].get("paper", {}).get(row_name)


def recipe_text(name: str) -> str:
    """The recipe as a commented YAML file, e.g. to save, edit and pass with ``--config``."""
    table, dataset_name, _ = _split(name)
    dataset = table["datasets"][dataset_name]
    notes = [recipe_summary(name), table["settings"],
             table["modalities"][dataset["modality"]]["setup"], dataset.get("setup", "")]  # fmt: skip
    header = "".join(f"# {line}\n" for note in notes if note for line in _wrap(note))
    return header + yaml.safe_dump(recipe_config(name), sort_keys=False)


def _wrap(text: str, width: int = 116) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The configuration of a shipped recipe (by name) or of a YAML file (by path), unvalidated."""
    path = Path(name_or_path)
    if path.is_file():
        return read_yaml_mapping(path)
    name = str(name_or_path)
    if name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name:
        raise FileNotFoundError(f"recipe file not found: {name}")
    return recipe_config(name)


__all__ = ["load_recipe", "recipe_config", "recipe_names", "recipe_paper_score", "recipe_summary", "recipe_text"]
