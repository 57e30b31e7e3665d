"""A built-in synthetic video dataset where the class is the motion, for tests and smoke runs without downloads.

Each clip shows one shape (square or disc) on a flat background, moving at constant speed on a torus (it leaves one
edge and re-enters at the opposite one). The class is the direction of motion: right, left, down, up, then the four
diagonals (at most 8 classes). Items come in groups of ``num_classes``: the items of one group share every random
draw (colours, shape, size, start position, speed, noise) and differ only in direction, so their first frames are
identical and no single frame can tell the class; only motion across frames can. Everything derives from
``(seed, group)``, so item ``i`` is the same on every call, in every worker.

Clips go through :class:`~adaptformer.data.video.transforms.VideoTransform` (the test path: short-side resize and
centre crop, both no-ops when ``size`` is the input size, then the shared normalisation), so items have the same
``(clip (C, T, H, W) float32, label, video_id)`` format as :class:`~adaptformer.data.video.datasets.VideoClipDataset`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from adaptformer.data.video.transforms import VideoTransform
from adaptformer.preprocessing import Preprocessing

__all__ = ["MOTIONS", "SyntheticMotionDataset"]

_D = 1 / math.sqrt(2)
# (name, (dy, dx)) unit steps; opposite directions come in pairs, so 2 classes = right/left, 4 = the axes.
MOTIONS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("right", (0.0, 1.0)),
    ("left", (0.0, -1.0)),
    ("down", (1.0, 0.0)),
    ("up", (-1.0, 0.0)),
    ("down_right", (_D, _D)),
    ("up_left", (-_D, -_D)),
    ("down_left", (_D, -_D)),
    ("up_right", (-_D, _D)),
)


class SyntheticMotionDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Seeded clips of a moving shape, labelled by the direction of motion.

    Args:
        num_samples: number of clips; label of item ``i`` is ``i % num_classes`` (balanced classes).
        num_classes: 2 to 8 directions, in the order of :data:`MOTIONS`.
        num_frames: frames per clip.
        pre: the backbone's preprocessing (normalisation and input size).
        size: (height, width) of the rendered frames; None renders at the input size.
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        seed: base seed of all draws.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 4,
        num_frames: int = 8,
        pre: Preprocessing | None = None,
        size: tuple[int, int] | None = None,
        noise_std: float = 8.0,
        seed: int = 0,
    ) -> None:
        if not 2 <= num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in [2, {len(MOTIONS)}] (one per direction), got {num_classes}")
        if num_samples < 1 or num_frames < 2:
            raise ValueError(f"need num_samples >= 1 and num_frames >= 2, got {num_samples}, {num_frames}")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.pre = pre or Preprocessing()
        self.size = tuple(size) if size is not None else self.pre.image_size
        if min(self.size) < 8:
            raise ValueError(f"frames must be at least 8x8, got {self.size}")
        self.noise_std = noise_std
        self.seed = seed
        self.classes = [name for name, _ in MOTIONS[:num_classes]]
        self.transform = VideoTransform(self.pre)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def targets(self) -> list[int]:
        """The label of every item (``i % num_classes``), for stratified splits."""
        return [i % self.num_classes for i in range(self.num_samples)]

    def frames(self, index: int) -> torch.Tensor:
        """The uint8 RGB frames ``(T, H, W, C)`` of item ``index``, before any transform."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} items")
        group, label = divmod(index, self.num_classes)
        rng = np.random.default_rng([self.seed, group])  # shared by the group: only the direction differs
        height, width = self.size
        background = rng.integers(0, 256, 3)
        foreground = (background + rng.integers(96, 161, 3)) % 256  # >= 96 levels from the background per channel
        radius = rng.uniform(min(height, width) / 8, min(height, width) / 5)
        square = bool(rng.integers(0, 2))
        start = rng.uniform((0.0, 0.0), (height, width))  # (y, x)
        speed = max(1.0, rng.uniform(0.5, 1.0) * min(height, width) / (2 * self.num_frames))  # < half a turn
        noise = rng.normal(0.0, self.noise_std, (self.num_frames, height, width, 3))
        step = np.array(MOTIONS[label][1]) * speed  # (dy, dx) per frame

        t = np.arange(self.num_frames)[:, None, None]  # (T, 1, 1)
        centre_y = start[0] + t * step[0]
        centre_x = start[1] + t * step[1]
        ys = np.arange(height)[None, :, None] + 0.5  # (1, H, 1) pixel centres
        xs = np.arange(width)[None, None, :] + 0.5  # (1, 1, W)
        dy = (ys - centre_y + height / 2) % height - height / 2  # (T, H, 1) signed distance on the torus
        dx = (xs - centre_x + width / 2) % width - width / 2  # (T, 1, W)
        inside = np.maximum(abs(dy), abs(dx)) <= radius if square else dy**2 + dx**2 <= radius**2  # (T, H, W)
        video = np.where(inside[..., None], foreground, background) + noise  # (T, H, W, C)
        return torch.from_numpy(np.clip(np.rint(video), 0, 255).astype(np.uint8))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        clip = self.transform(self.frames(index), train=False)  # (C, T, H, W) float32
        return clip, index % self.num_classes, index
