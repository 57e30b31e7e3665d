"""The segmentation recipes (``recipes/segmentation.yaml``): ADE20K and VOC 2012 x ViT-B/16 (MAE, ImageNet-21k),
Swin-B, Swin-L x full / frozen / AdaptFormer-64 / LoRA / Adapter+. Each parses to a valid configuration on the V-PETL
Bench / Mona schedule, its iterations translated to epochs as the file says, builds the model it names (counted on the
meta device), and the README states the reference numbers beside them."""

from __future__ import annotations

import pytest
import torch
from tests.paths import ROOT

from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.train import build_model
from adaptformer.model import count_trainable
from adaptformer.recipes import load_recipe, recipe_names, recipe_paper_score, recipe_summary, recipe_text

BACKBONES = {  # recipe part -> (timm name, checkpoint source, drop-path, stage widths x blocks)
    "vitb_mae": ("vit_base_patch16_224.mae", "mae", 0.0, [(768, 12)]),
    "vitb_in21k": ("vit_base_patch16_224.augreg_in21k", "timm", 0.0, [(768, 12)]),
    "swinb": ("swin_base_patch4_window7_224.ms_in22k", "timm", 0.3, [(128, 2), (256, 2), (512, 18), (1024, 2)]),
    "swinl": ("swin_large_patch4_window7_224.ms_in22k", "timm", 0.3, [(192, 2), (384, 2), (768, 18), (1536, 2)]),
}
ROWS = ("full", "linear", "adaptformer64", "lora64", "adapter_plus8")
DATASETS = {  # recipe part -> (kind, train images, iterations of the reference schedule, classes)
    "ade20k": ("ade20k", 20_210, 160_000, 150),
    "voc": ("voc", 10_582, 40_000, 21),
}
PARTS = [(d, b, r) for d in DATASETS for b in BACKBONES for r in ROWS]
ALL = ["_".join(parts) for parts in PARTS]


def test_every_dataset_backbone_and_method_has_a_recipe() -> None:
    assert sorted(n for n in recipe_names("Segmentation")) == sorted(ALL)
    assert len(ALL) == 40 and set(ALL) <= set(recipe_names())


@pytest.mark.parametrize(("dataset", "backbone", "row"), PARTS, ids=ALL)
def test_recipe_follows_the_reference_schedule(dataset: str, backbone: str, row: str) -> None:
    """AdamW 6e-5, wd 0.01, 1,500 warmup iterations then poly (power 1) to 0, batch 16, 512 crops, UperNet 512 wide,
    whole-image evaluation at short side 512, the last model; 160k (ADE20K) / 40k (VOC) iterations within 1%."""
    name = f"{dataset}_{backbone}_{row}"
    kind, images, iterations, _ = DATASETS[dataset]
    cfg = parse_mapping(load_recipe(name))
    m, d, o = cfg.model, cfg.data, cfg.optim
    timm_name, source, drop_path, _ = BACKBONES[backbone]
    assert (m.backbone, m.checkpoint_source, m.drop_path, m.checkpoint) == (timm_name, source, drop_path, None)
    assert m.kwargs["img_size"] == 512 and (m.head, m.decode.channels, m.decode.layers) == ("upernet", 512, None)
    assert m.method_name == {"adaptformer64": "adaptformer", "lora64": "lora", "adapter_plus8": "adapter_plus"}.get(
        row, row
    )
    assert (d.dataset, d.val_split, d.flips()) == (kind, 0, True)
    assert d.options == ({"augmented": True} if kind == "voc" else {})
    s = d.segmentation
    assert (s.scale, s.base_size, s.photometric, s.eval_resize, s.inference) == ((0.5, 2.0), 512, True, True, "whole")
    assert (s.eval_flip, s.eval_scales) == (False, (1.0,))
    assert (o.optimizer, o.lr, o.betas, o.weight_decay) == ("adamw", 6e-5, (0.9, 0.999), 0.01)
    assert (o.schedule, o.poly_power, o.min_lr, o.effective_batch, o.clip_grad) == ("poly", 1.0, 0.0, 16, None)
    steps = images // o.effective_batch  # the engine drops the last partial batch of every epoch
    assert round(o.warmup() * steps) == 1_500
    assert abs(o.epochs * steps - iterations) / iterations < 0.01
    assert cfg.run.select == "last" and cfg.run.recipe == name


