"""Multi-label image datasets (paper Table 2: several classes per image, scored by mAP): a generic list file, a
multi-hot CSV, NUS-WIDE in its release layout, COCO from its ``instances_*.json``, and ``digits-multilabel``, an
offline miniature (several scikit-learn digits per image).

Every builder returns an :class:`~.datasets.ImageFileDataset` / :class:`~.datasets.ArrayImageDataset` with
``multi_label=True``: an item's label is the float multi-hot vector binary cross-entropy takes. What the files say is
checked line by line, and every problem is a :class:`DatasetFileError` naming the file and line: an unknown class
name, a class listed twice for one image, a label file whose row count differs from its image list, a value that is
not 0 or 1. An image with no label at all is an error unless the kind's ``empty_labels`` option says what to do with
it: ``keep`` (train on it as all-negative; the COCO/NUS-WIDE images without any of the classes) or ``drop``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptformer.data.files import DatasetFileError, read_class_names, read_json, read_text, require_keys
from adaptformer.data.image.datasets import ArrayImageDataset, ImageFileDataset, Transform
from adaptformer.data.splits import train_val_split_indices

log = logging.getLogger(__name__)

EMPTY_LABELS = ("error", "keep", "drop")
LIST_LAYOUT = (
    "<root>/\n  classes.txt   one class name per line\n  train.txt     one image per line: <path relative to root> "
    "<class>,<class>,...\n                (a tab between path and classes when either has spaces)\n"
    "  val.txt       (optional: model selection)\n  test.txt"
)
CSV_LAYOUT = (
    "<root>/\n  train.csv   header: path,<class 1>,<class 2>,...; one row per image: its path relative to root,\n"
    "              then 0 or 1 per class\n  val.csv     (optional: model selection, same header)\n"
    "  test.csv    (same header)"
)
NUSWIDE_LAYOUT = (
    "<root>/\n  Concepts81.txt                       the 81 concept names (also read: ConceptsList/Concepts81.txt)\n"
    "  ImageList/TrainImagelist.txt         one image per line, e.g. actor\\0001_2124494179.jpg\n"
    "  ImageList/TestImagelist.txt\n"
    "  Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per line, aligned with the image list\n"
    "  Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    (also read: TrainTestLabels/ at the root)\n"
    "  Flickr/<folder>/<image>.jpg          the images (option images_dir)"
)
COCO_LAYOUT = (
    "<root>/\n  annotations/instances_train2014.json\n  annotations/instances_val2014.json\n"
    "  train2014/<file_name>.jpg\n  val2014/<file_name>.jpg      (the test split: COCO's val, as the multi-label "
    "literature)\n  (option year: 2017 reads the *2017 files)"
)


def _empty_policy(value: str) -> str:
    if value not in EMPTY_LABELS:
        raise ValueError(f"empty_labels must be one of {list(EMPTY_LABELS)}, got {value!r}")
    return value


def apply_empty_policy(
    samples: list[tuple[Any, tuple[int, ...]]], policy: str, source: str, where: Sequence[str]
) -> list[tuple[Any, tuple[int, ...]]]:
    """``samples`` with the images without any label handled as ``policy`` says (``where[i]`` names sample ``i``'s
    line or record in ``source`` for the error)."""
    empty = [i for i, (_, labels) in enumerate(samples) if not labels]
    if not empty:
        return samples
    if policy == "error":
        raise DatasetFileError(
            f"{source}: {where[empty[0]]} has no labels ({len(empty)} of {len(samples)} images have none); an empty "
            "label set is allowed only when you say so: --data.options '{empty_labels: keep}' trains on such images "
            "as all-negative, '{empty_labels: drop}' leaves them out"
        )
    if policy == "drop":
        log.info("%s: left out %d of %d images without labels (empty_labels: drop)", source, len(empty), len(samples))
        dropped = set(empty)
        return [s for i, s in enumerate(samples) if i not in dropped]
    return samples


def check_positive_coverage(
    label_sets: Sequence[Sequence[int]], classes: Sequence[str], source: str, *, required: bool, skipped: int = 0
) -> None:
    """Classes no image of the split has: in training (``required``) an output that can never be learned, a
    :class:`DatasetFileError`; elsewhere a warning (their average precision is undefined: mAP leaves them out)."""
    counts = np.bincount([c for labels in label_sets for c in labels], minlength=len(classes))
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if not empty:
        return
    shown = f"{empty[:10]}" + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    after = f" after leaving out {skipped} unreadable file(s)" if skipped else ""
    if required:
        raise DatasetFileError(
            f"{source}: no image has the class(es) {shown}{after}; every class needs positive training images"
        )
    log.warning("%s: no image has the class(es) %s%s: mAP leaves them out", source, shown, after)


def _file_dataset(
    samples: list[tuple[Path, tuple[int, ...]]],
    classes: list[str],
    transform: Transform | None,
    skip_bad_images: bool,
    source: str,
    split: str,
) -> ImageFileDataset:
    dataset = ImageFileDataset(samples, classes, transform, skip_bad_images=skip_bad_images, multi_label=True)
    check_positive_coverage(
        dataset.label_sets or [], classes, source, required=split == "train", skipped=len(dataset.skipped)
    )
    return dataset


def _class_indices(names: Sequence[str], index: Mapping[str, int], where: str, classes_file: str) -> tuple[int, ...]:
    labels = []
    for name in names:
        if not name:
            raise DatasetFileError(f"{where}: an empty class name in the label list (two commas, or a trailing one?)")
        if name not in index:
            shown = list(index)[:10]
            raise DatasetFileError(
                f"{where}: unknown class {name!r}; the classes are those of {classes_file} ({shown}"
                f"{' ...' if len(index) > 10 else ''})"
            )
        labels.append(index[name])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetFileError(f"{where}: class(es) {repeated} listed more than once for one image")
    return tuple(sorted(labels))


# ---------------------------------------------------------------------------------------------------------------
# The generic kinds: a list file with class names, a multi-hot CSV.


def locate_list(root: Path, split: str, options: Mapping[str, Any] | None = None) -> Path | None:
    return root / f"{split}.txt" if (root / f"{split}.txt").is_file() else None


def locate_csv(root: Path, split: str, options: Mapping[str, Any] | None = None) -> Path | None:
    return root / f"{split}.csv" if (root / f"{split}.csv").is_file() else None


def _require(path: Path, kind: str, layout: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{kind} dataset: {path} not found\nexpected layout:\n{layout}")
    return path


def build_multilabel_list(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool, empty_labels: str = "error"
) -> ImageFileDataset:
    """``<split>.txt`` lines ``path class,class,...`` with the class names of ``classes.txt``."""
    policy = _empty_policy(empty_labels)
    classes_file = _require(root / "classes.txt", "multilabel-list", LIST_LAYOUT)
    list_file = _require(root / f"{split}.txt", "multilabel-list", LIST_LAYOUT)
    classes = read_class_names(classes_file)
    index = {name: i for i, name in enumerate(classes)}
    samples, where = [], []
    for number, line in enumerate(read_text(list_file).splitlines(), start=1):
        if not line.strip():
            continue
        place = f"{list_file}:{number}"
        if "\t" in line:
            path, _, names = (part.strip() for part in line.partition("\t"))
        else:
            parts = line.split()
            path, names = (parts[0], "") if len(parts) == 1 else (" ".join(parts[:-1]), parts[-1])
            if len(parts) > 2 and (names.startswith(",") or parts[-2].endswith(",")):
                raise DatasetFileError(
                    f"{place}: a space inside the class list ({line.strip()!r}); write the classes comma-separated "
                    "without spaces, or put a tab between the path and the classes"
                )
        labels = _class_indices([n.strip() for n in names.split(",")] if names else [], index, place, str(classes_file))
        samples.append((root / path, labels))
        where.append(f"line {number} ({path})")
    samples = apply_empty_policy(samples, policy, str(list_file), where)
    return _file_dataset(samples, classes, transform, skip_bad_images, str(list_file), split)


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Every row with the file line it ends on (a quoted field may span lines), blank rows included."""
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise DatasetFileError(f"{path}:{reader.line_num}: not readable CSV ({err})") from err


