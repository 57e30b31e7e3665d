"""The image transforms (:mod:`adaptformer.data.transforms`): the inputs they accept, normalisation, the paper's
evaluation resize and centre crop, the random training crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.release_files import SMALL, random_images

from adaptformer.data import (
    build_image_transform,
    eval_resize_size,
    normalize_transform,
)
from adaptformer.preprocessing import Preprocessing


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (20, 24), (10, 20, 30)),
        Image.new("L", (20, 24), 100),
        Image.new("RGBA", (20, 24), (1, 2, 3, 4)),
        np.zeros((24, 20, 3), dtype=np.uint8),
        np.zeros((24, 20), dtype=np.uint8),
        torch.zeros(3, 24, 20, dtype=torch.uint8),
        torch.zeros(1, 24, 20, dtype=torch.uint8),
    ],
    ids=["pil-rgb", "pil-gray", "pil-rgba", "np-hwc", "np-gray", "tensor-chw", "tensor-gray"],
)
@pytest.mark.parametrize("train", [True, False])
def test_transform_accepts_common_inputs(image, train: bool) -> None:
    out = build_image_transform(SMALL, train)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 16, 16)


def test_transform_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        build_image_transform(SMALL, False)(torch.zeros(4, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("train", [True, False])
def test_transform_normalises_with_mean_and_std(train: bool) -> None:
    value = (200, 100, 50)
    out = build_image_transform(SMALL, train)(Image.new("RGB", (40, 30), value))  # constant: any crop is the same
    expected = (torch.tensor(value) / 255 - torch.tensor(SMALL.mean)) / torch.tensor(SMALL.std)
    assert torch.allclose(out, expected[:, None, None].expand(3, 16, 16), atol=1e-5)


def test_eval_transform_is_a_deterministic_identity_at_full_crop() -> None:
    pre = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 12, 12), crop_pct=1.0)
    image = random_images(1, size=12)[0]
    transform = build_image_transform(pre, train=False)
    out = transform(image)
    assert torch.equal(out, transform(image))
    assert torch.allclose(out * 0.25 + 0.5, torch.from_numpy(image).permute(2, 0, 1) / 255, atol=1e-6)


def test_train_transform_is_random() -> None:
    image = random_images(1, size=48)[0]
    transform = build_image_transform(SMALL, train=True)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(
    ("input_size", "crop_pct", "expected"),
    [((3, 224, 224), 0.875, 256), ((3, 384, 384), 1.0, 384), ((3, 224, 160), 0.875, (256, 182))],
)
def test_eval_resize_matches_the_paper(input_size, crop_pct: float, expected) -> None:
    pre = Preprocessing(input_size=input_size, crop_pct=crop_pct)
    assert eval_resize_size(pre) == expected
    assert build_image_transform(pre, False)(np.zeros((300, 400, 3), np.uint8)).shape == input_size


def test_eval_transform_crops_the_centre() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 255  # a white centre half: resize 32 -> 32 (crop_pct .5), crop 16 keeps only white
    pre = Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 16, 16), crop_pct=0.5)
    assert torch.allclose(build_image_transform(pre, False)(image), torch.ones(3, 16, 16), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 5), (4, 3, 5, 5), (2, 4, 3, 5, 5)])
def test_normalize_transform_keeps_leading_dims(shape: tuple[int, ...]) -> None:
    clip = torch.full(shape, 255, dtype=torch.uint8)
    out = normalize_transform(SMALL)(clip)
    expected = (1 - torch.tensor(SMALL.mean)) / torch.tensor(SMALL.std)
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.allclose(out.movedim(-3, 0).flatten(1), expected[:, None].expand(3, out[..., 0, :, :].numel()))
