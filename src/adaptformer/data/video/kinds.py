"""Video dataset kinds selectable by name (``adaptformer train --data.dataset KIND``), like ``IMAGE_DATASETS``.

Kinds (see ``VIDEO_DATASETS``):

- ``videolist``: VideoMAE list files ``<root>/{train,val,test}.txt`` (or ``.csv``), one ``path label`` line per
  video. Class names come from ``<root>/classes.txt`` (line ``i`` names label ``i``, as the preparers write it), else
  from the ``num_classes`` option, else from the train list (largest label + 1). Dense sampling, stride 4.
- ``ssv2``: the list layout as ``adaptformer prepare ssv2`` writes it; segment (TSN) sampling, as the paper.
- ``hmdb51``: the list layout as ``adaptformer prepare hmdb51`` writes it; dense sampling with stride 4.
- ``videofolder``: ``<root>/<split>/<class>/<video>``; class names from ``<root>/train``. Dense, stride 4.
- ``synthetic-video``: :class:`SyntheticMotionDataset` (the class is the direction of motion), no files.

No kind flips clips by default (paper Table 5, video column; SSv2 labels name left and right).

Loading a split resolves it to a *source*: its classes and videos are known (and, with ``skip_bad_videos``, every file
has been probed once), but the clip length and the transform wait for the backbone: ``source.dataset(sampler,
transform, mode, views)`` then builds the dataset, as often as needed (training, validation, multi-view test).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from torch.utils.data import Dataset

from adaptformer.data.files import DatasetFileError, read_class_names
from adaptformer.data.kinds import check_class_coverage, resolve_request, split_folder
from adaptformer.data.video.datasets import (
    VideoClipDataset,
    VideoEntry,
    find_class_folders,
    read_video_list,
    scan_videos,
)
from adaptformer.data.video.sampling import SamplerConfig, Strategy, TestViews
from adaptformer.data.video.synthetic import MOTIONS, SyntheticMotionDataset
from adaptformer.data.video.transforms import VideoTransform

__all__ = ["VIDEO_DATASETS", "SyntheticVideos", "VideoDatasetKind", "VideoFiles", "VideoSource", "load_video_split"]

logger = logging.getLogger(__name__)

Mode = Literal["train", "test"]

_LIST_LAYOUT = (
    "<root>/\n  train.txt        '<path> <label>' per line (or train.csv); paths absolute or relative to <root>\n"
    "  val.txt          (optional: model selection; without test.txt, the test split)\n"
    "  test.txt         (optional when val.txt is there)\n"
    "  classes.txt      (optional) one class name per line, line i = label i"
)
_LAYOUTS = {
    "videolist": _LIST_LAYOUT,
    "ssv2": _LIST_LAYOUT + "\n(write it with: adaptformer prepare ssv2 --root SSV2_RELEASE --out <root>)",
    "hmdb51": _LIST_LAYOUT + "\n(write it with: adaptformer prepare hmdb51 --root HMDB51 --out <root> --split 1)",
    "videofolder": "<root>/\n  train/<class>/<video>.mp4|avi|webm|mkv\n  val/<class>/...   (optional: model "
    "selection; without test/, the test split)\n  test/<class>/...  (optional when val/ is there)",
}


class VideoSource(Protocol):
    """One split of a video dataset whose samples are known but whose clip length and transform are not yet."""

    classes: list[str]
    skipped_files: list[tuple[Path, str]]

    def __len__(self) -> int:
        """Number of videos."""
        ...

    def dataset(self, sampler: SamplerConfig, transform: VideoTransform, mode: Mode, views: TestViews) -> Dataset:
        """The split's items ``(clip (C, T, H, W), label, video_id)`` for this sampler, transform and mode."""
        ...


@dataclass(frozen=True)
class VideoFiles:
    """Video files with labels; ``skipped_files`` lists those left out as undecodable (``(path, reason)``)."""

    entries: list[VideoEntry]
    classes: list[str]
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)
    origin: str = "video files"  # where the entries were read, for messages: a list file or a class-folder tree

    def __len__(self) -> int:
        return len(self.entries)

    def dataset(self, sampler: SamplerConfig, transform: VideoTransform, mode: Mode, views: TestViews) -> Dataset:
        return VideoClipDataset(self.entries, sampler, transform, mode, views)


