"""Configuration data as plain nested mappings (what YAML files, recipes and flags hold before they become a
:class:`~adaptformer.engine.config.sections.TrainConfig`): merging layers, dotted keys, reading a YAML mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FREE_FORM = ("kwargs", "options")  # mappings that are values (timm kwargs, dataset options), not sections


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base`` (plain nested configuration data): sections merge key by key, free-form mappings
    (``kwargs``, ``options``) are replaced whole, and so is a method of another name (a method without a name
    updates the current one's fields)."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        if key == "method" and isinstance(old, dict) and isinstance(value, dict):
            same = value.get("name", old.get("name")) == old.get("name")
            out[key] = {**old, **value} if same else dict(value)
        elif isinstance(old, dict) and isinstance(value, dict) and key not in FREE_FORM:
            out[key] = merge_config(old, value)
        else:
            out[key] = value
    return out


def dotted(data: dict[str, Any], whole: tuple[str, ...] = FREE_FORM, prefix: str = "") -> dict[str, Any]:
    """Nested configuration data as dotted keys ("optim.epochs"); mappings under a key in ``whole`` stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key not in whole:
            flat.update(dotted(value, whole, path + "."))
        else:
            flat[path] = value
    return flat


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a YAML text file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of configuration keys, got {type(data).__name__}")
    return data
