"""Turn the official Something-Something v2 and HMDB51 releases into VideoMAE list files.

Each preparer writes, into ``out_dir``:

- ``train.txt``: the official training split;
- ``test.txt``: the split the paper reports (SSv2: the official *validation* set, whose labels are public; HMDB51:
  the test half of the chosen official split);
- ``val.txt``: only when ``val_fraction > 0``, a seeded, per-class held-out part of the training split (removed from
  ``train.txt``) for model selection, so that checkpoints are not picked on ``test.txt`` (a defect of the original
  code);
- ``classes.txt``: class names, line ``i`` is label ``i``.

List lines are ``<path> <label>`` (read back with :func:`~adaptformer.data.video.datasets.read_video_list`); paths
are absolute, or relative to ``relative_to`` when given (then pass it as ``data_dir`` when reading).
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptformer.data.files import DatasetFileError, read_json, read_text
from adaptformer.data.video.datasets import VideoEntry, write_video_list
from adaptformer.files import atomic_write_text, make_folder

__all__ = ["HMDB51_LAYOUT", "SSV2_LAYOUT", "PreparedLists", "prepare_hmdb51", "prepare_ssv2"]

logger = logging.getLogger(__name__)

SSV2_LAYOUT = """\
expected Something-Something v2 layout:
  <root>/labels.json          {"Pushing something from left to right": "93", ...}
  <root>/train.json           [{"id": "78687", "template": "Holding [something] next to [something]", ...}, ...]
  <root>/validation.json      same format
  <root>/<video_dir>/<id>.webm    video_dir: 20bn-something-something-v2 or videos (or pass video_dir=)
(the release's something-something-v2-labels.json / -train.json / -validation.json names are accepted too)"""

HMDB51_LAYOUT = """\
expected HMDB51 layout:
  <root>/testTrainMulti_7030_splits/<class>_test_split<1|2|3>.txt   lines "<video>.avi <0|1|2>" (or splits/)
  <root>/<video_dir>/<class>/<video>.avi                           video_dir: videos, hmdb51_org or <root> itself
(split flags: 1 = train, 2 = test, 0 = unused)"""


@dataclass(frozen=True)
class PreparedLists:
    """What a preparer wrote: list files by split name ("train", "test", maybe "val"), class names, and counts."""

    lists: dict[str, Path]
    classes: list[str]
    counts: dict[str, int]


def _first_existing(root: Path, names: Sequence[str], layout: str, what: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{what} not found in {root} (looked for {', '.join(names)})\n{layout}")


def _check_videos(entries: list[VideoEntry], skip_missing: bool, layout: str) -> list[VideoEntry]:
    missing = [e.path for e in entries if not e.path.is_file()]
    if missing and not skip_missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} videos are missing (e.g. {shown}); pass skip_missing=True to leave them out\n{layout}"
        )
    if missing:
        logger.warning("left out %d listed videos that do not exist (e.g. %s)", len(missing), missing[0])
        gone = set(missing)
        entries = [e for e in entries if e.path not in gone]
    return entries


def _split_val(entries: list[VideoEntry], fraction: float, seed: int) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Hold out ``fraction`` of each class (at least one video when the class has two or more)."""
    by_class: dict[int, list[VideoEntry]] = defaultdict(list)
    for entry in entries:
        by_class[entry.label].append(entry)
    rng = random.Random(seed)
    held: set[Path] = set()
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda e: str(e.path))
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.update(e.path for e in rng.sample(members, count))
    return [e for e in entries if e.path not in held], [e for e in entries if e.path in held]


def _write(
    out_dir: Path,
    splits: dict[str, list[VideoEntry]],
    classes: list[str],
    val_fraction: float,
    seed: int,
    relative_to: Path | None,
) -> PreparedLists:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0:
        splits["train"], splits["val"] = _split_val(splits["train"], val_fraction, seed)
    make_folder(out_dir)
    lists = {}
    for name, entries in splits.items():
        if relative_to is not None:
            entries = [
                VideoEntry(Path(os.path.relpath(e.path.resolve(), relative_to.resolve())), e.label) for e in entries
            ]
        else:
            entries = [VideoEntry(e.path.resolve(), e.label) for e in entries]
        lists[name] = write_video_list(entries, out_dir / f"{name}.txt")
    atomic_write_text(out_dir / "classes.txt", "".join(f"{c}\n" for c in classes))
    counts = {name: len(entries) for name, entries in splits.items()}
    logger.info("wrote %s to %s (%d classes)", counts, out_dir, len(classes))
    return PreparedLists(lists, classes, counts)


def _label_id(value: object, path: Path, name: str) -> int:
    """A label id of labels.json (the release writes them as strings, "93")."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise DatasetFileError(f"{path}: the label id of {name!r} is {value!r}; expected an integer") from None


