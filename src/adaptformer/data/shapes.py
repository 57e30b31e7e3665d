"""Procedural "shapes" images: the pre-training data of the tiny backbone made here (no downloads needed).

Class ``c`` of ``num_classes = len(SHAPES) * len(PALETTES)`` (64) is the pair (shape, palette): shape ``c % 8`` drawn in
a colour from palette ``c // 8``, at a random position, size and rotation, over a random textured background. Every
image is a pure function of (seed, index), so a dataset is reproducible without storing it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("disk", "square", "triangle", "ring", "cross", "half-disk", "stripes", "checker")
PALETTES = (  # base RGB of each palette; samples jitter around it
    (220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40),
    (200, 60, 210), (40, 200, 210), (240, 140, 30), (235, 235, 235),
)  # fmt: skip


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-size shape in rotated, centred coordinates (u, v) in units of the shape radius."""
    r = np.hypot(u, v)
    if SHAPES[shape] == "disk":
        return r < 1.0
    if SHAPES[shape] == "square":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if SHAPES[shape] == "triangle":
        return (v > -0.6) & (v < 1.0) & (np.abs(u) < (1.0 - v) * 0.6)
    if SHAPES[shape] == "ring":
        return (r < 1.0) & (r > 0.55)
    if SHAPES[shape] == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0))
    if SHAPES[shape] == "half-disk":
        return (r < 1.0) & (v > 0.0)
    if SHAPES[shape] == "stripes":
        return (r < 1.0) & (np.floor(v * 2.5) % 2 == 0)
    return (np.abs(u) < 0.9) & (np.abs(v) < 0.9) & ((np.floor(u * 2.2) + np.floor(v * 2.2)) % 2 == 0)  # checker


def render_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``label``."""
    shape, palette = label % len(SHAPES), label // len(SHAPES)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: a random colour, a random linear gradient and pixel noise
    bg = rng.uniform(0, 120, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(angle) * x + np.sin(angle) * y) / size * rng.uniform(0, 60)
    img = bg[None, None, :] + grad[..., None] + rng.normal(0, 10, size=(size, size, 3))
    # the shape: random centre, radius and rotation, colour jittered around its palette
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    theta = rng.uniform(0, 2 * math.pi)
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u, v = math.cos(theta) * dx + math.sin(theta) * dy, -math.sin(theta) * dx + math.cos(theta) * dy
    colour = np.clip(np.asarray(PALETTES[palette]) + rng.normal(0, 18, size=3), 0, 255)
    mask = _shape_mask(shape, u, v)
    img[mask] = colour + rng.normal(0, 6, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class ProceduralShapes(Dataset):
    """``num_samples`` images of ``num_classes`` (<= 64) shape/palette classes, balanced, seeded per index.

    Items are ``(uint8 tensor (3, size, size), label)``; pass ``transform`` to turn them into model inputs.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = len(SHAPES) * len(PALETTES),
        size: int = 32,
        seed: int = 0,
        transform=None,
    ) -> None:
        if not 1 <= num_classes <= len(SHAPES) * len(PALETTES):
            raise ValueError(f"num_classes must be in [1, {len(SHAPES) * len(PALETTES)}], got {num_classes}")
        if num_samples < 1 or size < 8:
            raise ValueError(f"need num_samples >= 1 and size >= 8, got {num_samples}, {size}")
        self.num_samples, self.size, self.seed, self.transform = num_samples, size, seed, transform
        self.classes = [f"{SHAPES[c % len(SHAPES)]}-{c // len(SHAPES)}" for c in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_samples)]
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng((self.seed, index))
        label = self.targets[index]
        image = torch.from_numpy(render_shape(label, self.size, rng)).permute(2, 0, 1)  # (3, H, W)
        return (self.transform(image) if self.transform else image), label
