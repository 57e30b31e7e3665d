"""The video pipeline (sampling, decoding, transforms, datasets, preparers, synthetic data) on tiny real video files.

Frame ``i`` of every written video is a solid grey of level ``4 + 8 * i`` (``i < 32``), so a decoded frame names its
own index: ``round((mean - 4) / 8)``, which survives codec error of up to +-3 levels.
"""

from __future__ import annotations

import json
import logging
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from adaptformer.data.video import (
    SamplerConfig,
    SyntheticMotionDataset,
    TestViews,
    VideoClipDataset,
    VideoDecodeError,
    VideoEntry,
    VideoInfo,
    VideoTransform,
    VideoTransformConfig,
    aggregate_views,
    count_frames_by_decoding,
    decode_clip,
    dense_indices,
    find_class_folders,
    multi_scale_crop_params,
    prepare_hmdb51,
    prepare_ssv2,
    probe_video,
    read_video_list,
    sample_indices,
    segment_indices,
    spatial_crop_params,
)
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


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {suffix: write_video(root / f"clip.{suffix}") for suffix in CODECS}
    out["long"] = write_video(root / "long.mp4", num_frames=32)
    vfr = [0, 10, 20, 100, 110, 400, 410, 420, 1000, 1003, 1006, 2000] + [2100 + 100 * i for i in range(12)]
    out["vfr"] = write_video(root / "vfr.mp4", pts=vfr)
    out["short"] = write_video(root / "short.mp4", num_frames=5)
    return out


# ---- sampling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_video_frames", "num_frames", "clip_index", "num_clips", "expected"),
    [
        (16, 4, 0, 1, [2, 6, 10, 14]),  # segment centres
        (10, 4, 0, 1, [1, 3, 6, 8]),  # fractional segments of 2.5 frames
        (16, 4, 1, 2, [3, 7, 11, 15]),  # second of two temporal clips: 3/4 into each segment
        (3, 8, 0, 1, [0, 0, 0, 1, 1, 2, 2, 2]),  # short clip: frames repeat in order
    ],
)
def test_segment_eval_indices(num_video_frames, num_frames, clip_index, num_clips, expected):
    kwargs = {"train": False, "clip_index": clip_index, "num_clips": num_clips}
    assert segment_indices(num_video_frames, num_frames, **kwargs) == expected


