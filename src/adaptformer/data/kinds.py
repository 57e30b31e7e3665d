"""What image and video dataset registries share: checking a request (kind, split, options, root) before building,
and checking that a split's samples cover its classes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from adaptformer.data.files import DatasetFileError

log = logging.getLogger(__name__)


class DatasetKind(Protocol):
    """A registry entry: which splits and options a kind takes, whether it reads files under a root, and (``locate``)
    where a split's folder or list file is, for kinds whose splits are optional on disk (None: all always there)."""

    splits: tuple[str, ...]
    needs_root: bool
    locate: Callable[[Path, str, Mapping[str, Any]], Path | None] | None

    @property
    def options(self) -> Iterable[str]: ...


def split_folder(root: Path, split: str, options: Mapping[str, Any] | None = None) -> Path | None:
    """``<root>/<split>`` if it is a folder (the ``locate`` of class-folder kinds)."""
    return root / split if (root / split).is_dir() else None


def split_location(
    kind: DatasetKind, root: str | Path | None, split: str, options: Mapping[str, Any] | None = None
) -> Path | None:
    """Where ``split`` of a dataset of ``kind`` under ``root`` (read with the kind's ``options``, which may choose the
    files, e.g. a VTAB-1k task and stage) is on disk (its folder or list file), or None: for a split the kind does not
    have, without a root, or for a split of a kind with ``locate`` that is not on disk. The splits of kinds without
    ``locate`` are all read from the root itself."""
    if split not in kind.splits or root is None:
        return None
    path = Path(root).expanduser()
    if kind.locate is None:
        return path
    return kind.locate(path, split, dict(options or {})) if path.is_dir() else None


def resolve_request(
    kind: str,
    registry: Mapping[str, DatasetKind],
    root: str | Path | None,
    split: str,
    options: Mapping[str, Any],
    layouts: Mapping[str, str],
    what: str = "dataset",
) -> Path | None:
    """Validate a request against ``registry`` and return the root folder (None for kinds that need no files).

    Errors name the offending value and the allowed ones; a missing root shows the kind's expected layout.
    """
    if kind not in registry:
        raise ValueError(f"unknown {what} kind {kind!r}; allowed: {sorted(registry)}")
    spec = registry[kind]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown options {unknown} for {kind!r}; allowed: {list(spec.options)}")
    if split not in spec.splits:
        raise ValueError(f"split {split!r} is not available for {kind!r}; allowed: {list(spec.splits)}")
    if not spec.needs_root:
        return None
    if root is None:
        raise ValueError(f"{kind!r} needs a root folder (--data.data_dir); expected layout:\n{layouts[kind]}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} dataset: root folder {path} not found\nexpected layout:\n{layouts[kind]}")
    return path


def check_class_coverage(
    labels: Sequence[int], classes: Sequence[str], source: str, *, required: bool, skipped: int = 0, what: str = ""
) -> None:
    """Classes without a sample in ``labels`` (the split read from ``source``).

    In the split that defines the classes (``required``: training) such a class is an output the model can never
    learn, so it is a :class:`DatasetFileError` naming ``source``, the classes and ``what`` to do; in another split
    it is a warning (those classes are never scored). ``skipped``: unreadable files left out, which the message
    mentions, since leaving them out can empty a class.
    """
    counts = Counter(int(label) for label in labels)
    empty = [name for index, name in enumerate(classes) if counts[index] == 0]
    if not empty:
        return
    shown = f"{empty[:10]}" + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    after = f" after leaving out {skipped} unreadable file(s)" if skipped else ""
    if required:
        raise DatasetFileError(f"{source} has no samples of {len(empty)} class(es) {shown}{after}; {what}")
    log.warning("%s has no samples of %d class(es) %s%s: they are never scored", source, len(empty), shown, after)
