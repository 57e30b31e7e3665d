"""What a method's modules do inside a trained model, per block: AdaptFormer's question (Chen et al., NeurIPS 2022,
arXiv 2205.13535) asked of any method that declares a measurement in its protocol (:mod:`adaptformer.methods.protocol`).

An adapted block adds the module's output ``a`` to the residual stream x (AdaptFormer: ``x = x' + h + s * A(.)``, with
x' the stream after attention and h the frozen MLP branch ``MLP(LN(x'))`` as the block adds it; Adapter+: ``y + a``
after the whole block). Each method's ``BlockModule.measure`` says, from what a forward hook on its module records,
which tensors those are. Over a batch of real inputs, :func:`inspect_adapter` reports per adapted block

- adapter/MLP: ``||a|| / ||h||``, per token L2 norms over the channels (for a module beside the MLP);
- adapter/residual: ``||a|| / ||x||``;

each as the ratio of RMS norms over all tokens and samples (the headline: ``sqrt(mean ||a||^2) / sqrt(mean ||h||^2)``,
which a few tokens with a near-zero denominator cannot dominate) and as the mean of the per-token ratio. For every
block, adapted or not, it compares the adapted model's class token after the block with the frozen backbone's (the
same input, every method module's call replaced by its ``bypass``: the block without the module): the relative L2
distance ``||f_a - f_f|| / ||f_f||`` and the cosine similarity, averaged over samples; the same for the pooled feature
the head reads. Backbones without a class token (the video ViT, Swin) are compared on the mean over tokens, and the
report says which.

A segmentation model (:class:`~adaptformer.segmentation.SegmentationModel`) is measured on its backbone's blocks, and
its drift is per patch token: every patch token after a block (and every token of the maps the decode head reads)
against the frozen backbone's token at the same place, averaged over the tokens of every input, since its head reads
each token, not a pooled feature. Its inputs are what its evaluation feeds the backbone: an image larger than a
backbone built for one input size is cut into windows of that size (non-overlapping, the last at the border).

Everything is read through forward hooks on the blocks, the method's modules and the head, removed when done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.distributed import resolve_device
from ..errors import UnsupportedModelError
from ..methods.protocol import BlockModule, Measurement
from ..methods.registry import Method, get_method, method_names
from ..methods.state import get_spec
from .inspection_features import (
    FeatureTrace,
    block_list,
    feature_kind,
    model_inputs,
    recording,
    trace_features,
)
from .inspection_files import (
    FILES,
    HEADLINE,
    PATCH_TOKENS,
    check_out_dir,
    format_markdown,
    plot_inspection,
    write_inspection,
)

logger = logging.getLogger(__name__)

__all__ = ["FILES", "PATCH_TOKENS", "AdapterRow", "DriftRow", "FeatureTrace", "InspectionReport", "adapters_off",
           "check_out_dir", "format_markdown", "inspect_adapter", "inspectable", "inspectable_titles",
           "plot_inspection", "trace_features", "write_inspection"]  # fmt: skip
_TINY = 1e-12  # a zero denominator (an all-zero token) gives ratio 0 for a zero numerator, never NaN


@dataclass(frozen=True)
class AdapterRow:
    """How large one adapted block's module output is (ratios of L2 norms over the channels, per token).

    Args:
        block: the block's index in forward order over all blocks (as ``AdaptFormerConfig.layers`` counts).
        adapter_mlp: ``||a|| / ||h||`` as the ratio of RMS norms (the headline); None for a module not beside the MLP.
        adapter_mlp_token_mean: the same ratio per token, averaged over tokens and samples.
        adapter_residual: ``||a|| / ||x||`` as the ratio of RMS norms (the headline).
        adapter_residual_token_mean: the same ratio per token, averaged over tokens and samples.
    """

    block: int
    adapter_mlp: float | None
    adapter_mlp_token_mean: float | None
    adapter_residual: float
    adapter_residual_token_mean: float


@dataclass(frozen=True)
class DriftRow:
    """How far a feature moved from the frozen backbone's, averaged over samples (over every patch token of every
    sample for a segmentation model).

    Args:
        block: the block's index in forward order, or None for the pooled feature the head reads.
        relative_l2: ``||f_adapted - f_frozen|| / ||f_frozen||``.
        cosine: the cosine similarity of ``f_adapted`` and ``f_frozen``.
    """

    block: int | None
    relative_l2: float
    cosine: float


@dataclass(frozen=True)
class InspectionReport:
    """What :func:`inspect_adapter` found (``to_dict`` is ``inspect.json``).

    Args:
        backbone: the model's backbone name (its spec's), or its class name.
        method: the method's title ("AdaptFormer", "Adapter+", ...).
        form: how its modules are wired, as its measurement says (AdaptFormer: parallel or sequential).
        num_samples: the inputs the numbers are averaged over.
        feature: what the drift compares per block: "class token", "mean over tokens", or "patch tokens" (a
            segmentation model: each patch token, averaged over tokens).
        adapters: one row per adapted block, in forward order.
        drift: one row per block (adapted or not), in forward order.
        pooled: the drift of the pooled feature the head reads (a segmentation model: of the tokens of the maps its
            decode head reads).
    """

    backbone: str
    method: str
    form: str
    num_samples: int
    feature: str
    adapters: tuple[AdapterRow, ...]
    drift: tuple[DriftRow, ...]
    pooled: DriftRow

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["headline"] = HEADLINE
        return out


def _method_sites(model: nn.Module) -> list[tuple[int, BlockModule, nn.Module]]:
    """Every module the model's method installed in a block, as (block index, its protocol entry, the module)."""
    spec = get_spec(model)
    if spec is None:
        return []
    return [
        (i, site, module)
        for i, block in enumerate(block_list(model))
        for site in spec.registered.block_modules
        if isinstance(module := getattr(block, site.attribute, None), nn.Module)
    ]


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every module ``model``'s method installed computes its ``bypass`` instead: the frozen
    backbone's function (AdaptFormer: ``x' + h``, exactly what a zero adapter output gives, in both forms)."""
    with ExitStack() as stack:
        for _, site, module in _method_sites(model):
            bypass = site.bypass
            handle = module.register_forward_hook(lambda module, args, output, bypass=bypass: bypass(*args))
            stack.callback(handle.remove)
        yield model


class _Sums:
    """Running sums over tokens for one adapted block."""

    def __init__(self) -> None:
        self.tokens = 0
        self.adapter_sq = self.branch_sq = self.residual_sq = 0.0
        self.mlp_ratio = self.residual_ratio = 0.0
        self.has_mlp = True
        self.form = ""

    def add(self, measured: Measurement) -> None:
        self.form = self.form or measured.form
        width = measured.output.shape[-1]
        a = measured.output.reshape(-1, width)  # (tokens, C): the module's output
        a_norm, x_norm = a.norm(dim=-1), measured.residual.reshape(-1, width).norm(dim=-1)
        self.tokens += a.shape[0]
        self.adapter_sq += a_norm.square().sum().item()
        self.residual_sq += x_norm.square().sum().item()
        self.residual_ratio += (a_norm / x_norm.clamp_min(_TINY)).sum().item()
        self.has_mlp = self.has_mlp and measured.mlp is not None
        if measured.mlp is not None:
            h_norm = measured.mlp.reshape(-1, width).norm(dim=-1)
            self.branch_sq += h_norm.square().sum().item()
            self.mlp_ratio += (a_norm / h_norm.clamp_min(_TINY)).sum().item()

    def row(self, block: int) -> AdapterRow:
        def rms_ratio(top: float, bottom: float) -> float:
            return (top / bottom) ** 0.5 if bottom > 0 else 0.0

        return AdapterRow(
            block=block,
            adapter_mlp=rms_ratio(self.adapter_sq, self.branch_sq) if self.has_mlp else None,
            adapter_mlp_token_mean=self.mlp_ratio / self.tokens if self.has_mlp else None,
            adapter_residual=rms_ratio(self.adapter_sq, self.residual_sq),
            adapter_residual_token_mean=self.residual_ratio / self.tokens,
        )


class _DriftSums:
    def __init__(self) -> None:
        self.samples = 0
        self.relative = self.cosine = 0.0

    def add(self, adapted: torch.Tensor, frozen: torch.Tensor) -> None:
        distance = (adapted - frozen).norm(dim=-1) / frozen.norm(dim=-1).clamp_min(_TINY)  # (B,)
        self.samples += adapted.shape[0]
        self.relative += distance.sum().item()
        self.cosine += F.cosine_similarity(adapted, frozen, dim=-1).sum().item()

    def row(self, block: int | None) -> DriftRow:
        return DriftRow(block, self.relative / self.samples, self.cosine / self.samples)


def inspectable(method: Method) -> bool:
    """Whether ``method`` declares a measurement for a module it installs in blocks (what inspect reports)."""
    return any(site.measure is not None for site in method.block_modules)


def inspectable_titles() -> list[str]:
    """The titles of the registered methods :func:`inspect_adapter` measures."""
    return [get_method(name).title for name in method_names() if inspectable(get_method(name))]


def _measured_sites(model: nn.Module) -> tuple[Method, dict[int, tuple[BlockModule, nn.Module]]]:
    """The model's method and, per adapted block, the first module of it that declares a measurement."""
    spec = get_spec(model)
    sites: dict[int, tuple[BlockModule, nn.Module]] = {}
    for i, site, module in _method_sites(model):
        if site.measure is not None:
            sites.setdefault(i, (site, module))
    if spec is None or not sites:
        method = f"method {spec.method!r}" if spec is not None else f"a plain {type(model).__name__}"
        raise UnsupportedModelError(
            f"inspect measures the block modules of methods that declare a measurement "
            f"({', '.join(inspectable_titles())}); "
            f"this model has {method} and no such module in its blocks"
        )
    return spec.registered, sites


