"""Segmentation datasets in the layouts people download: ADE20K (``ADEChallengeData2016``), Pascal VOC 2012 (with
SBD's augmented training list as an option), Cityscapes (``leftImg8bit`` + ``gtFine``) and a generic folder
(``images/``, ``masks/``, ``classes.txt``).

Each builder finds the split's images and masks, pairs them (an image without its mask or a mask without its image
is an error naming them) and says how the stored mask values become class indices (:class:`~.masks.LabelMap`):
ADE20K's 0 ("other") is ignored and 1..150 become 0..149 (mmsegmentation's ``reduce_zero_label``), Cityscapes' label
ids become its 19 train ids (the other ids ignored), VOC's 0..20 and border 255 stay as they are, a folder's values
are its ``classes.txt`` indices. A missing or mislaid folder is a FileNotFoundError showing the expected layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import IMG_EXTENSIONS

from adaptformer.data.files import DatasetFileError, read_class_names, read_text
from adaptformer.data.segmentation.datasets import JointTransform, SegmentationFileDataset, pair_files
from adaptformer.data.segmentation.masks import IGNORE_INDEX, LabelMap
from adaptformer.data.segmentation.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_IDS,
    VOC_CLASSES,
    voc_palette,
)

__all__ = [
    "LAYOUTS",
    "build_ade20k",
    "build_cityscapes",
    "build_segfolder",
    "build_voc",
    "locate_ade20k",
    "locate_cityscapes",
    "locate_segfolder",
    "locate_voc",
]

LAYOUTS = {
    "ade20k": "<root>/   (the folder holding ADEChallengeData2016/, or that folder itself)\n"
    "  ADEChallengeData2016/\n    images/training/ADE_train_00000001.jpg ...\n"
    "    images/validation/ADE_val_00000001.jpg ...\n"
    "    annotations/training/ADE_train_00000001.png ...   (grey PNG: 0 = other, ignored; 1..150 = the classes)\n"
    "    annotations/validation/ADE_val_00000001.png ...",
    "voc": "<root>/   (the folder holding VOCdevkit/, or VOCdevkit/ or VOC2012/ itself)\n  VOCdevkit/VOC2012/\n"
    "    JPEGImages/<id>.jpg\n    SegmentationClass/<id>.png   (palette PNG: indices 0..20, 255 = border, ignored)\n"
    "    ImageSets/Segmentation/train.txt, val.txt   (one <id> per line)\n"
    "  with the option augmented: true (training on SBD's 10,582 images, as DeepLab distributes them):\n"
    "    SegmentationClassAug/<id>.png   (grey PNG: 0..20, 255)\n"
    "    ImageSets/Segmentation/train_aug.txt   (or aug.txt; lines '<id>' or "
    "'/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png'; no val.txt image in it)",
    "cityscapes": "<root>/   (the folder holding leftImg8bit/ and gtFine/)\n"
    "  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
    "  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (label ids 0..33; the 19 evaluated\n"
    "    classes become train ids, the others are ignored; option labels: labelTrainIds reads\n"
    "    *_gtFine_labelTrainIds.png, cityscapesscripts' createTrainIdLabelImgs output, instead)",
    "segfolder": "<root>/\n  classes.txt   (one class name per line: line i names mask value i)\n"
    "  images/train/<name>.jpg|png|...   (subfolders allowed)\n"
    "  masks/train/<name>.png   (same relative path and stem; palette or grey index PNG; option ignore_value: the\n"
    "    value of unlabelled pixels, default 255)\n"
    "  images/val/, masks/val/   (optional: model selection; without test/, the test split)\n"
    "  images/test/, masks/test/   (optional when val/ is there)",
}
_ADE20K_SPLITS = {"train": "training", "val": "validation"}
_CITYSCAPES_LABELS = ("labelIds", "labelTrainIds")
_SHOWN = 5
_INNER_FOLDERS = {"images", "annotations", "JPEGImages", "SegmentationClass", "ImageSets", "leftImg8bit", "gtFine"}


def _missing(kind: str, path: Path, root: Path, hint: str = "") -> FileNotFoundError:
    return FileNotFoundError(f"{kind} dataset: {path} not found (root: {root})\nexpected layout:\n{LAYOUTS[kind]}"
                             f"{hint}")  # fmt: skip


def _base(root: Path, candidates: Iterable[Path], marker: str, kind: str) -> Path:
    """The first of ``candidates`` (the release's top folder, at or below ``root``) that holds the folder
    ``marker``; none is a FileNotFoundError showing the layout (with a hint when ``root`` is inside the release)."""
    for candidate in candidates:
        if (candidate / marker).is_dir():
            return candidate
    inside = root.name in _INNER_FOLDERS or (root.parent / marker).is_dir()
    hint = f"\nhint: {root} is inside the release; pass the folder above it" if inside else ""
    raise _missing(kind, root / marker, root, hint)


def _scan(folder: Path, suffixes: Iterable[str], ending: str = "") -> dict[str, Path]:
    """The files under ``folder`` (recursively; hidden files such as macOS' ``._`` copies left out) with one of
    ``suffixes`` and whose stem ends with ``ending``, keyed by their path relative to ``folder`` without the suffix
    and ``ending``. Two files of one key (``a.jpg`` and ``a.png``) are an error naming both."""
    wanted = {s.lower() for s in suffixes}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in wanted or not path.stem.endswith(ending):
            continue
        if not path.is_file():
            continue
        relative = path.relative_to(folder).with_suffix("").as_posix()
        key = relative[: len(relative) - len(ending)]
        if key in found:
            raise DatasetFileError(f"{found[key]} and {path} are two files of one sample; keep one")
        found[key] = path
    return found


def _pairs(
    kind: str, root: Path, image_dir: Path, mask_dir: Path, image_suffixes: Iterable[str], endings: tuple[str, str]
) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of a split's two folders: images with ``image_suffixes``, PNG masks, their stems
    ending with ``endings`` (image, mask) around the shared name."""
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise _missing(kind, folder, root)
    images = _scan(image_dir, image_suffixes, endings[0])
    if not images:
        raise _missing(kind, image_dir / "<images>", root, f"\nhint: {image_dir} holds no image files")
    masks = _scan(mask_dir, [".png"], endings[1])
    return pair_files(images, masks, f"{kind} {image_dir} and {mask_dir}")


# ------------------------------------------------------------------------------------------------------- ADE20K


def _ade20k_base(root: Path) -> Path:
    return _base(root, (root / "ADEChallengeData2016", root), "images", "ade20k")


def build_ade20k(root: Path, split: str, transform: JointTransform | None) -> SegmentationFileDataset:
    """ADE20K's SceneParsing release (150 classes; 0 = "other" is ignored)."""
    base = _ade20k_base(root)
    image_dir, mask_dir = base / "images" / _ADE20K_SPLITS[split], base / "annotations" / _ADE20K_SPLITS[split]
    mapping = {0: IGNORE_INDEX, **{value: value - 1 for value in range(1, 151)}}
    label_map = LabelMap.from_mapping(mapping, "ADE20K values 0 (other, ignored) and 1..150 (the classes)")
    samples = _pairs("ade20k", root, image_dir, mask_dir, [".jpg"], ("", ""))
    return SegmentationFileDataset(samples, ADE20K_CLASSES, transform, label_map=label_map, palette=ADE20K_PALETTE)


# ------------------------------------------------------------------------------------------------ Pascal VOC 2012


def _voc_base(root: Path) -> Path:
    return _base(root, (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root), "JPEGImages", "voc")


def _voc_list(base: Path, split: str, augmented: bool) -> Path:
    folder = base / "ImageSets" / "Segmentation"
    names = ("train_aug.txt", "aug.txt") if augmented and split == "train" else (f"{split}.txt",)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return folder / names[0]


def _read_ids(path: Path) -> list[str]:
    """Image ids of a VOC list: '<id>' lines, or DeepLab's '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png'."""
    ids = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise DatasetFileError(f"{path} line {number}: {line.strip()!r}; expected '<id>' or "
                                   "'/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png'")  # fmt: skip
        ids.append(Path(fields[0]).stem)
    if not ids:
        raise DatasetFileError(f"{path}: no image ids in it; expected one '<id>' per line")
    return ids


def _lonely(paths: list[Path], what: str) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN]) + (" ..." if len(paths) > _SHOWN else "")
    return f"{len(paths)} {what}: {shown}"


