"""Video uploads to ``adaptformer serve``: which containers are accepted (judged by their bytes, as images are by
:mod:`adaptformer.data.image.reading`), what a video may cost, checked before any frame is decoded, and its input
tensors for the video tasks.

Accepted containers (:data:`VIDEO_CONTAINERS`): MP4/MOV (an ``ftyp`` box at byte 4), WebM/Matroska (the EBML
signature ``1A 45 DF A3``) and AVI (``RIFF....AVI ``); each is opened with its own FFmpeg demuxer only, so no other
demuxer ever parses a client's bytes. :func:`check_video` reads the container header and demuxes the packets (no
decoding) from memory: a video stream, at most ``max_pixels`` pixels a frame, ``max_video_seconds`` of duration (the
header's, and the packets' timestamps) and ``max_video_frames`` packets (demuxing stops at the first one over).
:func:`prepare_video` then writes the bytes to a private temporary file (the decoder seeks in a file) and cuts each
video task's test views from it, as ``adaptformer predict`` does (:meth:`MultiTaskModel.prepare`), decoding only the
frames those views sample; the file is removed on return. Both run in the server's decode threads, never on the event
loop.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av

from ...data.video import VideoDecodeError
from ..multitask import MultiTaskModel
from .limits import Refused, ServeLimits, clipped

__all__ = ["VIDEO_CONTAINERS", "check_video", "prepare_video", "video_container"]

VIDEO_CONTAINERS = {"mp4": "mov", "webm": "matroska", "avi": "avi"}
"""The accepted containers, by the name this module gives them, and the FFmpeg demuxer that reads each."""
_NAMES = {"mp4": "MP4/MOV", "webm": "WebM/Matroska", "avi": "AVI"}
ACCEPTED_VIDEOS = ", ".join(_NAMES.values())
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError)
_STILL_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
"""ISO base media brands of still images (HEIF, AVIF): an ``ftyp`` box, but not a video this server accepts."""


def video_container(data: bytes) -> str | None:
    """The container ``data`` is by its signature (a key of :data:`VIDEO_CONTAINERS`), or None."""
    if data[4:8] == b"ftyp" and data[8:12] not in _STILL_BRANDS:
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def check_video(data: bytes, name: str, limits: ServeLimits) -> str:
    """Check the video upload ``data`` (file ``name``) against ``limits`` from its header and packets, nothing
    decoded; returns its container. Refused: 400 unreadable or no video stream, 413 over a limit."""
    container_kind = video_container(data)
    if container_kind is None:
        raise Refused(415, f"{clipped(name)}: not a video of an accepted container ({ACCEPTED_VIDEOS})")
    shown = f"{clipped(name)} ({_NAMES[container_kind]})"
    try:
        with av.open(io.BytesIO(data), mode="r", format=VIDEO_CONTAINERS[container_kind]) as container:
            if not container.streams.video:
                raise Refused(400, f"{shown}: the container holds no video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            if width * height > limits.max_pixels:
                raise Refused(413, f"{shown}: frames of {width}x{height} pixels; the limit is {limits.max_pixels}")
            seconds = container.duration / av.time_base if container.duration else 0.0
            if seconds > limits.max_video_seconds:
                raise Refused(413, f"{shown}: {seconds:g} s long; the limit is {limits.max_video_seconds:g} s")
            if stream.frames > limits.max_video_frames:
                raise Refused(413, f"{shown}: {stream.frames} frames; the limit is {limits.max_video_frames}")
            _count_packets(container, stream, shown, limits)
    except _AV_ERRORS as error:
        raise Refused(400, f"{shown}: cannot read the video ({type(error).__name__})") from None
    return container_kind


def _count_packets(container: Any, stream: Any, shown: str, limits: ServeLimits) -> None:
    """Demux (never decode) the video packets, stopping at the first over ``max_video_frames``; the last timestamp
    bounds the duration where the header does not say it."""
    frames, last = 0, None
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush marker
            continue
        frames += 1
        if frames > limits.max_video_frames:
            raise Refused(413, f"{shown}: more than {limits.max_video_frames} frames; the limit is "
                               f"{limits.max_video_frames}")  # fmt: skip
        if packet.pts is not None:
            last = packet.pts if last is None else max(last, packet.pts)
    if frames == 0:
        raise Refused(400, f"{shown}: the video stream has no frames")
    if last is not None and stream.time_base is not None:
        seconds = float(last * stream.time_base)
        if not math.isfinite(seconds) or seconds > limits.max_video_seconds:
            raise Refused(413, f"{shown}: {seconds:g} s long; the limit is {limits.max_video_seconds:g} s")


def prepare_video(model: MultiTaskModel, data: bytes, name: str, tasks: Sequence[str]) -> dict[str, Any]:
    """The video upload ``data`` (checked by :func:`check_video`) as each video task's views ``{task: (V, C, T, H,
    W)}``; a video that cannot be decoded is refused (400) naming the upload, never the temporary file."""
    suffix = "." + (video_container(data) or "video")
    with tempfile.TemporaryDirectory(prefix="adaptformer-serve-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return model.prepare(path, tasks)
        except VideoDecodeError as error:
            reason = error.reason.replace(str(path), "the upload")  # FFmpeg's messages may quote the file
            raise Refused(400, f"{clipped(name)}: cannot decode the video: {reason}") from None
