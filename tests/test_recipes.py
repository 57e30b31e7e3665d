"""The shipped recipes: one per image row of paper Table 1, all on the Table 5 settings, with the paper's counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptformer.data import eval_resize_size
from adaptformer.engine import TrainConfig, scaled_lr
from adaptformer.model import count_trainable
from adaptformer.preprocessing import Preprocessing
from adaptformer.recipes import load_recipe, recipe_names, recipe_path
from adaptformer.train import build_model

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


def test_every_table1_image_row_has_a_recipe() -> None:
    assert [n for n in recipe_names() if n.split("_")[0] in DATASETS] == sorted(ALL)  # video rows: test_video_engine


@pytest.mark.parametrize("name", ALL)
def test_recipe_follows_table5(name: str) -> None:
    cfg = TrainConfig.from_dict(load_recipe(name))
    dataset, method_key = name.split("_")
    method, bottleneck = METHODS[method_key]
    assert (cfg.dataset, cfg.method) == (dataset, method)
    if bottleneck is not None:
        assert cfg.bottleneck == bottleneck and cfg.adapter_scale == 0.1 and cfg.adapter_dropout == 0.1
    if method == "vpt":
        assert cfg.vpt_tokens == 1 and cfg.vpt_deep
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.9, 0.0)
    assert (cfg.effective_batch, cfg.epochs, cfg.warmup_epochs, cfg.min_lr) == (1024, 100, 20.0, 0.0)
    assert cfg.clip_grad is None and cfg.lr is None and cfg.head == "paper"
    assert (cfg.model, cfg.checkpoint_source) == ("vit_base_patch16_224.mae", "mae")
    low = method == "full" and dataset in ("svhn", "food101")  # 0.1x lr: unstable otherwise (paper)
    assert scaled_lr(cfg.blr, cfg.effective_batch) == pytest.approx(0.04 if low else 0.4)


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
    cfg = TrainConfig.from_dict(load_recipe(name))
    with torch.device("meta"):  # shapes only: counts without allocating ViT-B weights
        model = build_model(cfg, DATASETS[cfg.dataset])
    assert count_trainable(model) == trainable


def test_recipe_evaluates_at_resize_256_crop_224() -> None:
    cfg = TrainConfig.from_dict(load_recipe("food101_adaptformer64"))
    with torch.device("meta"):
        pre = Preprocessing.from_model(build_model(cfg, 101))
    assert pre.image_size == (224, 224) and eval_resize_size(pre) == 256 and pre.mean == (0.485, 0.456, 0.406)


def test_recipes_are_found_by_name_or_path_and_flags_override(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text(recipe_path("svhn_vpt").read_text() + "vpt_tokens: 8\n")
    assert load_recipe(own)["vpt_tokens"] == 8
    cfg = TrainConfig.from_dict({**load_recipe("svhn_vpt"), "batch_size": 32})
    assert cfg.batch_size == 32 and cfg.effective_batch == 1024
    with pytest.raises(ValueError, match="unknown recipe 'cifar10_lora'.*cifar100_adaptformer64"):
        load_recipe("cifar10_lora")
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
