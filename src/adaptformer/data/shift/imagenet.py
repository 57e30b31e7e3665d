"""The shifted ImageNet test sets in their released layouts, as dataset kinds (``--data.dataset imagenet-r``, ...).

- ``imagenet-v2`` (Recht et al. 2019): ``<root>/<0..999>/<image>``, folders named by class index.
- ``imagenet-sketch`` (Wang et al. 2019): ``<root>/<wnid>/<image>``, folders named by WordNet id.
- ``imagenet-c`` (Hendrycks & Dietterich 2019): ``<root>/<corruption>/<severity>/<wnid>/<image>``; one folder per
  dataset, chosen with ``--data.options {corruption: fog, severity: 3}``.
- ``imagenet-r`` (Hendrycks et al. 2021) and ``imagenet-a`` (Hendrycks et al. 2021): ``<root>/<wnid>/<image>`` over a
  200-class subset of ImageNet; their classes are those 200 WordNet ids (their papers score a 1000-class head on the
  200 logits of these classes, :data:`SUBSET_KINDS`).

The ImageNet-1k WordNet ids (the class order of every ImageNet head: sorted ids) and the two 200-class subsets are
read from timm's bundled class lists. Every folder name is checked: a name that is no class of the set is an error
naming it. V2, Sketch and C label their images among all 1000 classes.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from adaptformer.data.files import DatasetFileError
from adaptformer.data.image.datasets import ImageFileDataset, Transform
from adaptformer.data.kinds import check_class_coverage
from adaptformer.data.shift.corruptions import CORRUPTIONS, SEVERITIES

__all__ = ["LAYOUTS", "SUBSET_KINDS", "imagenet_classes", "subset_classes"]

SUBSET_KINDS = {"imagenet-r": "imagenet_r", "imagenet-a": "imagenet_a"}  # kind -> timm's class-list name

LAYOUTS = {
    "imagenet-v2": "<root>/   (e.g. imagenetv2-matched-frequency-format-val/)\n  0/<image>.jpeg\n  ...\n  999/",
    "imagenet-sketch": "<root>/   (e.g. sketch/)\n  n01440764/<image>.JPEG\n  ...   (ImageNet WordNet ids)",
    "imagenet-c": "<root>/\n  <corruption>/<severity 1-5>/<wnid>/<image>.JPEG   (e.g. fog/3/n01440764/...)",
    "imagenet-r": "<root>/   (imagenet-r/)\n  n01443537/<image>.jpg\n  ...   (its 200 WordNet ids)",
    "imagenet-a": "<root>/   (imagenet-a/)\n  n01498041/<image>.jpg\n  ...   (its 200 WordNet ids)",
}


def _class_list(name: str) -> tuple[str, ...]:
    text = (importlib.resources.files("timm.data") / "_info" / f"{name}_synsets.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids in class-index order."""
    return _class_list("imagenet")


@functools.cache
def subset_classes(kind: str) -> tuple[str, ...]:
    """The 200 WordNet ids of ``imagenet-r`` or ``imagenet-a``, in ImageNet's order."""
    return _class_list(SUBSET_KINDS[kind])


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def _read_class_folders(
    root: Path, kind: str, names: dict[str, int], classes: tuple[str, ...], transform: Transform | None,
    skip_bad_images: bool,
) -> ImageFileDataset:  # fmt: skip
    """Images in ``root/<folder>/``, each folder a key of ``names`` (its label); anything else is refused."""
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} dataset: folder {root} not found\nexpected layout:\n{LAYOUTS[kind]}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetFileError(
            f"{root} has folders {unknown[:10]}{' and more' if len(unknown) > 10 else ''} that are no {kind} class; "
            f"expected layout:\n{LAYOUTS[kind]}"
        )
    samples = [(path, names[f]) for f in folders for path in _images(root / f)]
    if not samples:
        raise FileNotFoundError(
            f"{kind} dataset: no images ({', '.join(IMG_EXTENSIONS)}) under {root}\nexpected layout:\n{LAYOUTS[kind]}"
        )
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(dataset.targets, classes, f"{kind} {root}", required=False, skipped=len(dataset.skipped))
    return dataset


def build_imagenet_v2(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool
) -> ImageFileDataset:
    """ImageNet-V2: folders ``0`` ... ``999`` are ImageNet's class indices."""
    classes = imagenet_classes()
    return _read_class_folders(
        root, "imagenet-v2", {str(i): i for i in range(len(classes))}, classes, transform, skip_bad_images
    )


def build_imagenet_sketch(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool
) -> ImageFileDataset:
    """ImageNet-Sketch: one folder per ImageNet WordNet id."""
    classes = imagenet_classes()
    index = {wnid: i for i, wnid in enumerate(classes)}
    return _read_class_folders(root, "imagenet-sketch", index, classes, transform, skip_bad_images)


def build_imagenet_c(
    root: Path,
    split: str,
    transform: Transform | None,
    *,
    skip_bad_images: bool,
    corruption: str | None = None,
    severity: int | None = None,
) -> ImageFileDataset:
    """ImageNet-C: the ``<corruption>/<severity>`` folder, one folder per ImageNet WordNet id under it."""
    present = sorted(
        f"{c.name}/{s.name}" for c in root.iterdir() if c.is_dir() for s in c.iterdir() if s.is_dir()
    ) if root.is_dir() else []  # fmt: skip
    if corruption is None or severity is None:
        raise ValueError(
            f"imagenet-c reads one corruption at one severity: --data.options '{{corruption: NAME, severity: N}}' "
            f"(on disk under {root}: {present[:10]}{' and more' if len(present) > 10 else ''})"
        )
    if corruption not in CORRUPTIONS or severity not in SEVERITIES:
        raise ValueError(
            f"imagenet-c: corruption {corruption!r} at severity {severity!r}; valid corruptions: "
            f"{', '.join(CORRUPTIONS)}; severities: {list(SEVERITIES)}"
        )
    folder = root / corruption / str(severity)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagenet-c dataset: {folder} not found (on disk: {present[:10]})\nexpected layout:\n"
            f"{LAYOUTS['imagenet-c']}"
        )
    classes = imagenet_classes()
    index = {wnid: i for i, wnid in enumerate(classes)}
    return _read_class_folders(folder, "imagenet-c", index, classes, transform, skip_bad_images)


def _subset(kind: str, root: Path, transform: Transform | None, skip_bad_images: bool) -> ImageFileDataset:
    classes = subset_classes(kind)
    return _read_class_folders(root, kind, {w: i for i, w in enumerate(classes)}, classes, transform, skip_bad_images)


def build_imagenet_r(root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool) -> ImageFileDataset:
    """ImageNet-R: renditions of 200 ImageNet classes, one folder per WordNet id."""
    return _subset("imagenet-r", root, transform, skip_bad_images)


def build_imagenet_a(root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool) -> ImageFileDataset:
    """ImageNet-A: natural adversarial examples of 200 ImageNet classes, one folder per WordNet id."""
    return _subset("imagenet-a", root, transform, skip_bad_images)
