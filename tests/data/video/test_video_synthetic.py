"""The synthetic motion clips: seeded, shaped like the file datasets, labelled only by the motion."""

from __future__ import annotations

import torch

from adaptformer.data.video import (
    SyntheticMotionDataset,
    VideoTransform,
)
from adaptformer.preprocessing import Preprocessing


def test_synthetic_dataset_is_seeded_and_shaped_like_file_datasets():
    pre = Preprocessing(input_size=(3, 32, 32))
    first, second = SyntheticMotionDataset(8, 4, 6, pre, seed=3), SyntheticMotionDataset(8, 4, 6, pre, seed=3)
    clip, label, index = first[5]
    assert clip.shape == (3, 6, 32, 32) and clip.dtype == torch.float32 and (label, index) == (1, 5)
    assert torch.equal(clip, second[5][0]) and not torch.equal(clip, SyntheticMotionDataset(8, 4, 6, pre, seed=4)[5][0])
    assert torch.equal(clip, VideoTransform(pre).test(first.frames(5)))  # the file datasets' normalisation
    assert [first[i][1] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_synthetic_class_is_only_in_the_motion():
    dataset = SyntheticMotionDataset(16, 8, 8, Preprocessing(input_size=(3, 32, 32)), seed=0)
    for group in range(2):
        clips = [dataset.frames(group * 8 + k) for k in range(8)]  # one group: same draws, 8 directions
        assert all(torch.equal(c[0], clips[0][0]) for c in clips)  # identical first frames
        last_frames = {c[-1].numpy().tobytes() for c in clips}
        assert len(last_frames) == 8  # the directions separate once the shape moves
