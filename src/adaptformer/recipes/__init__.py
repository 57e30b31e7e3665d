"""The paper's training recipes as YAML files: every row of Table 1 (images: CIFAR-100, SVHN, Food-101; video: SSv2,
HMDB51; each x full / linear / VPT / AdaptFormer-1/4/64) with the Table 5 settings of its column. The first comment
line of each says what it reproduces. A recipe is a partial ``TrainConfig``: command-line flags override it, and the
fields it leaves out keep their defaults.

    load_recipe("cifar100_adaptformer64")      # by name
    load_recipe("my_runs/food_custom.yaml")    # or any YAML file (e.g. a run's config.yaml)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..engine.config import read_yaml_mapping

SUFFIX = ".yaml"


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package, sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in resources.files(__name__).iterdir() if p.name.endswith(SUFFIX))


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a shipped recipe name, or ``name_or_path`` itself if it is an existing file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name.endswith(SUFFIX) or "/" in name or "\\" in name:
        raise FileNotFoundError(f"recipe file not found: {name}")
    resource = resources.files(__name__) / f"{name}{SUFFIX}"
    if not resource.is_file():
        raise ValueError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    return Path(str(resource))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The configuration values of a recipe (by name) or YAML file (by path), unvalidated."""
    return read_yaml_mapping(recipe_path(name_or_path))


def recipe_summary(name: str) -> str:
    """The first comment line of a shipped recipe (what it reproduces)."""
    first = recipe_path(name).read_text().splitlines()[0]
    return first.lstrip("# ").strip()


__all__ = ["load_recipe", "recipe_names", "recipe_path", "recipe_summary"]
