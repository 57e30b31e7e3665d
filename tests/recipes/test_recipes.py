"""The shipped recipes: every row of paper Table 1 on the Table 5 settings, with the paper's counts; all 30 resolve to
exactly the effective configuration adaptformer 0.1's recipe files gave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.paths import FIXTURES, ROOT

from adaptformer.data import eval_resize_size
from adaptformer.engine import scaled_lr
from adaptformer.engine.config.parser import parse_cli, parse_mapping
from adaptformer.engine.train import build_model
from adaptformer.model import count_trainable
from adaptformer.preprocessing import Preprocessing
from adaptformer.recipes import load_recipe, recipe_config, recipe_names, recipe_summary, recipe_text

V01_RECIPES = FIXTURES / "v0_1" / "recipes_v0_1.json"
DATASETS = {"cifar100": 100, "svhn": 10, "food101": 101}
METHODS = {
    "full": ("full", None),
    "linear": ("linear", None),
    "vpt": ("vpt", None),
    "adaptformer1": ("adaptformer", 1),
    "adaptformer4": ("adaptformer", 4),
    "adaptformer64": ("adaptformer", 64),
}
ALL = [f"{d}_{m}" for d in DATASETS for m in METHODS]
V01 = json.loads(V01_RECIPES.read_text())


def test_every_table1_image_row_has_a_recipe() -> None:
    table1 = recipe_names("Table 1")
    assert [n for n in table1 if n.split("_")[0] in DATASETS] == sorted(ALL)  # video rows: test_video_engine
    assert len(table1) == 30


@pytest.mark.parametrize("name", sorted(V01))
def test_every_v01_recipe_resolves_to_the_same_configuration(name: str) -> None:
    """0.1 shipped 30 recipe files; 0.2 derives them from one table. The effective configurations are equal."""
    old = parse_mapping(V01[name])  # 0.1's flat effective config, read through the 0.1 upgrade
    new = parse_mapping(recipe_config(name)).to_dict()
    old = old.to_dict()
    assert (old["data"].pop("num_workers"), new["data"].pop("num_workers")) == (4, None)  # 0.2: null, fit to the CPUs
    assert new == old


@pytest.mark.parametrize("name", ALL)
def test_recipe_follows_table5(name: str) -> None:
    cfg = parse_mapping(load_recipe(name))
    dataset, method_key = name.split("_")
    method, bottleneck = METHODS[method_key]
    m, o = cfg.model, cfg.optim
    assert (cfg.data.dataset, m.method_name) == (dataset, method)
    if bottleneck is not None:
        assert (m.method.bottleneck, m.method.scale, m.method.dropout) == (bottleneck, 0.1, 0.1)
    if method == "vpt":
        assert m.method.num_tokens == 1 and m.method.deep
    assert (o.optimizer, o.momentum, o.weight_decay) == ("sgd", 0.9, 0.0)
    assert (o.effective_batch, o.epochs, o.warmup_epochs, o.min_lr) == (1024, 100, 20.0, 0.0)
    assert o.clip_grad is None and o.lr is None and m.head == "paper"
    assert (m.backbone, m.checkpoint_source) == ("vit_base_patch16_224.mae", "mae")
    low = method == "full" and dataset in ("svhn", "food101")  # 0.1x lr: unstable otherwise (paper)
    assert scaled_lr(o.blr, o.effective_batch) == pytest.approx(0.04 if low else 0.4)
    assert "paper Table 1 reports" in recipe_summary(name) and cfg.run.recipe == name


@pytest.mark.parametrize(
    ("name", "trainable"),
    [
        ("cifar100_adaptformer64", 1_266_532),
        ("svhn_adaptformer64", 1_197_322),
        ("food101_adaptformer64", 1_267_301),
        ("cifar100_vpt", 76_900 + 9_216),
        ("cifar100_linear", 76_900),
        ("svhn_full", 85_798_656 + 7_690),
    ],
)
def test_recipe_builds_the_paper_parameter_count(name: str, trainable: int) -> None:
    cfg = parse_mapping(load_recipe(name))
    with torch.device("meta"):  # shapes only: counts without allocating ViT-B weights
        model = build_model(cfg, DATASETS[cfg.data.dataset])
    assert count_trainable(model) == trainable


# Table 7: Swin-B (image), with per-stage dim // 12 = [10, 21, 42, 85] over depths [2, 2, 18, 2]: adapters
# 2 * (2*128*10 + 10 + 128) + 2 * (2*256*21 + 21 + 256) + 18 * (2*512*42 + 42 + 512) + 2 * (2*1024*85 + 85 + 1024)
SWIN_B_ADAPTERS = 2 * 2698 + 2 * 11029 + 18 * 43562 + 2 * 175189
TABLE7_IMAGE = {"cifar100": (100, 91.88), "svhn": (10, 97.31), "food101": (101, 91.86)}


def test_table7_counts_average_the_papers_figure_and_are_the_readmes() -> None:
    """The five built models' counts (asserted per recipe below) average to the paper's "1.25M", and the README's
    Table 7 rows state them."""
    counts = {}
    for dataset, classes in (("cifar100", 100), ("svhn", 10), ("food101", 101), ("ssv2", 174), ("hmdb51", 51)):
        with torch.device("meta"):
            model = build_model(parse_mapping(load_recipe(f"{dataset}_swin_adaptformer")), classes)
        counts[dataset] = count_trainable(model)
    assert round(sum(counts.values()) / 5 / 1e6, 2) == 1.25
    readme = (ROOT / "README.md").read_text()
    for dataset, count in counts.items():
        assert f"| `{dataset}_swin_adaptformer` |" in readme and f"| {count:,} |" in readme, dataset


@pytest.mark.parametrize("dataset", TABLE7_IMAGE)
def test_table7_image_recipes_build_swin_b_with_the_papers_count(dataset: str) -> None:
    name = f"{dataset}_swin_adaptformer"
    classes, paper = TABLE7_IMAGE[dataset]
    cfg = parse_mapping(load_recipe(name))
    assert name in recipe_names("Table 7") and f"paper Table 7 reports {paper:.2f} top-1" in recipe_summary(name)
    notes = " ".join(line[2:] for line in recipe_text(name).splitlines() if line.startswith("# "))
    assert "release swin_base_patch4_window7_224_22k.pth with --model.checkpoint_source swin" in notes
    assert cfg.model.backbone == "swin_base_patch4_window7_224.ms_in22k" and cfg.model.method.bottleneck == 1 / 12
    assert (cfg.optim.optimizer, cfg.optim.effective_batch, cfg.optim.epochs) == ("sgd", 1024, 100)
    with torch.device("meta"):
        model = build_model(cfg, classes)
    assert count_trainable(model) == SWIN_B_ADAPTERS + (1024 + 1) * classes
    widths = sorted({m.down_proj.out_features for m in model.modules() if type(m).__name__ == "AdaptMLP"})
    assert widths == [10, 21, 42, 85]


@pytest.mark.parametrize(("dataset", "classes", "paper"), [("ssv2", 174, 54.09), ("hmdb51", 51, 74.65)])
def test_table7_video_recipes_build_video_swin_b_with_the_count(dataset: str, classes: int, paper: float) -> None:
    name = f"{dataset}_swin_adaptformer"
    cfg = parse_mapping(load_recipe(name))
    assert f"paper Table 7 reports {paper:.2f} top-1" in recipe_summary(name)
    assert (cfg.model.backbone, cfg.model.checkpoint_source) == ("tv_swin3d_b", "video-swin")
    assert (cfg.data.video.num_frames, cfg.model.method.dropout, cfg.optim.epochs) == (8, 0.0, 90)
    with torch.device("meta"):
        model = build_model(cfg, classes)
    assert count_trainable(model) == SWIN_B_ADAPTERS + (1024 + 1) * classes  # 1,340,298 / 1,214,223 (README)
    assert model.pretrained_cfg["num_frames"] == 8


def test_recipe_evaluates_at_resize_256_crop_224() -> None:
    cfg = parse_mapping(load_recipe("food101_adaptformer64"))
    with torch.device("meta"):
        pre = Preprocessing.from_model(build_model(cfg, 101))
    assert pre.image_size == (224, 224) and eval_resize_size(pre) == 256 and pre.mean == (0.485, 0.456, 0.406)


def test_recipes_are_found_by_name_or_path_and_flags_override(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text(recipe_text("svhn_vpt").replace("num_tokens: 1", "num_tokens: 8"))  # the text is a valid file
    assert load_recipe(own)["model"]["method"]["num_tokens"] == 8
    cfg = parse_cli(["--optim.batch_size", "32"], [("recipe", load_recipe("svhn_vpt")), ("file", load_recipe(own))])
    assert cfg.optim.batch_size == 32 and cfg.optim.effective_batch == 1024 and cfg.model.method.num_tokens == 8
    with pytest.raises(ValueError, match="unknown recipe 'cifar10_lora'.*cifar100_adaptformer64"):
        load_recipe("cifar10_lora")
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_recipe_names_are_unique_across_the_tables() -> None:
    names = recipe_names()
    assert len(names) == len(set(names))


# Table 6: AdaptFormer-64 on the supervised ImageNet-21k ViT-B/16 (video: inflated); same shapes as the MAE / VideoMAE
# ViT-B, so the same counts as Table 1's AdaptFormer-64 rows (REFERENCE: 1,266,532 / 1,197,322 / 1,267,301 /
# 1,324,974 / 1,230,387).
TABLE6 = {
    "cifar100": (100, 91.86, 1_266_532),
    "svhn": (10, 97.29, 1_197_322),
    "food101": (101, 90.89, 1_267_301),
    "ssv2": (174, 60.18, 1_324_974),
    "hmdb51": (51, 73.21, 1_230_387),
}


@pytest.mark.parametrize("dataset", TABLE6)
def test_table6_recipes_use_the_in21k_backbone_and_its_normalisation(dataset: str) -> None:
    name = f"{dataset}_in21k_adaptformer64"
    classes, paper, trainable = TABLE6[dataset]
    cfg = parse_mapping(load_recipe(name))
    assert name in recipe_names("Table 6") and f"paper Table 6 reports {paper:.2f} top-1" in recipe_summary(name)
    video = dataset in ("ssv2", "hmdb51")
    image = ("vit_base_patch16_224.augreg_in21k", "timm")
    expected = ("video_vit_base_patch16_224", "inflate-image") if video else image
    assert (cfg.model.backbone, cfg.model.checkpoint_source) == expected
    m, o = cfg.model.method, cfg.optim
    assert (m.bottleneck, m.scale, m.dropout) == (64, 0.1, 0.0 if video else 0.1)
    assert (o.optimizer, o.effective_batch, o.epochs) == ("sgd", 1024, 90 if video else 100)
    with torch.device("meta"):
        model = build_model(cfg, classes)
    assert count_trainable(model) == trainable
    pre = Preprocessing.from_model(model)  # the augreg_in21k weights' normalisation, also for the inflated video ViT
    assert (pre.mean, pre.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if not video:
        assert eval_resize_size(pre) == 256


def _adapter_count(bottleneck: int, blocks: int = 12, width: int = 768) -> int:
    return blocks * (2 * width * bottleneck + bottleneck + width)


SSV2_TASK = 1_536 + 769 * 174  # fc_norm + the paper head for 174 classes
ABLATIONS = {
    "ssv2_adaptformer64_layers1to6": ({"layers": [0, 1, 2, 3, 4, 5]}, 50.48, _adapter_count(64, blocks=6)),
    "ssv2_adaptformer64_layers7to12": ({"layers": [6, 7, 8, 9, 10, 11]}, 57.99, _adapter_count(64, blocks=6)),
    "ssv2_adaptformer64_sequential": ({"form": "sequential"}, 58.17, _adapter_count(64)),
    "ssv2_adaptformer64_scale0.01": ({"scale": 0.01}, 53.44, _adapter_count(64)),
    "ssv2_adaptformer64_scale0.05": ({"scale": 0.05}, 58.85, _adapter_count(64)),
    "ssv2_adaptformer64_scale0.2": ({"scale": 0.2}, 58.89, _adapter_count(64)),
    **{
        f"ssv2_adaptformer{b}": ({"bottleneck": b}, paper, _adapter_count(b))
        for b, paper in ((16, 57.62), (32, 58.27), (128, 58.95), (256, 58.87), (512, 58.98))
    },
    **{f"ssv2_vpt{n}": ({"num_tokens": n}, None, 12 * 768 * n) for n in (4, 16, 64)},
}


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_recipes_change_one_setting_of_table1_ssv2(name: str) -> None:
    changed, paper, method_parameters = ABLATIONS[name]
    cfg = parse_mapping(load_recipe(name))
    base = parse_mapping(load_recipe("ssv2_vpt" if "vpt" in name else "ssv2_adaptformer64"))
    assert name in recipe_names("Ablations")
    assert cfg.to_dict()["model"]["method"] == {**base.to_dict()["model"]["method"], **changed}
    assert {k: v for k, v in cfg.to_dict().items() if k != "model"} == {
        **{k: v for k, v in base.to_dict().items() if k != "model"},
        "run": {**base.to_dict()["run"], "recipe": name},
    }
    if paper is None:
        assert "no number given" in recipe_summary(name)
    else:
        assert f"the paper's SSv2 ablations report {paper:.2f} top-1" in recipe_summary(name)
    with torch.device("meta"):
        model = build_model(cfg, 174)
    assert count_trainable(model) == method_parameters + SSV2_TASK
