"""Stage 2 of the video pipeline: decoding selected frames of tiny real video files (codecs, seeking, variable
frame rate, lying headers, short streams) and the errors bad files raise."""

from __future__ import annotations

import struct

import pytest
import torch
from tests.video_files import CODECS, H, W, bad_video, frame_ids

from adaptformer.data.video import (
    VideoDecodeError,
    VideoInfo,
    count_frames_by_decoding,
    decode_clip,
    probe_video,
)


@pytest.mark.parametrize("suffix", list(CODECS))
def test_decode_returns_requested_frames(videos, suffix):
    info = probe_video(videos[suffix])
    assert info.num_frames == 24 and info.counted_by == "packets"
    clip = decode_clip(videos[suffix], [3, 5, 5, 17, 23, 0], info)
    assert clip.frames.shape == (6, H, W, 3) and clip.frames.dtype == torch.uint8
    assert frame_ids(clip.frames) == [3, 5, 5, 17, 23, 0]


def test_seek_decodes_only_the_needed_gop(videos):
    clip = decode_clip(videos["long"], [17, 21, 25])  # key frames every 8: decode 16..25
    assert frame_ids(clip.frames) == [17, 21, 25]
    assert clip.used_seek and clip.num_frames_decoded == 10


def test_variable_frame_rate_is_indexed_by_frame_order(videos):
    info = probe_video(videos["vfr"])
    assert info.num_frames == 24
    assert frame_ids(decode_clip(videos["vfr"], [2, 3, 9, 11, 12, 23], info).frames) == [2, 3, 9, 11, 12, 23]


@pytest.mark.parametrize("claimed", [0, 5, 999])
def test_avi_header_frame_count_is_not_trusted(videos, tmp_path, claimed):
    data = bytearray(videos["avi"].read_bytes())  # forge the AVI headers' frame counts
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, claimed)  # avih.dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, claimed)  # strh.dwLength -> stream.frames
    forged = tmp_path / "forged.avi"
    forged.write_bytes(bytes(data))
    info = probe_video(forged)
    assert info.header_frames == claimed and info.num_frames == 24
    assert count_frames_by_decoding(forged) == 24 and probe_video(forged, exact=True).counted_by == "decoding"
    assert frame_ids(decode_clip(forged, [0, 12, 23], info).frames) == [0, 12, 23]


def test_stream_shorter_than_probe_repeats_last_frame(videos):
    overstated = VideoInfo(videos["mp4"], 40, H, W, None, 40)  # as if the packets promised 40 frames
    clip = decode_clip(videos["mp4"], [20, 30, 39], overstated)
    assert clip.end_of_stream == 24 and frame_ids(clip.frames) == [20, 23, 23]


BAD_KINDS = {
    "corrupt": "cannot open",
    "truncated": "cannot open",
    "empty": "empty",
    "zero_frames": "no frames",
    "no_video": "cannot open",
    "missing": "not found",
}


@pytest.mark.parametrize(("kind", "reason"), list(BAD_KINDS.items()))
def test_bad_videos_raise_naming_the_file(videos, tmp_path, kind, reason):
    path = bad_video(kind, tmp_path, videos["mp4"])
    with pytest.raises(VideoDecodeError, match=reason) as err:
        decode_clip(path, [0])
    assert str(path) in str(err.value) and err.value.path == path