def test_segment_train_draws_one_frame_per_segment_reproducibly():
    draws = [segment_indices(16, 4, train=True, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(4 * k <= d[k] <= 4 * k + 3 for d in draws for k in range(4))
    assert {d[0] for d in draws} == {0, 1, 2, 3}  # every frame of a segment can be drawn
    again = segment_indices(16, 4, train=True, generator=torch.Generator().manual_seed(7))
    assert again == draws[7]


@pytest.mark.parametrize(
    ("num_video_frames", "clip_index", "num_clips", "expected"),
    [
        (64, 0, 1, [16, 20, 24, 28, 32, 36, 40, 44]),  # centre window of 8 x 4 frames
        (64, 0, 4, list(range(0, 32, 4))),
        (64, 1, 4, list(range(10, 42, 4))),  # starts 0, 10, 21, 32: evenly spaced
        (64, 3, 4, list(range(32, 64, 4))),
        (20, 0, 1, [0, 4, 8, 12, 16, 19, 19, 19]),  # short clip: clamped to the last frame
    ],
)
def test_dense_eval_indices(num_video_frames, clip_index, num_clips, expected):
    got = dense_indices(num_video_frames, 8, 4, train=False, clip_index=clip_index, num_clips=num_clips)
    assert got == expected


def test_dense_train_random_start_with_fixed_stride():
    starts = set()
    for seed in range(30):
        got = dense_indices(40, 8, 4, train=True, generator=torch.Generator().manual_seed(seed))
        assert got == list(range(got[0], got[0] + 32, 4))
        starts.add(got[0])
    assert max(starts) <= 8 and len(starts) > 3


@pytest.mark.parametrize("strategy", ["segment", "dense"])
@pytest.mark.parametrize("train", [True, False])
def test_short_videos_stay_in_range_and_ordered(strategy, train):
    config = SamplerConfig(strategy=strategy, num_frames=8, stride=4)
    for n in range(1, 40):
        got = sample_indices(config, n, train=train, generator=torch.Generator().manual_seed(n))
        assert len(got) == 8 and got == sorted(got) and got[0] >= 0 and got[-1] <= n - 1
        if strategy == "dense" and n <= 29:  # the window (8 x 4) overruns the video: the tail repeats the last frame
            assert got[-1] == n - 1


def test_test_views_enumerate_clip_major():
    views = list(TestViews(4, 3))
    assert [(v.clip, v.crop) for v in views] == [(c, s) for c in range(4) for s in range(3)]
    assert len(TestViews(4, 3)) == 12 and all((v.num_clips, v.num_crops) == (4, 3) for v in views)


# ---- decoding ---------------------------------------------------------------------------------------------------


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


def _bad_video(kind: str, directory: Path, good: Path) -> Path:
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
    path = _bad_video(kind, tmp_path, videos["mp4"])
    with pytest.raises(VideoDecodeError, match=reason) as err:
        decode_clip(path, [0])
    assert str(path) in str(err.value) and err.value.path == path


# ---- transforms -------------------------------------------------------------------------------------------------


def _textured_video(num_frames: int = 6) -> torch.Tensor:
    """(T, H, W, C) uint8: one random texture, brightened by 8 per frame."""
    base = torch.randint(0, 150, (1, H, W, 3), generator=torch.Generator().manual_seed(0))
    return (base + 8 * torch.arange(num_frames).view(-1, 1, 1, 1)).to(torch.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_train_crop_is_the_same_in_every_frame(seed):
    clip = VideoTransform(PRE).train(_textured_video(), torch.Generator().manual_seed(seed))
    assert clip.shape == (3, 6, H, H) and clip.dtype == torch.float32
    pixels = (clip * 0.25 + 0.5) * 255  # (C, T, H, W) back to levels
    shift = pixels - pixels[:, :1]  # equal crops: frame t differs from frame 0 by exactly 8 t everywhere
    expected = 8 * torch.arange(6.0).view(1, -1, 1, 1).expand_as(shift)
    assert torch.allclose(shift, expected, atol=1.01)


@pytest.mark.parametrize("seed", range(10))
def test_multi_scale_crop_box_uses_scales_and_fixed_offsets(seed):
    top, left, h, w = multi_scale_crop_params(
        120, 160, (1.0, 0.875, 0.75, 0.66), generator=torch.Generator().manual_seed(seed)
    )
    sides = [120, 105, 90, 79]
    assert h in sides and w in sides and abs(sides.index(h) - sides.index(w)) <= 1
    assert (top, left) in {(0, 0), (0, 160 - w), (120 - h, 0), (120 - h, 160 - w), ((120 - h) // 2, (160 - w) // 2)}


@pytest.mark.parametrize(
    ("height", "width", "num_crops", "expected"),
    [
        (48, 64, 1, [(0, 8)]),
        (48, 64, 3, [(0, 0), (0, 8), (0, 16)]),  # landscape: left, centre, right
        (64, 48, 3, [(0, 0), (8, 0), (16, 0)]),  # portrait: top, centre, bottom
    ],
)
def test_spatial_crop_positions(height, width, num_crops, expected):
    got = [spatial_crop_params(height, width, 48, 48, i, num_crops)[:2] for i in range(num_crops)]
    assert got == expected


def test_test_transform_three_crops_cut_left_centre_right():
    columns = (torch.arange(W) * 3).to(torch.uint8).view(1, 1, W, 1).expand(2, H, W, 3)  # level = 3 x column
    transform = VideoTransform(PRE)
    first_columns = [((transform.test(columns, i, 3) * 0.25 + 0.5) * 255)[0, 0, 0, 0].round() for i in range(3)]
    assert [int(v) for v in first_columns] == [0, 24, 48]


@pytest.mark.parametrize(("flip", "can_flip"), [(False, False), (True, True)])
def test_flip_is_configurable(flip, can_flip):
    ramp = (torch.arange(W) * 3).to(torch.uint8).view(1, 1, W, 1).expand(2, H, W, 3)
    transform = VideoTransform(PRE, VideoTransformConfig(flip=flip))
    clips = [transform.train(ramp, torch.Generator().manual_seed(s)) for s in range(20)]  # (C, T, H, W) each
    flipped = [bool(clip[0, 0, 0, 0] > clip[0, 0, 0, -1]) for clip in clips]  # the ramp now decreases
    assert any(flipped) == can_flip
    assert all(f == bool(c[0, -1, 0, 0] > c[0, -1, 0, -1]) for f, c in zip(flipped, clips, strict=True))  # all frames


def test_normalisation_uses_the_preprocessing_mean_and_std():
    pre = Preprocessing(input_size=(3, H, H), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    clip = VideoTransform(pre).test(torch.full((2, H, W, 3), 255, dtype=torch.uint8))
    assert torch.allclose(clip[:, 0, 0, 0], torch.tensor([(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.125]))


# ---- list files, datasets, aggregation --------------------------------------------------------------------------


def test_read_video_list_is_tolerant(tmp_path):
    (tmp_path / "list.txt").write_text(f"a.mp4   0\n\n  sub/b.avi\t1   \n{tmp_path / 'abs.webm'} 2\n   \n")
    entries = read_video_list(tmp_path / "list.txt", data_dir=tmp_path / "data", num_classes=3)
    assert entries == [
        VideoEntry(tmp_path / "data" / "a.mp4", 0),
        VideoEntry(tmp_path / "data" / "sub" / "b.avi", 1),
        VideoEntry(tmp_path / "abs.webm", 2),
    ]
    assert read_video_list(tmp_path / "list.txt")[0].path == tmp_path / "a.mp4"  # default: the list's folder


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ("c.mp4", "line 3: expected 'path label'"),
        ("c.mp4 1 2", "line 3: expected 'path label'"),
        ("c.mp4 one", "line 3: expected 'path label'"),
        ("c.mp4 3", "line 3: label 3 is outside"),
        ("c.mp4 -1", "line 3: label -1 is outside"),
    ],
)
def test_read_video_list_rejects_bad_lines(tmp_path, bad_line, match):
    (tmp_path / "list.txt").write_text(f"a.mp4 0\n\n{bad_line}\n")
    with pytest.raises(ValueError, match=match) as err:
        read_video_list(tmp_path / "list.txt", num_classes=3)
    assert "list.txt" in str(err.value)


def test_find_class_folders(tmp_path):
    for name in ("run/b.mp4", "run/a.AVI", "jump/c.webm", "jump/notes.txt", "sit/.keep"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    entries, classes = find_class_folders(tmp_path)
    assert classes == ["jump", "run", "sit"]
    assert [(e.path.name, e.label) for e in entries] == [("c.webm", 0), ("a.AVI", 1), ("b.mp4", 1)]


def test_test_mode_yields_every_view_of_every_video(videos):
    entries = [VideoEntry(videos["long"], 3), VideoEntry(videos["mkv"], 1)]
    sampler = SamplerConfig("dense", num_frames=4, stride=4)
    dataset = VideoClipDataset(entries, sampler, VideoTransform(PRE), "test", TestViews(2, 3))
    items = [dataset[i] for i in range(len(dataset))]
    assert len(dataset) == 12 and [i[2] for i in items] == [0] * 6 + [1] * 6 and [i[1] for i in items[:6]] == [3] * 6
    assert items[0][0].shape == (3, 4, H, H)
    assert clip_ids(items[0][0]) == [0, 4, 8, 12] and clip_ids(items[3][0]) == [16, 20, 24, 28]  # 32 frames
    assert clip_ids(items[9][0]) == [8, 12, 16, 20]  # 24 frames: second window starts at 8


def test_dataset_resamples_when_the_stream_is_shorter_than_probed(videos):
    dataset = VideoClipDataset(
        [VideoEntry(videos["mp4"], 0)], SamplerConfig("dense", 4, 4), VideoTransform(PRE), "test", TestViews(1, 1)
    )
    dataset._infos[0] = VideoInfo(videos["mp4"], 80, H, W, None, 80)  # overstated count: centre would be 32..44
    assert clip_ids(dataset[0][0]) == [4, 8, 12, 16]  # resampled with the 24 frames that exist
    assert dataset._infos[0].num_frames == 24


def test_train_mode_segment_sampling_is_seeded(videos):
    dataset = VideoClipDataset(
        [VideoEntry(videos["webm"], 2)], SamplerConfig("segment", 4), VideoTransform(PRE), seed=5
    )
    clip, label, video_id = dataset[0]
    assert len(dataset) == 1 and (label, video_id) == (2, 0)
    assert torch.equal(clip, dataset[0][0])
    assert all(6 * k <= i <= 6 * k + 5 for k, i in enumerate(clip_ids(clip)))  # one frame from each segment


def test_bad_videos_raise_by_default_and_are_skipped_and_counted_on_request(videos, tmp_path, caplog):
    bad = [_bad_video(kind, tmp_path, videos["mp4"]) for kind in ("corrupt", "zero_frames")]
    entries = [VideoEntry(videos["mp4"], 0), VideoEntry(bad[0], 1), VideoEntry(videos["avi"], 0), VideoEntry(bad[1], 1)]
    args = (SamplerConfig("dense", 4, 4), VideoTransform(PRE), "test", TestViews(1, 1))
    strict = VideoClipDataset(entries, *args)
    with pytest.raises(VideoDecodeError, match=r"corrupt\.mp4"):
        strict[1]
    with caplog.at_level(logging.WARNING):
        lenient = VideoClipDataset(entries, *args, skip_bad_videos=True)
    assert lenient.skipped == 2 and len(lenient) == 2 and {p for p, _ in lenient.skipped_files} == set(bad)
    assert "skipped 2 of 4 videos" in caplog.text
    assert [lenient[i][1] for i in range(2)] == [0, 0]  # only the good videos are ever predicted


def test_aggregate_views_averages_each_video_once():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0], [2.0, 0.0], [7.0, 7.0]])
    video_ids = torch.tensor([2, 0, 2, 7, 0, 0])
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    result = aggregate_views(logits, labels, video_ids)
    assert result.video_ids.tolist() == [0, 2, 7] and result.labels.tolist() == [0, 1, 1]
    assert torch.allclose(result.logits, torch.tensor([[4.0, 3.0], [0.5, 2.0], [5.0, 5.0]]))
    views = torch.tensor([0, 0, 1, 0, 1, 1])  # the last row repeats video 0's view 1: it must not weigh double
    deduped = aggregate_views(logits, labels, video_ids, views)
    assert torch.allclose(deduped.logits[0], torch.tensor([2.5, 1.0]))
    with pytest.raises(ValueError, match="different labels"):
        aggregate_views(logits, torch.tensor([1, 0, 0, 1, 0, 0]), video_ids)


# ---- preparers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "something-something-v2-"])
def test_prepare_ssv2(tmp_path, prefix):
    root = tmp_path / "ssv2"
    (root / "20bn-something-something-v2").mkdir(parents=True)
    labels = {"Holding something next to something": "0", "Pushing something from left to right": "1"}
    train = [
        {"id": "11", "template": "Pushing [something] from left to right", "label": "pushing a cup"},
        {"id": "12", "template": "Holding [something] next to [something]"},
    ]
    val = [{"id": "21", "template": "Holding [something] next to [something]"}]
    for name, data in (("labels", labels), ("train", train), ("validation", val)):
        (root / f"{prefix}{name}.json").write_text(json.dumps(data))
    for video_id in ("11", "12", "21"):
        (root / "20bn-something-something-v2" / f"{video_id}.webm").touch()
    prepared = prepare_ssv2(root, tmp_path / "lists")
    assert prepared.classes == list(labels) and prepared.counts == {"train": 2, "test": 1}
    got = read_video_list(prepared.lists["train"], num_classes=2)
    assert [(e.path.name, e.label) for e in got] == [("11.webm", 1), ("12.webm", 0)] and got[0].path.is_file()
    assert [(e.path.name, e.label) for e in read_video_list(tmp_path / "lists" / "test.txt")] == [("21.webm", 0)]
    assert (tmp_path / "lists" / "classes.txt").read_text().splitlines() == list(labels)


def test_prepare_ssv2_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected Something-Something v2 layout"):
        prepare_ssv2(tmp_path, tmp_path / "lists")


def _hmdb_tree(root: Path) -> None:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    lines = {"ride_bike": "r1.avi 1 \nr2.avi 2 \nr3.avi 0 \nr4.avi 1 \n", "brush_hair": "b1.avi 2\nb2.avi 1\n\n"}
    for name, text in lines.items():
        (splits / f"{name}_test_split1.txt").write_text(text)
        (splits / f"{name}_test_split2.txt").write_text("")
        (root / "videos" / name).mkdir(parents=True)
        for line in text.split("\n"):
            if line.strip():
                (root / "videos" / name / line.split()[0]).touch()


def test_prepare_hmdb51(tmp_path):
    _hmdb_tree(tmp_path / "hmdb")
    prepared = prepare_hmdb51(tmp_path / "hmdb", tmp_path / "lists", val_fraction=0.5)
    assert prepared.classes == ["brush_hair", "ride_bike"] and prepared.counts == {"train": 2, "test": 2, "val": 1}
    read = {name: [(e.path.name, e.label) for e in read_video_list(path)] for name, path in prepared.lists.items()}
    assert read["test"] == [("b1.avi", 0), ("r2.avi", 1)]  # flag 2; r3 (flag 0) is unused
    assert sorted(read["train"] + read["val"]) == [("b2.avi", 0), ("r1.avi", 1), ("r4.avi", 1)]
    assert read["val"][0][1] == 1  # held out from the class with two training videos


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("no_splits", FileNotFoundError, "expected HMDB51 layout"),
        ("bad_line", ValueError, r"ride_bike_test_split1.txt, line 2"),
        ("missing_video", FileNotFoundError, "1 videos are missing"),
    ],
)
def test_prepare_hmdb51_errors(tmp_path, damage, error, match):
    _hmdb_tree(tmp_path)
    if damage == "no_splits":
        for f in (tmp_path / "testTrainMulti_7030_splits").iterdir():
            f.unlink()
        (tmp_path / "testTrainMulti_7030_splits").rmdir()
    elif damage == "bad_line":
        (tmp_path / "testTrainMulti_7030_splits" / "ride_bike_test_split1.txt").write_text("r1.avi 1\nr2.avi train\n")
    else:
        (tmp_path / "videos" / "ride_bike" / "r4.avi").unlink()
    with pytest.raises(error, match=match):
        prepare_hmdb51(tmp_path, tmp_path / "lists")


# ---- synthetic data ---------------------------------------------------------------------------------------------


def test_synthetic_dataset_is_seeded_and_shaped_like_file_datasets():
    pre = Preprocessing(input_size=(3, 32, 32))
    first, second = SyntheticMotionDataset(8, 4, 6, pre, seed=3), SyntheticMotionDataset(8, 4, 6, pre, seed=3)
    clip, label, index = first[5]
    assert clip.shape == (3, 6, 32, 32) and clip.dtype == torch.float32 and (label, index) == (1, 5)
    assert torch.equal(clip, second[5][0]) and not torch.equal(clip, SyntheticMotionDataset(8, 4, 6, pre, seed=4)[5][0])
    assert torch.equal(clip, VideoTransform(pre).test(first.frames(5)))  # the file datasets' normalisation
    assert [first[i][1] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_synthetic_class_is_only_in_the_motion():
    dataset = SyntheticMotionDataset(16, 8, 8, Preprocessing(input_size=(3, 32, 32)), seed=0)
    for group in range(2):
        clips = [dataset.frames(group * 8 + k) for k in range(8)]  # one group: same draws, 8 directions
        assert all(torch.equal(c[0], clips[0][0]) for c in clips)  # identical first frames
        last_frames = {c[-1].numpy().tobytes() for c in clips}
        assert len(last_frames) == 8  # the directions separate once the shape moves
