"""What image and video dataset registries share: checking a request (kind, split, options, root) before building."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol


class DatasetKind(Protocol):
    """A registry entry: which splits and options a kind takes, and whether it reads files under a root."""

    splits: tuple[str, ...]
    needs_root: bool

    @property
    def options(self) -> Iterable[str]: ...


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
        raise ValueError(f"{kind!r} needs a root folder (--data-dir); expected layout:\n{layouts[kind]}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} dataset: root folder {path} not found\nexpected layout:\n{layouts[kind]}")
    return path
