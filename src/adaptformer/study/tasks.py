"""The study's comparison points and tasks: which methods (as registered method families with their sizes) and which
offline tasks, with the recipe each task runs every method on (:mod:`.run` trains them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..backbones.shapes_vit import SHAPES_VIT_ARGS, SHAPES_VIT_FILE
from ..engine.config.layers import merge_config
from ..methods import get_method


@dataclass(frozen=True)
class Method:
    """One point of the comparison: a registered method family (:func:`adaptformer.methods.get_method`), its size
    for the plot (prompt tokens or bottleneck width; None for a family without one) and the fields of the family's
    config that select this point (``("num_tokens", 16), ("deep", True)``); the others keep the config's defaults.
    The family and the fields are checked against the registry on construction."""

    name: str
    family: str
    size: int | None = None
    fields: tuple[tuple[str, Any], ...] = ()
    ablation: str | None = None  # the ablation this point varies (a variant of adaptformer-64, reported apart)
    consistency: str | None = None  # trained with this consistency regularisation (optim.consistency.variant)

    def __post_init__(self) -> None:
        get_method(self.family).config.from_dict(self.plain_fields())  # a registered family, fields of its config

    def plain_fields(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields}

    def method_config(self) -> dict[str, Any]:
        """This point's method config as plain data, e.g. ``{"name": "vpt", "num_tokens": 16, "deep": True}``."""
        return {"name": self.family, **self.plain_fields()}

    def overrides(self) -> dict[str, Any]:
        """The nested configuration that selects this point: ``{"model": {"method": ...}}``."""
        return {"model": {"method": self.method_config()}}

    @property
    def is_default(self) -> bool:
        """Whether a study runs this point unless told which: not an ablation, not a regularised variant."""
        return self.ablation is None and self.consistency is None


def _sized(family: str, field_name: str, sizes: Sequence[int], **fixed: Any) -> tuple[Method, ...]:
    """``family-N`` for every N in ``sizes``: the family's ``field_name`` set to N (and ``fixed`` set as given)."""
    return tuple(Method(f"{family}-{n}", family, n, ((field_name, n), *fixed.items())) for n in sizes)


def _ablation(kind: str, suffix: str, **fields: Any) -> tuple[Method]:
    """``adaptformer-64-<suffix>``: AdaptFormer-64 with ``fields`` changed, a point of ablation ``kind``."""
    return (Method(f"adaptformer-64-{suffix}", "adaptformer", None, (("bottleneck", 64), *fields.items()), kind),)


def _pace_bases() -> tuple[Method, ...]:
    return (*_sized("adaptformer", "bottleneck", (16, 64)), *_sized("lora", "rank", (8,)),
            *_sized("adapter_plus", "bottleneck", (16,)))  # fmt: skip


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("linear", "linear"),
        *_sized("vpt", "num_tokens", (1, 4, 16, 64), deep=True),  # VPT-deep, the paper's baseline
        *_sized("adaptformer", "bottleneck", (1, 4, 16, 64)),
        # at about the trainable parameters of AdaptFormer-4/16/64: LoRA on q and v (2 x 2rd per block, so rank b/2)
        # and Adapter+ (2bd + b + 2d per block)
        *_sized("lora", "rank", (2, 8, 32)),
        *_sized("adapter_plus", "bottleneck", (4, 16, 64)),
        Method("full", "full"),
        # the paper's ablations (its Table 3 on SSv2) as variants of adaptformer-64 on the 6-block shapes ViT: adapters
        # in the first or the last half of the blocks only, the sequential form, the scale s (0.1 is adaptformer-64)
        *_ablation("blocks", "blocks1-3", layers=(0, 1, 2)),
        *_ablation("blocks", "blocks4-6", layers=(3, 4, 5)),
        *_ablation("form", "sequential", form="sequential"),
        *(m for s in (0.01, 0.05, 0.2) for m in _ablation("scale", f"s{s:g}", scale=s)),
        # the robustness question's regularised points: PACE (optim.consistency, its paper's defaults) on the methods
        # with adapter modules, at the sizes the question asks about
        *(replace(m, name=f"{m.name}-pace", consistency="pace") for m in _pace_bases()),
    )
}


