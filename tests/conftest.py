"""Shared by the tests: tiny timm backbones (width 32-64, depth 2-4, built through the public factory), a set of
tiny real video files (``tests/video_files.py``), and real file-system faults (``tests/disks.py``): a small disk that
fills up and a read-only folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.disks import DISK_SIZE, ReadOnlyFolder, mount_tmpfs, unmount
from tests.video_files import CODECS, write_video

from adaptformer.engine.config.parser import parse_mapping

VIT = "vit_tiny_patch16_224"
SWIN = "swin_tiny_patch4_window7_224"

TINY_KWARGS: dict[str, dict[str, Any]] = {
    VIT: {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
    SWIN: {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)},
}

# a tiny VideoMAE-layout video ViT (video_vit_*): 4 frames of 32 px, tubelet 2
VIDEO_KWARGS = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_kwargs(name: str, **extra: Any) -> dict[str, Any]:
    return {**TINY_KWARGS[name], **extra}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets an equal share of the cores for torch's intra-op threads: two workers with
    every core each would oversubscribe the machine, and OpenMP barriers then make tiny models crawl."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 24-frame clip per codec (keyed by suffix), a 32-frame "long" mp4, a variable-frame-rate "vfr" mp4 and a
    5-frame "short" mp4."""
    root = tmp_path_factory.mktemp("videos")
    out = {suffix: write_video(root / f"clip.{suffix}") for suffix in CODECS}
    out["long"] = write_video(root / "long.mp4", num_frames=32)
    vfr = [0, 10, 20, 100, 110, 400, 410, 420, 1000, 1003, 1006, 2000] + [2100 + 100 * i for i in range(12)]
    out["vfr"] = write_video(root / "vfr.mp4", pts=vfr)
    out["short"] = write_video(root / "short.mp4", num_frames=5)
    return out


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A disk of 2 MiB (a tmpfs) mounted for the test and unmounted after it; root only (skipped otherwise, saying
    why)."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, DISK_SIZE)
    try:
        yield disk
    finally:
        unmount(disk)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[ReadOnlyFolder]:
    """An empty folder that refuses writes, and the cause the library names: mode 0o555 for a user, a tmpfs mounted
    read-only for root (who writes through modes)."""
    folder = tmp_path / "read_only"
    if os.geteuid() == 0:
        mount_tmpfs(folder, DISK_SIZE, read_only=True)
        try:
            yield ReadOnlyFolder(folder, "the file system is read-only")
        finally:
            unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield ReadOnlyFolder(folder, "permission denied")
        finally:
            folder.chmod(0o755)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from more threads, and on a busy machine OpenMP barriers make them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nested(**flat: Any) -> dict[str, Any]:
    """Configuration fields given by their flat (0.1) names, placed in the 0.2 nesting by the library's own table:
    ``nested(epochs=2, bottleneck=8)`` -> ``{"optim": {"epochs": 2}, "model": {"method": {"bottleneck": 8}}}``."""
    from adaptformer.engine.config.v01 import V01_KEYS, V01_METHOD_KEYS, place

    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key == "method":
            place(out, "model.method.name", value)
        elif key in V01_METHOD_KEYS:
            place(out, f"model.method.{V01_METHOD_KEYS[key][1]}", value)
        else:
            place(out, V01_KEYS[key], value)
    return out


def changed(cfg: Any, **flat: Any) -> Any:
    """``cfg`` (a TrainConfig) with fields changed, given by their flat names (see :func:`nested`)."""
    from adaptformer.engine.config.layers import merge_config

    return parse_mapping(merge_config(cfg.to_dict(), nested(**flat)))
