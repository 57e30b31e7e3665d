"""Stage 1 of the video pipeline: which frame indices make a clip (TSN segments, dense stride, test views)."""

from __future__ import annotations

import pytest
import torch

from adaptformer.data.video import (
    SamplerConfig,
    TestViews,
    dense_indices,
    sample_indices,
    segment_indices,
)
from adaptformer.data.video.draws import randint


@pytest.mark.parametrize(
    ("num_video_frames", "num_frames", "clip_index", "num_clips", "expected"),
    [
        (16, 4, 0, 1, [2, 6, 10, 14]),  # segment centres
        (10, 4, 0, 1, [1, 3, 6, 8]),  # fractional segments of 2.5 frames
        (16, 4, 1, 2, [3, 7, 11, 15]),  # second of two temporal clips: 3/4 into each segment
        (3, 8, 0, 1, [0, 0, 0, 1, 1, 2, 2, 2]),  # short clip: frames repeat in order
    ],
)
def test_segment_eval_indices(num_video_frames, num_frames, clip_index, num_clips, expected):
    kwargs = {"train": False, "clip_index": clip_index, "num_clips": num_clips}
    assert segment_indices(num_video_frames, num_frames, **kwargs) == expected


def test_segment_train_draws_one_frame_per_segment_reproducibly():
    draws = [segment_indices(16, 4, train=True, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(4 * k <= d[k] <= 4 * k + 3 for d in draws for k in range(4))
    assert {d[0] for d in draws} == {0, 1, 2, 3}  # every frame of a segment can be drawn
    again = segment_indices(16, 4, train=True, generator=torch.Generator().manual_seed(7))
    assert again == draws[7]


@pytest.mark.parametrize(
    ("num_video_frames", "clip_index", "num_clips", "expected"),
    [
        (64, 0, 1, [16, 20, 24, 28, 32, 36, 40, 44]),  # centre window of 8 x 4 frames
        (64, 0, 4, list(range(0, 32, 4))),
        (64, 1, 4, list(range(10, 42, 4))),  # starts 0, 10, 21, 32: evenly spaced
        (64, 3, 4, list(range(32, 64, 4))),
        (20, 0, 1, [0, 4, 8, 12, 16, 19, 19, 19]),  # short clip: clamped to the last frame
    ],
)
def test_dense_eval_indices(num_video_frames, clip_index, num_clips, expected):
    got = dense_indices(num_video_frames, 8, 4, train=False, clip_index=clip_index, num_clips=num_clips)
    assert got == expected


def test_dense_train_random_start_with_fixed_stride():
    starts = set()
    for seed in range(30):
        got = dense_indices(40, 8, 4, train=True, generator=torch.Generator().manual_seed(seed))
        assert got == list(range(got[0], got[0] + 32, 4))
        starts.add(got[0])
    assert max(starts) <= 8 and len(starts) > 3


@pytest.mark.parametrize("strategy", ["segment", "dense"])
@pytest.mark.parametrize("train", [True, False])
def test_short_videos_stay_in_range_and_ordered(strategy, train):
    config = SamplerConfig(strategy=strategy, num_frames=8, stride=4)
    for n in range(1, 40):
        got = sample_indices(config, n, train=train, generator=torch.Generator().manual_seed(n))
        assert len(got) == 8 and got == sorted(got) and got[0] >= 0 and got[-1] <= n - 1
        if strategy == "dense" and n <= 29:  # the window (8 x 4) overruns the video: the tail repeats the last frame
            assert got[-1] == n - 1


def test_test_views_enumerate_clip_major():
    views = list(TestViews(4, 3))
    assert [(v.clip, v.crop) for v in views] == [(c, s) for c in range(4) for s in range(3)]
    assert len(TestViews(4, 3)) == 12 and all((v.num_clips, v.num_crops) == (4, 3) for v in views)


def test_shared_draw_covers_both_ends_and_repeats_with_its_generator() -> None:
    """The one random draw of the sampling and transform stages: [0, high] with both ends included, seeded."""
    draws = {randint(2, torch.Generator().manual_seed(s)) for s in range(60)}
    assert draws == {0, 1, 2}
    assert randint(0, None) == 0
    assert randint(1000, torch.Generator().manual_seed(3)) == randint(1000, torch.Generator().manual_seed(3))
