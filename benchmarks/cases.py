"""The cases the benchmark times: a training step or a no-grad forward of a method's model, built through the
public factory (``create_model`` + ``apply_speed``), and how their timings become result rows and ratios."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from measure import Case, median_ratio, model_tensors, peak_memory

from adaptformer import AdaptFormerConfig, VPTConfig, count_trainable, create_model
from adaptformer.precision import Precision
from adaptformer.speed import SpeedConfig, apply_speed, speed_config

MiB = 2**20
METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "linear": {"method": "linear"},
    "vpt-1": {"method": VPTConfig(num_tokens=1, deep=True)},
    "vpt-64": {"method": VPTConfig(num_tokens=64, deep=True)},
    "adaptformer-64": {"method": AdaptFormerConfig(bottleneck=64)},
    "adaptformer-1/12": {"method": AdaptFormerConfig(bottleneck=1 / 12)},  # per-stage dim // 12 (paper Table 7, Swin)
}
VIT_METHODS = ("full", "linear", "vpt-1", "vpt-64", "adaptformer-64")


def late_adapters(depth: int) -> tuple[str, dict[str, Any]]:
    """AdaptFormer-64 in the second half of the blocks only (the paper's "layers 7-12" ablation for depth 12)."""
    layers = tuple(range(depth // 2, depth))
    label = f"adaptformer-64, blocks {layers[0] + 1}-{depth}"
    return label, {"method": AdaptFormerConfig(bottleneck=64, layers=layers)}


@dataclass(frozen=True)
class Backbone:
    """A model name with its timm kwargs and per-sample input shape; the methods measured on it (labels of
    ``METHODS``), the AdaptFormer one the targets compare, and whether to measure adapters in the later half only."""

    name: str
    sample_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch: int = 8
    num_classes: int = 100
    methods: tuple[str, ...] = VIT_METHODS
    adaptformer: str = "adaptformer-64"
    late_adapters: bool = True

    @property
    def is_video(self) -> bool:
        return len(self.sample_shape) == 4

    @property
    def depth(self) -> int:
        return int(self.kwargs.get("depth", 12))


def _speed(model: torch.nn.Module) -> dict[str, Any]:
    config = speed_config(model)
    return config.to_dict() if config is not None else {}


def batch_for(backbone: Backbone, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(backbone.batch, *backbone.sample_shape, generator=g)
    y = torch.randint(0, backbone.num_classes, (backbone.batch,), generator=g)
    return x.to(device), y.to(device)


def training_case(
    label: str,
    backbone: Backbone,
    method: dict[str, Any],
    precision: str,
    device: torch.device,
    speed: SpeedConfig | None = None,
) -> Case:
    """One SGD training step of ``method`` on ``backbone`` with the ``speed`` options, as a Case."""
    model = create_model(backbone.name, backbone.num_classes, **method, **backbone.kwargs)
    apply_speed(model, speed or SpeedConfig(), device, precision)
    autocast = Precision(precision, device.type).autocast
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x, y = batch_for(backbone, device)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return Case(
        label,
        run,
        device,
        tensors=lambda: [*model_tensors(model, optimizer), x, y],
        prepare=lambda: optimizer.zero_grad(set_to_none=True),
        info={"kind": "train", "trainable_params": count_trainable(model), "speed": _speed(model)},
    )


def inference_case(
    label: str,
    backbone: Backbone,
    method: dict[str, Any],
    precision: str,
    device: torch.device,
    speed: SpeedConfig | None = None,
) -> Case:
    """One no-grad eval forward of ``method``'s model, as a Case."""
    model = create_model(backbone.name, backbone.num_classes, **method, **backbone.kwargs)
    apply_speed(model, speed or SpeedConfig(), device, precision)
    autocast = Precision(precision, device.type).autocast
    model.eval()
    x, _ = batch_for(backbone, device)

    def run() -> None:
        with torch.no_grad(), autocast():
            model(x)

    return Case(
        label,
        run,
        device,
        tensors=lambda: [*model_tensors(model), x],
        info={"kind": "inference", "speed": _speed(model)},
    )


def summarize(cases: list[Case], batch: int, memory: bool) -> dict[str, dict[str, Any]]:
    results = {}
    for case in cases:
        median = statistics.median(case.times)
        row = {**case.info, "median_s": median, "min_s": min(case.times), "samples_per_s": batch / median}
        if memory:
            row["peak_memory_mib"] = peak_memory(case) / MiB
        results[case.name] = row
    return results


def ratio_table(cases: dict[str, Case], results: dict[str, dict[str, Any]], pairs: list[tuple[str, str]]) -> dict:
    ratios = {}
    for a, b in pairs:
        entry = {"time": median_ratio(cases[a], cases[b])}
        if "peak_memory_mib" in results[a] and "peak_memory_mib" in results[b]:
            entry["memory"] = results[a]["peak_memory_mib"] / results[b]["peak_memory_mib"]
        ratios[f"{a}/{b}"] = entry
    return ratios
