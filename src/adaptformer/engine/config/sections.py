"""``TrainConfig``: a training run as five nested dataclasses, the same ones the Python API takes.

    model   the backbone, its weights, the head and the method (``method`` is the method's own config class)
    data    the dataset and how it is read and augmented (``video``: clip sampling and test views; ``segmentation``:
            the training pairs' geometry and how images are segmented for evaluation)
    optim   optimizer, schedule, batch and precision
    speed   :class:`adaptformer.speed.SpeedConfig`
    run     output folder, device, seed, model selection, checkpointing and logging

Each section validates its values on construction (ValueError naming the field); :class:`TrainConfig` checks what
spans sections. Files and the command line go through :mod:`.parser` (jsonargparse: types, nested groups,
help texts from the docstrings below); YAML mirrors the nesting, with the method as ``{name: <registered name>,
<its fields>}``. A run writes its configuration to ``<run.output_dir>/config.yaml``; passing that back with
``--config`` repeats the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import yaml

from ...backbones.checkpoints.load import CONVERTERS
from ...data import IMAGE_DATASETS, PAPER_CROP_SCALE, ImageAugment
from ...data.segmentation import SEGMENTATION_DATASETS
from ...data.video import PAPER_TEST_VIEWS, STRATEGIES, VIDEO_DATASETS
from ...methods import AdaptFormerConfig, MethodConfig, method_of
from ...precision import PRECISION_CHOICES
from ...speed import SpeedConfig
from ...validation import check_choice, check_free_form, to_plain
from ..distributed import check_device_name
from .checks import at_least as _at_least
from .checks import probability as _probability
from .consistency import ConsistencyConfig, check_consistency
from .segmentation import DecodeConfig, SegmentationConfig

DATASET_KINDS = (*IMAGE_DATASETS, *VIDEO_DATASETS, *SEGMENTATION_DATASETS)
CLASSIFICATION_HEADS = ("paper", "linear")
SEGMENTATION_HEADS = ("linear", "upernet")
WARMUP_FRACTION = 0.2  # optim.warmup_epochs null: the paper's 20 warmup epochs of 100 (Table 5)


def may_have_val_split(kind: str) -> bool:
    """Whether dataset ``kind`` can bring its own val split on disk (folders, list files), which selection then uses."""
    entry = IMAGE_DATASETS.get(kind) or VIDEO_DATASETS.get(kind) or SEGMENTATION_DATASETS.get(kind)
    return entry is not None and "val" in entry.splits


@dataclass
class ModelConfig:
    """The backbone, its pre-trained weights, the task head and the adaptation method.

    Args:
        backbone: timm model name; a pretrained tag (e.g. .mae) sets the input normalisation; or hf:<folder>, a
            transformers vision model saved with save_pretrained (its weights come with it; nothing is downloaded).
        kwargs: extra timm.create_model kwargs, e.g. {img_size: 32, patch_size: 8} (YAML: a space after each ':').
        checkpoint: pre-trained backbone weights: a local file, 'timm' (timm's own), or null (random init from the
            run's seed, recorded so the adapter can be evaluated later).
        checkpoint_source: key layout of the checkpoint file (timm, torchvision, swin, mae, videomae, hf-videomae,
            hf, inflate-image, video-swin, inflate-image-swin).
        head: task head: classification: paper (BatchNorm1d without affine + Linear, MAE's) or linear; segmentation:
            linear (BatchNorm + 1x1 conv over patch features) or upernet (UPerNet; ViTDet's simple pyramid on a ViT);
            null: the task's first (paper, or linear for a segmentation dataset).
        decode: segmentation: which blocks / stages the decode head reads and UPerNet's width.
        drop_path: stochastic depth rate of the backbone's residual branches.
        method: the adaptation method and its settings (--model.method NAME, then --model.method.FIELD VALUE).
    """

    backbone: str = "vit_base_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_source: str = "timm"
    head: Literal["paper", "linear", "upernet"] | None = None
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig())
    drop_path: float = 0.0
    method: MethodConfig = field(default_factory=AdaptFormerConfig)

    def __post_init__(self) -> None:
        check_choice("model.checkpoint_source", self.checkpoint_source, tuple(CONVERTERS))
        if self.head is not None:
            check_choice("model.head", self.head, (*CLASSIFICATION_HEADS, "upernet"))
        check_free_form("model.kwargs", self.kwargs)
        _probability("model.drop_path", self.drop_path)
        if not isinstance(self.method, MethodConfig):
            raise ValueError(f"model.method must be a method config (e.g. AdaptFormerConfig()), got {self.method!r}")
        method_of(self.method)  # registered?

    @property
    def method_name(self) -> str:
        return method_of(self.method).name


@dataclass
class VideoConfig:
    """Clips of video datasets (none of these apply to image datasets).

    Args:
        num_frames: frames per clip, passed to the video backbone (null: its default, 8 for video_vit_*, 32 for
            tv_swin3d_*).
        sampling: temporal sampling: segment (TSN; ssv2's default) or dense (strided; the others'); null: the kind's.
        sampling_stride: frames between sampled frames, dense sampling (null: the kind's, 4).
        test_clips: temporal clips per test video; their logits are averaged with the crops'.
        test_crops: spatial crops per test clip: 1 (centre) or 3 (along the long side).
    """

    num_frames: int | None = None
    sampling: Literal["segment", "dense"] | None = None
    sampling_stride: int | None = None
    test_clips: int = PAPER_TEST_VIEWS[0]
    test_crops: int = PAPER_TEST_VIEWS[1]

    def __post_init__(self) -> None:
        if self.sampling is not None:
            check_choice("data.video.sampling", self.sampling, STRATEGIES)
        _at_least("data.video.num_frames", self.num_frames, 1)
        _at_least("data.video.sampling_stride", self.sampling_stride, 1)
        _at_least("data.video.test_clips", self.test_clips, 1)
        if self.test_crops not in (1, 3):
            raise ValueError(
                f"data.video.test_crops must be 1 (centre) or 3 (along the long side), got {self.test_crops}"
            )


@dataclass(kw_only=True)
class DataConfig:
    """The dataset, how it is read, split and augmented.

    Args:
        dataset: dataset kind (required): an image kind (cifar100, svhn, food101, imagefolder, digits, synthetic, ...)
            or a video kind (ssv2, hmdb51, videolist, videofolder, synthetic-video).
        data_dir: folder holding the dataset in its standard layout.
        options: per-kind dataset options, e.g. {num_samples: 64} (YAML: a space after each ':').
        verify_checksums: check the md5 of CIFAR/SVHN files against the official release.
        skip_bad_images: image kinds with one file per image: drop unreadable ones (counted in log and test.json).
        skip_bad_videos: video kinds: probe every video, drop undecodable ones (counted in log and test.json).
        val_split: validation carved from train: fraction, sample count, or 0 for none (not used when the dataset has
            its own val split next to its test split: val/ and test/ folders, val.txt and test.txt).
        split_seed: seed of the train/validation split.
        num_workers: data loading worker processes per device; null: min(4, CPUs this process may use / processes
            on this machine).
        crop_scale: [min, max] area fraction RandomResizedCrop keeps of a training image (image kinds).
        flip: random horizontal flip of training inputs; null: the paper's (images on, video off).
        augment: image kinds: random crop (+ flip) of training images; false: they get the eval geometry (VTAB-1k).
        resize: image kinds: eval geometry, crop (resize to size / crop_pct + centre crop) or full (whole image resized
            to the input size, no crop: the VTAB-1k protocol).
        video: clip sampling and test views (video kinds).
        segmentation: training geometry and evaluation inference (segmentation kinds).
    """

    dataset: str
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verify_checksums: bool = True
    skip_bad_images: bool = False
    skip_bad_videos: bool = False
    val_split: int | float = 0.1
    split_seed: int = 0
    num_workers: int | None = None
    crop_scale: tuple[float, float] = PAPER_CROP_SCALE
    flip: bool | None = None
    augment: bool = True
    resize: Literal["crop", "full"] = "crop"
    video: VideoConfig = field(default_factory=VideoConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError(f"data.dataset is required (--data.dataset KIND, one of {sorted(DATASET_KINDS)})")
        check_choice("data.dataset", self.dataset, DATASET_KINDS)
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        for name in ("split_seed", "num_workers"):
            _at_least(f"data.{name}", getattr(self, name), 0)
        check_free_form("data.options", self.options)
        kind = {**IMAGE_DATASETS, **VIDEO_DATASETS, **SEGMENTATION_DATASETS}[self.dataset]
        unknown = sorted(set(self.options) - set(kind.options))
        if unknown:
            raise ValueError(
                f"data.options {unknown} are not options of {self.dataset!r}; it takes {list(kind.options)}"
            )
        v = self.val_split
        if isinstance(v, bool) or v < 0 or (isinstance(v, float) and not v < 1.0):
            raise ValueError(f"data.val_split must be 0, a fraction in (0, 1) or a sample count >= 1, got {v!r}")
        if not self.is_segmentation and self.segmentation != SegmentationConfig():
            raise ValueError(f"data.segmentation applies to segmentation datasets only; {self.dataset!r} is not one")
        if self.is_video:
            self._check_video()
        elif self.is_segmentation:
            self._check_segmentation()
        else:
            changed = [f"data.video.{f.name}" for f in fields(VideoConfig) if getattr(self.video, f.name) != f.default]
            changed += ["data.skip_bad_videos"] if self.skip_bad_videos else []
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} apply to video datasets only; {self.dataset!r} is an image dataset"
                )
            try:
                self.image_augment()  # validates crop_scale
            except ValueError as e:
                raise ValueError(f"data.{e}") from e  # its message starts with the field's name

    def _check_video(self) -> None:
        if self.skip_bad_images:
            raise ValueError(
                f"data.skip_bad_images applies to image datasets; {self.dataset!r} is a video dataset: use "
                "data.skip_bad_videos, which probes every video and drops the undecodable ones (counted)"
            )
        if tuple(self.crop_scale) != PAPER_CROP_SCALE:
            raise ValueError(
                f"data.crop_scale applies to image datasets only; {self.dataset!r} is a video dataset (its training "
                "crops are the multi-scale crop of the paper's video recipe)"
            )
        if not self.augment or self.resize != "crop":
            raise ValueError(
                f"data.augment and data.resize apply to image datasets only; {self.dataset!r} is a video dataset"
            )

    def _check_segmentation(self) -> None:
        changed = [f"data.video.{f.name}" for f in fields(VideoConfig) if getattr(self.video, f.name) != f.default]
        changed += ["data.skip_bad_videos"] if self.skip_bad_videos else []
        changed += ["data.skip_bad_images"] if self.skip_bad_images else []
        changed += ["data.crop_scale"] if tuple(self.crop_scale) != PAPER_CROP_SCALE else []
        changed += ["data.augment"] if not self.augment else []
        changed += ["data.resize"] if self.resize != "crop" else []
        if changed:
            raise ValueError(
                f"{', '.join(changed)} do not apply to segmentation datasets ({self.dataset!r}): their training pairs "
                "are set by data.segmentation (scale, base_size, photometric) and data.flip, and a bad image or mask "
                "is always an error"
            )

    @property
    def is_video(self) -> bool:
        return self.dataset in VIDEO_DATASETS

    @property
    def is_segmentation(self) -> bool:
        return self.dataset in SEGMENTATION_DATASETS

    def flips(self) -> bool:
        """Whether training inputs are flipped: ``flip``, or the paper's default for the modality (video: off)."""
        return self.flip if self.flip is not None else not self.is_video

    def image_augment(self) -> ImageAugment:
        """The random geometry of training images (image datasets)."""
        return ImageAugment(tuple(self.crop_scale), self.flips(), self.augment, self.resize)  # type: ignore[arg-type]


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule, batch and precision (the paper's Table 5 by default).

    Args:
        epochs: training epochs.
        warmup_epochs: epochs of linear lr warmup from 0 (per iteration), then the decay; null: 20% of the epochs
            (the paper's 20 of 100).
        schedule: the decay after the warmup, per iteration: cosine (the paper's) or poly (linear to min_lr,
            (1 - progress) ** poly_power: the segmentation recipes').
        poly_power: the exponent of the poly decay.
        batch_size: samples per device per forward pass (micro-batch).
        effective_batch: samples per optimizer step over all devices (gradient accumulation); null: batch_size x
            devices.
        eval_batch_size: samples per device per forward pass in evaluation.
        optimizer: sgd (with momentum) or adamw.
        blr: base lr; lr = blr * effective_batch / 256.
        lr: absolute lr (overrides blr).
        min_lr: lr at the end of the cosine schedule.
        momentum: SGD momentum.
        betas: AdamW betas.
        weight_decay: weight decay (never applied to norms, biases, position embeddings, prompts).
        clip_grad: clip the gradient norm to this value; null: no clipping.
        label_smoothing: label smoothing of the training loss, in [0, 1) (the PETL suites' VTAB-1k runs use 0.1).
        precision: autocast dtype: auto (bf16 on CPU and bf16-capable GPUs, else fp16), fp32, bf16, fp16.
        consistency: consistency regularisation (PACE): noise on the adapters' outputs and a consistency loss.
    """

    epochs: int = 100
    warmup_epochs: float | None = None
    schedule: Literal["cosine", "poly"] = "cosine"
    poly_power: float = 1.0
    batch_size: int = 128
    effective_batch: int | None = None
    eval_batch_size: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    blr: float = 0.1
    lr: float | None = None
    min_lr: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    consistency: ConsistencyConfig = field(default_factory=lambda: ConsistencyConfig())

    def __post_init__(self) -> None:
        check_choice("optim.optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("optim.schedule", self.schedule, ("cosine", "poly"))
        if not (math.isfinite(self.poly_power) and self.poly_power > 0):
            raise ValueError(f"optim.poly_power must be a positive number, got {self.poly_power!r}")
        check_choice("optim.precision", self.precision, PRECISION_CHOICES)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _at_least(f"optim.{name}", getattr(self, name), 1)
        for name in ("warmup_epochs", "min_lr", "weight_decay"):
            _at_least(f"optim.{name}", getattr(self, name), 0)
        if self.warmup_epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.warmup_epochs}) must not exceed optim.epochs ({self.epochs})")
        for name in ("blr", "lr", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"optim.{name} must be a positive number, got {value!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers, got {self.betas!r}")
        _probability("optim.momentum", self.momentum)
        _probability("optim.label_smoothing", self.label_smoothing)
        for i, b in enumerate(self.betas):
            _probability(f"optim.betas[{i}]", b)
        if self.effective_batch is not None and (self.effective_batch < 1 or self.effective_batch % self.batch_size):
            raise ValueError(
                f"optim.effective_batch ({self.effective_batch}) must be a multiple of optim.batch_size "
                f"({self.batch_size})"
            )

    def warmup(self) -> float:
        """The warmup epochs: ``warmup_epochs``, or the paper's proportion of ``epochs`` (20 of 100) when null."""
        return self.warmup_epochs if self.warmup_epochs is not None else WARMUP_FRACTION * self.epochs


@dataclass
class RunConfig:
    """Where the run writes, on what it runs, and how it selects, saves and logs.

    Args:
        output_dir: where metrics.jsonl, config.yaml, adapter/ and the training state go.
        device: auto (cuda if available), cpu, cuda, cuda:1, ...
        seed: seed of initialisation (of the backbone too when there is no checkpoint), data order, augmentation
            and dropout.
        select: adapter to keep and test: best (validation top-1) or last epoch.
        eval_every: validate every N epochs (and always after the last).
        save_every_steps: also write the training state every N optimizer steps (0: at epoch ends only).
        log_every: optimizer steps between progress log lines when output is not a terminal.
        tensorboard: also write TensorBoard scalars to <output_dir>/tensorboard (if installed).
        resume: continue from <output_dir>/checkpoint.pt if it exists.
        overwrite: start again in an output_dir that holds an earlier run: its files are removed first.
        stop_after_steps: debug: save the training state and stop after N optimizer steps.
        recipe: name or file of the recipe this configuration started from (a record).
    """

    output_dir: str = "output"
    device: str = "auto"
    seed: int = 0
    select: Literal["best", "last"] = "best"
    eval_every: int = 1
    save_every_steps: int = 0
    log_every: int = 20
    tensorboard: bool = False
    resume: bool = False
    overwrite: bool = False
    stop_after_steps: int | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        check_choice("run.select", self.select, ("best", "last"))
        try:
            check_device_name(self.device)
        except ValueError as e:
            raise ValueError(f"run.{e}") from e  # its message starts with "device"
        if self.resume and self.overwrite:
            raise ValueError("run.resume (continue the run) and run.overwrite (remove it, start again): give one")
        for name in ("eval_every", "log_every", "stop_after_steps"):
            _at_least(f"run.{name}", getattr(self, name), 1)
        for name in ("save_every_steps", "seed"):
            _at_least(f"run.{name}", getattr(self, name), 0)


@dataclass(kw_only=True)
class TrainConfig:
    """The complete, validated description of a training run (see the module docstring).

    Args:
        model: the backbone, its weights, the head and the adaptation method.
        data: the dataset and how it is read and augmented.
        optim: optimizer, schedule, batch and precision.
        speed: speed and memory options (every one keeps the model's function).
        run: output, device, seed, model selection, checkpointing and logging.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self._check_task_head()
        check_consistency(self)
        if self.model.head == "paper" and self.optim.batch_size < 2:
            raise ValueError(
                f"optim.batch_size {self.optim.batch_size} cannot train model.head 'paper': its BatchNorm1d needs at "
                "least 2 samples per training micro-batch; use optim.batch_size >= 2 (optim.effective_batch for "
                "larger steps) or model.head 'linear'"
            )
        kind = IMAGE_DATASETS.get(self.data.dataset)
        if self.optim.label_smoothing and kind is not None and kind.multi_label:
            raise ValueError(
                f"optim.label_smoothing {self.optim.label_smoothing:g} applies to single-label tasks; data.dataset "
                f"{self.data.dataset!r} is multi-label (binary cross-entropy per class): set it to 0"
            )
        if self.data.val_split == 0 and self.run.select == "best" and not may_have_val_split(self.data.dataset):
            raise ValueError("run.select 'best' needs a validation split; set data.val_split > 0 or run.select 'last'")
        given = self.model.kwargs.get("num_frames")
        frames = self.data.video.num_frames
        if frames is not None and given is not None and given != frames:
            raise ValueError(f"data.video.num_frames {frames} contradicts model.kwargs num_frames {given}")

    def _check_task_head(self) -> None:
        heads = SEGMENTATION_HEADS if self.data.is_segmentation else CLASSIFICATION_HEADS
        task = "segmentation" if self.data.is_segmentation else "classification"
        if self.model.head is None:
            self.model.head = heads[0]  # type: ignore[assignment]
        if self.model.head not in heads:
            raise ValueError(
                f"model.head {self.model.head!r} is not a {task} head; data.dataset {self.data.dataset!r} is a {task} "
                f"dataset: use one of {list(heads)}"
            )
        if not self.data.is_segmentation and self.model.decode != DecodeConfig():
            raise ValueError(f"model.decode applies to segmentation datasets only; {self.data.dataset!r} is not one")

    def backbone_kwargs(self) -> dict[str, Any]:
        """The timm kwargs of the backbone: ``model.kwargs``, plus ``num_frames`` when set."""
        frames = self.data.video.num_frames
        return {**self.model.kwargs, **({"num_frames": frames} if frames is not None else {})}

    # -- serialisation: plain nested data, the method as {name: ..., <fields>} --------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = to_plain(self)
        data["model"]["method"] = {"name": self.model.method_name, **self.model.method.to_dict()}
        return data

    def to_yaml(self) -> str:
        header = "# adaptformer training configuration: `adaptformer train --config THIS_FILE` repeats the run\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False)
