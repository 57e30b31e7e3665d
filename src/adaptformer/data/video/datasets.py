"""Video clip datasets: list files, class folders, and a dataset that glues sampling, decoding and transforms.

An item is ``(clip, label, video_id)``: ``clip`` float32 ``(C, T, H, W)``, ``label`` the class index and
``video_id`` the index of the video in ``entries``. Training yields one random clip per video. Testing yields one
item per (video, view) for a :class:`TestViews` grid (paper: 4 temporal clips x 3 spatial crops), video-major; the
logits of a video's views are averaged by :func:`aggregate_views`, which counts every video exactly once (the
original code padded distributed evaluation with duplicates and scored undecodable videos as correct). The spatial
crops of one temporal clip are consecutive items; fetched together (``__getitems__``, as DataLoader fetches a
batch), they are cut from one decode of the clip, and the engine's evaluation loader never splits them across
batches or processes (``views_per_clip``), so every test clip is decoded once.

Bad videos: by default any undecodable file raises :class:`VideoDecodeError` naming it. With
``skip_bad_videos=True`` the constructor calls :meth:`VideoClipDataset.scan`, which probes every file up front
(demux + decode of the first frame) and drops the ones that fail; they are listed in ``skipped_files``, counted in
``skipped`` and reported in one warning. They are never predicted, so they never count as right or wrong. A file
that passes the scan but fails later still raises: silently replacing a test item would bias the score.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch.utils.data import Dataset

from adaptformer.data.files import DatasetFileError, read_text
from adaptformer.data.video.decode import VideoDecodeError, VideoInfo, decode_clip, probe_video
from adaptformer.data.video.sampling import SamplerConfig, TestViews, View, sample_indices
from adaptformer.data.video.transforms import VideoTransform
from adaptformer.files import atomic_write_text, make_folder

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoClipDataset",
    "VideoEntry",
    "VideoPredictions",
    "aggregate_views",
    "find_class_folders",
    "read_video_list",
    "scan_videos",
    "write_video_list",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video file."""

    path: Path
    label: int


def read_video_list(
    list_file: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    classes_from: str | None = None,
) -> list[VideoEntry]:
    """Parse a VideoMAE list file: one ``path label`` line per clip, whitespace-separated, no header.

    Runs of spaces or tabs and trailing whitespace are accepted, blank lines ignored. Relative paths are resolved
    against ``data_dir`` (default: the list file's folder); paths cannot contain spaces. A line without exactly two
    fields or with a non-integer label raises :class:`DatasetFileError` (a ValueError) naming the file and line number;
    so does a label outside ``[0, num_classes)`` (or negative, when ``num_classes`` is None), and binary content.
    ``classes_from`` (e.g. a classes.txt) says where ``num_classes`` came from, in that message.
    """
    list_file = Path(list_file)
    base = Path(data_dir) if data_dir is not None else list_file.parent
    entries = []
    for number, line in enumerate(read_text(list_file).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file}, line {number}"
        try:
            label = int(fields[1]) if len(fields) == 2 else None
        except ValueError:
            label = None
        if label is None:
            raise DatasetFileError(f"{where}: expected 'path label' (label an integer), got {line.strip()!r}")
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            source = f" (the classes of {classes_from})" if classes_from else ""
            raise DatasetFileError(f"{where}: label {label} is outside {bound}{source}")
        entries.append(VideoEntry(base / fields[0], label))  # an absolute fields[0] replaces base
    return entries


def write_video_list(entries: Sequence[VideoEntry], list_file: str | os.PathLike[str]) -> Path:
    """Write ``entries`` as a VideoMAE list file (``path label`` per line); returns the file's path."""
    list_file = Path(list_file)
    for entry in entries:
        if any(c.isspace() for c in str(entry.path)):
            raise ValueError(f"video path {entry.path} contains whitespace, which list files cannot hold")
    make_folder(list_file.parent)
    atomic_write_text(list_file, "".join(f"{e.path} {e.label}\n" for e in entries))
    return list_file


