"""Configuration files and the command line for :class:`~.config.TrainConfig`, through jsonargparse.

jsonargparse (the library Lightning's CLI is built on) turns the nested dataclasses into command-line groups
(``--optim.epochs``, ``--model.method.bottleneck``), checks every value's type against the annotations and takes each
flag's help from the field's line in the class docstring. What this module adds is the library's own vocabulary:

- the method is written ``{name: vpt, num_tokens: 4}`` in YAML and ``--model.method vpt`` on the command line, the
  names of the method registry; jsonargparse's form (``class_path`` / ``init_args``) stays inside this module;
- layers, later ones winning: the defaults < a recipe (``--recipe NAME|FILE``) < a config file (``--config FILE``,
  e.g. a run's config.yaml) < flags;
- adaptformer 0.1's flat files are upgraded (:mod:`.config_v01`), and its flat flags get a message naming the new one.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..methods import MethodConfig, get_method, method_names, method_of
from .config import FREE_FORM, DataConfig, TrainConfig, dotted, merge_config
from .config_v01 import V01_FLAGS, is_v01, upgrade_v01

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from jsonargparse import ArgumentParser, Namespace, set_parsing_settings

logger = logging.getLogger(__name__)

SECTIONS = ("model", "data", "optim", "speed", "run")
DEFAULT_METHOD = "adaptformer"  # ModelConfig's default method
METHOD_KEY = "model.method"
set_parsing_settings(subclasses_enabled=[MethodConfig])


class ConfigError(ValueError):
    """A configuration value, key or flag that is not valid; the message names it."""


def _class_path(config_class: type) -> str:
    return f"{config_class.__module__}.{config_class.__qualname__}"


def train_parser() -> ArgumentParser:
    """A new jsonargparse parser of every TrainConfig field."""
    parser = ArgumentParser(prog="adaptformer train", exit_on_error=False, default_env=False)
    parser.add_class_arguments(TrainConfig, as_positional=False)
    return parser


_parser = functools.cache(train_parser)  # the shared one, for parsing mappings (never given defaults)


# -- the method: registry names <-> jsonargparse's class_path form -----------------------------------------------------


def method_to_parser(value: Any, where: str = "model.method") -> dict[str, Any]:
    """``{name: NAME, **fields}`` (or a bare name, or a config object) as jsonargparse's class_path form."""
    if isinstance(value, MethodConfig):
        return {"class_path": _class_path(type(value)), "init_args": value.to_dict()}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a method name or a mapping with 'name', got {value!r}")
    if "class_path" in value:
        return value
    fields = dict(value)
    name = fields.pop("name", DEFAULT_METHOD)  # no name: the fields of the default method (as for every section)
    try:  # every field spelled out: jsonargparse would otherwise carry same-named fields over from another method
        config = get_method(name).config.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return {"class_path": _class_path(type(config)), "init_args": config.to_dict()}


def _method_flag_value(text: str) -> str:
    """``--model.method NAME`` (a registered name, or its config's class name or path) as the registered name."""
    for name in method_names():
        config = get_method(name).config
        if text in (name, config.__name__, _class_path(config)):
            return name
    raise ConfigError(f"--model.method: unknown method {text!r}; registered methods: {list(method_names())}")


# -- layers of plain nested data ------------------------------------------------------------------------------------