def build_multilabel_csv(
    root: Path, split: str, transform: Transform | None, *, skip_bad_images: bool, empty_labels: str = "error"
) -> ImageFileDataset:
    """``<split>.csv``: a header ``path,<class>...`` (the classes; every split's header must be train's), then one
    row per image with 0/1 per class."""
    policy = _empty_policy(empty_labels)
    path = _require(root / f"{split}.csv", "multilabel-csv", CSV_LAYOUT)
    rows = [(number, row) for number, row in _read_csv_rows(path) if row]  # (line of the row's end, fields)
    if not rows or len(rows[0][1]) < 2:
        raise DatasetFileError(f"{path}: expected a header row path,<class 1>,<class 2>,...; found {rows[:1]}")
    header, classes = rows[0][1], [name.strip() for name in rows[0][1][1:]]
    _check_header_classes(classes, path)
    if split != "train" and (root / "train.csv").is_file():
        train_header = next((r for _, r in _read_csv_rows(root / "train.csv") if r), [])
        if [n.strip() for n in train_header[1:]] != classes:
            raise DatasetFileError(
                f"{path}: its class columns {classes[:10]} differ from {root / 'train.csv'}'s "
                f"{[n.strip() for n in train_header[1:]][:10]}; every split needs the same"
            )
    samples, where = [], []
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise DatasetFileError(
                f"{path}:{number}: {len(row)} columns, expected {len(header)} (path + one 0/1 per class of the header)"
            )
        values = [v.strip() for v in row[1:]]
        bad = [(classes[i], v) for i, v in enumerate(values) if v not in ("0", "1")]
        if bad:
            raise DatasetFileError(f"{path}:{number}: column {bad[0][0]!r} holds {bad[0][1]!r}; expected 0 or 1")
        samples.append((root / row[0].strip(), tuple(i for i, v in enumerate(values) if v == "1")))
        where.append(f"line {number} ({row[0].strip()})")
    samples = apply_empty_policy(samples, policy, str(path), where)
    return _file_dataset(samples, classes, transform, skip_bad_images, str(path), split)


