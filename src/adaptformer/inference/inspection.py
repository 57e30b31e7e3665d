"""What AdaptFormer's adapters do inside a trained model (Chen et al., NeurIPS 2022, arXiv 2205.13535).

An adapted block computes ``x = x' + h + s * A(.)``, with x' the residual stream after attention, h the frozen MLP
branch ``MLP(LN(x'))`` as the block adds it, and ``s * A(.)`` the AdaptMLP's contribution (sequential form:
``s * A(h)``). Over a batch of real inputs, :func:`inspect_adapter` reports per adapted block

- adapter/MLP: ``||s A|| / ||h||``, per token L2 norms over the channels;
- adapter/residual: ``||s A|| / ||x'||``;

each as the ratio of RMS norms over all tokens and samples (the headline: ``sqrt(mean ||s A||^2) /
sqrt(mean ||h||^2)``, which a few tokens with a near-zero denominator cannot dominate) and as the mean of the per-token
ratio. For every block, adapted or not, it compares the adapted model's class token after the block with the frozen
backbone's (the same input, every adapter's output replaced by zeros: the library's zero-initialised up-projection
makes that exactly the frozen function, in both forms): the relative L2 distance ``||f_a - f_f|| / ||f_f||`` and the
cosine similarity, averaged over samples; the same for the pooled feature the head reads. Backbones without a class
token (the video ViT, Swin) are compared on the mean over tokens, and the report says which.

Everything is read through forward hooks on the blocks, their pre-MLP LayerNorm (input: x'), the AdaptMLP modules and
the head, removed when done; h is ``output - x' - s A``, so a block's layer scale and drop path (identity in eval) are
part of the branch it is compared with.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.families import find_family
from ..engine.distributed import resolve_device
from ..errors import UnsupportedModelError
from ..files import atomic_write_bytes
from ..heads import classifiers
from ..methods.adaptformer import AdaptMLP, adapter_modules
from ..methods.state import get_spec

logger = logging.getLogger(__name__)

FILES = ("inspect.json", "inspect.md", "inspect.png")
HEADLINE = "ratio of RMS norms over all tokens and samples"
_TINY = 1e-12  # a zero denominator (an all-zero token) gives ratio 0 for a zero numerator, never NaN
# the LayerNorm whose input is x' (the residual stream the MLP half reads), by family; "norm2" where not listed
_MLP_NORMS = {"tv_vit": "ln_2"}


@dataclass(frozen=True)
class AdapterRow:
    """How large one adapted block's adapter contribution is (ratios of L2 norms over the channels, per token).

    Args:
        block: the block's index in forward order over all blocks (as ``AdaptFormerConfig.layers`` counts).
        adapter_mlp: ``||s A|| / ||h||`` as the ratio of RMS norms (the headline).
        adapter_mlp_token_mean: the same ratio per token, averaged over tokens and samples.
        adapter_residual: ``||s A|| / ||x'||`` as the ratio of RMS norms (the headline).
        adapter_residual_token_mean: the same ratio per token, averaged over tokens and samples.
    """

    block: int
    adapter_mlp: float
    adapter_mlp_token_mean: float
    adapter_residual: float
    adapter_residual_token_mean: float


@dataclass(frozen=True)
class DriftRow:
    """How far a feature moved from the frozen backbone's, averaged over samples.

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
        form: the adapters' form, parallel or sequential.
        num_samples: the inputs the numbers are averaged over.
        feature: what the drift compares per block: "class token" or "mean over tokens".
        adapters: one row per adapted block, in forward order.
        drift: one row per block (adapted or not), in forward order.
        pooled: the drift of the pooled feature the head reads.
    """

    backbone: str
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


class _Recorder:
    """Forward hooks keeping each named module's first input and output of its latest call."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Any:
        def keep(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            self.seen[name] = (args[0], output)

        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def _recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    recorder = _Recorder(modules)
    try:
        yield recorder.seen
    finally:
        recorder.remove()


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every AdaptMLP of ``model`` contributes zeros: the frozen backbone's function (``add`` is
    ordered so that a zero contribution gives exactly ``x' + h``, parallel and sequential)."""
    with ExitStack() as stack:
        for adapter in adapter_modules(model):
            handle = adapter.register_forward_hook(lambda module, args, output: torch.zeros_like(output))
            stack.callback(handle.remove)
        yield model


def _blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """``model``'s family name and its blocks in forward order."""
    family = find_family(model, what="inspection hooks")
    return family.name, [block for _, block in family.blocks(model)]


def _has_class_token(model: nn.Module) -> bool:
    # timm ViT/EVA/BEiT keep it as cls_token (None when built without one), torchvision's ViT as class_token
    return any(getattr(model, name, None) is not None for name in ("cls_token", "class_token"))


def _feature(tokens: torch.Tensor, class_token: bool) -> torch.Tensor:
    """(B, ..., C) block output -> (B, C): the class token (index 0) or the mean over all tokens."""
    if class_token:
        return tokens[:, 0]
    return tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]).mean(dim=1)


