"""Reading the files that describe a dataset (pickled arrays, MATLAB ``.mat`` files, JSON metadata, text lists) so
that a truncated, corrupt or differently-keyed file is a :class:`DatasetFileError` naming the file and what was
expected, never a bare ``KeyError`` / ``UnpicklingError`` / ``UnicodeDecodeError`` from deep inside a parser.

The error messages of unreadable image and video files follow one pattern, ``"<what> PATH: REASON"``, which
:func:`parse_file_error` reads back: torch's DataLoader re-raises a worker's exception by calling its type with the
whole worker traceback as text, and the decode errors rebuild themselves from the last such line, so the user sees
one line naming the file instead of the traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DatasetFileError",
    "check_label_range",
    "file_error_fields",
    "parse_file_error",
    "read_class_names",
    "read_json",
    "read_mat",
    "read_pickle",
    "read_text",
    "require_keys",
]


class DatasetFileError(ValueError):
    """A dataset file (archive, pickle, ``.mat``, list file, JSON metadata, ``classes.txt``) that cannot be read or
    does not hold what its dataset kind expects; the message names the file and what was expected."""


def read_text(path: Path) -> str:
    """The file's text (UTF-8); binary or unreadable content is a :class:`DatasetFileError` naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as err:
        raise DatasetFileError(f"{path}: expected a UTF-8 text file, got binary data ({err.reason} at byte "
                               f"{err.start})") from err  # fmt: skip
    except OSError as err:
        raise DatasetFileError(f"{path}: cannot read the file ({err.strerror or err})") from err


def read_json(path: Path, expected: str) -> Any:
    """Parsed JSON of ``path``; invalid JSON names the file, the place and ``expected``."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetFileError(f"{path}: not valid JSON ({err}); expected {expected}") from err


def read_pickle(path: Path, expected: str) -> Any:
    """The object pickled in ``path`` (latin1 strings, as the CIFAR python release needs). Pickles can run code when
    loaded: read only files you trust. Truncated or corrupt data raises :class:`DatasetFileError`."""
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged pickle raises any of a dozen types (EOFError, UnpicklingError, KeyError, ...)
        raise DatasetFileError(
            f"{path}: not a readable pickle, truncated or corrupt ({type(err).__name__}: {err}); expected {expected}"
        ) from err


def read_mat(path: Path, names: Iterable[str], expected: str) -> dict[str, np.ndarray]:
    """The variables ``names`` of a MATLAB file; a damaged file or a missing variable raises
    :class:`DatasetFileError` naming the file, the variables found and ``expected``."""
    import scipy.io

    names = list(names)
    try:
        contents = scipy.io.loadmat(str(path), variable_names=names)
    except FileNotFoundError:
        raise
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, OSError ... for damaged files
        raise DatasetFileError(
            f"{path}: not a readable MATLAB file, truncated or corrupt ({type(err).__name__}: {err}); "
            f"expected {expected}"
        ) from err
    require_keys(contents, names, path, expected)
    return {name: contents[name] for name in names}


def require_keys(mapping: Any, keys: Iterable[str], path: Path, expected: str) -> None:
    """Raise :class:`DatasetFileError` unless ``mapping`` is a mapping that holds every key of ``keys``."""
    if not isinstance(mapping, Mapping):
        raise DatasetFileError(f"{path}: expected {expected}, got a {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        found = sorted(str(k) for k in mapping if not str(k).startswith("__"))
        raise DatasetFileError(f"{path}: no {missing} in it (found {found}); expected {expected}")


def check_label_range(labels: Iterable[Any], num_classes: int, path: Path, field: str | None = None) -> list[int]:
    """``labels`` (from ``field`` of ``path``) as ints, each in ``[0, num_classes)``; others raise
    :class:`DatasetFileError` naming the file."""
    where = f" in {field}" if field else ""
    try:
        values = [int(label) for label in labels]
    except (TypeError, ValueError) as err:
        raise DatasetFileError(f"{path}: labels{where} must be integers ({err})") from err
    bad = sorted({v for v in values if not 0 <= v < num_classes})
    if bad:
        raise DatasetFileError(f"{path}: labels {bad[:10]}{where} are outside the allowed range 0..{num_classes - 1}")
    return values


def read_class_names(path: Path) -> list[str]:
    """Class names, one per line (line ``i`` names label ``i``; blank lines ignored): at least one, no repeats."""
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise DatasetFileError(f"{path}: no class names in it; expected one class name per line")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetFileError(f"{path}: class names {repeated[:10]} appear more than once; each must name one class")
    return names


def parse_file_error(text: str, what: str) -> tuple[str, str] | None:
    """``(path, reason)`` from the last ``"<what> PATH: REASON"`` line of ``text``, or None (a path containing
    ``": "`` is cut at its first one)."""
    found = re.findall(rf"{re.escape(what)} (.+?): (.*)", text)
    return found[-1] if found else None


def file_error_fields(path: str | os.PathLike[str], reason: str | None, what: str, error: str) -> tuple[Path, str]:
    """The ``(path, reason)`` of a file error ``error`` whose message is ``"<what> PATH: REASON"``: as given, or, with
    ``reason`` None, read back from a text holding that message (the one-argument form torch's DataLoader uses)."""
    if reason is None:
        found = parse_file_error(str(path), what)
        if found is None:
            raise ValueError(f"{error} needs (path, reason) or a text with its message, got {path!r}")
        path, reason = found
    return Path(path), reason
