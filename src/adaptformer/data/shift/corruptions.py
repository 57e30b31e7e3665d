"""ImageNet-C's common corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019), applied on the fly to the images of any split.

The pixels come from the reference implementation as kept by ``imagecorruptions-imaug`` (the maintained fork of
``imagecorruptions``, the package Michaelis et al. 2019 cut from Hendrycks' code; install ``adaptformer[robustness]``);
nothing here re-implements a corruption. The image is corrupted at the model's input resolution, after the evaluation
resize and centre crop and before normalisation, as ImageNet-C corrupted its 224x224 centre crops; the reference
corruptions need at least 32x32 pixels.

Determinism: every corruption draws its randomness from NumPy's global generator (and glass blur / impulse noise from a
``seed`` argument); each image is corrupted with that generator seeded from (seed, corruption, severity, image index)
and the caller's state restored afterwards, so the same seed gives the same pixels in any process, with any number of
data-loader workers, in any order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from adaptformer.errors import MissingDependencyError

__all__ = [
    "COMMON_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "MIN_SIZE",
    "SEVERITIES",
    "Condition",
    "CorruptedImages",
    "check_corruptions",
    "check_severities",
    "condition_grid",
    "corrupt_image",
    "corruption_seed",
]

# the 15 corruptions of ImageNet-C's benchmark, in its order (noise, blur, weather, digital)
COMMON_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # ImageNet-C's 4 held-out ones
CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32  # the reference corruptions' smallest image side
EXTRA = "robustness"  # the optional dependency group that installs the implementation


def corruption_library() -> ModuleType:
    """The ``imagecorruptions`` package (installed by ``imagecorruptions-imaug``), or a MissingDependencyError that
    names the extra to install."""
    try:
        import imagecorruptions
    except ImportError as e:
        raise MissingDependencyError(
            f"corrupting images needs the imagecorruptions package ({e}); install it with "
            f"pip install 'adaptformer[{EXTRA}]' (imagecorruptions-imaug)"
        ) from e
    return imagecorruptions


def check_corruptions(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`CORRUPTIONS`, without repeats (a ValueError listing the valid ones)."""
    chosen = tuple(names)
    unknown = [n for n in chosen if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"unknown corruption(s) {unknown}; valid: {', '.join(COMMON_CORRUPTIONS)} (ImageNet-C's 15) and "
            f"{', '.join(EXTRA_CORRUPTIONS)} (its 4 extra)"
        )
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"corruptions must be one or more distinct names, got {list(chosen)}")
    return chosen


def check_severities(values: Iterable[Any]) -> tuple[int, ...]:
    """``values`` as a tuple of distinct ints in 1-5 (a ValueError listing the valid ones)."""
    chosen = tuple(values)
    bad = [v for v in chosen if isinstance(v, bool) or v not in SEVERITIES]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"severities must be distinct values among {list(SEVERITIES)}, got {list(chosen)}")
    return tuple(int(v) for v in chosen)


def corruption_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The 32-bit seed image ``index`` is corrupted with: a hash of all four, so conditions draw independently."""
    keys = [int(seed), CORRUPTIONS.index(corruption), int(severity), int(index)]
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def corrupt_image(pixels: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``pixels`` (H, W, 3) uint8 corrupted by the reference ``corruption`` at ``severity``, drawing from ``seed``
    only; returns (H, W, 3) uint8. NumPy's global generator is restored afterwards."""
    library = corruption_library()
    check_corruptions([corruption])
    check_severities([severity])
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {pixels.shape} {pixels.dtype}")
    if min(pixels.shape[:2]) < MIN_SIZE:
        raise ValueError(
            f"the reference corruptions need images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
            f"{pixels.shape[0]}x{pixels.shape[1]} (the model's input size)"
        )
    function = library.corruption_dict[corruption]
    # glass blur (compiled by numba) and impulse noise (scikit-image) draw from their own ``seed`` argument
    own_seed = {"seed": seed} if "seed" in inspect.signature(function).parameters else {}
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        out = library.corrupt(pixels, severity=severity, corruption_name=corruption, **own_seed)
    finally:
        np.random.set_state(state)
    if out.shape != pixels.shape:  # the reference keeps the size; anything else would be silently rescaled
        raise RuntimeError(f"{corruption} at severity {severity} returned {out.shape} for an image of {pixels.shape}")
    return np.require(out, np.uint8, ["C", "W"])  # some come back read-only, which torch.from_numpy warns about


@dataclass(frozen=True)
class Condition:
    """One test condition: the clean images (``corruption`` None) or one corruption at one severity."""

    corruption: str | None = None
    severity: int | None = None

    def __post_init__(self) -> None:
        if (self.corruption is None) != (self.severity is None):
            raise ValueError(f"a condition is clean (neither) or a corruption with a severity, got {self}")
        if self.corruption is not None:
            check_corruptions([self.corruption])
            check_severities([self.severity])

    @property
    def name(self) -> str:
        return "clean" if self.corruption is None else f"{self.corruption}/{self.severity}"


def condition_grid(corruptions: Sequence[str], severities: Sequence[int], clean: bool = True) -> tuple[Condition, ...]:
    """The clean condition (if ``clean``), then every corruption at every severity, in the given orders."""
    grid = tuple(Condition(c, s) for c in check_corruptions(corruptions) for s in check_severities(severities))
    return ((Condition(),) if clean else ()) + grid


class CorruptedImages(Dataset):
    """Every image of ``dataset`` under every condition: item ``k`` is image ``k % n`` under condition ``k // n``,
    as ``(finish(image), label)``.

    ``dataset`` returns ``(image, label, ...)`` with the image a uint8 ``(3, H, W)`` tensor at the model's input
    resolution (the evaluation geometry, not yet normalised); ``finish`` normalises it. One dataset for all conditions
    lets one loader spread the slow corruptions (glass blur) over its workers and the processes of a torchrun.
    """

    def __init__(
        self,
        dataset: Dataset,
        conditions: Sequence[Condition],
        finish: Callable[[torch.Tensor], torch.Tensor],
        seed: int = 0,
    ) -> None:
        if any(c.corruption is not None for c in conditions):
            corruption_library()  # missing: say so now, not in a loader worker
        self.dataset = dataset
        self.conditions = tuple(conditions)
        self.finish = finish
        self.seed = seed
        self.images = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.conditions) * self.images

    def condition_of(self, item: int) -> int:
        return item // self.images

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        which, index = divmod(item, self.images)
        image, label, *_ = self.dataset[index]
        condition = self.conditions[which]
        if condition.corruption is not None:
            pixels = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
            seed = corruption_seed(self.seed, condition.corruption, condition.severity, index)  # type: ignore[arg-type]
            corrupted = corrupt_image(np.ascontiguousarray(pixels), condition.corruption, condition.severity, seed)  # type: ignore[arg-type]
            image = torch.from_numpy(corrupted).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return self.finish(image), label