def prepare_ssv2(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    video_dir: str | os.PathLike[str] | None = None,
    video_ext: str = ".webm",
    val_fraction: float = 0.0,
    seed: int = 0,
    skip_missing: bool = False,
    relative_to: str | os.PathLike[str] | None = None,
) -> PreparedLists:
    """Write SSv2 list files (174 classes): train.json -> train.txt, validation.json -> test.txt.

    A label is looked up by the entry's ``template`` with its brackets removed ("Pushing [something] from left to
    right" -> "Pushing something from left to right"). ``video_ext`` selects converted copies (the paper re-encoded
    the webm files as mp4 at height 240). Missing metadata raises FileNotFoundError showing the expected layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SSv2 root {root} is not a folder\n{SSV2_LAYOUT}")
    names = {
        split: _first_existing(root, (f"{split}.json", f"something-something-v2-{split}.json"), SSV2_LAYOUT, split)
        for split in ("labels", "train", "validation")
    }
    videos = (
        Path(video_dir)
        if video_dir is not None
        else _first_existing(root, ("20bn-something-something-v2", "videos"), SSV2_LAYOUT, "video folder")
    )
    expected = 'a JSON object mapping each template name to its label id, {"Pushing something ...": "93", ...}'
    label_map = read_json(names["labels"], expected)
    if not isinstance(label_map, dict):
        raise DatasetFileError(f"{names['labels']}: expected {expected}")
    ids = {name: _label_id(value, names["labels"], name) for name, value in label_map.items()}
    classes = [name for name, _ in sorted(ids.items(), key=lambda item: item[1])]
    if sorted(ids.values()) != list(range(len(ids))):
        raise DatasetFileError(f"{names['labels']}: label ids must be 0..{len(ids) - 1} without gaps or repeats")

    splits = {}
    expected = 'a JSON list of {"id": "78687", "template": "Holding [something] next to [something]", ...} records'
    for split, out_name in (("train", "train"), ("validation", "test")):
        records = read_json(names[split], expected)
        if not isinstance(records, list):
            raise DatasetFileError(f"{names[split]}: expected {expected}")
        entries = []
        for number, record in enumerate(records, start=1):
            if not (isinstance(record, dict) and isinstance(record.get("id"), (str, int))
                    and isinstance(record.get("template"), str)):  # fmt: skip
                raise DatasetFileError(f"{names[split]}: record {number} is {record!r}; expected {expected}")
            template = record["template"].replace("[", "").replace("]", "")
            if template not in ids:
                raise DatasetFileError(
                    f"{names[split]}: video {record['id']} has template {template!r}, which is not in {names['labels']}"
                )
            entries.append(VideoEntry(videos / f"{record['id']}{video_ext}", ids[template]))
        splits[out_name] = _check_videos(entries, skip_missing, SSV2_LAYOUT)
    base = Path(relative_to) if relative_to is not None else None
    return _write(Path(out_dir), splits, classes, val_fraction, seed, base)


def prepare_hmdb51(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split: int = 1,
    split_dir: str | os.PathLike[str] | None = None,
    video_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    skip_missing: bool = False,
    relative_to: str | os.PathLike[str] | None = None,
) -> PreparedLists:
    """Write HMDB51 list files for official split ``split`` (the paper uses 1): flag 1 -> train.txt, 2 -> test.txt.

    Classes are the sorted class names of the split files (51 in the release); label ``i`` is the ``i``-th name.
    Videos flagged 0 are left out. Missing split files or video folders raise FileNotFoundError showing the
    expected layout; a malformed split line raises ValueError naming file and line.
    """
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB51 has splits 1, 2 and 3, got {split}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HMDB51 root {root} is not a folder\n{HMDB51_LAYOUT}")
    splits_path = (
        Path(split_dir)
        if split_dir is not None
        else _first_existing(root, ("testTrainMulti_7030_splits", "splits"), HMDB51_LAYOUT, "split folder")
    )
    suffix = f"_test_split{split}.txt"
    split_files = sorted(splits_path.glob(f"*{suffix}"))
    if not split_files:
        raise FileNotFoundError(f"no *{suffix} files in {splits_path}\n{HMDB51_LAYOUT}")
    classes = [f.name[: -len(suffix)] for f in split_files]
    if video_dir is not None:
        videos = Path(video_dir)
    elif (root / classes[0]).is_dir():
        videos = root  # class folders directly under the root
    else:
        videos = _first_existing(root, ("videos", "hmdb51_org"), HMDB51_LAYOUT, "video folder")

    splits: dict[str, list[VideoEntry]] = {"train": [], "test": []}
    for label, (name, split_file) in enumerate(zip(classes, split_files, strict=True)):
        for number, line in enumerate(read_text(split_file).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                where = f"{split_file}, line {number}"
                raise DatasetFileError(f"{where}: expected '<video>.avi <0|1|2>', got {line.strip()!r}")
            if fields[1] != "0":
                splits["train" if fields[1] == "1" else "test"].append(VideoEntry(videos / name / fields[0], label))
    for key in splits:
        splits[key] = _check_videos(splits[key], skip_missing, HMDB51_LAYOUT)
    base = Path(relative_to) if relative_to is not None else None
    return _write(Path(out_dir), splits, classes, val_fraction, seed, base)
