"""Carving a validation split from the training data (:mod:`adaptformer.data.splits`): seeded, disjoint, stratified;
bad fractions refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.data.release_files import SMALL, build_kind, write_imagefolder
from torch.utils.data import DataLoader

from adaptformer.data import (
    build_image_transform,
    dataset_labels,
    train_val_split,
    train_val_split_indices,
)

LABELS = [0] * 50 + [1] * 30 + [2] * 20


@pytest.mark.parametrize(("val_fraction", "per_class"), [(0.1, (5, 3, 2)), (0.2, (10, 6, 4)), (10, (5, 3, 2))])
def test_split_is_seeded_disjoint_and_stratified(val_fraction, per_class: tuple[int, ...]) -> None:
    train, val = train_val_split_indices(LABELS, val_fraction, seed=3)
    assert (train, val) == train_val_split_indices(LABELS, val_fraction, seed=3)
    assert val != train_val_split_indices(LABELS, val_fraction, seed=4)[1]
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert tuple(Counter(LABELS[i] for i in val)[c] for c in range(3)) == per_class


@pytest.mark.parametrize("val_fraction", [0, 0.0, 1.0, -0.2, 100, 0.001, True, "0.1", None])
def test_split_rejects_bad_fractions(val_fraction) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split_indices(LABELS, val_fraction, seed=0)


def test_split_without_labels_needs_a_size_and_is_unstratified() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        train_val_split_indices(None, 0.5, seed=0)
    train, val = train_val_split_indices(None, 3, seed=0, num_samples=10)
    assert len(val) == 3 and sorted(train + val) == list(range(10))


def test_train_val_split_uses_the_eval_transform_for_val(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    train_set = build_kind("imagefolder", tmp_path, "train", build_image_transform(SMALL, train=True))
    eval_set = build_kind("imagefolder", tmp_path, "train", build_image_transform(SMALL, train=False))
    train, val = train_val_split(train_set, 2, seed=0, val_dataset=eval_set)
    assert val.dataset is eval_set and train.dataset is train_set
    assert sorted(train.indices + val.indices) == list(range(5)) and len(val) == 2
    assert sorted(dataset_labels(val)) == [0, 1]  # stratified: one cat, one dog
    assert torch.equal(val[0][0], val[0][0])  # eval transform: deterministic
    batch, labels = next(iter(DataLoader(train, batch_size=3)))
    assert batch.shape == (3, 3, 16, 16) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="same data"):
        train_val_split(train_set, 2, seed=0, val_dataset=build_kind("imagefolder", tmp_path, "test"))
