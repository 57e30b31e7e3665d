"""Video list files, class folders, the clip dataset (train draws, test views, bad videos) and view aggregation,
on tiny real video files (see ``tests/video_files.py``)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from tests.video_files import PRE, H, W, bad_video, clip_ids

import adaptformer.data.video.datasets as video_datasets
from adaptformer.data.video import (
    SamplerConfig,
    TestViews,
    VideoClipDataset,
    VideoDecodeError,
    VideoEntry,
    VideoInfo,
    VideoTransform,
    aggregate_views,
    decode_clip,
    find_class_folders,
    probe_video,
    read_video_list,
    sample_indices,
)
from adaptformer.engine.loaders import eval_loader


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


def _decoded_per_view(dataset: VideoClipDataset, index: int) -> torch.Tensor:
    """Test view ``index`` as it was made before clips were shared: its own decode, its own resize and crop."""
    video_id, view = dataset.view(index)
    path = dataset.entries[video_id].path
    info = probe_video(path)
    frames = decode_clip(
        path,
        sample_indices(dataset.sampler, info.num_frames, train=False, clip_index=view.clip, num_clips=view.num_clips),
        info,
    ).frames
    return dataset.transform.test(frames, view.crop, view.num_crops)


@pytest.mark.parametrize(("batch_size", "world_size", "batch_views"), [(4, 1, 3), (7, 2, 6), (1, 1, 3)])
def test_test_views_decode_each_clip_once_and_stay_identical(videos, monkeypatch, batch_size, world_size, batch_views):
    entries = [VideoEntry(videos["long"], 1), VideoEntry(videos["mkv"], 0), VideoEntry(videos["avi"], 2)]
    dataset = VideoClipDataset(entries, SamplerConfig("dense", 4, 4), VideoTransform(PRE), "test", TestViews(2, 3))
    expected = [_decoded_per_view(dataset, i) for i in range(len(dataset))]
    decoded: list[str] = []

    def counting_decode(path, indices, info=None):
        decoded.append(Path(path).name)
        return decode_clip(path, indices, info)

    monkeypatch.setattr(video_datasets, "decode_clip", counting_decode)
    got = {}
    for rank in range(world_size):
        loader = eval_loader(dataset, batch_size, 0, torch.device("cpu"), world_size, rank)
        for indices, (clips, labels, ids) in zip(loader.batch_sampler, loader, strict=True):
            assert len(indices) <= batch_views and len(indices) % 3 == 0  # whole clips: all 3 crops together
            for index, clip, label, video_id in zip(indices, clips, labels, ids, strict=True):
                assert (int(label), int(video_id)) == (entries[index // 6].label, index // 6)
                got[index] = clip
    assert sorted(got) == list(range(18))
    assert all(torch.equal(got[i], expected[i]) for i in range(18))  # bit for bit the per-view result
    assert sorted(decoded) == sorted(["long.mp4"] * 2 + ["clip.mkv"] * 2 + ["clip.avi"] * 2)  # 6 clips, 18 views
    decoded.clear()
    assert torch.equal(dataset[4][0], expected[4]) and len(decoded) == 1  # a single item still works alone


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_decode_error_in_a_loader_worker_reaches_the_caller_as_itself(videos, tmp_path, num_workers):
    corrupt = bad_video("corrupt", tmp_path, videos["mp4"])
    entries = [VideoEntry(videos["mp4"], 0), VideoEntry(corrupt, 1)]
    dataset = VideoClipDataset(entries, SamplerConfig("dense", 4, 4), VideoTransform(PRE), "test", TestViews(1, 1))
    with pytest.raises(VideoDecodeError) as err:
        list(eval_loader(dataset, 1, num_workers, torch.device("cpu")))
    assert (err.value.path, err.value.reason.split(" (")[0]) == (corrupt, "cannot open container")
    assert str(err.value).startswith(f"cannot decode video {corrupt}: cannot open container")


def test_video_decode_error_survives_pickling_and_rebuilding_from_its_text(tmp_path):
    error = VideoDecodeError(tmp_path / "a b.mp4", "decoding failed (Invalid data: x)")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is VideoDecodeError and str(again) == str(error)
    assert (again.path, again.reason) == (error.path, error.reason)
    rebuilt = VideoDecodeError(f"Caught VideoDecodeError in DataLoader worker process 0.\nTraceback ...\n{error}\n")
    assert (rebuilt.path, rebuilt.reason) == (error.path, error.reason)
    with pytest.raises(ValueError, match="needs \\(path, reason\\)"):
        VideoDecodeError("some other text")
