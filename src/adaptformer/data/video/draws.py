"""Random draws shared by the video pipeline's stages: which frames a training clip starts at (:mod:`.sampling`) and
where its crop sits (:mod:`.transforms`), both from the same optional seeded generator so a sample's draws repeat."""

from __future__ import annotations

import torch


def randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high], both ends included (as :func:`random.randint`); ``generator`` None draws from
    torch's global generator."""
    return int(torch.randint(high + 1, (1,), generator=generator).item())
