"""Starting ``adaptformer serve`` for a test: two tiny adapters to serve, a free port, a bounded wait for /health, a
stop that always happens, and the server's output (stdout and stderr) in a file, so a test can read its log and a
chatty server never blocks on a full pipe."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from tests.training_step import move_trainable

from adaptformer import AdaptFormerConfig, create_model, save_adapter

TINY = "vit_shapes_patch8_32"


def serve_adapters(root: Path) -> list[Path]:
    """Two adapters on the shipped tiny backbone: ``digits`` (AdaptFormer, 10 classes), ``shapes`` (linear, 4)."""
    dirs = []
    for name, method, classes in (("digits", AdaptFormerConfig(bottleneck=8), 10), ("shapes", "linear", 4)):
        dirs.append(write_adapter(root / name / "adapter", len(dirs), classes, method))
    return dirs


def write_adapter(folder: Path, seed: int, classes: int, method: Any = "adaptformer", **backbone: Any) -> Path:
    """An adapter of ``method`` on the shipped tiny backbone (its timm weights, or ``backbone``'s create_model
    arguments), trainable tensors moved off their init by ``seed``, saved in ``folder``."""
    torch.manual_seed(seed)
    method = AdaptFormerConfig(bottleneck=8) if method == "adaptformer" else method
    model = create_model(TINY, classes, method=method, **({"checkpoint": "timm"} | backbone))
    label = folder.parent.name if folder.name == "adapter" else folder.name
    return save_adapter(move_trainable(model, 0.2).eval(), folder, [f"{label}-{i}" for i in range(classes)])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path  # its stdout and stderr
    process: subprocess.Popen[str]

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (VmHWM), MB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(serve_args: list[str], cwd: Path | None = None, wait_s: float = 90) -> Iterator[str]:
    """``python -m adaptformer.cli serve SERVE_ARGS --port P`` until the block ends; yields its URL."""
    with serving(serve_args, cwd, wait_s) as server:
        yield server.url


@contextlib.contextmanager
def serving(
    serve_args: list[str],
    cwd: Path | None = None,
    wait_s: float = 90,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """As :func:`running_server`, yielding the :class:`Server`; its output goes to ``log`` (default: a temporary
    file), its environment is ``env`` (default: this one's)."""
    port = free_port()
    argv = [sys.executable, "-m", "adaptformer.cli", "serve", *serve_args, "--port", str(port)]
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "serve.log"
        output = stack.enter_context(log.open("w"))
        process = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait(timeout=20)
                    raise AssertionError(f"the server did not come up: {log.read_text()}")
                time.sleep(0.2)
            yield Server(url, process.pid, log, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
