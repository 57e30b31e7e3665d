"""Configuration files and the command line for :class:`~.sections.TrainConfig`, through jsonargparse.

jsonargparse (the library Lightning's CLI is built on) turns the nested dataclasses into command-line groups
(``--optim.epochs``, ``--model.method.bottleneck``), checks every value's type against the annotations and takes each
flag's help from the field's line in the class docstring. What this module adds is the library's own vocabulary:

- the method is written ``{name: vpt, num_tokens: 4}`` in YAML and ``--model.method vpt`` on the command line, the
  names of the method registry; jsonargparse's form (``class_path`` / ``init_args``) stays inside this module;
- layers, later ones winning: the defaults < a recipe (``--recipe NAME|FILE``) < a config file (``--config FILE``,
  e.g. a run's config.yaml) < flags;
- adaptformer 0.1's flat files are upgraded (:mod:`.v01`), and its flat flags get a message naming the new one;
- errors name where the value came from: the flag as typed (``--optim.epochs``) or the file (or recipe) and its key
  (``my.yaml: optim.epochs``); the dataclasses' own messages name dotted keys, which are rewritten to their origin.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ...methods import MethodConfig, get_method, method_names, method_of
from .layers import FREE_FORM, dotted, merge_config, read_yaml_mapping
from .sections import DATASET_KINDS, DataConfig, TrainConfig
from .v01 import V01_FLAGS, is_v01, upgrade_v01

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace, set_parsing_settings

logger = logging.getLogger(__name__)

SECTIONS = ("model", "data", "optim", "speed", "run")
DEFAULT_METHOD = "adaptformer"  # ModelConfig's default method
METHOD_KEY = "model.method"
set_parsing_settings(subclasses_enabled=[MethodConfig])


class ConfigError(ValueError):
    """A configuration value, key or flag that is not valid; the message names it."""


def _class_path(config_class: type) -> str:
    return f"{config_class.__module__}.{config_class.__qualname__}"


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, except for the method flag, whose help says all (no class paths, no nested default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.dest in (METHOD_KEY, f"{METHOD_KEY}.help"):
            return action.help or ""
        return super()._get_help_string(action)


def train_parser(prog: str = "adaptformer train") -> ArgumentParser:
    """A new jsonargparse parser of every TrainConfig field."""
    parser = ArgumentParser(prog=prog, exit_on_error=False, default_env=False, formatter_class=_HelpFormatter)
    parser.add_class_arguments(TrainConfig, as_positional=False)
    names = ", ".join(method_names())
    for action in parser._actions:  # argparse keeps no public list; the help texts of the flags jsonargparse added
        if action.dest == METHOD_KEY:
            action.metavar = "NAME"
            action.help = (
                f"the adaptation method: {names} (default: {DEFAULT_METHOD}); its fields are set with "
                f"--{METHOD_KEY}.FIELD VALUE"
            )
        elif action.dest == f"{METHOD_KEY}.help":
            action.metavar = "NAME"
            action.help = f"print the --{METHOD_KEY}.FIELD flags of method NAME ({names}) and exit"
        elif action.dest in (*SECTIONS, "data.video"):
            action.help = f"a YAML file (or inline YAML) of the {action.dest} keys alone; use --config for whole files"
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
    try:
        config_class = get_method(name).config
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e
    try:  # every field spelled out: jsonargparse would otherwise carry same-named fields over from another method
        config = config_class.from_dict(fields)
    except (TypeError, ValueError) as e:
        named = any(re.match(rf"{f.name}\b", str(e)) for f in dataclasses.fields(config_class))
        raise ConfigError(f"{where}.{e}" if named else f"{where}: {e}") from e
    return {"class_path": _class_path(type(config)), "init_args": config.to_dict()}


def _method_flag_value(text: str) -> str:
    """``--model.method NAME`` (a registered name, or its config's class name or path) as the registered name."""
    for name in method_names():
        config = get_method(name).config
        if text in (name, config.__name__, _class_path(config)):
            return name
    raise ConfigError(f"--model.method: unknown method {text!r}; registered methods: {list(method_names())}")


# -- naming where a bad value came from -------------------------------------------------------------------------------


def _key_origins(data: dict[str, Any], where: str) -> dict[str, str]:
    """Every dotted key of plain nested ``data`` (and each key's parents below the section) -> ``where``."""
    origins: dict[str, str] = {}
    for key in dotted(data):
        parts = key.split(".")
        origins.update({".".join(parts[:n]): where for n in range(2, len(parts) + 1)})
    return origins


def _flag_origins(argv: Sequence[str]) -> dict[str, str]:
    """Every ``--section.key`` flag in ``argv`` -> itself, as typed."""
    keys = (arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and "." in arg.split("=", 1)[0])
    return {key: f"--{key}" for key in keys}


def _free_form_hint(match: re.Match[str]) -> str:
    """jsonargparse's "Expected a <class 'dict'>" for kwargs/options, with the form YAML needs if a space is missing."""
    key, text = match.group(1), match.group(2).strip()
    message = f"{key}: expected a mapping such as {{img_size: 32}}, got {text!r}"
    fixed = re.sub(r"(?<=[\w'\"\]}]):(?=[^\s/])", ": ", text)
    try:
        fits = fixed != text and isinstance(yaml.safe_load(fixed), dict)
    except yaml.YAMLError:
        fits = False
    return message + (f"; YAML needs a space after each ':': '{fixed}'" if fits else "")


def _plain_message(message: str) -> str:
    """jsonargparse's wording in the library's: a key first, unknown keys named as dotted keys."""
    free_form = "|".join(FREE_FORM)
    message = re.sub(
        rf'Parser key "([\w.]*\.(?:{free_form}))":\s*Expected a <class .dict.>\. Got value: (.*)', _free_form_hint,
        message,
    )  # fmt: skip
    message = re.sub(r'Parser key "([\w.]+)":\s*', r"\1: ", message)
    message = re.sub(
        rf"{METHOD_KEY}: Problem with given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted",
        rf"{METHOD_KEY}.\2 is not a field of \1 (--{METHOD_KEY}.help NAME lists a method's fields)", message,
    )  # fmt: skip
    return re.sub(r"Group '([\w.]+)' does not accept option '(\w+)'", r"unknown key \1.\2", message)


def _qualified(message: str, namespace: Namespace) -> str:
    """A method config's message names its field bare ("bottleneck must be ..."): as ``model.method.bottleneck``."""
    class_path = str(getattr(namespace.get(METHOD_KEY), "class_path", ""))
    for name in method_names():
        config = get_method(name).config
        named = any(re.match(rf"{f.name}\b", message) for f in dataclasses.fields(config))
        if class_path.rsplit(".", 1)[-1] == config.__name__ and named:
            return f"{METHOD_KEY}.{message}"
    return message


def _named(message: str, origins: dict[str, str], fallback: str) -> str:
    """``message`` with each dotted key it names written as its origin: the flag as typed, or the key with its file
    (or recipe) in front; ``fallback`` in front when it names neither."""
    message = _plain_message(message)
    files: list[str] = []
    flagged = re.search(r"(?<![\w-])--\w", message) is not None

    def origin(match: re.Match[str]) -> str:
        nonlocal flagged
        key = match.group(0)
        if origins[key].startswith("--"):
            flagged = True
            return origins[key]
        files.append(origins[key])
        return key

    if origins:
        keys = "|".join(re.escape(k) for k in sorted(origins, key=len, reverse=True))
        message = re.sub(rf"(?<![\w.-])(?:{keys})(?!\w|\.\w)", origin, message)
    if files:
        return f"{', '.join(dict.fromkeys(files))}: {message}"
    return message if flagged else f"{fallback}: {message}"


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
    for section, fields in data.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: {section} must be a mapping of its keys, got {fields!r}")
    return data


def _checked_layer(data: Any, where: str) -> dict[str, Any]:
    """A recipe's or file's mapping as plain nested data, its keys and types checked on their own (so that an error
    names this layer); a layer may leave out the required data.dataset, which a later one or a flag gives."""
    data = _upgraded(data, where)
    form = _parser_form(data, where)
    if "dataset" not in form.get("data", {}):
        form = merge_config(form, {"data": {"dataset": DATASET_KINDS[0]}})  # a stand-in, for the type check only
    try:
        _parser().parse_object(form, defaults=False)
    except argparse.ArgumentError as e:
        raise ConfigError(_named(str(e), _key_origins(data, where), where)) from e
    return data


def _parser_form(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Plain nested data with the method in jsonargparse's class_path form."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    model = data.get("model")
    if isinstance(model, dict) and "method" in model:
        model["method"] = method_to_parser(model["method"], f"{where}: model.method")
    return data


def _build(namespace: Namespace, origins: dict[str, str], fallback: str) -> TrainConfig:
    try:
        built = _parser().instantiate(namespace)
        return TrainConfig(**{section: built[section] for section in SECTIONS})
    except (TypeError, ValueError) as e:
        raise ConfigError(_named(_qualified(str(e), namespace), origins, fallback)) from e


def read_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a YAML file holds (e.g. a run's ``config.yaml``); errors name the file and the key."""
    return parse_mapping(read_yaml_mapping(path), str(path))


def parse_mapping(data: dict[str, Any], where: str = "configuration") -> TrainConfig:
    """A :class:`TrainConfig` from nested plain data (as ``TrainConfig.to_dict`` writes it, or a 0.1 flat one);
    errors name ``where`` (e.g. the file) and the key."""
    data = _upgraded(data, where)
    origins = _key_origins(data, where)
    try:
        namespace = _parser().parse_object(_parser_form(data, where))
    except argparse.ArgumentError as e:
        raise ConfigError(_named(str(e), origins, where)) from e
    return _build(namespace, origins, where)


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
    given = list(argv)
    argv, chosen = _method_flag(given)
    _check_v01_flags(argv)
    plain: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for where, data in layers:
        data = _checked_layer(data, where)
        plain = merge_config(plain, data)
        origins.update(_key_origins(data, where))
    origins.update(_flag_origins(given))
    if chosen is not None:  # another method than the layers': its defaults, not the old one's fields
        plain = merge_config(plain, {"model": {"method": {"name": chosen}}})
    defaults = _parser_form(plain, "the recipe and config file")
    parser = train_parser()
    try:
        if defaults:
            parser.set_defaults(dotted(defaults, (*FREE_FORM, "method")))
        namespace = parser.parse_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(_named(str(e), origins, "the command line")) from e
    return _build(namespace, origins, "the command line")


def data_parser() -> ArgumentParser:
    """A jsonargparse parser of the ``data`` section alone (``adaptformer eval``'s dataset flags)."""
    parser = ArgumentParser(prog="adaptformer eval", exit_on_error=False, default_env=False)
    parser.add_class_arguments(DataConfig, "data", as_positional=False)
    return parser


def parse_data_cli(
    argv: Sequence[str], defaults: dict[str, Any], defaults_where: str = "the adapter's training record"
) -> DataConfig:
    """A :class:`DataConfig` from ``--data.*`` flags over ``defaults`` (plain nested data of the section, which
    errors call ``defaults_where``)."""
    _check_v01_flags(argv)
    parser = data_parser()
    origins = {**_key_origins({"data": defaults}, defaults_where), **_flag_origins(argv)}
    try:
        if defaults:
            parser.set_defaults(dotted({"data": defaults}, FREE_FORM))
        namespace = parser.parse_args(list(argv))
        return parser.instantiate(namespace)["data"]
    except argparse.ArgumentError as e:
        raise ConfigError(_named(str(e), origins, "the command line")) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(_named(str(e), origins, "the command line")) from e


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
