"""The data of a run, image or video behind one interface: load a split (its samples and classes), apply the backbone's
preprocessing once the model exists, and score predictions as the data requires.

    spec = DataSpec.from_config(cfg)
    train = load_split(spec, "train")                # classes known, nothing decoded or transformed yet
    model = build_model(cfg, len(train.classes))
    train_set = train.build(model, "train")          # augmented
    val_set = train.build(model, "eval")             # deterministic, one view per sample (same samples, same order)
    test = load_split(spec, "test")
    test_set = test.build(model, "test")             # images: as "eval"; videos: test_clips x test_crops views each
    metrics = test.score(evaluate(model, eval_loader(test_set, ...), ..., multi_label=test.multi_label), test_set)

Which splits a run uses: ``train``; for the final test ``test``, or ``val`` when the dataset has a val split on disk
but no test split (an ImageNet-style ``train/`` + ``val/`` folder; logged, see :func:`resolve_test_split`); for model
selection the dataset's own ``val`` split when it also has a test split (:func:`given_val_split`, logged; then
``data.val_split`` is not used), else a part carved from ``train`` (``data.val_split``). A split with no samples
(none listed, or all of them unreadable and skipped) is an error, never a score of NaN.

Segmentation datasets (``SEGMENTATION_DATASETS``) are a third kind of split: (image, mask) pairs under a joint
transform, segmented whole or by sliding window and scored by mIoU from one confusion matrix
(:mod:`.segmentation`). Every split kind answers :meth:`~ImageSplit.validate` and :meth:`~ImageSplit.test` the same
way, so the training loop does not ask which kind it holds.

Images and videos differ in exactly three places: how a split is read (``IMAGE_DATASETS`` / ``VIDEO_DATASETS``),
which transform turns a sample into the model's input (both from the backbone's :class:`Preprocessing`, never from a
file name; for clips the frame count comes from the backbone too), and how a test split is scored: a video's views
have their logits averaged into one prediction per video (multi-view top-1/top-5, ``n`` = videos), reported next to
the single-view top-1/top-5 (every view scored alone, averaged over all views).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch.nn as nn
from torch.utils.data import Dataset

from ..data import IMAGE_DATASETS, DatasetFileError, ImageAugment, build_image_transform
from ..data.kinds import DatasetKind, split_location
from ..data.segmentation import (
    SEGMENTATION_DATASETS,
    SegmentationAugment,
    build_segmentation_dataset,
    build_segmentation_transform,
)
from ..data.video import (
    PAPER_TEST_VIEWS,
    STRATEGIES,
    VIDEO_DATASETS,
    SamplerConfig,
    TestViews,
    VideoSource,
    VideoTransform,
    VideoTransformConfig,
    load_video_split,
)
from ..precision import Precision
from ..preprocessing import Preprocessing, clip_frames
from ..validation import check_choice
from .config.sections import DATASET_KINDS, DataConfig, TrainConfig
from .distributed import DistributedContext
from .loaders import load_image_split, with_transform
from .loop import Predictions, evaluate, multi_view_metrics
from .metrics import PRIMARY, score_predictions
from .progress import Progress
from .segmentation import SegmentationInference, evaluate_segmentation

logger = logging.getLogger(__name__)

Purpose = Literal["train", "eval", "test"]


@dataclass(frozen=True)
class VideoSettings:
    """How clips are cut from videos (the frame count is the backbone's): the ``data.video`` section's fields
    (:class:`~.config.sections.VideoConfig`, same names) with the flip of training clips, as a run uses them and an
    adapter records them.

    Args:
        sampling: "segment" (TSN, SSv2) or "dense"; None: the dataset kind's default.
        sampling_stride: frames between sampled frames for dense sampling; None: the kind's default (4).
        flip: random horizontal flip of training clips (off in the paper's video recipe).
        test_clips: temporal clips per test video.
        test_crops: spatial crops per test clip (1 = centre, 3 = along the long side).
    """

    sampling: str | None = None
    sampling_stride: int | None = None
    flip: bool = False
    test_clips: int = PAPER_TEST_VIEWS[0]
    test_crops: int = PAPER_TEST_VIEWS[1]

    def __post_init__(self) -> None:
        if self.sampling is not None:
            check_choice("sampling", self.sampling, STRATEGIES)
        if self.sampling_stride is not None and self.sampling_stride < 1:
            raise ValueError(f"sampling_stride must be >= 1, got {self.sampling_stride}")
        TestViews(self.test_clips, self.test_crops)  # validates the view grid

    def resolved(self, kind: str) -> VideoSettings:
        """These settings with the defaults of dataset ``kind`` filled in."""
        spec = VIDEO_DATASETS[kind]
        return replace(
            self, sampling=self.sampling or spec.sampling, sampling_stride=self.sampling_stride or spec.stride
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataSpec:
    """Which dataset a run or an evaluation reads, and how.

    Args:
        kind: a key of ``IMAGE_DATASETS`` or ``VIDEO_DATASETS``.
        root: the folder holding it (None for the built-in kinds).
        options: per-kind options (``--data.options``).
        verify_checksums: check official md5 sums (CIFAR, SVHN).
        skip_bad: leave unreadable images / undecodable videos out (counted) instead of failing.
        video: clip sampling and test views (video kinds only).
        image: random crop range and flip of training images (image kinds only).
        segmentation: training geometry of (image, mask) pairs (segmentation kinds only).
        inference: how evaluation segments an image (segmentation kinds only).
    """

    kind: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verify_checksums: bool = True
    skip_bad: bool = False
    video: VideoSettings = field(default_factory=VideoSettings)
    image: ImageAugment = field(default_factory=ImageAugment)
    segmentation: SegmentationAugment = field(default_factory=SegmentationAugment)
    inference: SegmentationInference = field(default_factory=SegmentationInference)

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"unknown dataset kind {self.kind!r}; allowed: {sorted(DATASET_KINDS)}")

    @property
    def is_video(self) -> bool:
        return self.kind in VIDEO_DATASETS

    @property
    def is_segmentation(self) -> bool:
        return self.kind in SEGMENTATION_DATASETS

    def video_record(self) -> dict[str, Any] | None:
        """The video settings with the kind's defaults filled in, as an adapter records them; None for images."""
        return self.video.resolved(self.kind).to_dict() if self.is_video else None

    @classmethod
    def from_config(cls, cfg: TrainConfig | DataConfig) -> DataSpec:
        """The data of a run (or of a :class:`DataConfig` alone, e.g. ``adaptformer eval``'s)."""
        d = cfg if isinstance(cfg, DataConfig) else cfg.data
        v = d.video
        settings = VideoSettings(v.sampling, v.sampling_stride, d.flips(), v.test_clips, v.test_crops)
        return cls(
            d.dataset, d.data_dir, dict(d.options), d.verify_checksums,
            d.skip_bad_videos if d.is_video else d.skip_bad_images, settings,
            ImageAugment() if d.is_video or d.is_segmentation else d.image_augment(),
            d.segmentation.augment(d.flips()), d.segmentation.inference_settings(),
        )  # fmt: skip


def video_pipeline(
    model: nn.Module, settings: VideoSettings, purpose: Purpose
) -> tuple[SamplerConfig, VideoTransform, TestViews]:
    """How a video backbone's clips are cut for ``purpose`` (frame count and preprocessing from the model, sampling
    and views from resolved ``settings``): the frame sampler, the transform and the view grid (1 x 1 unless
    testing). Shared by dataset splits and ``predict``."""
    frames = clip_frames(model)
    if frames is None or settings.sampling is None or settings.sampling_stride is None:
        raise ValueError(f"a video backbone and resolved video settings are needed, got {frames} frames, {settings}")
    sampler = SamplerConfig(settings.sampling, frames, settings.sampling_stride)  # type: ignore[arg-type]
    transform = VideoTransform(Preprocessing.from_model(model), VideoTransformConfig(flip=settings.flip))
    views = TestViews(settings.test_clips, settings.test_crops) if purpose == "test" else TestViews(1, 1)
    return sampler, transform, views


class ImageSplit:
    """One split (``name``) of an image dataset; its transform follows the model it is built for."""

    def __init__(self, dataset: Dataset, augment: ImageAugment | None = None, name: str = "train") -> None:
        self.name = name
        self.dataset = dataset
        self.augment = augment or ImageAugment()
        self.classes: list[str] = list(dataset.classes)  # type: ignore[attr-defined]
        self.skipped = len(getattr(dataset, "skipped", []))
        self.multi_label = bool(getattr(dataset, "multi_label", False))  # several classes per image: sigmoid + BCE

    @property
    def primary(self) -> str:
        """The score model selection maximises: acc1, or map for a multi-label task."""
        return PRIMARY[self.multi_label]

    def metrics(self, predictions: Predictions) -> dict[str, Any]:
        """The task's scores of ``predictions`` (top-1/top-5, or mAP and F1 for a multi-label task)."""
        return score_predictions(predictions, self.multi_label)

    def build(self, model: nn.Module, purpose: Purpose) -> Dataset:
        """The samples with the train (random crop [+ flip], ``augment``) or eval (resize + centre crop) transform."""
        if clip_frames(model) is not None:
            raise ValueError("this is an image dataset but the backbone takes video clips; choose a video dataset kind")
        _refuse_segmentation_model(model, self.name)
        transform = build_image_transform(Preprocessing.from_model(model), purpose == "train", self.augment)
        return with_transform(self.dataset, transform)

    def validate(
        self, model: nn.Module, loader: Any, precision: Precision, ctx: DistributedContext, progress: Progress | None
    ) -> dict[str, Any]:
        """The scores of model selection over ``loader`` (:meth:`metrics` of every process's predictions)."""
        return self.metrics(evaluate(model, loader, precision, ctx, progress, self.multi_label))

    def test(
        self,
        model: nn.Module,
        loader: Any,
        precision: Precision,
        ctx: DistributedContext,
        progress: Progress | None,
        dataset: Dataset,
    ) -> dict[str, Any]:
        """The test report's scores over ``loader`` of ``dataset`` (:meth:`score`)."""
        return self.score(evaluate(model, loader, precision, ctx, progress, self.multi_label), dataset)

    def score(self, predictions: Predictions, dataset: Dataset) -> dict[str, Any]:
        """acc1, acc5, loss and n (:func:`.loop.classification_metrics`; multi-label: mAP, F1 and each class's AP,
        :func:`.metrics.multilabel_metrics`), and the number of unreadable image files left out (never predicted)."""
        return {**score_predictions(predictions, self.multi_label, per_class=True), "skipped": self.skipped}


def _refuse_segmentation_model(model: nn.Module, split: str) -> None:
    if getattr(model, "adaptformer_task", None) is not None:
        raise ValueError(
            f"the {split} split is a classification dataset but the model segments images (a segmentation adapter); "
            "choose a segmentation dataset kind (ade20k, voc, cityscapes, segfolder, digits-seg)"
        )


class VideoSplit:
    """One split (``name``) of a video dataset; clip length, input size and normalisation follow the model it is
    built for."""

    def __init__(self, source: VideoSource, settings: VideoSettings, name: str = "train") -> None:
        self.name = name
        self.source = source
        self.settings = settings
        self.classes: list[str] = list(source.classes)
        self.skipped = len(source.skipped_files)
        self.multi_label = False  # video datasets are single-label
        self.primary = PRIMARY[False]

    def metrics(self, predictions: Predictions) -> dict[str, Any]:
        """Top-1/top-5 of single views (validation: one view per video)."""
        return score_predictions(predictions, False)

    def build(self, model: nn.Module, purpose: Purpose) -> Dataset:
        """Training clips (random, augmented), or deterministic views: one per video ("eval"), the grid ("test")."""
        if clip_frames(model) is None:
            raise ValueError(
                "this is a video dataset but the backbone takes images; choose a video backbone (video_vit_*, "
                "tv_swin3d_*)"
            )
        sampler, transform, views = video_pipeline(model, self.settings, purpose)
        return self.source.dataset(sampler, transform, "train" if purpose == "train" else "test", views)

    validate = ImageSplit.validate
    test = ImageSplit.test

    def score(self, predictions: Predictions, dataset: Dataset) -> dict[str, Any]:
        """Multi-view metrics over ``dataset``'s views per video (see :func:`multi_view_metrics`) and the number of
        videos left out as undecodable (never predicted, so neither right nor wrong)."""
        views = int(getattr(dataset, "views_per_video", 1))
        return {**multi_view_metrics(predictions, views), "skipped": self.skipped}


class SegmentationSplit:
    """One split (``name``) of a segmentation dataset: (image, mask) pairs; the joint transform follows the model it
    is built for, and evaluation segments each image by ``inference`` and scores mIoU over the whole split."""

    primary = "miou"
    multi_label = False
    skipped = 0  # a bad image or mask is always an error

    def __init__(
        self,
        dataset: Dataset,
        augment: SegmentationAugment | None = None,
        inference: SegmentationInference | None = None,
        name: str = "train",
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.augment = augment or SegmentationAugment()
        self.inference = inference or SegmentationInference()
        self.classes: list[str] = list(dataset.classes)  # type: ignore[attr-defined]

    def build(self, model: nn.Module, purpose: Purpose) -> Dataset:
        """The pairs with the training transform (random scale, crop, flip, colour) or the evaluation one (the image
        resized, the mask kept at its resolution)."""
        if getattr(model, "adaptformer_task", None) is None:
            raise ValueError(
                "this is a segmentation dataset but the model is a classifier; build a segmentation model "
                "(adaptformer.segmentation.create_segmentation_model, --model.head linear|upernet)"
            )
        transform = build_segmentation_transform(Preprocessing.from_model(model), purpose == "train", self.augment)
        return with_transform(self.dataset, transform)

    def _scores(self, model: nn.Module, loader: Any, precision: Precision, ctx: DistributedContext,
                progress: Progress | None) -> dict[str, Any]:  # fmt: skip
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        layout = inner.layout  # segmentation.features.FeatureLayout
        if self.inference.mode == "whole" and layout.fixed_size is not None:
            raise ValueError(
                f"data.segmentation.inference whole needs a backbone that takes any input size, but this one takes "
                f"{layout.fixed_size[0]}x{layout.fixed_size[1]} only: use slide, or build it with model.kwargs "
                "{dynamic_img_size: true} (timm ViT) / {strict_img_size: false} (timm Swin)"
            )
        pre = Preprocessing.from_model(inner)
        return evaluate_segmentation(
            model, loader, precision, ctx, self.inference, num_classes=len(self.classes),
            input_size=tuple(pre.image_size), multiple=layout.divisor, class_names=self.classes, progress=progress,
        )  # fmt: skip

    def validate(
        self, model: nn.Module, loader: Any, precision: Precision, ctx: DistributedContext, progress: Progress | None
    ) -> dict[str, Any]:
        """mIoU, mean accuracy, pixel accuracy and per-class IoU over the split (:mod:`.segmentation`)."""
        return self._scores(model, loader, precision, ctx, progress)

    def test(
        self,
        model: nn.Module,
        loader: Any,
        precision: Precision,
        ctx: DistributedContext,
        progress: Progress | None,
        dataset: Dataset,
    ) -> dict[str, Any]:
        """:meth:`validate`'s scores, with ``skipped`` (always 0) for the test report."""
        return {**self._scores(model, loader, precision, ctx, progress), "skipped": 0}


def _registry_entry(spec: DataSpec) -> DatasetKind:
    if spec.is_segmentation:
        return SEGMENTATION_DATASETS[spec.kind]  # type: ignore[return-value]
    return VIDEO_DATASETS[spec.kind] if spec.is_video else IMAGE_DATASETS[spec.kind]


def resolve_test_split(spec: DataSpec) -> str:
    """The split a run tests on: "test", or "val" when the dataset has a val split on disk but no test split (the
    ImageNet layout ``train/`` + ``val/``), which is logged."""
    entry = _registry_entry(spec)
    if entry.locate is None or split_location(entry, spec.root, "test", spec.options) is not None:
        return "test"
    val = split_location(entry, spec.root, "val", spec.options)
    if val is None:
        return "test"  # loading it raises the error that shows the expected layout
    logger.info("%s: %s has no test split; %s is the held-out test split (when training, model selection uses "
                "--data.val_split of train)", spec.kind, spec.root, val)  # fmt: skip
    return "val"


def given_val_split(spec: DataSpec, val_split: float = 0.0) -> str | None:
    """The split for model selection, "val", when the dataset has both a val and a test split on disk (it is then
    used instead of a part carved from train, and ``val_split``, ``--data.val_split``, is not: logged); else None."""
    entry = _registry_entry(spec)
    if entry.locate is None or split_location(entry, spec.root, "test", spec.options) is None:
        return None
    val = split_location(entry, spec.root, "val", spec.options)
    if val is None:
        return None
    unused = f"; --data.val_split {val_split:g} is not used" if val_split else ""
    logger.info("%s: model selection uses the given validation split %s%s", spec.kind, val, unused)
    return "val"


Split = ImageSplit | VideoSplit | SegmentationSplit


def load_split(spec: DataSpec, split: str) -> Split:
    """The ``split`` of ``spec``'s dataset, untransformed until :meth:`build` is given the model; "test" is
    :func:`resolve_test_split`'s choice. A split without samples is a :class:`DatasetFileError`."""
    name = resolve_test_split(spec) if split == "test" else split
    if spec.is_video:
        source = load_video_split(spec.kind, spec.root, name, skip_bad_videos=spec.skip_bad, **spec.options)
        loaded: Split = VideoSplit(source, spec.video.resolved(spec.kind), name)
        where, count = getattr(source, "origin", spec.kind), len(source)
    elif spec.is_segmentation:
        pairs = build_segmentation_dataset(spec.kind, spec.root, name, None, **spec.options)
        loaded = SegmentationSplit(pairs, spec.segmentation, spec.inference, name)
        where, count = f"{spec.kind} {spec.root or ''}".strip(), len(pairs)  # type: ignore[arg-type]
    else:
        dataset = load_image_split(
            spec.kind, spec.root, name, options=spec.options, verify_checksums=spec.verify_checksums,
            skip_bad_images=spec.skip_bad,
        )  # fmt: skip
        loaded = ImageSplit(dataset, spec.image, name)
        where, count = f"{spec.kind} {spec.root or ''}".strip(), len(dataset)  # type: ignore[arg-type]
    if count == 0:
        flag = "--data.skip_bad_videos" if spec.is_video else "--data.skip_bad_images"
        skipped = f": all {loaded.skipped} were unreadable and left out ({flag})" if loaded.skipped else ""
        purpose = "train on" if name == "train" else "score"
        raise DatasetFileError(f"the {name} split of {where} has no samples{skipped}; there is nothing to {purpose}")
    return loaded


def check_same_classes(reference: Split, other: Split, kind: str) -> None:
    """Splits whose class lists differ would map labels to the wrong classes: an error naming the difference."""
    if other.classes != reference.classes:
        missing = sorted(set(reference.classes) - set(other.classes))
        extra = sorted(set(other.classes) - set(reference.classes))
        raise DatasetFileError(
            f"{kind}: the {reference.name} and {other.name} splits have different classes ({len(reference.classes)} "
            f"vs {len(other.classes)}; only in {reference.name}: {missing[:10]}, only in {other.name}: {extra[:10]}"
            f"{', same names in another order' if not missing and not extra else ''})"
        )
