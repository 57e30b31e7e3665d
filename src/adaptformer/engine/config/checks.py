"""The range checks the configuration sections share: each raises ValueError naming the field."""

from __future__ import annotations


def at_least(name: str, value: float | int | None, low: float) -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
