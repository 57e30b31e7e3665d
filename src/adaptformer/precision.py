"""Mixed precision: which autocast dtype to run in, and the gradient scaler that fp16 needs.

``auto`` picks bf16 on CPUs (fast with AMX/AVX512-BF16, and no scaler needed) and on GPUs that support it, else fp16
(the paper trained in fp16 autocast), where a ``GradScaler`` guards against gradient underflow. ``PRECISIONS`` and
``DTYPES`` are the one list of precisions the training engine, the speed options and the command line accept.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .validation import check_choice

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)
AUTO = "auto"
PRECISION_CHOICES = (AUTO, *PRECISIONS)


@dataclass(frozen=True)
class Precision:
    """An autocast setting for one device type.

    Args:
        name: "fp32" (no autocast), "bf16" or "fp16".
        device_type: "cpu", "cuda", ... (as ``torch.autocast`` expects).
    """

    name: str
    device_type: str

    def __post_init__(self) -> None:
        check_choice("precision", self.name, PRECISIONS)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> AbstractContextManager[object]:
        """The forward-pass context: autocast to ``dtype``, or nothing for fp32."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (a disabled one passes calls through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turn "auto" into a concrete choice for ``device``; other names are taken as they are."""
    check_choice("precision", name, PRECISION_CHOICES)
    if name == AUTO:
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            name = "bf16"
        else:
            name = "fp32"
        logger.info("precision auto -> %s on %s", name, device.type)
    return Precision(name, device.type)
