"""Temporal index sampling: which frames of a video make a clip (stage 1 of the video pipeline, no I/O).

Two strategies, as in VideoMAE / AdaptFormer:

- ``segment`` (TSN, used for Something-Something v2): the video is split into ``num_frames`` equal segments and one
  frame is taken from each; training takes a random frame per segment, evaluation a fixed position per segment
  (the centre for a single temporal view).
- ``dense`` (Kinetics / HMDB51 style, the paper uses 8 frames with stride 4): ``num_frames`` frames ``stride`` apart
  inside a window of ``num_frames * stride`` frames; training starts the window at a random frame, evaluation uses
  ``num_clips`` windows evenly spaced from the first to the last possible start.

Short videos (fewer frames than the window) follow one rule: every index is clamped to ``[0, num_video_frames - 1]``,
so a short video repeats its last frame (dense) or repeats frames in temporal order (segment). Indices are always
non-decreasing.

Frame indices count decoded frames in presentation order (frame 0 is the first decoded frame), never timestamps.
Test views are (temporal clip, spatial crop) pairs, enumerated clip-major: ``4 x 3`` gives 12 views per video.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from adaptformer.data.video.draws import randint

__all__ = [
    "STRATEGIES",
    "SamplerConfig",
    "TestViews",
    "View",
    "dense_indices",
    "sample_indices",
    "segment_indices",
]

Strategy = Literal["segment", "dense"]
STRATEGIES: tuple[Strategy, ...] = ("segment", "dense")


@dataclass(frozen=True)
class SamplerConfig:
    """Which frames a clip is made of.

    Args:
        strategy: "segment" (TSN, one frame per equal segment; SSv2) or "dense" (fixed stride; HMDB51, Kinetics).
        num_frames: frames per clip fed to the model.
        stride: gap between consecutive sampled frames for the dense strategy (ignored by "segment").
    """

    strategy: Strategy = "dense"
    num_frames: int = 8
    stride: int = 4

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be 'segment' or 'dense', got {self.strategy!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")


@dataclass(frozen=True)
class View:
    """One test view of a video: temporal clip ``clip`` of ``num_clips`` and spatial crop ``crop`` of ``num_crops``."""

    clip: int
    crop: int
    num_clips: int = 1
    num_crops: int = 1


PAPER_TEST_VIEWS = (4, 3)  # temporal clips x spatial crops per test video (paper; VideoMAE's protocol)


@dataclass(frozen=True)
class TestViews:
    """The test-time view grid: ``num_clips`` temporal clips x ``num_crops`` spatial crops (paper: 4 x 3).

    Validation during training should use ``TestViews(1, 1)``: one centre clip, one centre crop, deterministic.
    """

    __test__ = False  # not a pytest test class despite the name

    num_clips: int = PAPER_TEST_VIEWS[0]
    num_crops: int = PAPER_TEST_VIEWS[1]

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (centre) or 3 (along the long side), got {self.num_crops}")

    def __len__(self) -> int:
        return self.num_clips * self.num_crops

    def __getitem__(self, i: int) -> View:
        if not 0 <= i < len(self):
            raise IndexError(f"view {i} out of range for {self.num_clips} clips x {self.num_crops} crops")
        clip, crop = divmod(i, self.num_crops)
        return View(clip, crop, self.num_clips, self.num_crops)

    def __iter__(self) -> Iterator[View]:
        return (self[i] for i in range(len(self)))


def _check(num_video_frames: int, clip_index: int, num_clips: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} out of range for num_clips {num_clips}")


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """TSN segment sampling: one frame from each of ``num_frames`` equal segments.

    Segment ``k`` covers the real interval ``[k * L, (k + 1) * L)`` with ``L = num_video_frames / num_frames``.
    Train: a uniformly random frame among those whose index falls in the segment (``generator`` for
    reproducibility). Eval: the frame at relative position ``(clip_index + 0.5) / num_clips`` of each segment
    (the centre for one clip), so several temporal clips are evenly spread inside every segment.
    Segments shorter than one frame repeat frames (``floor`` of the position), keeping temporal order.
    """
    _check(num_video_frames, clip_index, num_clips)
    length = num_video_frames / num_frames
    last = num_video_frames - 1
    indices = []
    for k in range(num_frames):
        if train:
            start = int(k * length)
            end = max(int((k + 1) * length) - 1, start)  # inclusive; a sub-frame segment still has one frame
            index = start + randint(end - start, generator)
        else:
            index = int(length * (k + (clip_index + 0.5) / num_clips))
        indices.append(min(index, last))
    return indices


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """Dense sampling: ``num_frames`` frames ``stride`` apart from a window of ``num_frames * stride`` frames.

    Train: the window starts at a uniformly random frame in ``[0, max(num_video_frames - window, 0)]``.
    Eval: ``num_clips`` windows evenly spaced from the first to the last possible start (one clip: the centre).
    Indices past the end of a short video are clamped to the last frame.
    """
    _check(num_video_frames, clip_index, num_clips)
    max_start = max(num_video_frames - num_frames * stride, 0)
    if train:
        start = randint(max_start, generator)
    elif num_clips == 1:
        start = max_start // 2
    else:
        start = clip_index * max_start // (num_clips - 1)
    last = num_video_frames - 1
    return [min(start + k * stride, last) for k in range(num_frames)]


def sample_indices(
    config: SamplerConfig,
    num_video_frames: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """The frame indices of one clip according to ``config`` (see :func:`segment_indices`, :func:`dense_indices`)."""
    if config.strategy == "segment":
        return segment_indices(
            num_video_frames,
            config.num_frames,
            train=train,
            generator=generator,
            clip_index=clip_index,
            num_clips=num_clips,
        )
    return dense_indices(
        num_video_frames,
        config.num_frames,
        config.stride,
        train=train,
        generator=generator,
        clip_index=clip_index,
        num_clips=num_clips,
    )
