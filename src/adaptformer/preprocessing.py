"""Input preprocessing of a backbone: normalisation and input size, taken from its pretrained configuration.

The original AdaptFormer scripts picked the normalisation from the checkpoint's file name; here it always comes from
the backbone's timm pretrained configuration (``model.pretrained_cfg``), so a model and its data agree by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch.nn as nn

from .validation import check_choice, from_mapping

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone.

    Args:
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting the mean.
        input_size: (channels, height, width) the backbone expects.
        interpolation: resampling used when resizing ("bicubic", "bilinear" or "nearest").
        crop_pct: evaluation centre-crop fraction: images are resized to input/crop_pct, then centre-cropped.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(self.input_size) != 3 or min(self.input_size) <= 0:
            raise ValueError(f"input_size must be (channels, height, width) > 0, got {self.input_size}")
        check_choice("interpolation", self.interpolation, _INTERPOLATIONS)
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.input_size[1], self.input_size[2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return from_mapping(cls, data, "preprocessing")

    @classmethod
    def from_model(cls, model: nn.Module) -> Preprocessing:
        """Read the preprocessing from a timm model's pretrained configuration (defaults where it has none)."""
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        default = cls()
        input_size = tuple(cfg.get("input_size", default.input_size))
        # A model built with another img_size than its pretrained config (e.g. img_size=384) takes that size.
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if isinstance(built, tuple | list) and len(built) == 2 and all(isinstance(v, int) for v in built):
            input_size = (input_size[0], *built)
        return cls(
            mean=tuple(cfg.get("mean", default.mean)),
            std=tuple(cfg.get("std", default.std)),
            input_size=input_size,
            interpolation=cfg.get("interpolation", default.interpolation) or default.interpolation,
            crop_pct=float(cfg.get("crop_pct", default.crop_pct) or default.crop_pct),
        )


def clip_frames(model: nn.Module) -> int | None:
    """Frames per clip a video backbone takes (its configuration records them); None for image backbones."""
    frames = (getattr(model, "pretrained_cfg", None) or {}).get("num_frames")
    return int(frames) if frames is not None else None
