"""What one request to ``adaptformer serve`` may cost (:class:`ServeLimits`), and the error a request gets when it asks
for more or is malformed (:class:`Refused`).

Every limit is enforced before the cost is paid: the body's bytes are counted while they stream in (a chunked body
too), a file's pixel count is read from its header before it is decoded, and a body that stalls is cut off after
``body_timeout`` seconds. Peak memory is then about ``max_uploads * max_request_mb`` of request bodies plus
``decode_workers`` full-size decodes of at most ``max_pixels`` pixels each (4 to 15 bytes a pixel while decoding and
converting; a decoded image is turned into the model's input tensors and dropped before it waits for a batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_FILES", "Refused", "ServeLimits", "clipped"]

MAX_FILES = 64
"""Images in one request, at most (the default of :attr:`ServeLimits.max_files`)."""

DEFAULT_MAX_PIXELS = 40_000_000
"""40 megapixels: any ordinary camera or phone photo (a 12-MP phone photo, a 36-MP camera, 7300 x 5470), far more than
any backbone's input (224 x 224 to 518 x 518 pixels, so every accepted photo is scaled down anyway), and at most
about 0.6 GB to decode and convert (15 bytes a pixel for an RGBA PNG; 4 for RGB)."""


class Refused(Exception):
    """A request the service refuses: HTTP ``status``, a one-line ``message`` for the client (never a repr of a
    Python object) and the answer's extra ``headers`` (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def clipped(text: str, limit: int = 80) -> str:
    """A client's ``text`` quoted for a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _limit(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeLimits:
    """Limits of ``adaptformer serve``'s requests (each is a command-line flag of the same name)."""

    max_upload_mb: float = _limit(10.0, "one image file, MB")
    max_request_mb: float = _limit(100.0, "one request's whole body, MB")
    max_files: int = _limit(MAX_FILES, "images in one request")
    max_pixels: int = _limit(
        DEFAULT_MAX_PIXELS, "one image's (or video frame's) width x height, read from its header before decoding"
    )
    body_timeout: float = _limit(30.0, "seconds a request's headers, and then its body, may take to arrive")
    max_uploads: int = _limit(8, "requests reading or decoding their images at once; more wait, then 503")
    decode_workers: int = _limit(2, "threads that decode and preprocess images (full-size decodes at once)")
    max_video_frames: int = _limit(10_000, "one video's frames (video tasks), counted from its packets before decoding")
    max_video_seconds: float = _limit(600.0, "one video's duration, s (video tasks), read before decoding")
    max_queue: int = _limit(128, "classify requests accepted and not yet answered; more get 429 with Retry-After")
    deadline_s: float = _limit(60.0, "seconds from a classify request's headers to its answer; later: 504")

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_request_mb", "body_timeout", "max_video_seconds", "deadline_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_files", "max_pixels", "max_uploads", "decode_workers", "max_video_frames", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    @property
    def file_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)
