"""Spatial transforms of video clips (stage 3 of the video pipeline), identical for every frame of a clip.

Training follows the VideoMAE / TSN multi-scale crop used by AdaptFormer's video recipe (paper Table 5): the crop's
height and width are each drawn from ``scales`` x the short side (1, .875, .75, .66; at most ``max_distort`` scale
steps apart, so the aspect ratio changes a little), placed at one of five fixed offsets (four corners and centre) or
at a random offset, then resized to the input size. Horizontal flip is optional and OFF by default: Something-
Something labels name left and right, and flipping would make them lie.

Testing resizes the short side to ``test_short_side`` (default: the input's short side, 224) and takes a centre crop
(one spatial view) or three crops along the long side (left/centre/right for landscape, top/centre/bottom for
portrait), chosen by the view's crop index; the crops of one clip share one resize (:meth:`VideoTransform.test_crops`).
``Preprocessing.crop_pct`` (the image recipe's resize to 256 before a 224 crop) is not used: the video recipe resizes
the short side to the input size itself.

Every op runs on ``(T, C, H, W)`` tensors through torchvision.transforms.v2 functionals, which treat the leading dim
as a batch, so one crop and one resize apply to all frames. Normalisation reuses the image pipeline's
:func:`adaptformer.data.transforms.normalize_transform`. The model input is ``(C, T, H, W)`` float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from adaptformer.data.transforms import normalize_transform
from adaptformer.data.video.draws import randint
from adaptformer.preprocessing import Preprocessing

__all__ = [
    "VideoTransform",
    "VideoTransformConfig",
    "multi_scale_crop_params",
    "spatial_crop_params",
]

Box = tuple[int, int, int, int]  # (top, left, height, width)


@dataclass(frozen=True)
class VideoTransformConfig:
    """Spatial augmentation of clips; the sizes and normalisation come from the backbone's ``Preprocessing``.

    Args:
        scales: crop side candidates for training, as fractions of the frame's short side.
        max_distort: largest gap, in positions of ``scales``, between the crop height's and width's scale.
        fixed_offsets: training crops sit at a corner or the centre (TSN); False places them uniformly at random.
        flip: random horizontal flip in training (keep False for SSv2, whose labels name left/right).
        test_short_side: short side of the frames before the test crops; None uses the input's short side.
    """

    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    max_distort: int = 1
    fixed_offsets: bool = True
    flip: bool = False
    test_short_side: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales):
            raise ValueError(f"scales must be non-empty fractions in (0, 1], got {self.scales}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")
        if self.test_short_side is not None and self.test_short_side < 1:
            raise ValueError(f"test_short_side must be >= 1, got {self.test_short_side}")


def multi_scale_crop_params(
    height: int,
    width: int,
    scales: tuple[float, ...],
    *,
    max_distort: int = 1,
    fixed_offsets: bool = True,
    generator: torch.Generator | None = None,
) -> Box:
    """Draw one multi-scale crop box ``(top, left, h, w)`` for a ``height x width`` frame.

    Height and width are drawn together from the pairs of ``scales`` at most ``max_distort`` positions apart
    (each scale multiplies the short side); the offset is one of the four corners or the centre when
    ``fixed_offsets``, else uniform.
    """
    short = min(height, width)
    sides = [max(1, int(short * s)) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[randint(len(pairs) - 1, generator)]
    free_h, free_w = height - crop_h, width - crop_w
    if fixed_offsets:
        offsets = [(0, 0), (0, free_w), (free_h, 0), (free_h, free_w), (free_h // 2, free_w // 2)]
        top, left = offsets[randint(len(offsets) - 1, generator)]
    else:
        top, left = randint(free_h, generator), randint(free_w, generator)
    return top, left, crop_h, crop_w


def spatial_crop_params(height: int, width: int, crop_h: int, crop_w: int, index: int, num_crops: int) -> Box:
    """Test crop ``index`` of ``num_crops``: 1 = centre; 3 = start/centre/end along the long side, centred across.

    For a landscape frame the three crops are left, centre, right; for a portrait (or square) frame, top, centre,
    bottom.
    """
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} does not fit a {height}x{width} frame")
    if num_crops not in (1, 3) or not 0 <= index < num_crops:
        raise ValueError(f"crop index {index} invalid for num_crops {num_crops} (1 or 3)")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if num_crops == 3 and index != 1:
        at_end = index == 2
        if width > height:
            left = width - crop_w if at_end else 0
        else:
            top = height - crop_h if at_end else 0
    return top, left, crop_h, crop_w


class VideoTransform:
    """uint8 frames ``(T, H, W, C)`` -> normalised float32 clip ``(C, T, H, W)`` of the backbone's input size."""

    def __init__(self, pre: Preprocessing, config: VideoTransformConfig | None = None) -> None:
        if pre.input_size[0] != 3:
            raise ValueError(f"video transforms produce RGB (3 channels), but input_size is {pre.input_size}")
        self.pre = pre
        self.config = config or VideoTransformConfig()
        self.size = pre.image_size  # (H, W)
        self.interpolation = InterpolationMode(pre.interpolation)
        self.short_side = self.config.test_short_side or min(self.size)
        self.normalize = normalize_transform(pre)

    def _finish(self, video: torch.Tensor) -> torch.Tensor:
        video = self.normalize(video)  # (T, C, H, W) float32
        return video.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)

    @staticmethod
    def _to_tchw(frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames shaped (T, H, W, 3), got {tuple(frames.shape)}")
        return frames.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)

    def train(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Multi-scale crop, resize to the input size, optional flip, normalise; one draw for the whole clip."""
        video = self._to_tchw(frames)
        top, left, crop_h, crop_w = multi_scale_crop_params(
            video.shape[-2],
            video.shape[-1],
            self.config.scales,
            max_distort=self.config.max_distort,
            fixed_offsets=self.config.fixed_offsets,
            generator=generator,
        )
        video = F.crop(video, top, left, crop_h, crop_w)  # (T, C, crop_h, crop_w)
        video = F.resize(video, list(self.size), interpolation=self.interpolation, antialias=True)
        if self.config.flip and torch.rand(1, generator=generator).item() < 0.5:
            video = F.horizontal_flip(video)
        return self._finish(video)

    def resize_short_side(self, frames: torch.Tensor) -> torch.Tensor:
        """``(T, C, H, W)`` resized so that its short side is ``short_side`` (aspect ratio kept)."""
        height, width = frames.shape[-2:]
        scale = self.short_side / min(height, width)
        new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
        if new_size == [height, width]:
            return frames
        return F.resize(frames, new_size, interpolation=self.interpolation, antialias=True)

    def test(self, frames: torch.Tensor, crop_index: int = 0, num_crops: int = 1) -> torch.Tensor:
        """Short-side resize, then crop ``crop_index`` of ``num_crops`` (see :func:`spatial_crop_params`)."""
        return self.test_crops(frames, [crop_index], num_crops)[0]

    def test_crops(self, frames: torch.Tensor, crop_indices: Sequence[int], num_crops: int) -> list[torch.Tensor]:
        """The test crops ``crop_indices`` of ``num_crops`` of one clip, in that order: the clip is resized once and
        every crop is cut from the resized clip, so each equals ``test(frames, index, num_crops)``."""
        video = self.resize_short_side(self._to_tchw(frames))  # (T, C, H', W')
        height, width = video.shape[-2:]
        boxes = [spatial_crop_params(height, width, *self.size, index, num_crops) for index in crop_indices]
        return [self._finish(F.crop(video, *box)) for box in boxes]

    def __call__(
        self,
        frames: torch.Tensor,
        *,
        train: bool,
        crop_index: int = 0,
        num_crops: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.train(frames, generator) if train else self.test(frames, crop_index, num_crops)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, short_side={self.short_side}, config={self.config})"
