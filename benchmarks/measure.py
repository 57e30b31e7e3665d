"""Measuring primitives for the benchmark harness: interleaved timing, peak tensor memory, machine description.

Timing is interleaved: every round runs each case once (the order rotating by one case per round), so a burst of load
from other processes lands on all cases of that round rather than on one case; ratios are computed per round and their
median reported.

Peak memory is the peak of live PyTorch tensor memory during one step: on CUDA ``torch.cuda.max_memory_allocated``;
on CPU, the bytes of every live parameter, buffer, gradient and optimizer state before the step plus the highest
running total of the CPU allocator's allocations minus frees during the step, read from ``torch.profiler``'s memory
events (``total_allocated`` of each allocation record). It counts tensors (weights, activations saved for backward,
gradients, temporaries between operators), not the Python interpreter or allocator caching, and is deterministic, so
unlike process RSS it is not disturbed by other processes or by memory freed earlier in the same process.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import adaptformer
from adaptformer.speed.frozen_backward import packed_weights


@dataclass
class Case:
    """One thing to time: ``run`` does one step (training step or inference forward) on ``device``."""

    name: str
    run: Callable[[], None]
    device: torch.device
    tensors: Callable[[], Iterable[torch.Tensor]] = list  # the tensors alive between steps (for peak memory)
    prepare: Callable[[], None] = lambda: None  # run before measuring memory (e.g. free the last step's gradients)
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)

    def timed(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.run()
        sync(self.device)
        elapsed = time.perf_counter() - start
        self.times.append(elapsed)
        return elapsed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(cases: list[Case], rounds: int, warmup: int) -> None:
    """Run ``warmup`` untimed steps of each case, then ``rounds`` rounds in which every case runs once, timed. The
    order rotates by one case per round, so no case always runs right after the same other case (what a step leaves
    behind, e.g. the heap's state after a memory-hungry step, measurably changes the next step's time on CPU)."""
    for case in cases:
        for _ in range(warmup):
            case.run()
        sync(case.device)
    for r in range(rounds):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            case.timed()


def median_ratio(a: Case, b: Case) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


def model_tensors(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[torch.Tensor]:
    """Parameters, buffers, gradients and optimizer state: what stays alive between training steps."""
    yield from model.parameters()
    yield from model.buffers()
    yield from (p.grad for p in model.parameters() if p.grad is not None)
    yield from packed_weights(model)  # oneDNN copies of frozen weights (adaptformer.speed.frozen_backward)
    if optimizer is not None:
        for state in optimizer.state.values():
            yield from (v for v in state.values() if torch.is_tensor(v))


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t.is_mkldnn:  # opaque oneDNN tensor: no storage to inspect
            seen[id(t)] = t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _walk(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def peak_memory(case: Case) -> int:
    """Peak bytes of live tensor memory during one ``case.run()`` (see the module docstring)."""
    case.prepare()
    if case.device.type == "cuda":
        sync(case.device)
        torch.cuda.reset_peak_memory_stats(case.device)
        case.run()
        sync(case.device)
        return int(torch.cuda.max_memory_allocated(case.device))
    from torch._C._profiler import _EventType

    before = storage_bytes(case.tensors())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        case.run()
    # The reporter's running total spans profiling sessions: measure from its value when this one started.
    records = sorted(
        (node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated)
        for node in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu"
    )
    if not records:
        return before
    start = records[0][2] - records[0][1]
    return before + max(0, max(total for _, _, total in records) - start)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    wanted = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")
                    return [flag for flag in line.split(":", 1)[1].split() if flag in wanted]
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "adaptformer": adaptformer.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