def find_class_folders(
    root: str | os.PathLike[str], extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> tuple[list[VideoEntry], list[str]]:
    """Videos laid out as ``<root>/<class_name>/<video>.<ext>``; labels follow the sorted class names.

    Returns the entries (sorted by class, then file name) and the class names in label order. Extensions match
    case-insensitively; class folders without videos still get a label. Raises FileNotFoundError if ``root`` has
    no class folder or no video at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} is not a folder; expected <root>/<class_name>/<video>.mp4")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    suffixes = {e.lower() for e in extensions}
    entries = [
        VideoEntry(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.is_file() and path.suffix.lower() in suffixes
    ]
    if not entries:
        raise FileNotFoundError(f"no videos ({', '.join(extensions)}) in class folders under {root}")
    return entries, classes


def scan_videos(entries: Sequence[VideoEntry]) -> tuple[list[VideoEntry], list[tuple[Path, str]]]:
    """Probe every video (demux + decode of the first frame): the decodable entries, and ``(path, reason)`` of the
    others, which are reported in one warning."""
    kept, skipped = [], []
    for entry in entries:
        try:
            decode_clip(entry.path, [0])
        except VideoDecodeError as err:
            skipped.append((entry.path, err.reason))
        else:
            kept.append(entry)
    if skipped:
        examples = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        logger.warning("skipped %d of %d videos that cannot be decoded (e.g. %s)", len(skipped), len(entries), examples)
    return kept, skipped


class VideoPredictions(NamedTuple):
    """Per-video results of :func:`aggregate_views`, sorted by video id."""

    logits: torch.Tensor  # (V, K) mean over the video's views
    labels: torch.Tensor  # (V,)
    video_ids: torch.Tensor  # (V,)


def aggregate_views(
    logits: torch.Tensor, labels: torch.Tensor, video_ids: torch.Tensor, view_ids: torch.Tensor | None = None
) -> VideoPredictions:
    """Average the logits ``(N, K)`` of all views of each video; every video is counted exactly once.

    ``labels`` and ``video_ids`` are ``(N,)``. When ``view_ids`` ``(N,)`` is given, repeated (video, view) pairs
    (e.g. samples a distributed sampler duplicated to even out shards) are dropped before averaging, so a padded
    view does not weigh double. Raises ValueError if one video carries two different labels.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or video_ids.shape != (logits.shape[0],):
        raise ValueError(
            f"expected logits (N, K) and (N,) labels/ids, got {logits.shape}, {labels.shape}, {video_ids.shape}"
        )
    if view_ids is not None:
        pairs = torch.stack([video_ids, view_ids.to(video_ids)], dim=1)  # (N, 2)
        _, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(len(inverse)), reduce="amin")  # first of each pair
        logits, labels, video_ids = logits[first], labels[first], video_ids[first]
    unique_ids, inverse = torch.unique(video_ids, sorted=True, return_inverse=True)  # (V,), (N,)
    num_videos = len(unique_ids)
    sums = torch.zeros(num_videos, logits.shape[1], dtype=torch.float64).index_add_(0, inverse, logits.double())
    counts = torch.bincount(inverse, minlength=num_videos).unsqueeze(1)  # (V, 1)
    video_labels = torch.full((num_videos,), -1, dtype=labels.dtype).scatter_(0, inverse, labels)
    if not torch.equal(video_labels[inverse], labels):
        raise ValueError("a video has views with different labels")
    return VideoPredictions((sums / counts).to(logits.dtype), video_labels, unique_ids)


class VideoClipDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Clips of labelled videos: sampling -> decoding -> transforms.

    Args:
        entries: the videos and labels (from :func:`read_video_list` or :func:`find_class_folders`).
        sampler: which frames make a clip.
        transform: spatial transform and normalisation.
        mode: "train" (one random clip per video per epoch) or "test" (every view of ``views``, deterministic).
        views: the test view grid (ignored in training); ``TestViews(1, 1)`` for validation.
        skip_bad_videos: probe every file now and drop the undecodable ones instead of raising later.
        seed: training draws use ``torch.Generator`` seeded with ``(seed, epoch, index)`` when set (see
            :meth:`set_epoch`), else torch's global RNG (which DataLoader seeds per worker).
    """

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        sampler: SamplerConfig,
        transform: VideoTransform,
        mode: Literal["train", "test"] = "train",
        views: TestViews | None = None,
        *,
        skip_bad_videos: bool = False,
        seed: int | None = None,
    ) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        self.entries = list(entries)
        self.sampler = sampler
        self.transform = transform
        self.mode = mode
        self.views = views if views is not None else TestViews()
        self.seed = seed
        self.epoch = 0
        self.skipped_files: list[tuple[Path, str]] = []
        self._infos: OrderedDict[int, VideoInfo] = OrderedDict()  # small LRU: test views reuse one probe
        if skip_bad_videos:
            self.scan()

    @property
    def skipped(self) -> int:
        """How many videos :meth:`scan` dropped as undecodable."""
        return len(self.skipped_files)

    @property
    def views_per_video(self) -> int:
        return 1 if self.mode == "train" else len(self.views)

    @property
    def views_per_clip(self) -> int:
        """Consecutive items cut from one decoded clip (the spatial crops of a test clip); a loader that keeps
        them in one batch (the engine's evaluation loader does) decodes every clip once."""
        return self.views.num_crops if self.mode == "test" else 1

    @property
    def targets(self) -> list[int]:
        """The label of every item (known without decoding): one per video in training, one per view in testing."""
        return [entry.label for entry in self.entries for _ in range(self.views_per_video)]

    def scan(self) -> int:
        """Probe every video (demux + first frame) and drop the undecodable ones; returns how many were dropped."""
        self.entries, skipped = scan_videos(self.entries)
        self.skipped_files.extend(skipped)
        self._infos.clear()
        return len(skipped)

    def set_epoch(self, epoch: int) -> None:
        """Change the seeded training draws between epochs (only matters when ``seed`` is set)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries) * self.views_per_video

    def view(self, index: int) -> tuple[int, View]:
        """``(video_id, view)`` of item ``index``; training items use the centre view's counts (1 x 1)."""
        video_id, view_index = divmod(index, self.views_per_video)
        return video_id, (self.views[view_index] if self.mode == "test" else View(0, 0))

    def _info(self, video_id: int) -> VideoInfo:
        info = self._infos.get(video_id)
        if info is None:
            info = self._infos[video_id] = probe_video(self.entries[video_id].path)
            if len(self._infos) > 64:
                self._infos.popitem(last=False)
        self._infos.move_to_end(video_id)
        return info

    def _frames(self, video_id: int, view: View, generator: torch.Generator | None) -> torch.Tensor:
        """Sample and decode the frames ``(T, H, W, C)`` of one clip."""
        path = self.entries[video_id].path
        info = self._info(video_id)
        for _ in range(2):
            indices = sample_indices(
                self.sampler,
                info.num_frames,
                train=self.mode == "train",
                generator=generator,
                clip_index=view.clip,
                num_clips=view.num_clips,
            )
            decoded = decode_clip(path, indices, info)
            if decoded.end_of_stream is None:
                break
            # The stream held fewer frames than its packets promised: sample again from the true count.
            info = replace(info, num_frames=decoded.end_of_stream, frame_pts=None, counted_by="decoding")
            self._infos[video_id] = info
        return decoded.frames

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """The items at ``indices`` (DataLoader fetches a whole batch through this): in testing, the views of one
        temporal clip are all cut from one decode and one resize of it."""
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.mode == "train":
            return [self._train_item(index) for index in indices]
        by_clip: dict[tuple[int, int], list[int]] = {}  # (video_id, temporal clip) -> positions in indices
        for position, index in enumerate(indices):
            video_id, view = self.view(index)
            by_clip.setdefault((video_id, view.clip), []).append(position)
        items: dict[int, tuple[torch.Tensor, int, int]] = {}
        for (video_id, _), positions in by_clip.items():
            views = [self.view(indices[p])[1] for p in positions]
            frames = self._frames(video_id, views[0], None)  # (T, H, W, C) uint8, shared by the clip's crops
            crops = self.transform.test_crops(frames, [v.crop for v in views], views[0].num_crops)  # (C, T, H, W)
            for position, crop in zip(positions, crops, strict=True):
                items[position] = (crop, self.entries[video_id].label, video_id)
        return [items[position] for position in range(len(indices))]

    def _train_item(self, index: int) -> tuple[torch.Tensor, int, int]:
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & (2**63 - 1))
        frames = self._frames(index, View(0, 0), generator)  # (T, H, W, C) uint8
        return self.transform.train(frames, generator), self.entries[index].label, index  # (C, T, H, W) float32