@dataclass(frozen=True)
class FeatureTrace:
    """The features the drift compares: after each block (class token or mean over tokens) and the head's input.

    Args:
        blocks: one (B, C) tensor per block, in forward order.
        pooled: (B, D), what the (first) classifier reads.
    """

    blocks: tuple[torch.Tensor, ...]
    pooled: torch.Tensor


@torch.no_grad()
def trace_features(model: nn.Module, inputs: torch.Tensor) -> FeatureTrace:
    """Run ``model`` on ``inputs`` and keep :class:`FeatureTrace`'s features (wrap in :func:`adapters_off` for the
    frozen backbone's)."""
    _, blocks = _blocks(model)
    head = classifiers(model)[0]
    class_token = _has_class_token(model)
    watched = {**{f"block{i}": b for i, b in enumerate(blocks)}, "head": head}
    with _recording(watched) as seen:
        model(inputs)
    return FeatureTrace(
        tuple(_feature(seen[f"block{i}"][1], class_token) for i in range(len(blocks))), seen["head"][0].flatten(1)
    )


class _Sums:
    """Running sums over tokens for one adapted block."""

    def __init__(self) -> None:
        self.tokens = 0
        self.adapter_sq = self.branch_sq = self.residual_sq = 0.0
        self.mlp_ratio = self.residual_ratio = 0.0

    def add(self, residual: torch.Tensor, adapter: torch.Tensor, output: torch.Tensor) -> None:
        width = residual.shape[-1]
        x = residual.reshape(-1, width)  # (tokens, C): x'
        a = adapter.reshape(-1, width)  # s A(.)
        h = output.reshape(-1, width) - x - a  # the MLP branch as the block added it
        a_norm, h_norm, x_norm = a.norm(dim=-1), h.norm(dim=-1), x.norm(dim=-1)
        self.tokens += a.shape[0]
        self.adapter_sq += a_norm.square().sum().item()
        self.branch_sq += h_norm.square().sum().item()
        self.residual_sq += x_norm.square().sum().item()
        self.mlp_ratio += (a_norm / h_norm.clamp_min(_TINY)).sum().item()
        self.residual_ratio += (a_norm / x_norm.clamp_min(_TINY)).sum().item()

    def row(self, block: int) -> AdapterRow:
        def rms_ratio(top: float, bottom: float) -> float:
            return (top / bottom) ** 0.5 if bottom > 0 else 0.0

        return AdapterRow(
            block=block,
            adapter_mlp=rms_ratio(self.adapter_sq, self.branch_sq),
            adapter_mlp_token_mean=self.mlp_ratio / self.tokens,
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


def _adapted_blocks(model: nn.Module, blocks: list[nn.Module]) -> dict[int, AdaptMLP]:
    adapted = {i: b.adaptmlp for i, b in enumerate(blocks) if isinstance(getattr(b, "adaptmlp", None), AdaptMLP)}
    if not adapted:
        spec = get_spec(model)
        method = f"method {spec.method!r}" if spec is not None else f"a plain {type(model).__name__}"
        raise UnsupportedModelError(
            f"inspect supports AdaptFormer adapters (method 'adaptformer': AdaptMLP beside the blocks' MLPs, "
            f"parallel or sequential, any layers); this model has {method} and no AdaptMLP modules"
        )
    return adapted


def _inputs(batch: Any) -> torch.Tensor:
    """A batch's inputs: the tensor itself, or the first item of an ``(inputs, labels, ...)`` batch."""
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def inspect_adapter(
    model: nn.Module, batches: Iterable[Any], num_samples: int | None = None, device: str | torch.device = "auto"
) -> InspectionReport:
    """Measure what ``model``'s AdaptFormer adapters do on ``batches`` (see the module docstring).

    Args:
        model: an adapted model (``create_model(..., method=AdaptFormerConfig(...))`` or a loaded adapter); moved to
            ``device`` in fp32 and put in eval mode (its training mode is restored afterwards).
        batches: input tensors, or ``(inputs, labels, ...)`` batches such as a DataLoader's.
        num_samples: stop after this many inputs (None: all of ``batches``).
        device: where to compute: "auto" (a GPU if there is one), "cpu", "cuda:1", ...

    Raises UnsupportedModelError when the model has no AdaptMLP modules (another method), ValueError when
    ``num_samples`` < 1 or ``batches`` holds no inputs.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = resolve_device(device) if isinstance(device, str) else device
    family, blocks = _blocks(model)
    adapted = _adapted_blocks(model, blocks)
    norm_name = _MLP_NORMS.get(family, "norm2")
    class_token = _has_class_token(model)
    was_training = model.training
    model.to(device=device, dtype=torch.float32).eval()
    watched: dict[str, nn.Module] = {}
    for i, adapter in adapted.items():
        watched[f"adapter{i}"] = adapter
        watched[f"norm{i}"] = getattr(blocks[i], norm_name)
        watched[f"block{i}"] = blocks[i]
    sums = {i: _Sums() for i in adapted}
    drift = [_DriftSums() for _ in blocks]
    pooled = _DriftSums()
    seen_samples = 0
    try:
        for batch in batches:
            x = _inputs(batch)
            if num_samples is not None:
                x = x[: num_samples - seen_samples]
            x = x.to(device=device, dtype=torch.float32)
            with _recording(watched) as seen:
                trace = trace_features(model, x)
            for i, block_sums in sums.items():
                block_sums.add(seen[f"norm{i}"][0], seen[f"adapter{i}"][1], seen[f"block{i}"][1])
            with adapters_off(model):
                frozen = trace_features(model, x)
            for i, sums_i in enumerate(drift):
                sums_i.add(trace.blocks[i], frozen.blocks[i])
            pooled.add(trace.pooled, frozen.pooled)
            seen_samples += x.shape[0]
            if num_samples is not None and seen_samples >= num_samples:
                break
    finally:
        model.train(was_training)
    if seen_samples == 0:
        raise ValueError("no inputs to inspect: the batches were empty")
    spec = get_spec(model)
    return InspectionReport(
        backbone=spec.backbone if spec is not None else type(model).__name__,
        form=next(iter(adapted.values())).form,
        num_samples=seen_samples,
        feature="class token" if class_token else "mean over tokens",
        adapters=tuple(s.row(i) for i, s in sums.items()),
        drift=tuple(d.row(i) for i, d in enumerate(drift)),
        pooled=pooled.row(None),
    )


# ------------------------------------------------------------------------------------------------ the files


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """``out_dir`` as a Path, if it is missing or empty, or ``overwrite``; FileExistsError otherwise."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace its {', '.join(FILES)}")
    return out


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def format_markdown(report: InspectionReport) -> str:
    """``inspect.md``: one table row per block (adapter columns empty where a block has no adapter) and the pooled
    feature."""
    rows = {r.block: r for r in report.adapters}
    feature = report.feature
    lines = [
        f"# What the adapters do: {report.backbone}, {report.form} AdaptFormer, {report.num_samples} inputs",
        "",
        "adapter/MLP = ||s·A|| / ||MLP(LN(x'))||, adapter/residual = ||s·A|| / ||x'|| (per-token L2 norms over the "
        f"channels; headline: the {HEADLINE}, in brackets: the mean of the per-token ratio). Drift: the {feature} "
        "after the block vs the frozen backbone's (adapters off), relative L2 distance and cosine similarity, "
        "averaged over inputs.",
        "",
        f"| block (from 0) | adapter/MLP | adapter/residual | {feature} relative drift | cosine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in report.drift:
        r = rows.get(d.block)  # type: ignore[arg-type]
        mlp = f"{_number(r.adapter_mlp)} ({_number(r.adapter_mlp_token_mean)})" if r else "–"
        residual = f"{_number(r.adapter_residual)} ({_number(r.adapter_residual_token_mean)})" if r else "–"
        lines.append(f"| {d.block} | {mlp} | {residual} | {_number(d.relative_l2)} | {d.cosine:.6f} |")
    p = report.pooled
    lines.append(f"| head input (pooled) | – | – | {_number(p.relative_l2)} | {p.cosine:.6f} |")
    return "\n".join(lines) + "\n"


def plot_inspection(report: InspectionReport) -> bytes:
    """``inspect.png``: the two adapter ratios and the drift against the block index."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    mlp_ax, residual_ax, drift_ax = fig.subplots(1, 3)
    adapted = [r.block for r in report.adapters]
    for ax, label, headline, mean in (
        (mlp_ax, "adapter / MLP branch", "adapter_mlp", "adapter_mlp_token_mean"),
        (residual_ax, "adapter / residual stream", "adapter_residual", "adapter_residual_token_mean"),
    ):
        ax.plot(adapted, [getattr(r, headline) for r in report.adapters], marker="o", label="RMS ratio")
        ax.plot(adapted, [getattr(r, mean) for r in report.adapters], marker="x", ls="--", label="per-token mean")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    blocks = [d.block for d in report.drift]
    drift_ax.plot(blocks, [d.relative_l2 for d in report.drift], marker="o", color="tab:red", label="relative L2")
    drift_ax.set_ylabel(f"{report.feature} drift (relative L2)")
    cosine_ax = drift_ax.twinx()
    cosine_ax.plot(blocks, [d.cosine for d in report.drift], marker="x", ls="--", color="tab:blue")
    cosine_ax.set_ylabel("cosine similarity", color="tab:blue")
    for ax in (mlp_ax, residual_ax, drift_ax):
        ax.set_xlabel("block")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{report.backbone}, {report.form} AdaptFormer, {report.num_samples} inputs", wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_inspection(report: InspectionReport, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``inspect.json``, ``inspect.md`` and ``inspect.png`` to ``out_dir`` (created; each file atomically) and
    return their paths by name. A non-empty ``out_dir`` is refused (FileExistsError) unless ``overwrite``."""
    out = check_out_dir(out_dir, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "inspect.json": (json.dumps(report.to_dict(), indent=2) + "\n").encode(),
        "inspect.md": format_markdown(report).encode(),
        "inspect.png": plot_inspection(report),
    }
    paths = {}
    for name, data in contents.items():
        atomic_write_bytes(out / name, data)
        paths[name] = out / name
    return paths
