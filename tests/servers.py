"""Starting ``adaptformer serve`` for a test: a free port, a bounded wait for /health, a stop that always happens."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(serve_args: list[str], cwd: Path | None = None, wait_s: float = 90) -> Iterator[str]:
    """``python -m adaptformer.cli serve SERVE_ARGS --port P`` until the block ends; yields its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "adaptformer.cli", "serve", *serve_args, "--port", str(port)]
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
                raise AssertionError(f"the server did not come up: {process.stdout.read() if process.stdout else ''}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
