"""Small helpers shared by the library's frozen dataclass configs: choice checks and strict (de)serialisation.

Every config (method configs, ``Preprocessing``, ``SpeedConfig``, ``ModelSpec``) is a dataclass validated in its
``__post_init__`` with ``ValueError``; :func:`from_mapping` is the one strict reader that turns a JSON/YAML mapping
into one, naming unknown keys, and :func:`to_plain` the one writer (tuples become lists, so JSON and YAML agree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    allowed = list(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_probability(name: str, value: object) -> None:
    """A dropout-like probability: a number (not a bool) in [0, 1); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def from_mapping(cls: type[T], data: Any, what: str | None = None) -> T:
    """``cls(**data)`` for a dataclass ``cls``, refusing non-mappings and unknown keys with a message that lists the
    known ones (``what`` names the thing being read, default the class name)."""
    what = what or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping of fields, got {type(data).__name__}: {data!r}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; expected some of {sorted(known)}")
    return cls(**data)


def is_of_type(value: Any, types: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that a bool is no int (JSON's ``true`` is no count) unless bool is allowed."""
    allowed = types if isinstance(types, tuple) else (types,)
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def type_names(types: type | tuple[type, ...]) -> str:
    """``int or null``: the allowed types as an error message names them."""
    allowed = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


def check_types(obj: Any, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """ValueError naming the first field of ``obj`` whose value is not of its type in ``types`` (:func:`is_of_type`)."""
    for name, expected in types.items():
        value = getattr(obj, name)
        if not is_of_type(value, expected):
            raise ValueError(f"{name} must be {type_names(expected)}, got {type(value).__name__} {value!r}")


def to_plain(obj: Any) -> Any:
    """A dataclass (or nested lists/tuples/dicts of them) as JSON/YAML-ready plain data; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def check_free_form(name: str, value: Any) -> None:
    """ValueError naming ``name`` unless ``value`` is a mapping with string keys (timm kwargs, dataset options).

    YAML reads ``{img_size:32}`` (no space after ':') as the one key ``'img_size:32'`` with no value; such a key is
    named, with the form YAML needs.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping such as {{img_size: 32}}, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{name}: keys must be names, got {key!r}")
        if item is None and ":" in key:
            fixed = ": ".join(part.strip() for part in key.split(":", 1))
            raise ValueError(
                f"{name}: key {key!r} has no value: YAML needs a space after ':' (write {{{fixed}}}, not {{{key}}})"
            )
        if isinstance(item, Mapping):
            check_free_form(f"{name}.{key}", item)


def check_block_indices(name: str, value: Any) -> tuple[int, ...] | None:
    """A method's ``layers`` knob: None (every block), or distinct block indices >= 0, returned sorted as a tuple;
    ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    indices = tuple(value) if isinstance(value, list | tuple) else ()
    if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise ValueError(f"{name} must be a non-empty list of block indices >= 0 (or null for all), got {value!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{name} has duplicate block indices: {list(indices)}")
    return tuple(sorted(indices))