def build_voc(
    root: Path, split: str, transform: JointTransform | None, *, augmented: bool = False
) -> SegmentationFileDataset:
    """Pascal VOC 2012 segmentation (21 classes, 255 = object borders, ignored); ``augmented``: train on SBD's
    augmented list and ``SegmentationClassAug`` masks (val stays VOC's own 1,449 images)."""
    if not isinstance(augmented, bool):
        raise ValueError(f"voc option augmented must be true or false, got {augmented!r}")
    base = _voc_base(root)
    list_file = _voc_list(base, split, augmented)
    if not list_file.is_file():
        raise _missing("voc", list_file, root)
    aug = augmented and split == "train"
    mask_dir = base / ("SegmentationClassAug" if aug else "SegmentationClass")
    if not mask_dir.is_dir():
        raise _missing("voc", mask_dir, root)
    ids = _read_ids(list_file)
    if aug and (base / "ImageSets" / "Segmentation" / "val.txt").is_file():
        val = set(_read_ids(base / "ImageSets" / "Segmentation" / "val.txt"))
        leaked = sorted(set(ids) & val)
        if leaked:
            raise DatasetFileError(f"{list_file} holds {len(leaked)} images of the val split ({', '.join(leaked[:5])}"
                                   "...): the augmented training list must leave val.txt's images out")  # fmt: skip
    samples = [(base / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in ids]
    missing_images = [image for image, _ in samples if not image.is_file()]
    missing_masks = [mask for _, mask in samples if not mask.is_file()]
    problems = [
        _lonely(paths, what)
        for paths, what in ((missing_images, "listed images missing"), (missing_masks, "listed masks missing"))
        if paths
    ]
    if problems:
        raise DatasetFileError(f"voc {list_file}: {'; '.join(problems)}")
    expected = "VOC class indices 0..20 or 255 (object borders, ignored)"
    label_map = LabelMap.from_mapping({**{v: v for v in range(21)}, IGNORE_INDEX: IGNORE_INDEX}, expected)
    return SegmentationFileDataset(samples, VOC_CLASSES, transform, label_map=label_map, palette=voc_palette(21))


# ------------------------------------------------------------------------------------------------------ Cityscapes


def build_cityscapes(
    root: Path, split: str, transform: JointTransform | None, *, labels: str = "labelIds"
) -> SegmentationFileDataset:
    """Cityscapes fine annotations, the 19 evaluated classes (train ids); every other label id is ignored."""
    if labels not in _CITYSCAPES_LABELS:
        raise ValueError(f"cityscapes option labels must be one of {list(_CITYSCAPES_LABELS)}, got {labels!r}")
    base = _base(root, (root,), "leftImg8bit", "cityscapes")
    image_dir, mask_dir = base / "leftImg8bit" / split, base / "gtFine" / split
    if labels == "labelIds":
        mapping = {i: CITYSCAPES_TRAIN_IDS.get(i, IGNORE_INDEX) for i in CITYSCAPES_LABEL_IDS}
        expected = "Cityscapes label ids 0..33"
    else:
        mapping = {**{i: i for i in range(len(CITYSCAPES_CLASSES))}, IGNORE_INDEX: IGNORE_INDEX}
        expected = "Cityscapes train ids 0..18 or 255 (ignored)"
    samples = _pairs("cityscapes", root, image_dir, mask_dir, [".png"], ("_leftImg8bit", f"_gtFine_{labels}"))
    label_map = LabelMap.from_mapping(mapping, expected)
    return SegmentationFileDataset(
        samples, CITYSCAPES_CLASSES, transform, label_map=label_map, palette=CITYSCAPES_PALETTE
    )


# -------------------------------------------------------------------------------------------------- generic folder


def build_segfolder(
    root: Path, split: str, transform: JointTransform | None, *, ignore_value: int = IGNORE_INDEX
) -> SegmentationFileDataset:
    """``images/<split>/``, ``masks/<split>/`` and ``classes.txt``: mask value i is class i, ``ignore_value``
    unlabelled."""
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise _missing("segfolder", classes_file, root)
    classes = read_class_names(classes_file)
    if len(classes) > IGNORE_INDEX:
        raise DatasetFileError(f"{classes_file}: {len(classes)} classes; at most {IGNORE_INDEX} (mask values "
                               f"0..{IGNORE_INDEX - 1}; {IGNORE_INDEX} is the ignore index)")  # fmt: skip
    if isinstance(ignore_value, bool) or not isinstance(ignore_value, int) or not len(classes) <= ignore_value < 2**16:
        raise ValueError(f"segfolder option ignore_value must be an integer in {len(classes)}..65535 (not a class "
                         f"of {classes_file}), got {ignore_value!r}")  # fmt: skip
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    expected = f"class indices 0..{len(classes) - 1} (the lines of {classes_file}) or {ignore_value} (ignored)"
    mapping = {**{i: i for i in range(len(classes))}, ignore_value: IGNORE_INDEX}
    samples = _pairs("segfolder", root, image_dir, mask_dir, IMG_EXTENSIONS, ("", ""))
    return SegmentationFileDataset(samples, classes, transform, label_map=LabelMap.from_mapping(mapping, expected))


# ------------------------------------------------------------------------------------------ where a split is on disk


def _on_disk(find: Any) -> Any:
    """``find(root, split, options)`` as a ``locate``: the path if it exists, else None (also for a missing release)."""

    def located(root: Path, split: str, options: Mapping[str, Any]) -> Path | None:
        try:
            path = find(root, split, options)
        except FileNotFoundError:
            return None
        return path if path.exists() else None

    return located


locate_ade20k = _on_disk(lambda root, split, _: _ade20k_base(root) / "images" / _ADE20K_SPLITS[split])
locate_voc = _on_disk(lambda root, split, opt: _voc_list(_voc_base(root), split, bool(opt.get("augmented", False))))
locate_cityscapes = _on_disk(lambda root, split, _: root / "leftImg8bit" / split)
locate_segfolder = _on_disk(lambda root, split, _: root / "images" / split)