@dataclass(frozen=True)
class Task:
    """A dataset, the backbone adapted to it and the recipe, identical for every method (as in the paper).

    ``config`` is nested TrainConfig data (model, data, optim and run sections, no method); ``quick`` is merged over it
    for ``--quick`` (:func:`~adaptformer.engine.config.layers.merge_config`). ``checkpoint`` is the pre-trained weights
    (None: random initialisation). ``method_settings`` maps a method family to fields of its config that this task sets
    (they apply to that family's runs only; a point's own fields, such as its size, win). ``full_lr_scale`` multiplies
    the learning rate (``optim.lr``, else ``optim.blr``) of the methods that train the backbone (full
    fine-tuning) only, as the paper did for SVHN and Food-101 (0.1x, "unstable otherwise"); ``lr_scales`` multiplies
    it for the named method families (chosen on the validation split: see the comment at the digits task).
    """

    name: str
    description: str
    num_classes: int
    config: dict[str, Any]
    quick: dict[str, Any]
    checkpoint: str | None
    checkpoint_source: str = "timm"
    full_lr_scale: float = 1.0
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family, settings in self.method_settings.items():
            get_method(family).config.from_dict(settings)  # a registered family, fields of its config

    def method_config(self, method: Method) -> dict[str, Any]:
        """The method config of ``method``'s runs on this task: the task's settings for the family, then the point's."""
        return {"name": method.family, **self.method_settings.get(method.family, {}), **dict(method.fields)}


_RECIPE: dict[str, Any] = {
    # Paper Table 5 (no weight decay, linear warmup then cosine per iteration, momentum 0.9 for SGD), shortened to fit
    # the 20-minute budget on 2 CPU cores; fp32 (faster than bf16 autocast for these tiny models on CPU).
    "data": {"num_workers": 0, "val_split": 0.1, "split_seed": 0},
    "optim": {"momentum": 0.9, "weight_decay": 0.0, "precision": "fp32", "eval_batch_size": 512},
    "run": {"device": "cpu", "select": "best", "log_every": 10_000},
}  # fmt: skip