@dataclass(frozen=True)
class SyntheticVideos:
    """Parameters of a :class:`SyntheticMotionDataset` split; its clips are rendered at the backbone's frame count
    and input size, one deterministic view per clip (the sampler's strategy, the views and ``mode`` do not apply)."""

    num_samples: int
    num_classes: int
    noise_std: float
    seed: int
    size: tuple[int, int] | None = None
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return [name for name, _ in MOTIONS[: self.num_classes]]

    def __len__(self) -> int:
        return self.num_samples

    def dataset(self, sampler: SamplerConfig, transform: VideoTransform, mode: Mode, views: TestViews) -> Dataset:
        return SyntheticMotionDataset(
            self.num_samples, self.num_classes, sampler.num_frames, transform.pre, self.size, self.noise_std, self.seed
        )


# Builders: build(root, split, *, <kind options>) -> source. Their keyword options are what ``load_video_split``
# accepts for the kind.


def _find_list(root: Path, split: str, options: Mapping[str, Any] | None = None) -> Path | None:
    """``<root>/<split>.txt`` (or ``.csv``) if present (the ``locate`` of the list kinds)."""
    return next((root / f"{split}{s}" for s in (".txt", ".csv") if (root / f"{split}{s}").is_file()), None)


def _list_file(root: Path, split: str, kind: str) -> Path:
    found = _find_list(root, split)
    if found is not None:
        return found
    raise FileNotFoundError(f"{kind} dataset: no {split}.txt (or .csv) in {root}\nexpected layout:\n{_LAYOUTS[kind]}")


def _list_classes(root: Path, kind: str, num_classes: int | None) -> tuple[list[str], str]:
    """The class names and where they come from: classes.txt, else ``num_classes`` numbered classes, else as many as
    the train list's largest label + 1."""
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = read_class_names(names_file)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes {num_classes} contradicts the {len(names)} names in {names_file}")
        return names, str(names_file)
    if num_classes is not None:
        return [str(i) for i in range(num_classes)], f"the option num_classes {num_classes}"
    train_list = _list_file(root, "train", kind)
    labels = [entry.label for entry in read_video_list(train_list)]
    if not labels:
        raise DatasetFileError(f"{train_list} lists no videos; expected '<path> <label>' lines")
    logger.info("%s: no classes.txt; %d classes from the largest label of the train list", root, max(labels) + 1)
    return [str(i) for i in range(max(labels) + 1)], f"the largest label in {train_list} (no classes.txt)"


def _build_list(
    root: Path, split: str, *, kind: str, num_classes: int | None = None, video_root: str | None = None
) -> VideoFiles:
    """List files; relative video paths are resolved against ``video_root`` (default: ``root``)."""
    classes, classes_from = _list_classes(root, kind, num_classes)
    base = Path(video_root).expanduser() if video_root is not None else root
    list_file = _list_file(root, split, kind)
    entries = read_video_list(list_file, base, num_classes=len(classes), classes_from=classes_from)
    return VideoFiles(entries, classes, origin=f"{kind} {list_file}")


def _build_videofolder(root: Path, split: str) -> VideoFiles:
    """``<root>/<split>/<class>/<video>``; labels follow the sorted class folders of ``<root>/train``."""
    split_dir = root / split
    if not split_dir.is_dir():
        layout = _LAYOUTS["videofolder"]
        raise FileNotFoundError(f"videofolder dataset: {split_dir} not found\nexpected layout:\n{layout}")
    entries, names = find_class_folders(split_dir)
    train_dir = root / "train"
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else names
    extra = sorted(set(names) - set(classes))
    if extra:
        raise DatasetFileError(
            f"{split_dir} has class folders {extra} that {train_dir} lacks (allowed: {classes}); every class needs "
            f"training videos in {train_dir}"
        )
    index = {name: i for i, name in enumerate(classes)}
    entries = [VideoEntry(e.path, index[names[e.label]]) for e in entries]
    return VideoFiles(entries, classes, origin=f"videofolder {split_dir}")


