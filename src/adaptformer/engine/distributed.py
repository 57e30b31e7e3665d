"""Data-parallel runs under ``torchrun``: process-group set-up, and the few collectives the engine needs.

``torchrun --nproc_per_node N`` starts N processes and tells each its rank through the environment (RANK, WORLD_SIZE,
LOCAL_RANK), which is the launcher's documented interface. Gloo is used on CPU, NCCL on GPUs. Without those
variables (or with WORLD_SIZE=1) everything runs in the one process and every collective is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs progress."""
        return self.rank == 0


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def check_device_name(name: str) -> str:
    """``name`` if it is "auto" or a torch device name (cpu, cuda, cuda:1, ...); ValueError naming it otherwise."""
    if name != "auto":
        try:
            torch.device(name)
        except RuntimeError:
            raise ValueError(f"device {name!r} is not auto or a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    return name


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this process's GPU if there is one, else the CPU; other names as given ("cuda" gets the local GPU)."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group that ``torchrun`` set up (if any) and return this process's context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, resolved)
    return DistributedContext(rank, world_size, local_rank, resolved)


def shutdown(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when running on several processes, else ``model`` itself."""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` itself is left as it is)."""
    out = tensor.detach().clone()
    if ctx.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_variable(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Concatenate every process's ``tensor`` (first dimension may differ per process), in rank order, on all ranks.

    Shorter tensors are padded for the transfer and trimmed again, so nothing is duplicated or lost.
    """
    if not ctx.enabled:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def all_gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