@pytest.mark.parametrize("backbone", BACKBONES)
def test_recipes_build_the_backbone_and_train_what_the_method_says(backbone: str) -> None:
    """Counted on the meta device: the head is the same UperNet under every method; full trains everything, the
    frozen backbone only the head, the PETL rows the head plus exactly their modules."""
    layers = BACKBONES[backbone][3]
    adapters = {  # the method's own trainable parameters over all blocks (width d, bottleneck b, rank r)
        "adaptformer64": sum(n * (2 * d * 64 + 64 + d) for d, n in layers),
        "lora64": sum(n * 2 * (2 * 64 * d) for d, n in layers),  # q and v: A (r x d) and B (d x r), no biases
        "adapter_plus8": sum(n * (2 * d * 8 + 8 + 2 * d) for d, n in layers),  # down, up, channel scale
    }
    counts = {}
    for row in ROWS:
        with torch.device("meta"):
            model = build_model(parse_mapping(load_recipe(f"ade20k_{backbone}_{row}")), 150)
        head = sum(p.numel() for p in model.decode_head.parameters())
        counts[row] = (count_trainable(model), head, sum(p.numel() for p in model.parameters()))
    heads = {head for _, head, _ in counts.values()}
    assert len(heads) == 1
    head = heads.pop()
    assert counts["full"][0] == counts["full"][2] and counts["linear"][0] == head
    for row, extra in adapters.items():
        assert counts[row][0] == head + extra, row
    if backbone == "swinl":  # Swin-L UperNet: mmseg's 234M; AdaptFormer-64 on its 24 blocks
        assert counts["adaptformer64"][0] - head == 2_329_728 and round(counts["full"][0] / 1e6) == 232


def test_swin_l_ade20k_recipes_carry_the_reference_numbers() -> None:
    expected = {"full": 52.10, "adaptformer64": 50.83, "linear": 46.84, "lora64": None, "adapter_plus8": None}
    for row, score in expected.items():
        name = f"ade20k_swinl_{row}"
        assert recipe_paper_score(name) == score
        summary = recipe_summary(name)
        if score is None:
            assert "no published number" in summary
        else:
            assert f"V-PETL Bench (as issue 25 records it) reports {score:.2f} mIoU" in summary
    assert all(recipe_paper_score(n) is None for n in ALL if not n.startswith("ade20k_swinl_"))


def test_recipe_text_says_what_the_recipe_does_not_do() -> None:
    notes = " ".join(line[2:] for line in recipe_text("ade20k_vitb_mae_full").splitlines() if line.startswith("# "))
    for missing in ("auxiliary FCN head", "class-balanced crop retry", "SyncBN", "layer-wise lr decay"):
        assert missing in notes
    assert "mae_pretrain_vit_base.pth" in notes and "ADEChallengeData2016" in notes
    swin = " ".join(line[2:] for line in recipe_text("voc_swinl_lora64").splitlines() if line.startswith("# "))
    assert "swin_large_patch4_window7_224_22k.pth" in swin and "--model.checkpoint_source swin" in swin
    assert "no reference number" in swin and "SegmentationClassAug" in swin


def test_readme_lists_the_recipes_and_the_reference_numbers_with_their_sources() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Reproducing segmentation numbers") :]
    section = section[: section.index("\n### ", 10)]
    for part in ("ade20k", "voc", *BACKBONES, *ROWS):
        assert f"`{part}`" in section or f"_{part}" in section, part
    for number in ("52.10", "50.83", "46.84", "51.36", "49.0", "51.03", "51.18"):
        assert number in section, number
    for source in ("V-PETL Bench", "Mona", "DINOv2", "github.com/Leiyi-Hu/mona"):
        assert source in section, source
