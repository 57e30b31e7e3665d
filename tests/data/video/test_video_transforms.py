"""Stage 3 of the video pipeline: multi-scale training crops, test crops, flip and normalisation of clips."""

from __future__ import annotations

import pytest
import torch
from tests.video_files import PRE, H, W

from adaptformer.data.video import (
    VideoTransform,
    VideoTransformConfig,
    multi_scale_crop_params,
    spatial_crop_params,
)
from adaptformer.preprocessing import Preprocessing


def _textured_video(num_frames: int = 6) -> torch.Tensor:
    """(T, H, W, C) uint8: one random texture, brightened by 8 per frame."""
    base = torch.randint(0, 150, (1, H, W, 3), generator=torch.Generator().manual_seed(0))
    return (base + 8 * torch.arange(num_frames).view(-1, 1, 1, 1)).to(torch.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_train_crop_is_the_same_in_every_frame(seed):
    clip = VideoTransform(PRE).train(_textured_video(), torch.Generator().manual_seed(seed))
    assert clip.shape == (3, 6, H, H) and clip.dtype == torch.float32
    pixels = (clip * 0.25 + 0.5) * 255  # (C, T, H, W) back to levels
    shift = pixels - pixels[:, :1]  # equal crops: frame t differs from frame 0 by exactly 8 t everywhere
    expected = 8 * torch.arange(6.0).view(1, -1, 1, 1).expand_as(shift)
    assert torch.allclose(shift, expected, atol=1.01)


@pytest.mark.parametrize("seed", range(10))
def test_multi_scale_crop_box_uses_scales_and_fixed_offsets(seed):
    top, left, h, w = multi_scale_crop_params(
        120, 160, (1.0, 0.875, 0.75, 0.66), generator=torch.Generator().manual_seed(seed)
    )
    sides = [120, 105, 90, 79]
    assert h in sides and w in sides and abs(sides.index(h) - sides.index(w)) <= 1
    assert (top, left) in {(0, 0), (0, 160 - w), (120 - h, 0), (120 - h, 160 - w), ((120 - h) // 2, (160 - w) // 2)}


@pytest.mark.parametrize(
    ("height", "width", "num_crops", "expected"),
    [
        (48, 64, 1, [(0, 8)]),
        (48, 64, 3, [(0, 0), (0, 8), (0, 16)]),  # landscape: left, centre, right
        (64, 48, 3, [(0, 0), (8, 0), (16, 0)]),  # portrait: top, centre, bottom
    ],
)
def test_spatial_crop_positions(height, width, num_crops, expected):
    got = [spatial_crop_params(height, width, 48, 48, i, num_crops)[:2] for i in range(num_crops)]
    assert got == expected


def test_test_transform_three_crops_cut_left_centre_right():
    columns = (torch.arange(W) * 3).to(torch.uint8).view(1, 1, W, 1).expand(2, H, W, 3)  # level = 3 x column
    transform = VideoTransform(PRE)
    first_columns = [((transform.test(columns, i, 3) * 0.25 + 0.5) * 255)[0, 0, 0, 0].round() for i in range(3)]
    assert [int(v) for v in first_columns] == [0, 24, 48]


@pytest.mark.parametrize(("flip", "can_flip"), [(False, False), (True, True)])
def test_flip_is_configurable(flip, can_flip):
    ramp = (torch.arange(W) * 3).to(torch.uint8).view(1, 1, W, 1).expand(2, H, W, 3)
    transform = VideoTransform(PRE, VideoTransformConfig(flip=flip))
    clips = [transform.train(ramp, torch.Generator().manual_seed(s)) for s in range(20)]  # (C, T, H, W) each
    flipped = [bool(clip[0, 0, 0, 0] > clip[0, 0, 0, -1]) for clip in clips]  # the ramp now decreases
    assert any(flipped) == can_flip
    assert all(f == bool(c[0, -1, 0, 0] > c[0, -1, 0, -1]) for f, c in zip(flipped, clips, strict=True))  # all frames


def test_normalisation_uses_the_preprocessing_mean_and_std():
    pre = Preprocessing(input_size=(3, H, H), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    clip = VideoTransform(pre).test(torch.full((2, H, W, 3), 255, dtype=torch.uint8))
    assert torch.allclose(clip[:, 0, 0, 0], torch.tensor([(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.125]))
