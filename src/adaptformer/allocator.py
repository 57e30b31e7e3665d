"""Host memory allocator tuning for training on the CPU (glibc malloc).

PyTorch's CPU tensors come straight from ``malloc``/``free``: there is no caching allocator on the host as there is
on CUDA. A training step allocates and frees activations, gradients and casts of several MB each, and glibc serves
big requests with fresh ``mmap`` pages (above its mmap threshold) and returns freed memory at the top of the heap to
the OS (above its trim threshold), so the same memory can be page-faulted and zero-filled again and again. glibc
adapts both thresholds upwards as large blocks are freed, which is why the effect depends on the process's history.

:func:`tune_allocator` raises both thresholds with ``mallopt`` so that freed memory is kept and reused: requests up to
32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and up to 1 GiB of free memory at the top of the
heap is kept instead of being returned. Resident memory then stays near the process's peak instead of shrinking
between steps; peak memory itself does not grow. The setting is process-wide (forked DataLoader workers inherit it)
and cannot be undone for the rest of the process. ``SpeedConfig(allocator="tuned")`` applies it; Intel's PyTorch CPU
guide gets a similar effect by preloading jemalloc or tcmalloc, which a library cannot do inside a running process.

Measured on this project's CPU: a lone bf16 GEMM writing a 9.7 MB result in a fresh process took 6.9 ms with glibc's
defaults and 3.3 ms tuned; but whole ViT-B training steps in the benchmark harness (``benchmarks/allocator.py``,
child processes per setting, BENCHMARKS.md) were not faster tuned (within the machine's noise, AdaptFormer steps
~5-8% slower). So "auto" leaves the allocator alone; "tuned" is an option to measure on one's own machine.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from functools import cache

logger = logging.getLogger(__name__)

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "allocator_tunable", "allocator_tuned", "tune_allocator"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit (4 MiB * sizeof(long))
TRIM_THRESHOLD = 2**30

_tuned = False


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def allocator_tunable() -> bool:
    """Whether :func:`tune_allocator` can act here (Linux with glibc)."""
    return _glibc() is not None


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has tuned this process."""
    return _tuned


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring) once per process; returns True when the
    process is tuned, False where it cannot be (not glibc). Raises RuntimeError if glibc refuses a setting."""
    global _tuned
    if _tuned:
        return True
    libc = _glibc()
    if libc is None:
        return False
    for name, option, value in (
        ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ):
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"glibc mallopt({name}, {value}) failed")
    _tuned = True
    logger.info(
        "allocator: glibc mmap threshold %d MiB, trim threshold %d MiB", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20
    )
    return True