def _upgraded(data: Any, where: str) -> dict[str, Any]:
    """A file's or caller's mapping as 0.2 plain nested data (0.1 flat files upgraded), its sections checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a training configuration must be a mapping, got {type(data).__name__}")
    if is_v01(data):
        logger.warning("%s is an adaptformer 0.1 (flat) configuration; read as its 0.2 equivalent", where)
        try:
            data = upgrade_v01(data, where)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown configuration sections {unknown}; expected some of {list(SECTIONS)}")
    return data


def _parser_form(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Plain nested data with the method in jsonargparse's class_path form."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    model = data.get("model")
    if isinstance(model, dict) and "method" in model:
        model["method"] = method_to_parser(model["method"], f"{where}: model.method")
    return data


def _build(namespace: Namespace, where: str) -> TrainConfig:
    try:
        built = _parser().instantiate(namespace)
        return TrainConfig(**{section: built[section] for section in SECTIONS})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def parse_mapping(data: dict[str, Any], where: str = "configuration") -> TrainConfig:
    """A :class:`TrainConfig` from nested plain data (as ``TrainConfig.to_dict`` writes it, or a 0.1 flat one)."""
    try:
        namespace = _parser().parse_object(_parser_form(_upgraded(data, where), where))
    except argparse.ArgumentError as e:
        raise ConfigError(f"{where}: {e}") from e
    return _build(namespace, where)


def _method_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """Take ``--model.method NAME`` out of ``argv`` (a later one wins); returns the rest and the method's name."""
    rest: list[str] = []
    chosen = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == f"--{METHOD_KEY}" and i + 1 < len(argv):
            chosen, i = _method_flag_value(argv[i + 1]), i + 2
            continue
        if arg.startswith(f"--{METHOD_KEY}="):
            chosen = _method_flag_value(arg.split("=", 1)[1])
        elif arg == f"--{METHOD_KEY}.help" and i + 1 < len(argv):
            rest += [arg, _class_path(get_method(_method_flag_value(argv[i + 1])).config)]
            i += 2
            continue
        else:
            rest.append(arg)
        i += 1
    return rest, chosen


def _check_v01_flags(argv: Sequence[str]) -> None:
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if name is not None and "." not in name and name.replace("-", "_") in V01_FLAGS:
            new = V01_FLAGS[name.replace("-", "_")]
            raise ConfigError(f"--{name} is adaptformer 0.1's flag; it is now {new}")


def parse_cli(argv: Sequence[str], layers: Sequence[tuple[str, dict[str, Any]]] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from ``layers`` (``(where, mapping)`` pairs: a recipe, a config file, ...; later ones
    win) and then the flags in ``argv`` (``--optim.epochs 5``, ``--model.method vpt``, ...)."""
    argv, chosen = _method_flag(list(argv))
    _check_v01_flags(argv)
    plain: dict[str, Any] = {}
    for where, data in layers:
        plain = merge_config(plain, _upgraded(data, where))
    if chosen is not None:  # another method than the layers': its defaults, not the old one's fields
        plain = merge_config(plain, {"model": {"method": {"name": chosen}}})
    defaults = _parser_form(plain, "the recipe and config file")
    parser = train_parser()
    try:
        if defaults:
            parser.set_defaults(dotted(defaults, (*FREE_FORM, "method")))
        namespace = parser.parse_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(str(e)) from e
    return _build(namespace, "the command line")


def data_parser() -> ArgumentParser:
    """A jsonargparse parser of the ``data`` section alone (``adaptformer eval``'s dataset flags)."""
    parser = ArgumentParser(prog="adaptformer eval", exit_on_error=False, default_env=False)
    parser.add_class_arguments(DataConfig, "data", as_positional=False)
    return parser


def parse_data_cli(argv: Sequence[str], defaults: dict[str, Any]) -> DataConfig:
    """A :class:`DataConfig` from ``--data.*`` flags over ``defaults`` (plain nested data of the section)."""
    _check_v01_flags(argv)
    parser = data_parser()
    try:
        if defaults:
            parser.set_defaults(dotted({"data": defaults}, FREE_FORM))
        namespace = parser.parse_args(list(argv))
        return parser.instantiate(namespace)["data"]
    except argparse.ArgumentError as e:
        raise ConfigError(str(e)) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the command line: {e}") from e


__all__ = [
    "ConfigError",
    "data_parser",
    "method_of",
    "method_to_parser",
    "parse_cli",
    "parse_data_cli",
    "parse_mapping",
    "train_parser",
]
