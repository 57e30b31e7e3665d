"""Seeded, deterministic carve-out of a validation split from training data, for model selection.

The original AdaptFormer code selected its reported checkpoint by test accuracy; here model selection uses a
held-out part of the training split. The split is stratified by label whenever labels are available without
decoding images (a ``targets`` attribute), so every class keeps its share in both parts.

The val part should use the *eval* transform: build the training dataset twice (train and eval transforms) and
pass the second one as ``val_dataset``; both get the same, disjoint indices.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

log = logging.getLogger(__name__)

__all__ = ["dataset_labels", "train_val_split", "train_val_split_indices"]


def dataset_labels(dataset: Dataset[Any]) -> list[int] | None:
    """The dataset's labels read without decoding images (``targets`` attribute, through Subsets), else None."""
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset)
        return None if parent is None else [parent[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return [int(t) for t in targets]


def _num_val(val_fraction: float | int, num_samples: int) -> int:
    """Validate ``val_fraction`` (a fraction in (0, 1) or a sample count) and return the val size."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise ValueError(f"val_fraction must be a float in (0, 1) or an int count, got {val_fraction!r}")
    if num_samples < 2:
        raise ValueError(f"need at least 2 samples to carve out a validation split, got {num_samples}")
    if isinstance(val_fraction, numbers.Integral):
        count = int(val_fraction)
        if not 1 <= count < num_samples:
            raise ValueError(f"val_fraction as a count must be in [1, {num_samples - 1}], got {count}")
        return count
    fraction = float(val_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction as a fraction must be in (0, 1), got {fraction}")
    count = round(fraction * num_samples)
    if not 1 <= count < num_samples:
        raise ValueError(f"val_fraction {fraction} of {num_samples} samples gives {count} val samples; need 1..N-1")
    return count


def _class_quotas(class_sizes: np.ndarray, num_val: int) -> np.ndarray:
    """Split ``num_val`` over classes in proportion to their sizes (largest remainder, ties by class order)."""
    exact = class_sizes * num_val / class_sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    remainder = num_val - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")  # largest fractional part first
    quotas[order[:remainder]] += 1
    return quotas


def train_val_split_indices(
    labels: Sequence[int] | None, val_fraction: float | int, seed: int, *, num_samples: int | None = None
) -> tuple[list[int], list[int]]:
    """Deterministic, disjoint (train_indices, val_indices), both sorted, covering all samples.

    Args:
        labels: one label per sample; the split is stratified by them. None: an unstratified split of
            ``num_samples`` samples.
        val_fraction: a float in (0, 1) (fraction of samples) or an int >= 1 (number of samples) for validation.
        seed: the same seed and labels always give the same split.
        num_samples: required when ``labels`` is None; must match ``len(labels)`` otherwise.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if labels is None:
        if num_samples is None:
            raise ValueError("num_samples is required when labels is None")
        n = int(num_samples)
    else:
        n = len(labels)
        if num_samples is not None and num_samples != n:
            raise ValueError(f"num_samples {num_samples} does not match the {n} labels given")
    num_val = _num_val(val_fraction, n)
    rng = np.random.default_rng(int(seed))
    if labels is None:
        val = rng.permutation(n)[:num_val]
    else:
        label_array = np.asarray(labels, dtype=np.int64)
        classes, class_sizes = np.unique(label_array, return_counts=True)
        quotas = _class_quotas(class_sizes, num_val)
        picked = []
        for cls, quota in zip(classes, quotas, strict=True):  # classes in sorted order: the draw order is fixed
            members = np.flatnonzero(label_array == cls)
            picked.append(rng.permutation(members)[:quota])
        val = np.concatenate(picked)
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()


def train_val_split(
    dataset: Dataset[Any],
    val_fraction: float | int,
    seed: int,
    *,
    val_dataset: Dataset[Any] | None = None,
) -> tuple[Subset[Any], Subset[Any]]:
    """Split ``dataset`` into (train, val) Subsets; stratified when labels are cheap (see :func:`dataset_labels`).

    Args:
        dataset: the training data (with the train transform).
        val_fraction: fraction in (0, 1) or count of samples held out for validation.
        seed: fixes the split.
        val_dataset: the same data built with the eval transform; the val Subset is taken from it (same indices).
            Defaults to ``dataset``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if val_dataset is not None and len(val_dataset) != n:  # type: ignore[arg-type]
        raise ValueError(f"val_dataset has {len(val_dataset)} samples but dataset has {n}; they must be the same data")  # type: ignore[arg-type]
    labels = dataset_labels(dataset)
    if labels is None:
        log.info("dataset %s has no cheap labels: validation split is not stratified", type(dataset).__name__)
    train_idx, val_idx = train_val_split_indices(labels, val_fraction, seed, num_samples=n)
    log.info("train/val split (seed %d): %d train, %d val samples", seed, len(train_idx), len(val_idx))
    return Subset(dataset, train_idx), Subset(val_dataset if val_dataset is not None else dataset, val_idx)
