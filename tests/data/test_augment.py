"""Training augmentation of images: the crop's area range and the flip, from TrainConfig down to the transform, and
the per-sample seeding that makes every draw reproducible."""

from __future__ import annotations

import pytest
import torch

from adaptformer.data import PAPER_CROP_SCALE, ImageAugment, build_image_transform
from adaptformer.engine import DataConfig, TrainConfig
from adaptformer.engine.config.parser import parse_cli, parse_mapping, read_config
from adaptformer.engine.rng import seeded
from adaptformer.engine.splits import DataSpec, load_split
from adaptformer.preprocessing import Preprocessing

PRE = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(3, 16, 16), crop_pct=1.0)


def _ramp(size: int = 16) -> torch.Tensor:
    """A (3, size, size) uint8 image whose value rises from left (0) to right (255): crops and flips show in it."""
    row = torch.linspace(0, 255, size).round().to(torch.uint8)
    return row.expand(3, size, size).clone()


def _draws(augment: ImageAugment, image: torch.Tensor, n: int = 24) -> list[torch.Tensor]:
    transform = build_image_transform(PRE, train=True, augment=augment)
    outs = []
    for seed in range(n):
        with seeded(seed):
            outs.append(transform(image))
    return outs


# -- the transform ------------------------------------------------------------------------------------------------


def test_full_crop_without_flip_is_the_identity() -> None:
    image = _ramp()
    identity = image.float() / 255
    assert all(torch.allclose(out, identity, atol=1e-6) for out in _draws(ImageAugment((1.0, 1.0), False), image))


def test_flip_mirrors_about_half_the_draws_and_only_when_on() -> None:
    image = _ramp()
    identity, mirrored = image.float() / 255, image.flip(-1).float() / 255
    outs = _draws(ImageAugment((1.0, 1.0), True), image)
    flipped = [torch.allclose(o, mirrored, atol=1e-6) for o in outs]
    assert all(f or torch.allclose(o, identity, atol=1e-6) for f, o in zip(flipped, outs, strict=True))
    assert 0 < sum(flipped) < len(outs)


@pytest.mark.parametrize(("scale", "low", "high"), [((1.0, 1.0), 0.9, 1.0), ((0.05, 0.05), 0.0, 0.4)])
def test_crop_scale_sets_how_much_of_the_image_a_crop_keeps(
    scale: tuple[float, float], low: float, high: float
) -> None:
    # the ramp's rise across an output row is about the crop's width as a fraction of the image's (antialiasing
    # blurs the ends a little)
    image = _ramp(64)
    for out in _draws(ImageAugment(scale, False), image):
        span = (out[0, :, -1] - out[0, :, 0]).abs().mean().item()
        assert low <= span <= high, (scale, span)


def test_default_is_the_paper_recipe() -> None:
    assert ImageAugment() == ImageAugment(PAPER_CROP_SCALE, True) and PAPER_CROP_SCALE == (0.08, 1.0)
    outs = _draws(ImageAugment(), _ramp(64))
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_scale": (0.8, 0.5)}, r"0 < min <= max <= 1, got \[0.8, 0.5\]"),
        ({"crop_scale": (0.0, 1.0)}, "0 < min <= max <= 1"),
        ({"crop_scale": (0.5, 1.2)}, "0 < min <= max <= 1"),
        ({"crop_scale": (0.5,)}, "two numbers"),
        ({"crop_scale": ("a", 1.0)}, "two numbers"),
        ({"flip": "yes"}, "flip must be true or false"),
    ],
)
def test_augment_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageAugment(**kwargs)


# -- TrainConfig and the data of a run ----------------------------------------------------------------------------


def _data(**data: object) -> TrainConfig:
    return parse_mapping({"data": {"dataset": "synthetic", **data}})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"crop_scale": [0.9, 0.2]}, r"crop_scale must satisfy 0 < min <= max <= 1, got \[0.9, 0.2\]"),
        ({"crop_scale": [-0.1, 1.0]}, "crop_scale must satisfy"),
        ({"crop_scale": [0.5, 1.5]}, "crop_scale must satisfy"),
        ({"crop_scale": [0.2, 0.5, 1.0]}, "configuration: data.crop_scale: Expected"),
        ({"crop_scale": 0.5}, "configuration: data.crop_scale: Expected"),
        ({"crop_scale": ["a", "b"]}, "configuration: data.crop_scale: Expected"),
        ({"flip": 3}, "configuration: data.flip: Does not validate"),
        ({"dataset": "synthetic-video", "crop_scale": [0.5, 1.0]}, r"data.crop_scale applies to image datasets only"),
    ],
)
def test_config_rejects_bad_augmentation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _data(**changes)


@pytest.mark.parametrize(
    ("dataset", "flip", "expected"),
    [
        ("digits", None, True),
        ("digits", False, False),
        ("synthetic-video", None, False),
        ("synthetic-video", True, True),
    ],
)
def test_flip_default_is_the_papers_for_the_modality(dataset: str, flip: bool | None, expected: bool) -> None:
    spec = DataSpec.from_config(TrainConfig(data=DataConfig(dataset=dataset, flip=flip)))
    assert (spec.video.flip if spec.is_video else spec.image.flip) is expected


def test_config_fields_reach_the_training_transform() -> None:
    cfg = _data(options={"num_samples": 4, "image_size": 16}, crop_scale=[1, 1], flip=False)
    assert cfg.data.crop_scale == (1.0, 1.0) and DataSpec.from_config(cfg).image == ImageAugment((1.0, 1.0), False)
    split = load_split(DataSpec.from_config(cfg), "train")
    model = torch.nn.Identity()
    model.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_pct": 1.0}
    train, evaluation = split.build(model, "train"), split.build(model, "eval")
    for i in range(4):  # a full crop without flip is the evaluation view
        with seeded(i):
            assert torch.allclose(train[i][0], evaluation[i][0], atol=1e-6)


def test_cli_flags_and_yaml_round_trip(tmp_path) -> None:
    cfg = parse_cli(["--data.dataset", "digits", "--data.crop_scale", "[0.5, 1]", "--data.flip", "false"])
    assert cfg.data.crop_scale == (0.5, 1.0) and cfg.data.flip is False
    assert parse_cli(["--data.dataset", "digits"]).data.flip is None  # unset: the paper's default for the modality
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert read_config(tmp_path / "c.yaml") == cfg


# -- seeding ------------------------------------------------------------------------------------------------------


def test_seeded_uses_the_cpu_generator_only_and_restores_it() -> None:
    torch.manual_seed(123)
    outer = torch.get_rng_state()
    with seeded(5):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outer)
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(3))  # the same stream as torch.manual_seed(5) on the CPU
