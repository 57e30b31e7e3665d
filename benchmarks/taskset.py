"""N adapter folders on one backbone, and request streams over them (shared by multitask_scale.py and residency.py).

Each task's adapter and head are the method's initial values plus the task's own seeded random offsets, written with
``save_adapter`` into ``root/tNNNN`` (an adapter root as ``serve --adapter-root`` reads it). Building one model and
re-writing its trainable parameters per task is what makes 1,024 ViT-B tasks take a minute rather than an hour.

Task popularity: ``uniform`` or ``zipf`` (Zipf(1.1): task k, ranked from 1, requested with probability proportional
to k^-1.1); a stream is a seeded draw of task indices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from adaptformer import AdaptFormerConfig, LoRAConfig, create_model, save_adapter
from adaptformer.methods.registry import MethodConfig
from adaptformer.methods.state import remember_fingerprint

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
"""The --quick backbone's shape (a 2-block ViT of width 64 on 32x32 images)."""
ZIPF_S = 1.1


def add_taskset_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the backbone and the tasks a task-set benchmark writes (multitask_scale.py, residency.py)."""
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--depth", type=int, default=None, help="keep only the backbone's first DEPTH blocks")
    parser.add_argument("--method", default="af16", help="af16 (AdaptFormer-16) or lora8 (LoRA rank 8, q and v)")
    parser.add_argument("--classes", type=int, default=100, help="each task's head")
    parser.add_argument("--popularity", default="uniform,zipf", help="comma-separated: uniform, zipf (Zipf(1.1))")


def method_config(method: str) -> MethodConfig:
    """``af16`` (AdaptFormer, bottleneck 16) or ``lora8`` (LoRA rank 8 on q and v); ``afN``/``loraN`` likewise."""
    if method.startswith("af") and method[2:].isdigit():
        return AdaptFormerConfig(bottleneck=int(method[2:]))
    if method.startswith("lora") and method[4:].isdigit():
        return LoRAConfig(rank=int(method[4:]))
    raise ValueError(f"method {method!r}: expected afN (AdaptFormer-N) or loraN (LoRA rank N)")


def write_tasks(
    root: Path, backbone: str, method: str, n: int, classes: int, depth: int | None, tiny: bool
) -> list[Path]:
    """``n`` adapter folders ``root/t0000 ...`` of ``method`` on ``backbone`` (``depth``: its first blocks only)."""
    kwargs = dict(TINY) if tiny else {}
    if depth is not None:
        kwargs["depth"] = depth
    model = create_model(backbone, classes, method=method_config(method), init_seed=0, **kwargs)
    trainable = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
    remember_fingerprint(model)  # the frozen tensors never change here: hash them once, not once per folder
    dirs = []
    for k in range(n):
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p, initial in trainable:
                p.copy_(initial + 0.02 * torch.randn(p.shape, generator=generator))
        dirs.append(save_adapter(model, root / f"t{k:04d}"))
    return dirs


def popularity(kind: str, n: int) -> torch.Tensor:
    """The probability of each of ``n`` tasks: ``uniform`` or ``zipf`` (Zipf(1.1) over ranks 1..n)."""
    if kind == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if kind == "zipf":
        weights = torch.arange(1, n + 1, dtype=torch.float64) ** -ZIPF_S
        return weights / weights.sum()
    raise ValueError(f"popularity {kind!r}: expected uniform or zipf")


def stream(kind: str, n: int, requests: int, seed: int) -> torch.Tensor:
    """``requests`` task indices drawn from ``kind``'s popularity over ``n`` tasks (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(popularity(kind, n), requests, replacement=True, generator=generator)