def _check_header_classes(classes: list[str], path: Path) -> None:
    """The class columns of a CSV header: named, each once."""
    if any(not name for name in classes):
        raise DatasetFileError(f"{path}: the header has an unnamed class column; expected path,<class 1>,...")
    repeated = sorted({n for n in classes if classes.count(n) > 1})
    if repeated:
        raise DatasetFileError(f"{path}: class columns {repeated[:10]} appear more than once in the header")


# ---------------------------------------------------------------------------------------------------------------
# NUS-WIDE and COCO in their release layouts.


def _first_file(candidates: Sequence[Path], kind: str, layout: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{kind} dataset: none of {[str(p) for p in candidates]} found\nexpected layout:\n{layout}")


def _binary_column(path: Path, rows: int, image_list: Path) -> np.ndarray:
    lines = [line.strip() for line in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != rows:
        raise DatasetFileError(
            f"{path}: {len(lines)} rows, but {image_list} lists {rows} images; each label file "
            "needs one 0/1 row per image of its list, in the same order"
        )
    bad = next((i for i, v in enumerate(lines) if v not in ("0", "1")), None)
    if bad is not None:
        raise DatasetFileError(f"{path}:{bad + 1}: {lines[bad]!r}; expected 0 or 1")
    return np.asarray([v == "1" for v in lines], dtype=bool)


def build_nuswide(
    root: Path,
    split: str,
    transform: Transform | None,
    *,
    skip_bad_images: bool,
    images_dir: str = "Flickr",
    empty_labels: str = "error",
) -> ImageFileDataset:
    """NUS-WIDE's 81 concepts: the image list of the split and one ``Labels_<concept>_<Split>.txt`` per concept."""
    policy = _empty_policy(empty_labels)
    concepts_file = _first_file([root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"], "nuswide",
                                NUSWIDE_LAYOUT)  # fmt: skip
    classes = read_class_names(concepts_file)
    part = "Train" if split == "train" else "Test"
    image_list = _first_file([root / "ImageList" / f"{part}Imagelist.txt"], "nuswide", NUSWIDE_LAYOUT)
    names = []
    for line in read_text(image_list).splitlines():
        if line.strip():
            name = line.strip().replace("\\", "/")
            names.append(name.split("Flickr/", 1)[-1])  # the full list's lines start C:\ImageData\Flickr\...
    labels_dir = next(
        (d for d in (root / "Groundtruth" / "TrainTestLabels", root / "TrainTestLabels") if d.is_dir()), None
    )
    if labels_dir is None:
        raise FileNotFoundError(
            f"nuswide dataset: no TrainTestLabels folder under {root}\nexpected layout:\n{NUSWIDE_LAYOUT}"
        )
    columns = []
    for concept in classes:
        label_file = labels_dir / f"Labels_{concept}_{part}.txt"
        if not label_file.is_file():
            raise FileNotFoundError(
                f"nuswide dataset: {label_file} not found: {concepts_file} names the concept "
                f"{concept!r}, which needs its label file\nexpected layout:\n{NUSWIDE_LAYOUT}"
            )
        columns.append(_binary_column(label_file, len(names), image_list))
    matrix = np.stack(columns, axis=1) if columns else np.zeros((len(names), 0), dtype=bool)  # (N, K)
    images = root / images_dir
    samples = [(images / name, tuple(np.flatnonzero(row).tolist())) for name, row in zip(names, matrix, strict=True)]
    where = [f"image {i + 1} ({name})" for i, name in enumerate(names)]
    source = f"nuswide {image_list} with {labels_dir}"
    samples = apply_empty_policy(samples, policy, source, where)
    return _file_dataset(samples, classes, transform, skip_bad_images, source, split)


def build_coco(
    root: Path,
    split: str,
    transform: Transform | None,
    *,
    skip_bad_images: bool,
    year: int = 2014,
    empty_labels: str = "error",
) -> ImageFileDataset:
    """COCO multi-label: the classes are the ``categories`` (in id order: 80 for 2014/2017), an image's labels the
    categories of its ``annotations``; train is ``train<year>``, test ``val<year>``."""
    policy = _empty_policy(empty_labels)
    part = f"{'train' if split == 'train' else 'val'}{year}"
    path = _require(root / "annotations" / f"instances_{part}.json", "coco", COCO_LAYOUT)
    expected = (
        "a COCO instances file: an object with images [{id, file_name}], annotations [{image_id, category_id}] and "
        "categories [{id, name}]"
    )
    data = read_json(path, expected)
    require_keys(data, ["images", "annotations", "categories"], path, expected)
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        pairs = [(int(a["image_id"]), int(a["category_id"]), a.get("id")) for a in data["annotations"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetFileError(
            f"{path}: an entry lacks a field or has a wrong type ({err!r}); expected {expected}"
        ) from err
    classes = [name for _, name in categories]
    column = {cid: i for i, (cid, _) in enumerate(categories)}
    labels: dict[int, set[int]] = {image_id: set() for image_id in images}
    for image_id, category_id, annotation_id in pairs:
        if category_id not in column:
            raise DatasetFileError(
                f"{path}: annotation {annotation_id} has category_id {category_id}, which is not "
                f"among the categories {sorted(column)[:10]}..."
            )
        if image_id not in labels:
            raise DatasetFileError(
                f"{path}: annotation {annotation_id} refers to image_id {image_id}, which is not among the images"
            )
        labels[image_id].add(column[category_id])
    order = sorted(images)
    samples = [(root / part / images[i], tuple(sorted(labels[i]))) for i in order]
    where = [f"image id {i} ({images[i]})" for i in order]
    samples = apply_empty_policy(samples, policy, str(path), where)
    return _file_dataset(samples, classes, transform, skip_bad_images, str(path), split)


# ---------------------------------------------------------------------------------------------------------------
# The offline miniature.


def build_digits_multilabel(
    root: Path | None,
    split: str,
    transform: Transform | None,
    *,
    num_samples: int = 1500,
    max_digits: int = 3,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> ArrayImageDataset:
    """32x32 images holding 1..``max_digits`` scikit-learn digits (each 8x8 digit upscaled to a 16x16 cell of a 2x2
    grid); an image's labels are the digits it shows. Train and test images are composed from disjoint digit images
    (a stratified ``test_fraction`` of the 1,797), with their own seeded draws."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    if num_samples < 1 or not 1 <= max_digits <= 4:
        raise ValueError(
            f"digits-multilabel needs num_samples >= 1 and max_digits in 1..4, got {num_samples}, {max_digits}"
        )
    digits = load_digits()
    train_idx, test_idx = train_val_split_indices(digits.target.tolist(), test_fraction, seed)
    pool = np.asarray(train_idx if split == "train" else test_idx)
    cells = np.kron(digits.images[pool], np.ones((2, 2)))  # (P, 16, 16), 0..16 gray levels
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    images = np.zeros((num_samples, 32, 32), dtype=np.uint8)
    label_sets = []
    for n in range(num_samples):
        count = int(rng.integers(1, max_digits + 1))
        chosen = rng.choice(len(pool), size=count)
        for slot, digit in zip(rng.permutation(4)[:count], chosen, strict=True):
            r, c = divmod(int(slot), 2)
            images[n, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = np.round(cells[digit] * (255.0 / 16.0))
        label_sets.append(tuple(sorted({int(digits.target[pool[d]]) for d in chosen})))
    classes = [str(d) for d in range(10)]
    check_positive_coverage(label_sets, classes, f"digits-multilabel {split} ({num_samples} images)",
                            required=split == "train")  # fmt: skip
    return ArrayImageDataset(images, label_sets, classes, transform, multi_label=True)
