"""Tiny real video files for the video tests, written with PyAV, and ways to read back which frames a clip holds.

Frame ``i`` of every written video is a solid grey of level ``4 + 8 * i`` (``i < 32``), so a decoded frame names its
own index: ``round((mean - 4) / 8)``, which survives codec error of up to +-3 levels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from adaptformer.preprocessing import Preprocessing

H, W = 48, 64
CODECS = {  # file suffix -> (codec, encoder options); all keep solid greys within +-3 levels
    "mp4": ("libx264", {"qp": "0", "x264-params": "keyint=8:min-keyint=8:scenecut=0"}),
    "avi": ("mpeg4", {"qscale": "1"}),
    "webm": ("libvpx", {"crf": "4", "b": "1M"}),
    "mkv": ("ffv1", {}),
}
PRE = Preprocessing(input_size=(3, H, H), interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_video(path: Path, num_frames: int = 24, pts: list[int] | None = None, size: tuple[int, int] = (H, W)) -> Path:
    """Frame i is solid grey 4 + 8 i; ``pts`` (ms) makes the frame rate variable."""
    codec, options = CODECS[path.suffix[1:]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=options)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 4 + 8 * i, np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_ids(frames: torch.Tensor) -> list[int]:
    """Indices named by uint8 frames (T, H, W, C)."""
    return ((frames.float().mean(dim=(1, 2, 3)) - 4) / 8).round().int().tolist()


def clip_ids(clip: torch.Tensor) -> list[int]:
    """Indices named by a normalised clip (C, T, H, W) made with PRE."""
    levels = (clip * 0.25 + 0.5).mean(dim=(0, 2, 3)) * 255  # (T,)
    return ((levels - 4) / 8).round().int().tolist()


def bad_video(kind: str, directory: Path, good: Path) -> Path:
    path = directory / f"{kind}.mp4"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":  # PyAV writes the mp4 index at the end: half a file has none
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero_frames":
        path = directory / "zero_frames.avi"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height = W, H
            container.start_encoding()  # headers written, no frame
    elif kind == "no_video":
        path.write_text("not a video")
    return path
