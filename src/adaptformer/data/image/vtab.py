"""VTAB-1k (Zhai et al., 2019) in the layout the PETL community distributes (NOAH, VPT, V-PETL Bench): per task a
folder with the images and four list files of "relative/path label" lines, 1,000 training images per task.

The 19 tasks, their group and class count are data (``VTAB_TASKS``), for a benchmark driver to iterate. The protocol
has two stages (option ``stage``):

- ``tune``: train on ``train800.txt``; the given validation split is ``val200.txt`` (model selection), and the test
  split is ``val200.txt`` too, so a tuning run reports its validation score and never reads ``test.txt``;
- ``final``: train on ``train800val200.txt`` and test once on ``test.txt``; there is no validation split (the protocol
  reports the last epoch: set ``data.val_split: 0`` and ``run.select: last``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adaptformer.data.files import DatasetFileError, read_text
from adaptformer.data.image.datasets import ImageFileDataset, Transform
from adaptformer.data.kinds import check_class_coverage

log = logging.getLogger(__name__)

__all__ = ["VTAB_GROUPS", "VTAB_LAYOUT", "VTAB_TASKS", "VtabTask", "build_vtab1k", "locate_vtab1k", "read_label_list"]

Stage = Literal["tune", "final"]


@dataclass(frozen=True)
class VtabTask:
    """One VTAB-1k task: its group (natural / specialized / structured) and number of classes."""

    group: str
    num_classes: int


# Folder names as the NOAH / VPT archives name them; class counts of the VTAB task definitions.
VTAB_TASKS: dict[str, VtabTask] = {
    "cifar": VtabTask("natural", 100),
    "caltech101": VtabTask("natural", 102),
    "dtd": VtabTask("natural", 47),
    "oxford_flowers102": VtabTask("natural", 102),
    "oxford_iiit_pet": VtabTask("natural", 37),
    "svhn": VtabTask("natural", 10),
    "sun397": VtabTask("natural", 397),
    "patch_camelyon": VtabTask("specialized", 2),
    "eurosat": VtabTask("specialized", 10),
    "resisc45": VtabTask("specialized", 45),
    "diabetic_retinopathy": VtabTask("specialized", 5),
    "clevr_count": VtabTask("structured", 8),
    "clevr_dist": VtabTask("structured", 6),
    "dmlab": VtabTask("structured", 6),
    "kitti": VtabTask("structured", 4),
    "dsprites_loc": VtabTask("structured", 16),
    "dsprites_ori": VtabTask("structured", 16),
    "smallnorb_azi": VtabTask("structured", 18),
    "smallnorb_ele": VtabTask("structured", 9),
}
VTAB_GROUPS: tuple[str, ...] = ("natural", "specialized", "structured")

# The list file of each (stage, split).
_LISTS: dict[tuple[str, str], str] = {
    ("tune", "train"): "train800.txt",
    ("tune", "val"): "val200.txt",
    ("tune", "test"): "val200.txt",
    ("final", "train"): "train800val200.txt",
    ("final", "test"): "test.txt",
}

VTAB_LAYOUT = (
    "<root>/                      (e.g. vtab-1k/, one folder per task)\n"
    "  <task>/                    (cifar, caltech101, dtd, ..., smallnorb_ele)\n"
    "    images/...               (the images; list files name them relative to <task>/)\n"
    "    train800.txt             (stage tune: train)\n"
    "    val200.txt               (stage tune: validation and test)\n"
    "    train800val200.txt       (stage final: train)\n"
    "    test.txt                 (stage final: test)\n"
    '  each list line: "relative/path label", label an integer 0..classes-1'
)


def _check_options(task: str, stage: str) -> None:
    if task not in VTAB_TASKS:
        raise ValueError(f"vtab1k: unknown task {task!r}; allowed: {list(VTAB_TASKS)} (data.options.task)")
    if stage not in ("tune", "final"):
        raise ValueError(f"vtab1k: unknown stage {stage!r}; allowed: ['tune', 'final'] (data.options.stage)")


def locate_vtab1k(root: Path, split: str, options: Mapping[str, Any]) -> Path | None:
    """The list file of ``split`` for the task and stage in ``options`` if it is on disk, else None (the stage has no
    such split: ``final`` has no validation split)."""
    task, stage = options.get("task"), options.get("stage", "tune")
    if task not in VTAB_TASKS or (stage, split) not in _LISTS:
        return None
    path = root / str(task) / _LISTS[(stage, split)]
    return path if path.is_file() else None


def read_label_list(path: Path, base: Path, num_classes: int, layout: str) -> list[tuple[Path, int]]:
    """``(image path, label)`` of each "relative/path label" line of ``path`` (paths relative to ``base``; blank lines
    ignored). A line without a label, a non-integer or out-of-range label, or a missing image is a
    :class:`DatasetFileError` naming the file and line."""
    samples = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        where = f"{path}, line {number} ({line.strip()!r})"
        if len(parts) != 2:
            raise DatasetFileError(f"{where}: expected 'relative/path label'\nexpected layout:\n{layout}")
        name, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetFileError(f"{where}: label {label_text!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DatasetFileError(f"{where}: label {label} is outside the allowed range 0..{num_classes - 1}")
        image = base / name
        if not image.is_file():
            raise DatasetFileError(f"{where}: image {image} not found\nexpected layout:\n{layout}")
        samples.append((image, label))
    return samples


def build_vtab1k(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool, task: str = "", stage: Stage = "tune"
) -> ImageFileDataset:
    """The ``split`` of VTAB-1k ``task`` at protocol ``stage`` (see the module docstring for which list file)."""
    _check_options(task, stage)
    if (stage, split) not in _LISTS:
        raise ValueError(
            f"vtab1k: stage {stage!r} has no {split!r} split (it has "
            f"{[s for st, s in _LISTS if st == stage]}); the final stage trains on train800val200 and tests the last "
            "epoch (data.val_split 0, run.select last)"
        )
    info = VTAB_TASKS[task]
    folder = root / task
    path = folder / _LISTS[(stage, split)]
    if not path.is_file():
        hint = f"\nhint: root points inside the task folder; pass its parent {root.parent}" if root.name == task else ""
        raise FileNotFoundError(
            f"vtab1k dataset: {path} not found (root: {root})\nexpected layout:\n{VTAB_LAYOUT}{hint}"
        )
    samples = read_label_list(path, folder, info.num_classes, VTAB_LAYOUT)
    classes = [str(label) for label in range(info.num_classes)]
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images)
    check_class_coverage(
        dataset.targets, classes, f"vtab1k {path}", required=split == "train", skipped=len(dataset.skipped),
        what=f"{task} has {info.num_classes} classes (labels 0..{info.num_classes - 1})",
    )  # fmt: skip
    return dataset
