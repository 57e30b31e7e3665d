"""Normalisation and input size come from the backbone's pretrained configuration, never from a file name."""

from __future__ import annotations

import pytest
import timm
from tests.conftest import VIT, tiny_kwargs

from adaptformer import Preprocessing


@pytest.mark.parametrize(
    "name, mean",
    [("vit_base_patch16_224.mae", (0.485, 0.456, 0.406)), ("vit_base_patch16_224.augreg_in21k", (0.5, 0.5, 0.5))],
)
def test_mean_std_follow_the_pretrained_tag(name: str, mean: tuple) -> None:
    pre = Preprocessing.from_model(timm.create_model(name, pretrained=False, num_classes=2, depth=1))
    assert pre.mean == pytest.approx(mean) and pre.image_size == (224, 224)


def test_built_image_size_wins_over_the_config() -> None:
    assert Preprocessing.from_model(timm.create_model(VIT, **tiny_kwargs(VIT))).input_size == (3, 32, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"std": (0, 1, 1)}, "std must be positive"),
        ({"interpolation": "lanczos9"}, "interpolation"),
        ({"crop_pct": 1.5}, "crop_pct"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)


def test_round_trip() -> None:
    pre = Preprocessing(input_size=(3, 64, 48), crop_pct=0.9)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        Preprocessing.from_dict({"size": 3})
