"""Write a built-in dataset (``digits``, ``synthetic``, ``shapes``, ``synthetic-video``, ``digits-multilabel``,
``digits-seg``) as real files.

The result has the layout the file-based kinds read, so a newcomer can run the whole file pipeline (train, eval,
predict) offline and see what their own data has to look like:

    images:  OUT/{train,test}/<class>/<index>.png   -> --data.dataset imagefolder --data.data_dir OUT
    clips:   OUT/{train,test}/<class>/<index>.mp4   -> --data.dataset videofolder --data.data_dir OUT
    multi-label images: OUT/images/{train,test}/<index>.png, OUT/classes.txt and OUT/{train,test}.txt with
             "images/train/00000.png 3,7" lines          -> --data.dataset multilabel-list --data.data_dir OUT
    segmentation: OUT/images/{train,test}/<index>.png, OUT/masks/{train,test}/<index>.png (palette PNGs of the class
             indices), OUT/classes.txt                  -> --data.dataset segfolder --data.data_dir OUT

Images are written losslessly (PNG, grayscale kept grayscale); clips as H.264 at constant quantiser 0 (yuv420p), at
25 frames per second. Nothing is overwritten: an existing non-empty ``OUT`` is an error.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from adaptformer.data.image.kinds import IMAGE_DATASETS, build_image_dataset
from adaptformer.data.segmentation import build_segmentation_dataset, voc_palette
from adaptformer.data.video.kinds import SyntheticVideos, load_video_split
from adaptformer.data.video.synthetic import SyntheticMotionDataset
from adaptformer.files import atomic_write_bytes, atomic_write_text, make_folder

__all__ = ["BUILTIN_KINDS", "write_builtin_dataset"]

log = logging.getLogger(__name__)

BUILTIN_KINDS = ("digits", "synthetic", "shapes", "synthetic-video", "digits-multilabel", "digits-seg")
MULTI_LABEL = ("digits-multilabel",)  # written in the multilabel-list layout
SEGMENTATION = ("digits-seg",)  # written in the segfolder layout
SPLITS = ("train", "test")


def _target(out: Path, split: str, label: str, index: int, suffix: str) -> Path:
    return make_folder(out / split / label) / f"{index:05d}{suffix}"


def _write_images(kind: str, out: Path, split: str, options: dict[str, Any]) -> int:
    dataset = build_image_dataset(kind, None, split, None, **options)
    for index in range(len(dataset)):
        image, label = dataset[index]  # uint8 (C, H, W)
        _save_png(image, _target(out, split, dataset.classes[label], index, ".png"))
    return len(dataset)


def _save_png(image: Any, path: Path) -> None:
    array = image.numpy()  # uint8 (C, H, W)
    pixels = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)  # (H, W[, C])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue(), sync=False)  # encoded first: never a half-written file


def _write_multilabel(kind: str, out: Path, split: str, options: dict[str, Any]) -> int:
    dataset = build_image_dataset(kind, None, split, None, **options)
    folder = make_folder(out / "images" / split)
    lines = []
    for index in range(len(dataset)):
        image, _ = dataset[index]
        _save_png(image, folder / f"{index:05d}.png")
        names = ",".join(dataset.classes[c] for c in dataset.label_sets[index])
        lines.append(f"images/{split}/{index:05d}.png {names}")
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in dataset.classes))
    atomic_write_text(out / f"{split}.txt", "".join(f"{line}\n" for line in lines))
    return len(dataset)


def _write_segmentation(kind: str, out: Path, split: str, options: dict[str, Any]) -> int:
    dataset = build_segmentation_dataset(kind, None, split, None, **options)
    colours = [*dataset.palette, *voc_palette(256)[len(dataset.palette) :]]  # 255, the ignore index, included
    images, masks = make_folder(out / "images" / split), make_folder(out / "masks" / split)
    for index in range(len(dataset)):
        image, mask = dataset[index]  # uint8 (3, H, W), int64 (H, W)
        grey = bool((image == image[:1]).all())
        _save_png(image[:1] if grey else image, images / f"{index:05d}.png")
        indices = Image.fromarray(mask.numpy().astype(np.uint8))  # mode L
        indices.putpalette([channel for colour in colours for channel in colour])  # L -> P: the indices kept
        buffer = io.BytesIO()
        indices.save(buffer, format="png")
        atomic_write_bytes(masks / f"{index:05d}.png", buffer.getvalue(), sync=False)
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in dataset.classes))
    return len(dataset)


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` (even H and W) as H.264 at quantiser 0, in memory, then write the
    file atomically."""
    _, height, width, _ = frames.shape
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0"})
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    atomic_write_bytes(path, buffer.getvalue(), sync=False)
    return path


def _write_clips(out: Path, split: str, options: dict[str, Any], num_frames: int) -> int:
    source = load_video_split("synthetic-video", None, split, **options)
    assert isinstance(source, SyntheticVideos)
    size = source.size or (32, 32)
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"synthetic-video option size must be even for H.264 (yuv420p), got {list(size)}")
    clips = SyntheticMotionDataset(
        source.num_samples, source.num_classes, num_frames, size=size, noise_std=source.noise_std, seed=source.seed
    )
    for index in range(len(clips)):
        label = clips.classes[index % source.num_classes]
        write_mp4(_target(out, split, label, index, ".mp4"), clips.frames(index).numpy())
    return len(clips)


def write_builtin_dataset(
    kind: str, out: str | Path, options: dict[str, Any] | None = None, num_frames: int = 16
) -> dict:
    """Write the train and test splits of built-in ``kind`` under ``out``; returns ``{split: count}`` plus the kind
    to pass as ``--data.dataset``.

    Args:
        kind: one of :data:`BUILTIN_KINDS`.
        out: a folder that does not exist yet or is empty.
        options: the kind's options, as ``--data.options`` takes them (e.g. ``{num_samples: 256}``).
        num_frames: frames per written clip (``synthetic-video``; at least the backbone's frame count).
    """
    if kind not in BUILTIN_KINDS:
        raise ValueError(
            f"cannot write {kind!r} as files: only the built-in kinds {list(BUILTIN_KINDS)} are generated here"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another --out")
    options = dict(options or {})
    if kind == "synthetic-video":
        if num_frames < 2:
            raise ValueError(f"--num-frames must be >= 2, got {num_frames}")
        counts = {split: _write_clips(out, split, options, num_frames) for split in SPLITS}
        dataset = "videofolder"
    elif kind in SEGMENTATION:
        counts = {split: _write_segmentation(kind, out, split, options) for split in SPLITS}
        dataset = "segfolder"
    elif kind in MULTI_LABEL:
        counts = {split: _write_multilabel(kind, out, split, options) for split in SPLITS}
        dataset = "multilabel-list"
    else:
        assert not IMAGE_DATASETS[kind].needs_root
        counts = {split: _write_images(kind, out, split, options) for split in SPLITS}
        dataset = "imagefolder"
    log.info("wrote %s as %s files under %s: %s", kind, dataset, out, counts)
    return {"dataset": dataset, "data_dir": str(out), "samples": counts}
