"""A segmentation model: an adapted, frozen backbone and a decode head over its patch features.

The backbone is built and adapted as for classification (any registered method; ``linear`` means a frozen backbone
and a trained head, ``full`` trains everything) but keeps no classifier: the decode head (:mod:`.heads`) reads the
maps of chosen blocks or stages (:mod:`.features`) and its logits are upsampled bilinearly to the input size.

The model carries its :class:`~adaptformer.model.ModelSpec` and a task record (:class:`SegmentationConfig`), and
answers timm's ``get_classifier()`` with the decode head, so the library's freezing, parameter report, optimizer
groups and adapter files treat the decode head as the task head: ``parameter_report`` counts it apart from the
method's modules, and ``save_adapter`` writes its tensors (``decode_head.*``) beside the method's
(``backbone.blocks.N.adaptmlp.*``) and the task record (head, feature layers, ignore index) into
``adapter_config.json``. The spec's ``head`` field, a classification notion, is always "linear" here.

The head reads raw block outputs, as the adapted classifier's blocks compute them: the backbone's final norm is not
applied (with method ``full`` its parameters train but get no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..factory import BackboneSource, build_backbone, get_source
from ..heads import classifier_paths
from ..methods import MethodConfig
from ..methods.state import SPEC_ATTR
from ..model import ModelSpec, freeze
from ..preprocessing import Preprocessing
from ..saving import (
    AdapterFileError,
    AdapterInfo,
    build_adapter_backbone,
    load_adapter,
    read_adapter_config,
    task_type,
)
from ..validation import check_choice, from_mapping, is_of_type, to_plain
from .features import FeatureLayout, feature_layout, patch_features
from .heads import LinearHead, UperNetHead

__all__ = [
    "DECODE_HEADS",
    "IGNORE_INDEX",
    "TASK",
    "SegmentationConfig",
    "SegmentationModel",
    "create_segmentation_model",
    "load_segmentation_model",
    "segmentation_model",
]

TASK = "segmentation"  # the task record's "type" in adapter_config.json
DECODE_HEADS = ("linear", "upernet")
IGNORE_INDEX = 255  # the mask value of pixels that carry no loss and are not scored
SPEC_HEAD = "linear"  # ModelSpec.head must name a classification head; the decode head is the task record's


@dataclass(frozen=True)
class SegmentationConfig:
    """The decode head and what it reads.

    Args:
        head: "linear" (BatchNorm + 1x1 conv, DINOv2's frozen-backbone protocol) or "upernet" (a light UPerNet; on a
            plain ViT over ViTDet's simple feature pyramid of four blocks).
        layers: the blocks (ViT family) or stages (Swin) whose outputs the head reads, in forward order; negative
            indices count from the end; null: the head's default (linear: the last; upernet: four evenly spaced
            blocks of a ViT, every stage of a Swin). A model records them resolved (>= 0).
        channels: UPerNet's width (unused by the linear head).
        ignore_index: the mask value of pixels that carry no loss and are not scored.
    """

    head: str = "linear"
    layers: tuple[int, ...] | None = None
    channels: int = 256
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        check_choice("head", self.head, DECODE_HEADS)
        if self.layers is not None:
            layers = tuple(self.layers) if isinstance(self.layers, list | tuple) else ()
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
                raise ValueError(f"layers must be a non-empty list of block / stage indices, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)
        if not is_of_type(self.channels, int) or self.channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {self.channels!r}")
        if not is_of_type(self.ignore_index, int) or self.ignore_index < 0:
            raise ValueError(f"ignore_index must be an int >= 0, got {self.ignore_index!r}")

    def to_task(self) -> dict[str, Any]:
        """The task record adapter files keep: ``{"type": "segmentation", **fields}``."""
        return {"type": TASK, **to_plain(self)}

    @classmethod
    def from_task(cls, record: dict[str, Any]) -> SegmentationConfig:
        """Read :meth:`to_task`'s record (ValueError for another task type or unknown fields)."""
        fields = dict(record)
        if fields.pop("type", None) != TASK:
            raise ValueError(f'not a segmentation task record (expected "type": "{TASK}"): {record!r}')
        return from_mapping(cls, fields, "segmentation task")

    def resolved(self, layout: FeatureLayout) -> SegmentationConfig:
        """This config with the head's default layers filled in and negative indices counted from the end, checked
        against ``layout`` (ValueError naming what the backbone has)."""
        n = layout.count
        what = "stages" if layout.hierarchical else "blocks"
        layers = self.layers
        if layers is None and self.head == "linear":
            layers = (n - 1,)
        elif layers is None:
            layers = tuple(range(n)) if layout.hierarchical else tuple(max(0, n * (i + 1) // 4 - 1) for i in range(4))
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise ValueError(f"layers {bad} out of range: the backbone has {n} {what} (0..{n - 1}, or -{n}..-1)")
        layers = tuple(i % n for i in layers)
        if self.head == "upernet" and not layout.hierarchical and len(layers) != 4:
            raise ValueError(f"upernet on a plain ViT reads 4 blocks (its simple feature pyramid), got layers {layers}")
        if self.head == "upernet" and layout.hierarchical and list(layers) != sorted(set(layers)):
            raise ValueError(f"upernet reads stages from fine to coarse, each once: layers {layers} are not increasing")
        return replace(self, layers=layers)


def decode_head(config: SegmentationConfig, layout: FeatureLayout, num_classes: int) -> nn.Module:
    """The decode head ``config`` (resolved) asks for, over ``layout``'s maps."""
    assert config.layers is not None  # resolved
    widths = [layout.widths[i] for i in config.layers]
    if config.head == "linear":
        return LinearHead(widths, num_classes)
    return UperNetHead(widths, num_classes, config.channels, simple_pyramid=not layout.hierarchical)


class SegmentationModel(nn.Module):
    """An adapted backbone and a decode head; ``forward`` maps images (B, 3, H, W) to logits (B, K, H, W).

    Build one with :func:`create_segmentation_model` (or :func:`segmentation_model` for a backbone at hand).

    Attributes:
        backbone: the adapted backbone, its classifier replaced by Identity.
        decode_head: the trained head (:mod:`.heads`).
        config: the resolved :class:`SegmentationConfig` (head, layers, channels, ignore_index).
        layout: the backbone's :class:`~adaptformer.segmentation.features.FeatureLayout`.
        num_classes: classes of the logits.
        ignore_index: the mask value that carries no loss.
        input_multiple: what input sizes must be multiples of.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: ModelSpec, config: SegmentationConfig) -> None:
        super().__init__()
        if config.layers is None:
            raise ValueError("a SegmentationModel takes a resolved config (SegmentationConfig.resolved)")
        self.backbone = backbone
        self.decode_head = head
        self.config = config
        self.layout = feature_layout(backbone)
        self.num_classes = spec.num_classes
        self.ignore_index = config.ignore_index
        self.adaptformer_spec = spec  # what the library's freezing, report and adapter files read (methods.state)

    @property
    def adaptformer_task(self) -> dict[str, Any]:
        """The task record adapter files keep (:meth:`SegmentationConfig.to_task`)."""
        return self.config.to_task()

    @property
    def adaptformer_source(self) -> BackboneSource | None:
        """How the backbone was built (:class:`~adaptformer.factory.BackboneSource`), as adapter files record it."""
        return get_source(self.backbone)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's pretrained config with the input size it was built for (what preprocessing reads)."""
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        return {**cfg, "input_size": Preprocessing.from_model(self.backbone).input_size}

    @property
    def input_multiple(self) -> int:
        """What input heights and widths must be multiples of (pad to it for whole-image inference); whether other
        sizes than the built one are taken at all: ``layout.fixed_size`` (None: any multiple)."""
        return math.lcm(*self.layout.divisor)

    def get_classifier(self) -> nn.Module:
        """The task head, as timm's API names it: the decode head."""
        return self.decode_head

    def no_weight_decay(self) -> set[str]:
        """The backbone's own parameters without weight decay (timm: position embeddings, class token), by this
        model's names (``backbone.pos_embed``): the optimizer groups read them as for a classifier."""
        own = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in own()} if callable(own) else set()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps the decode head reads: (B, C_i, H / s_i, W / s_i) per configured layer."""
        assert self.config.layers is not None
        return patch_features(self.backbone, x, self.config.layers, self.layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.features(x))  # (B, K, h_0, w_0)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, K, H, W)


def segmentation_model(backbone: nn.Module, spec: ModelSpec, config: SegmentationConfig) -> SegmentationModel:
    """Turn a plain backbone (no method applied) into a :class:`SegmentationModel` in place: its classifier becomes
    Identity, ``spec``'s method is attached, a decode head built, everything frozen by the method's rule."""
    if getattr(backbone, SPEC_ATTR, None) is not None:
        raise ValueError(f"{type(backbone).__name__} already has a method applied; pass a plain backbone")
    layout = feature_layout(backbone)  # refuses a backbone without known blocks before anything changes
    config = config.resolved(layout)
    try:
        classifiers = classifier_paths(backbone)
    except UnsupportedModelError:  # nothing to remove: the decode head is the only head
        classifiers = ()
    spec.registered.attach(backbone, spec.method_config)  # checks the blocks before it changes any
    for path in classifiers:
        parent, _, name = path.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, name, nn.Identity())
    device = next(backbone.parameters()).device
    model = SegmentationModel(backbone, decode_head(config, layout, spec.num_classes).to(device), spec, config)
    freeze(model)
    return model


def create_segmentation_model(
    name: str,
    num_classes: int,
    method: str | MethodConfig = "adaptformer",
    head: str = "linear",
    layers: tuple[int, ...] | list[int] | None = None,
    channels: int = 256,
    ignore_index: int = IGNORE_INDEX,
    checkpoint: str | Path | None = None,
    checkpoint_source: str = "timm",
    init_seed: int | None = None,
    **timm_kwargs: Any,
) -> SegmentationModel:
    """Build ``name`` from timm, load ``checkpoint``, attach ``method`` and a ``head`` decode head for
    ``num_classes``, freeze (see :class:`SegmentationConfig` for ``head``, ``layers``, ``channels``,
    ``ignore_index``; :func:`adaptformer.create_model` for the rest). A timm ViT takes other input sizes than its
    ``img_size`` with ``dynamic_img_size=True``, a timm Swin with ``strict_img_size=False``."""
    config = SegmentationConfig(head, None if layers is None else tuple(layers), channels, ignore_index)
    spec = ModelSpec.for_method(name, method, num_classes=num_classes, head=SPEC_HEAD)  # fails before the slow build
    backbone = build_backbone(name, num_classes, checkpoint, checkpoint_source, init_seed=init_seed, **timm_kwargs)
    return segmentation_model(backbone, spec, config)


def load_segmentation_model(
    directory: str | Path,
    source: BackboneSource | None = None,
    allow_backbone_mismatch: bool = False,
    info: AdapterInfo | None = None,
    backbone: nn.Module | None = None,
) -> SegmentationModel:
    """The segmentation model of an adapter folder (eval mode, CPU): its backbone built as recorded (or as ``source``
    says; or ``backbone``, a plain backbone at hand, e.g. one whose tensors a multi-task model shares), its method,
    decode head and tensors restored. A classification adapter is an AdapterFileError."""
    info = info or read_adapter_config(directory)
    if task_type(info.task) != TASK:
        raise AdapterFileError(
            f"{directory}: a {task_type(info.task)} adapter, but a segmentation model was asked for; rebuild it with "
            "adaptformer.saving.create_model_from_adapter (adaptformer eval / predict)"
        )
    try:
        config = SegmentationConfig.from_task(info.task)
    except ValueError as e:
        raise AdapterFileError(f"{directory}: {e}") from e
    if backbone is None:
        backbone = build_adapter_backbone(directory, source, allow_backbone_mismatch, info)
    model = segmentation_model(backbone, info.spec, config)
    load_adapter(model, directory, allow_backbone_mismatch=allow_backbone_mismatch, info=info)
    return model.eval()
