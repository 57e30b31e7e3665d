"""Decoding selected frames of a video file with PyAV (stage 2 of the video pipeline).

A frame is addressed by its position in presentation order (frame 0 is the first frame shown), never by
``timestamp * fps``: that guess breaks on variable-frame-rate files. The header's frame count (``stream.frames``)
is not trusted either; it is 0 for WebM/MKV and can be plain wrong in AVI headers. Instead :func:`probe_video`
demuxes the file once (reading packets, no decoding, cheap) and records every video packet's timestamp; sorted,
these give the number of frames and the timestamp of frame ``i``. With that table :func:`decode_clip` seeks to the
key frame before the first requested frame and decodes only up to the last one. Without a usable table (missing or
duplicate timestamps), or if a seek lands after the requested frame, it decodes sequentially from the start.

If the stream ends before a requested index (the packet count overstated the frames), the missing indices repeat the
last decoded frame, the same rule the sampler uses for short clips, and :attr:`DecodedClip.num_frames_decoded`
reports the true count so a caller can resample (the dataset does).

Frames are returned as uint8 RGB ``(T, H, W, C)``, the layout every video reader (PyAV, decord, torchvision.io)
produces; the transforms turn it into ``(T, C, H, W)``. Anything that cannot be opened, has no video stream or no
frames raises :class:`VideoDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from adaptformer.data.files import file_error_fields

__all__ = [
    "DecodedClip",
    "VideoDecodeError",
    "VideoInfo",
    "count_frames_by_decoding",
    "decode_clip",
    "probe_video",
]

logger = logging.getLogger(__name__)

# Errors PyAV raises on unreadable input: FFmpegError (InvalidDataError, EOFError, ...), OSError, ValueError.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError)


_MESSAGE = "cannot decode video"  # what VideoDecodeError says, before "PATH: REASON"; one line


class VideoDecodeError(RuntimeError):
    """A video file could not be read: it is missing, corrupt, truncated, empty or has no frames.

    ``VideoDecodeError(path, reason)``. The one-argument form ``VideoDecodeError(text)`` rebuilds the error from a
    text that holds its message, e.g. the traceback with which torch's DataLoader re-raises an error of a worker
    process (it calls the exception type with that text); ``path`` and ``reason`` are read back from the last
    "cannot decode video PATH: REASON" line (a path containing ": " would be cut at its first one). Pickling keeps
    both fields.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        self.path, self.reason = file_error_fields(path, reason, _MESSAGE, "VideoDecodeError")
        super().__init__(f"{_MESSAGE} {self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type[VideoDecodeError], tuple[Path, str]]:
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoInfo:
    """What one demux pass learns about a video.

    Args:
        path: the file.
        num_frames: frames in the video, counted from the packets (or by decoding, see ``counted_by``).
        height: frame height in pixels as declared by the stream.
        width: frame width in pixels as declared by the stream.
        frame_pts: presentation timestamps of frame 0, 1, ... in stream time base; None when they are unusable
            for seeking (a packet had no timestamp, or two shared one).
        header_frames: the count the container header claims (``stream.frames``; 0 when it does not say).
        counted_by: "packets" (demuxed, nothing decoded) or "decoding" (every frame decoded).
    """

    path: Path
    num_frames: int
    height: int
    width: int
    frame_pts: tuple[int, ...] | None
    header_frames: int
    counted_by: str = "packets"


@dataclass(frozen=True)
class DecodedClip:
    """The result of :func:`decode_clip`.

    Args:
        frames: uint8 RGB ``(T, H, W, C)``, one frame per requested index, in the requested order.
        num_frames_decoded: frames the decoder produced (the work done).
        used_seek: whether decoding started from a seek instead of the first frame.
        end_of_stream: the true frame count when the stream ended before the last requested index, else None.
    """

    frames: torch.Tensor
    num_frames_decoded: int
    used_seek: bool
    end_of_stream: int | None


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except _AV_ERRORS as err:
        raise VideoDecodeError(path, f"cannot open container ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def count_frames_by_decoding(path: str | os.PathLike[str]) -> int:
    """Count frames by decoding every one of them: slow, but exact whatever the container claims."""
    path = Path(path)
    with _open(path) as container:
        try:
            return sum(1 for _ in container.decode(container.streams.video[0]))
        except _AV_ERRORS as err:
            raise VideoDecodeError(path, f"decoding failed ({err})") from err


def probe_video(path: str | os.PathLike[str], *, exact: bool = False) -> VideoInfo:
    """Frame count and frame timestamp table of ``path`` from one demux pass (no decoding).

    ``exact=True`` also counts by decoding every frame (:func:`count_frames_by_decoding`) and reports that count;
    use it where the packet count is known to mislead (e.g. packed B-frames in old AVI files).
    Raises :class:`VideoDecodeError` when the file is unreadable or has no frames.
    """
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        header_frames = int(stream.frames or 0)
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        try:
            pts = [p.pts for p in container.demux(stream) if p.size > 0]  # the last, empty packet is a flush marker
        except _AV_ERRORS as err:
            raise VideoDecodeError(path, f"demuxing failed ({err})") from err
    num_frames, counted_by = len(pts), "packets"
    if exact:
        num_frames, counted_by = count_frames_by_decoding(path), "decoding"
    if num_frames == 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    if header_frames and header_frames != num_frames:
        logger.debug("%s: header claims %d frames, %s gives %d", path, header_frames, counted_by, num_frames)
    usable = len(pts) == num_frames and None not in pts and len(set(pts)) == len(pts)
    frame_pts = tuple(sorted(pts)) if usable else None  # type: ignore[type-var]  # no None when usable
    return VideoInfo(path, num_frames, height, width, frame_pts, header_frames, counted_by)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")  # (H, W, C) uint8


def _decode_seeking(
    container: av.container.InputContainer, wanted: set[int], frame_pts: tuple[int, ...]
) -> tuple[dict[int, np.ndarray], int] | None:
    """Seek before the first wanted frame and decode to the last; None if the timestamps do not line up."""
    stream = container.streams.video[0]
    index_of = {p: i for i, p in enumerate(frame_pts)}
    first, last = min(wanted), max(wanted)
    container.seek(frame_pts[first], stream=stream, backward=True, any_frame=False)
    found: dict[int, np.ndarray] = {}
    decoded = 0
    for frame in container.decode(stream):
        decoded += 1
        index = index_of.get(frame.pts) if frame.pts is not None else None
        if index is None or (decoded == 1 and index > first):
            return None  # unknown timestamp, or the seek overshot: fall back to sequential decoding
        if index in wanted:
            found[index] = _to_rgb(frame)
        if index >= last:
            break
    return (found, decoded) if len(found) == len(wanted) else None


def _decode_sequential(
    container: av.container.InputContainer, wanted: set[int]
) -> tuple[dict[int, np.ndarray], int, np.ndarray | None]:
    """Decode from the first frame, numbering frames in decode output order; also return the last frame seen."""
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    previous: av.VideoFrame | None = None
    index = -1
    for index, frame in enumerate(container.decode(container.streams.video[0])):
        previous = frame
        if index in wanted:
            found[index] = _to_rgb(frame)
        if index >= last:
            break
    return found, index + 1, None if previous is None else _to_rgb(previous)


def decode_clip(path: str | os.PathLike[str], indices: Sequence[int], info: VideoInfo | None = None) -> DecodedClip:
    """Decode the frames at ``indices`` (presentation order, repeats allowed) as uint8 ``(T, H, W, C)``.

    ``info`` is the result of :func:`probe_video` for this file (probed here when omitted); its timestamp table
    enables seeking. Indices past the end of the stream repeat the last decoded frame.
    """
    path = Path(path)
    if len(indices) == 0:
        raise ValueError("no frame indices requested")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {list(indices)}")
    info = probe_video(path) if info is None else info
    wanted = set(indices)
    frames: dict[int, np.ndarray] | None = None
    used_seek, end_of_stream = False, None
    try:
        if info.frame_pts is not None and min(wanted) > 0 and max(wanted) < len(info.frame_pts):
            with _open(path) as container:
                seeked = _decode_seeking(container, wanted, info.frame_pts)
            if seeked is not None:
                (frames, decoded), used_seek = seeked, True
            else:
                logger.debug("%s: seeking unusable, decoding sequentially", path)
        if frames is None:
            with _open(path) as container:
                frames, decoded, last_frame = _decode_sequential(container, wanted)
            if decoded == 0 or last_frame is None:
                raise VideoDecodeError(path, "the decoder produced no frames")
            if len(frames) < len(wanted):  # the stream ended early: repeat its last frame
                end_of_stream = decoded
                logger.warning(
                    "%s: stream ends after %d frames (probe counted %d); later indices repeat the last frame",
                    path,
                    decoded,
                    info.num_frames,
                )
                frames.update({i: last_frame for i in wanted if i not in frames})
    except _AV_ERRORS as err:
        raise VideoDecodeError(path, f"decoding failed ({err})") from err
    clip = torch.from_numpy(np.stack([frames[i] for i in indices]))  # (T, H, W, C)
    return DecodedClip(clip, decoded, used_seek, end_of_stream)
