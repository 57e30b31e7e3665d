"""Throughput and latency of ``adaptformer serve`` under a bounded local load.

Starts the real server (``python -m adaptformer.cli serve``) with two adapters on a backbone (default: the shipped tiny
``vit_shapes_patch8_32``; ``--backbone vit_base_patch16_224`` for ViT-B), then for each concurrency C sends a fixed
number of requests (one image each, every task) from C client threads with httpx, and reports requests/s and the
p50 / p99 latency, plus how many batches the server ran (its /health counters).

    python benchmarks/serve_load.py --json reports/bench/serve_cpu.json --markdown
    python benchmarks/serve_load.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

from adaptformer import AdaptFormerConfig, create_model, save_adapter


def _adapters(folder: Path, backbone: str) -> list[Path]:
    dirs = []
    checkpoint = "timm" if backbone == "vit_shapes_patch8_32" else None
    for k, method in enumerate((AdaptFormerConfig(bottleneck=16), "linear")):
        torch.manual_seed(k)
        model = create_model(backbone, 10, method=method, checkpoint=checkpoint, init_seed=None if checkpoint else 0)
        dirs.append(save_adapter(model, folder / f"task{k}" / "adapter", [f"c{i}" for i in range(10)]))
    return dirs


def _png(seed: int, side: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def _start(dirs: list[Path], args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "adaptformer.cli", "serve", *[a for d in dirs for a in ("--adapter", str(d))],
               "--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--precision", args.precision]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def load(url: str, clients: int, requests: int, image: bytes) -> dict[str, Any]:
    before = httpx.get(f"{url}/health").json()

    def one(_: int) -> float:
        start = time.perf_counter()
        response = httpx.post(f"{url}/classify", files={"files": ("x.png", image, "image/png")}, timeout=300)
        response.raise_for_status()
        return time.perf_counter() - start

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    quantile = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"clients": clients, "requests": requests, "seconds": seconds, "requests_per_s": requests / seconds,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * quantile[98],
            "batches": after["batches"] - before["batches"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_shapes_patch8_32")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--quick", action="store_true", help="8 requests per level: checks it runs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests = 8
    with tempfile.TemporaryDirectory() as folder:
        dirs = _adapters(Path(folder), args.backbone)
        process, url = _start(dirs, args)
        try:
            size = 32 if args.backbone == "vit_shapes_patch8_32" else 224
            image = _png(0, size)
            httpx.post(f"{url}/classify", files={"files": ("x.png", image, "image/png")}, timeout=300)  # warm-up
            results = [load(url, int(c), args.requests, image) for c in args.clients.split(",")]
        finally:
            process.terminate()
            process.wait(timeout=30)
    report = {"backbone": args.backbone, "tasks": 2, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "precision": args.precision, "results": results}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        print("| clients | requests/s | p50 ms | p99 ms | batches for the requests |\n| --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['batches']} / {r['requests']} |")  # fmt: skip
    else:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
