"""Video list files, class folders, the clip dataset (train draws, test views, bad videos) and view aggregation,
on tiny real video files (see ``tests/video_files.py``)."""

from __future__ import annotations

import logging

import pytest
import torch
from tests.video_files import PRE, H, W, bad_video, clip_ids

from adaptformer.data.video import (
    SamplerConfig,
    TestViews,
    VideoClipDataset,
    VideoDecodeError,
    VideoEntry,
    VideoInfo,
    VideoTransform,
    aggregate_views,
    find_class_folders,
    read_video_list,
)


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
    bad = [bad_video(kind, tmp_path, videos["mp4"]) for kind in ("corrupt", "zero_frames")]
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
