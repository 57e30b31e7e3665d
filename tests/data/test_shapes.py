"""The procedural shapes dataset used to pre-train the tiny backbone: balanced, seeded, and class-dependent."""

from __future__ import annotations

import pytest
import torch

from adaptformer.data.shapes import PALETTES, SHAPES, ProceduralShapes


def test_items_are_seeded_pure_functions_of_the_index() -> None:
    a, b = ProceduralShapes(20, seed=3), ProceduralShapes(20, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 7, 19))
    assert not torch.equal(ProceduralShapes(20, seed=4)[5][0], a[5][0])
    image, label = a[9]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 9


def test_balanced_classes_and_names() -> None:
    ds = ProceduralShapes(128, num_classes=64)
    assert len(ds.classes) == 64 == len(SHAPES) * len(PALETTES)
    assert [ds.targets.count(c) for c in range(64)] == [2] * 64
    assert ds.classes[9] == "square-1"


def test_palette_sets_the_foreground_colour() -> None:
    ds = ProceduralShapes(64, num_classes=64, size=32, seed=0)
    red, green = ds[0][0].float(), ds[8][0].float()  # disk in palette 0 (red) and in palette 1 (green)
    assert red[0].max() > 180 and green[1].max() > 160
    assert red[0].max() - red[1].max() > 60


@pytest.mark.parametrize("kwargs", [{"num_classes": 65}, {"num_classes": 0}, {"num_samples": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ProceduralShapes(**{"num_samples": 10, **kwargs})


def test_registered_as_an_image_dataset_kind_with_distinct_splits() -> None:
    from adaptformer.data import build_image_dataset

    train = build_image_dataset("shapes", None, "train", None, num_samples=8, num_classes=4)
    test = build_image_dataset("shapes", None, "test", None, num_samples=8, num_classes=4)
    assert train.classes == test.classes and len(train) == 8
    assert not torch.equal(train[0][0], test[0][0])