def _inputs(batch: Any) -> torch.Tensor | list[torch.Tensor]:
    """A batch's inputs: the tensor itself, or the first item of an ``(inputs, labels, ...)`` batch (a tensor, or a
    list of images of different sizes)."""
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def inspect_adapter(
    model: nn.Module, batches: Iterable[Any], num_samples: int | None = None, device: str | torch.device = "auto"
) -> InspectionReport:
    """Measure what ``model``'s method modules do on ``batches`` (see the module docstring).

    Args:
        model: an adapted model (``create_model(..., method=AdaptFormerConfig(...))``, a segmentation model or a
            loaded adapter); moved to ``device`` in fp32 and put in eval mode (its training mode is restored
            afterwards).
        batches: input tensors, or ``(inputs, labels, ...)`` batches such as a DataLoader's (for a segmentation
            model, images of any size: see the module docstring).
        num_samples: stop after this many inputs (None: all of ``batches``).
        device: where to compute: "auto" (a GPU if there is one), "cpu", "cuda:1", ...

    Raises UnsupportedModelError when the model's method declares no measurement (or it installed no module),
    ValueError when ``num_samples`` < 1 or ``batches`` holds no inputs.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = resolve_device(device) if isinstance(device, str) else device
    blocks = block_list(model)
    method, sites = _measured_sites(model)
    kind = feature_kind(model)
    was_training = model.training
    model.to(device=device, dtype=torch.float32).eval()
    watched = {f"module{i}": module for i, (_, module) in sites.items()}
    sums = {i: _Sums() for i in sites}
    drift = [_DriftSums() for _ in blocks]
    pooled = _DriftSums()
    seen_samples = 0
    try:
        for batch in batches:
            x = _inputs(batch)
            if num_samples is not None:
                x = x[: num_samples - seen_samples]
            if len(x) == 0:
                continue
            for view in model_inputs(model, x):
                view = view.to(device=device, dtype=torch.float32)
                with recording(watched) as seen:
                    trace = trace_features(model, view)
                for i, (site, module) in sites.items():
                    if f"module{i}" in seen:  # not in a block after a segmentation model's last read block
                        assert site.measure is not None
                        sums[i].add(site.measure(module, *seen[f"module{i}"]))
                with adapters_off(model):
                    frozen = trace_features(model, view)
                for i, (adapted, reference) in enumerate(zip(trace.blocks, frozen.blocks, strict=True)):
                    drift[i].add(adapted, reference)
                pooled.add(trace.pooled, frozen.pooled)
            seen_samples += len(x)
            if num_samples is not None and seen_samples >= num_samples:
                break
    finally:
        model.train(was_training)
    if seen_samples == 0:
        raise ValueError("no inputs to inspect: the batches were empty")
    spec = get_spec(model)
    return InspectionReport(
        backbone=spec.backbone if spec is not None else type(model).__name__,
        method=method.title,
        form=next((s.form for s in sums.values() if s.form), ""),
        num_samples=seen_samples,
        feature=kind,
        adapters=tuple(s.row(i) for i, s in sums.items() if s.tokens),
        drift=tuple(d.row(i) for i, d in enumerate(drift) if d.samples),
        pooled=pooled.row(None),
    )
