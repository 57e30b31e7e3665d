"""VTAB-1k and FGVC data kinds (the PETL benchmarks' layouts), the no-augmentation / full-resize image geometry, and
the protocol recipes: tiny real trees of PNGs in tmp dirs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.data.release_files import png_file, write_fgvc, write_vtab_task

from adaptformer.cli import main
from adaptformer.data import DatasetFileError, build_image_dataset
from adaptformer.data.image.fgvc import FGVC_DATASETS
from adaptformer.data.image.vtab import VTAB_GROUPS, VTAB_TASKS
from adaptformer.data.transforms import ImageAugment, build_image_transform
from adaptformer.engine.config.consistency import ConsistencyConfig
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.splits import DataSpec, given_val_split, resolve_test_split
from adaptformer.engine.train import build_model
from adaptformer.model import count_trainable
from adaptformer.preprocessing import Preprocessing
from adaptformer.recipes import load_recipe, recipe_names, recipe_text


def test_task_table_is_the_vtab_suite() -> None:
    groups = {g: [t for t, info in VTAB_TASKS.items() if info.group == g] for g in VTAB_GROUPS}
    assert [len(groups[g]) for g in VTAB_GROUPS] == [7, 4, 8]
    assert VTAB_TASKS["cifar"].num_classes == 100 and VTAB_TASKS["sun397"].num_classes == 397
    assert sum(d.num_classes for d in FGVC_DATASETS.values()) == 200 + 555 + 102 + 120 + 196


@pytest.mark.parametrize(
    ("stage", "split", "count"),
    [("tune", "train", 4), ("tune", "val", 2), ("tune", "test", 2), ("final", "train", 6), ("final", "test", 4)],
)
def test_vtab_stage_reads_its_list(tmp_path: Path, stage: str, split: str, count: int) -> None:
    write_vtab_task(tmp_path, "patch_camelyon")
    data = build_image_dataset("vtab1k", tmp_path, split, None, task="patch_camelyon", stage=stage)
    assert len(data) == count and data.classes == ["0", "1"]
    assert sorted(set(data.targets)) == [0, 1]
    image, label = data[0]
    assert image.shape == (3, 8, 12) and label == 0


@pytest.mark.parametrize(("stage", "val", "test"), [("tune", "val", "val200.txt"), ("final", None, "test.txt")])
def test_vtab_stage_chooses_selection_and_test(tmp_path: Path, stage: str, val: str | None, test: str) -> None:
    folder = write_vtab_task(tmp_path, "patch_camelyon")
    spec = DataSpec("vtab1k", str(tmp_path), {"task": "patch_camelyon", "stage": stage})
    assert given_val_split(spec) == val
    assert resolve_test_split(spec) == "test"
    (folder / "test.txt").unlink()  # tune never reads test.txt; final cannot run without it
    if stage == "tune":
        assert len(build_image_dataset("vtab1k", tmp_path, "test", None, task="patch_camelyon", stage=stage)) == 2
    else:
        with pytest.raises(FileNotFoundError, match=r"test\.txt not found.*\n.*expected layout"):
            build_image_dataset("vtab1k", tmp_path, "test", None, task="patch_camelyon", stage=stage)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("images/train800/0_0.png", r"line 2 .*expected 'relative/path label'"),
        ("images/train800/0_0.png x", r"line 2 .*label 'x' is not an integer"),
        ("images/train800/0_0.png 2", r"line 2 .*label 2 is outside the allowed range 0\.\.1"),
        ("images/nowhere.png 1", r"line 2 .*image .*nowhere\.png not found"),
    ],
)
def test_vtab_bad_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    folder = write_vtab_task(tmp_path, "patch_camelyon")
    first = (folder / "train800.txt").read_text().splitlines()[0]
    (folder / "train800.txt").write_text(f"{first}\n{line}\n")
    with pytest.raises(DatasetFileError, match=match) as err:
        build_image_dataset("vtab1k", tmp_path, "train", None, task="patch_camelyon")
    assert "train800.txt" in str(err.value)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"task": "cifar100"}, ValueError, r"unknown task 'cifar100'; allowed: \['cifar'"),
        ({"task": "dtd", "stage": "test"}, ValueError, r"unknown stage 'test'"),
        ({"task": "dtd"}, FileNotFoundError, r"dtd/train800\.txt not found.*\n.*expected layout:\n<root>/"),
    ],
)
def test_vtab_bad_options_and_missing_files(tmp_path: Path, options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build_image_dataset("vtab1k", tmp_path, "train", None, **options)


def test_vtab_final_has_no_val_split(tmp_path: Path) -> None:
    write_vtab_task(tmp_path, "patch_camelyon")
    with pytest.raises(ValueError, match=r"stage 'final' has no 'val' split"):
        build_image_dataset("vtab1k", tmp_path, "val", None, task="patch_camelyon", stage="final")


@pytest.mark.parametrize("dataset", list(FGVC_DATASETS))
@pytest.mark.parametrize(
    ("stage", "split", "count"),
    [("tune", "train", 4), ("tune", "val", 2), ("tune", "test", 2), ("final", "train", 6), ("final", "test", 2)],
)
def test_fgvc_stage_reads_its_json(tmp_path: Path, dataset: str, stage: str, split: str, count: int) -> None:
    write_fgvc(tmp_path, dataset)
    data = build_image_dataset("fgvc", tmp_path, split, None, dataset=dataset, stage=stage)
    assert len(data) == count
    assert data.classes == ["3", "7"] and sorted(set(data.targets)) == [0, 1]  # the JSON's labels, in sorted order


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda d: d.update({"003.class/train_0.png": "3"}),
            r"train\.json: entry '003\.class/train_0\.png': label '3'",
        ),
        (lambda d: d.update({"missing.png": 3}), r"train\.json: entry 'missing\.png': image .* not found"),
        (lambda d: d.update({"003.class/train_1.png": True}), r"train_1\.png': label True is not an integer"),
    ],
)
def test_fgvc_bad_entries_name_the_file(tmp_path: Path, edit: Callable[[dict], None], match: str) -> None:
    folder = write_fgvc(tmp_path, "stanford_cars")
    listing = json.loads((folder / "train.json").read_text())
    edit(listing)
    (folder / "train.json").write_text(json.dumps(listing))
    with pytest.raises(DatasetFileError, match=match):
        build_image_dataset("fgvc", tmp_path, "train", None, dataset="stanford_cars")


def test_fgvc_test_label_unknown_to_train(tmp_path: Path) -> None:
    folder = write_fgvc(tmp_path, "nabirds")
    listing = json.loads((folder / "test.json").read_text())
    listing["003.class/test_0.png"] = 11
    (folder / "test.json").write_text(json.dumps(listing))
    with pytest.raises(DatasetFileError, match=r"test\.json: labels \[11\] appear in neither train\.json nor val"):
        build_image_dataset("fgvc", tmp_path, "test", None, dataset="nabirds", stage="final")


def test_fgvc_missing_json_shows_layout(tmp_path: Path) -> None:
    (tmp_path / "OxfordFlower").mkdir()
    with pytest.raises(FileNotFoundError, match=r"OxfordFlower/train\.json not found.*\nexpected layout:\n<root>/"):
        build_image_dataset("fgvc", tmp_path, "train", None, dataset="OxfordFlower")


def write_cub(root: Path) -> Path:
    """The official CUB-200-2011 release, shrunk to 2 classes x 2 images."""
    base = root / "CUB_200_2011"
    images, labels, split = [], [], []
    for image_id, (cls, name, train) in enumerate(
        [(1, "001.Albatross/a.png", 1), (1, "001.Albatross/b.png", 0), (2, "002.Auklet/c.png", 1),
         (2, "002.Auklet/d.png", 0)], start=1,
    ):  # fmt: skip
        png_file(base / "images" / name, value=cls * 50)
        images.append(f"{image_id} {name}")
        labels.append(f"{image_id} {cls}")
        split.append(f"{image_id} {train}")
    for file, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split),
                        ("classes.txt", ["1 001.Albatross", "2 002.Auklet"])):  # fmt: skip
        (base / file).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("split", ["train", "test"])
def test_cub200_official_release(tmp_path: Path, split: str) -> None:
    write_cub(tmp_path)
    data = build_image_dataset("cub200", tmp_path, split, None)
    assert data.classes == ["001.Albatross", "002.Auklet"] and data.targets == [0, 1]
    assert [p.name for p, _ in data.samples] == (["a.png", "c.png"] if split == "train" else ["b.png", "d.png"])


@pytest.mark.parametrize(
    ("file", "text", "match"),
    [
        ("image_class_labels.txt", "1 1\n2 1\n3 5\n4 2\n", r"image_class_labels\.txt: image id 3: class id '5'"),
        ("train_test_split.txt", "1 1\n2 0\n3 2\n4 0\n", r"train_test_split\.txt: image id 3: '2' is neither"),
        ("images.txt", "1 001.Albatross/a.png\nx\n", r"images\.txt, line 2 \('x'\): expected '<id> <relative"),
        ("classes.txt", None, r"CUB_200_2011/classes\.txt not found.*\nexpected layout:\n<root>/\n  CUB_200_2011/"),
    ],
)
def test_cub200_bad_files(tmp_path: Path, file: str, text: str | None, match: str) -> None:
    base = write_cub(tmp_path)
    if text is None:
        (base / file).unlink()
    else:
        (base / file).write_text(text)
    with pytest.raises((DatasetFileError, FileNotFoundError), match=match):
        build_image_dataset("cub200", tmp_path, "train", None)


@pytest.mark.parametrize(("augment", "deterministic"), [(ImageAugment(), False), (ImageAugment(random=False), True)])
@pytest.mark.parametrize("resize", ["full", "crop"])
def test_no_augmentation_and_full_resize(augment: ImageAugment, deterministic: bool, resize: str) -> None:
    pre = Preprocessing(input_size=(3, 16, 16), crop_pct=1.0)
    augment = ImageAugment(augment.crop_scale, augment.flip, augment.random, resize)
    image = Image.new("RGB", (32, 8))
    image.paste((255, 0, 0), (0, 0, 4, 8))  # a red band at the left edge: a centre crop drops it
    torch.manual_seed(0)
    train = build_image_transform(pre, True, augment)
    outs = [train(image) for _ in range(4)]
    same = all(torch.equal(outs[0], o) for o in outs)
    assert same == deterministic
    test = build_image_transform(pre, False, augment)(image)
    assert test.shape == (3, 16, 16)
    red_left = bool(test[0, :, 0].mean() > test[1, :, 0].mean())
    assert red_left == (resize == "full")
    if deterministic:
        assert torch.equal(outs[0], test)


# ---------------------------------------------------------------------------------------------------------------
# The protocol recipes (recipes/vtab_fgvc.yaml).

PROTOCOL_ROWS = (
    "adaptformer8", "adaptformer8_ln", "adaptformer64", "lora8", "adapter_plus8", "adaptformer8_pace",
    "adapter_plus8_pace",
)  # fmt: skip
PROTOCOL_RECIPES = [f"vtab_{t}_{r}" for t in VTAB_TASKS for r in PROTOCOL_ROWS] + [
    f"fgvc_{d}_{r}" for d in FGVC_DATASETS for r in PROTOCOL_ROWS
]


def test_protocol_recipes_are_listed() -> None:
    assert set(PROTOCOL_RECIPES) == set(recipe_names("VTAB-1k / FGVC protocols"))
    assert "V-PETL Bench" in recipe_text("vtab_cifar_lora8") and "VPT" in recipe_text("fgvc_nabirds_adaptformer8")


@pytest.mark.parametrize("name", PROTOCOL_RECIPES)
def test_protocol_recipe_is_a_valid_config(name: str) -> None:
    cfg = parse_mapping(load_recipe(name))
    assert cfg.model.backbone == "vit_base_patch16_224.augreg_in21k" and cfg.model.head == "linear"
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-3, 1e-4)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.batch_size) == (100, 10, 64)
    assert cfg.run.select == "last" and cfg.data.val_split == 0 and cfg.data.options["stage"] == "tune"
    vtab = name.startswith("vtab_")
    assert (cfg.data.augment, cfg.data.resize) == ((False, "full") if vtab else (True, "crop"))
    assert (cfg.model.drop_path, cfg.optim.min_lr) == (0.1, 1e-5)
    assert cfg.optim.label_smoothing == (0.1 if vtab else 0.0)
    pace = ConsistencyConfig(variant="pace", weight=1.0, sigma=1.2, first_block=1)
    assert cfg.optim.consistency == (pace if name.endswith("_pace") else ConsistencyConfig())


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"optim\.label_smoothing must be in \[0, 1\)"):
        parse_mapping({"data": {"dataset": "digits"}, "optim": {"label_smoothing": value}})


# ViT-B/16: 12 blocks of width 768. AdaptFormer-b: 12 * (768*b + b + b*768 + 768) [+ 12 * 2*768 with LayerNorm in];
# LoRA r on q and v: 12 * 2 * r * (768 + 768); Adapter+ b: 12 * (768*b + b + b*768 + 768 + 768 scale); head 769 * C.
@pytest.mark.parametrize(
    ("row", "adapter"),
    [
        ("adaptformer8", 12 * (2 * 768 * 8 + 8 + 768)),
        ("adaptformer8_ln", 12 * (2 * 768 * 8 + 8 + 768 + 2 * 768)),
        ("adaptformer64", 12 * (2 * 768 * 64 + 64 + 768)),
        ("lora8", 12 * 2 * 8 * (768 + 768)),
        ("adapter_plus8", 12 * (2 * 768 * 8 + 8 + 768 + 768)),
        ("adaptformer8_pace", 12 * (2 * 768 * 8 + 8 + 768)),  # PACE adds no parameter
        ("adapter_plus8_pace", 12 * (2 * 768 * 8 + 8 + 768 + 768)),
    ],
)
def test_protocol_recipe_builds_the_expected_trainable_count(row: str, adapter: int) -> None:
    cfg = parse_mapping(load_recipe(f"vtab_cifar_{row}"))
    with torch.device("meta"):  # shapes only
        model = build_model(cfg, VTAB_TASKS["cifar"].num_classes)
    assert count_trainable(model) == adapter + 769 * 100


TINY = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'


@pytest.mark.parametrize(("stage", "tested"), [("tune", 4), ("final", 8)])
def test_train_cli_runs_the_vtab_recipe_per_stage(tmp_path: Path, stage: str, tested: int) -> None:
    """`adaptformer train --recipe vtab_<task>_adaptformer8` on a tiny 2-task tree, 1 epoch, a tiny ViT."""
    data = tmp_path / "vtab-1k"
    for task in ("patch_camelyon", "kitti"):
        write_vtab_task(data, task)
    out = tmp_path / "run"
    args = [
        "train", "--recipe", "vtab_kitti_adaptformer8", "--model.backbone", "vit_tiny_patch16_224",
        "--model.kwargs", TINY, "--data.data_dir", str(data),
        "--data.options", json.dumps({"task": "kitti", "stage": stage}), "--optim.epochs", "1",
        "--optim.warmup_epochs", "0", "--optim.batch_size", "4", "--optim.effective_batch", "4",
        "--optim.precision", "fp32", "--data.num_workers", "0", "--run.output_dir", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    test = json.loads((out / "test.json").read_text())
    assert test["n"] == tested  # kitti, 4 classes: tune tests val200.txt (1 per class), final test.txt (2 per class)
    assert test["select"] == "last" and (test["val_acc1"] is not None) == (stage == "tune")  # final: no validation