def _build_synthetic(
    root: Path | None,
    split: str,
    *,
    num_samples: int = 128,
    num_classes: int = 4,
    noise_std: float = 8.0,
    seed: int = 0,
    size: list[int] | None = None,
) -> SyntheticVideos:
    """Seeded motion clips; train and test draw from different seed streams of ``seed``."""
    stream = 2 * seed + ("train", "test").index(split)
    frame_size = (int(size[0]), int(size[1])) if size is not None else None
    return SyntheticVideos(num_samples, num_classes, float(noise_std), stream, frame_size)


@dataclass(frozen=True)
class VideoDatasetKind:
    """One video dataset kind: its builder, splits, whether it reads files, and its default temporal sampling."""

    build: Callable[..., VideoFiles | SyntheticVideos]
    splits: tuple[str, ...]
    needs_root: bool = True
    locate: Callable[[Path, str, Mapping[str, Any]], Path | None] | None = None  # an optional split on disk
    sampling: Strategy = "dense"
    stride: int = 4

    @property
    def options(self) -> tuple[str, ...]:
        """The options the builder accepts (``--data.options``)."""
        params = inspect.signature(self.build).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def _lists(kind: str) -> Callable[..., VideoFiles]:
    def build(root: Path, split: str, *, num_classes: int | None = None, video_root: str | None = None) -> VideoFiles:
        return _build_list(root, split, kind=kind, num_classes=num_classes, video_root=video_root)

    build.__doc__ = _build_list.__doc__
    return build


_SPLITS = ("train", "val", "test")
VIDEO_DATASETS: dict[str, VideoDatasetKind] = {
    "videolist": VideoDatasetKind(_lists("videolist"), _SPLITS, locate=_find_list),
    "ssv2": VideoDatasetKind(_lists("ssv2"), _SPLITS, locate=_find_list, sampling="segment"),
    "hmdb51": VideoDatasetKind(_lists("hmdb51"), _SPLITS, locate=_find_list, sampling="dense", stride=4),
    "videofolder": VideoDatasetKind(_build_videofolder, _SPLITS, locate=split_folder),
    "synthetic-video": VideoDatasetKind(_build_synthetic, ("train", "test"), needs_root=False),
}


def load_video_split(
    kind: str, root: str | Path | None, split: str, *, skip_bad_videos: bool = False, **options: Any
) -> VideoSource:
    """The ``split`` of video dataset ``kind`` under ``root`` (see the module docstring).

    Args:
        kind: a key of ``VIDEO_DATASETS``.
        root: the folder holding the dataset (ignored by ``synthetic-video``).
        split: "train", "val" or "test".
        skip_bad_videos: probe every file now and leave the undecodable ones out (listed in ``skipped_files``, with
            a warning); otherwise a bad file raises ``VideoDecodeError`` naming it when it is read. A ValueError for
            ``synthetic-video``, which has no files that could be skipped.
        options: per kind: ``num_classes``/``video_root`` (list kinds); ``num_samples``/``num_classes``/
            ``noise_std``/``seed``/``size`` (synthetic-video).
    """
    path = resolve_request(kind, VIDEO_DATASETS, root, split, options, _LAYOUTS, what="video dataset")
    spec = VIDEO_DATASETS[kind]
    source = spec.build(path, split, **options)
    if skip_bad_videos:
        if not isinstance(source, VideoFiles):
            raise ValueError(f"skip_bad_videos applies to kinds that read video files; {kind!r} has none to skip")
        kept, skipped = scan_videos(source.entries)
        source = replace(source, entries=kept, skipped_files=skipped)
    if isinstance(source, VideoFiles):
        check_class_coverage(
            [entry.label for entry in source.entries], source.classes, source.origin,
            required=split == "train",
            skipped=len(source.skipped_files),
            what="every class needs training videos: add some, or remove the class (its folder, or its line in "
            "classes.txt)",
        )  # fmt: skip
    logger.info("%s %s: %d videos, %d classes", kind, split, len(source), len(source.classes))
    return source