# The video ViT built to match the shapes ViT, so the image weights inflate into it one to one.
VIDEO_KWARGS: dict[str, Any] = {
    "img_size": SHAPES_VIT_ARGS["img_size"], "patch_size": SHAPES_VIT_ARGS["patch_size"],
    "embed_dim": SHAPES_VIT_ARGS["embed_dim"], "depth": SHAPES_VIT_ARGS["depth"],
    "num_heads": SHAPES_VIT_ARGS["num_heads"], "tubelet_size": 2, "num_frames": 4,
    # the image backbone's input normalisation (its pretrained_cfg), which its weights expect
    "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}  # fmt: skip


# Per task: the dataset, the backbone and the recipe (nested TrainConfig data), and what --quick changes in them. The
# recipes were picked on the validation split of seed-0 pilots (never the test split). Digits: SGD with blr 1.0 beat
# 0.1, 0.5 and 2.0 for the frozen-backbone methods (their zero-initialised adapters barely move at the paper's 0.1 in
# ~200 steps; pilots with the earlier backbone); full fine-tuning diverged or degraded at blr >= 0.3, hence the
# paper's own 0.1x for it. Digits' augmentation: no flip (digits are not mirror-symmetric: a mirrored 2, 3 or 7 is no
# digit at all) and no random crop (an upscaled 8x8 digit has no detail to spare): RandomResizedCrop keeping at least
# 50% / 80% / 100% of the area gave validation top-1 61.8 / 67.4 / 71.5 (linear), 60.4 / 70.8 / 76.4
# (AdaptFormer-16) and 86.1 / 90.3 / 90.3 (full) at 8 epochs; 16 epochs then beat 8 (linear 75.0, AdaptFormer-16
# 83.3). Motion: no SGD setting (blr 0.03-1.0) lifted any method above chance within the budget; AdamW at 3e-4 was
# the one setting where one did (full); at 3e-3 (10 epochs) the frozen-backbone methods' training loss stayed near ln 4.
# Why the frozen-backbone methods stay at chance: scripts/motion_controls.py (reports/study/motion_controls.md).
DIGITS_CONFIG: dict[str, Any] = merge_config(_RECIPE, {
    "model": {"backbone": "vit_shapes_patch8_32"},
    "data": {"dataset": "digits", "crop_scale": [1.0, 1.0], "flip": False},
    "optim": {"epochs": 16, "warmup_epochs": 1, "batch_size": 64, "optimizer": "sgd", "blr": 1.0},
})  # fmt: skip
DIGITS_QUICK: dict[str, Any] = {"data": {"options": {"test_fraction": 0.8}}, "optim": {"epochs": 1, "warmup_epochs": 0}}
# Multi-label digits (paper Table 2's kind of task, scored by mAP): 32x32 images holding 1-3 digits in a 2x2 grid; the
# digits recipe at 10x its blr. Binary cross-entropy averages over the 10 classes of every image, so each output's
# gradient is a tenth of what it would be alone; at digits' blr every adapter method stayed near the linear probe
# (reports/study_ablations, first version). Seed 0's validation mAP at 1x / 3x / 10x (the study's own cells):
# linear 77.5 / 80.5 / 83.1, vpt-16 87.1 / 89.7 / 91.8, adaptformer-64 78.2 / 85.1 / 95.6, lora-8 78.4 / 88.1 / 95.1,
# adapter_plus-16 74.9 / 86.3 / 96.4, full 92.4 / 96.4 / 97.3: 10x for all (the best for every method; higher
# factors were not tried). The per-family scales stay digits' (full 0.1x, LoRA and Adapter+ 0.3x).
DIGITS_MULTILABEL_CONFIG: dict[str, Any] = merge_config(DIGITS_CONFIG, {
    "data": {"dataset": "digits-multilabel", "options": {"num_samples": 1500}}, "optim": {"blr": 10.0},
})  # fmt: skip
DIGITS_MULTILABEL_QUICK: dict[str, Any] = {
    "data": {"options": {"num_samples": 200}}, "optim": {"epochs": 1, "warmup_epochs": 0},
}  # fmt: skip
# Semantic segmentation of digits (the paper's first open question: does AdaptFormer work for dense prediction?), with
# DINOv2's linear decode head (BatchNorm + 1x1 conv on the last block's patch tokens) for every method. Picked on seed
# 0's validation mIoU (the study's own cells unless said otherwise; never the test split):
# - Geometry. The dataset's default canvases (digits of 16-24 px) at base_size 64 with 32x32 crops on the shipped 32x32
#   ViT stayed at 11-13 for every method (SGD blr 1.0, 10-20 epochs; AdamW alike): the strokes are thinner than the
#   ViT's 8-px patches. A linear head over 8x8 patch tokens cannot place them: the best per-patch prediction (each
#   patch's class shares, upsampled as the head's logits are) scores 25.5 mIoU on those canvases, 45.9 with digits of
#   24-32 px (digit_size). base_size 128 (digits of 32-48 px) read through 32x32 or 64x64 windows gave 16-19 at best
#   (15 epochs, SGD or AdamW): windows cut the digits, and a plain training loop there found the digits' ink (~50%
#   IoU as "some digit") but gave most of it the wrong digit. So: 24-32 px digits on 64x64 canvases, read whole by the
#   ViT built for 64x64 inputs (img_size 64, its 4x4 position table resampled to 8x8: one window per canvas, every
#   digit in view), no random rescaling (scale [1, 1]; the canvases are random already).
# - Optimizer. SGD, the digits recipe, left the adapters where they started (linear and AdaptFormer-16 traced the same
#   curves to 3 decimals at blr 1.0 and 3.0); AdamW moves them. blr (lr = blr x 32 / 256) 0.024 / 0.04 / 0.08 with 1
#   warmup epoch: linear 15.7 / - / 16.7, adaptformer-16 15.6 / 18.4 / 25.4, adaptformer-64 18.4 / 20.8 / 10.8 (it
#   broke as the warmup ended and never recovered), lora-8 at 0.3x 12.3 / - / 17.5, full at 0.1x 14.3 / - / 14.4.
#   blr 0.08 with 2 warmup epochs: adaptformer-16 25.4, adaptformer-64 26.7 (fixed), lora-8 at 1x 24.5 (so LoRA runs
#   at 1x here, not digits' 0.3x), full at 0.3x 12.9 (below 0.1x's 14.4: the paper's 0.1x stays). blr 0.08 and 2
#   warmup epochs it is; linear was not re-run with the longer warmup before the study (its seed 0 is its first run
#   with it), nor full at 0.1x.
# - Budget: 2,000 canvases per split and 16 epochs (900 steps) keep the 15 runs near 30 min on 2 idle CPU cores; the
#   validation curves were still rising at the end, so every number here is an early one.
DIGITS_SEG_CONFIG: dict[str, Any] = merge_config(_RECIPE, {
    "model": {"backbone": "vit_shapes_patch8_32", "kwargs": {"img_size": 64}, "head": "linear"},
    "data": {"dataset": "digits-seg", "options": {"num_samples": 2000, "digit_size": [24, 32]}, "flip": False,
             "segmentation": {"base_size": 64, "scale": [1.0, 1.0]}},
    "optim": {"epochs": 16, "warmup_epochs": 2, "batch_size": 32, "optimizer": "adamw", "blr": 0.08,
              "schedule": "poly"},
})  # fmt: skip
DIGITS_SEG_QUICK: dict[str, Any] = {
    "data": {"options": {"num_samples": 40, "digit_size": [24, 32]}}, "optim": {"epochs": 1, "warmup_epochs": 0},
}  # fmt: skip
MOTION_CONFIG: dict[str, Any] = merge_config(_RECIPE, {
    "model": {"backbone": "video_vit_small_patch16_224", "kwargs": VIDEO_KWARGS},
    "data": {"dataset": "synthetic-video", "options": {"num_samples": 512, "num_classes": 4},
             "video": {"test_clips": 1, "test_crops": 1}},
    "optim": {"epochs": 10, "warmup_epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": 3e-4},
})  # fmt: skip
MOTION_METHOD_SETTINGS: dict[str, dict[str, Any]] = {"adaptformer": {"dropout": 0.0}}  # the paper's for video
MOTION_QUICK: dict[str, Any] = {
    "data": {"options": {"num_samples": 64, "num_classes": 4}}, "optim": {"epochs": 1, "warmup_epochs": 0},
}  # fmt: skip


def default_tasks(pretrained: bool = True) -> dict[str, Task]:
    """The study's tasks; ``pretrained=False`` uses randomly initialised backbones (a control, and for tests)."""
    digits = Task(
        "digits",
        "scikit-learn's digits (1,797 real 8x8 images, 10 classes, a stratified held-out test split), "
        "vit_shapes_patch8_32",
        10,
        DIGITS_CONFIG,
        DIGITS_QUICK,
        "timm" if pretrained else None,
        full_lr_scale=0.1,
        # LoRA and Adapter+ have no 0.1 output scale, so blr 1.0 is too large for them: seed 0's validation top-1
        # (lora-8 / adapter_plus-16) was 52.1 / 68.8 at 1x, 87.5 / 88.2 at 0.3x, 78.5 / 79.2 at 0.1x, 66.7 / 63.2 at
        # 0.03x (a pilot run through the study's own cells); 0.3x it is
        lr_scales={"lora": 0.3, "adapter_plus": 0.3},
    )
    motion = Task(
        "motion",
        "synthetic motion video (the class is the direction of motion; 4 frames of 32x32), the shapes ViT "
        "inflated to a video ViT of the same size (paper Table 4: image-pre-trained backbone on video)",
        4,
        MOTION_CONFIG,
        MOTION_QUICK,
        str(SHAPES_VIT_FILE) if pretrained else None,
        "inflate-image",
        method_settings=MOTION_METHOD_SETTINGS,
    )
    digits_multilabel = Task(
        "digits-multilabel",
        "multi-label digits (32x32 images holding 1-3 of scikit-learn's digits in a 2x2 grid; the labels are the "
        "digits shown; 1,500 training and 1,500 test images composed from disjoint digit images), vit_shapes_patch8_32",
        10,
        DIGITS_MULTILABEL_CONFIG,
        DIGITS_MULTILABEL_QUICK,
        "timm" if pretrained else None,
        full_lr_scale=0.1,
        lr_scales={"lora": 0.3, "adapter_plus": 0.3},
    )
    digits_seg = Task(
        "digits-seg",
        "semantic segmentation of digits (64x64 canvases holding 1-3 of scikit-learn's digits drawn at 24-32 px; 11 "
        "classes: background and the ten digits, the mask a digit's ink; 2,000 training and 2,000 test canvases "
        "composed from disjoint digit images), vit_shapes_patch8_32 built for 64x64 inputs (img_size 64: its "
        "position table resampled) with a linear decode head (BatchNorm + 1x1 conv) on its last block's patch tokens",
        11,
        DIGITS_SEG_CONFIG,
        DIGITS_SEG_QUICK,
        "timm" if pretrained else None,
        full_lr_scale=0.1,  # chosen on the validation split, as LoRA's 1x: see the comment at DIGITS_SEG_CONFIG
    )
    return {t.name: t for t in (digits, motion, digits_multilabel, digits_seg)}
