"""Throughput and latency of ``adaptformer serve`` under a bounded local load.

Starts the real server (``python -m adaptformer.cli serve``, on the loopback address) on a backbone (default: the
shipped tiny ``vit_shapes_patch8_32``; ``--backbone vit_base_patch16_224`` for ViT-B), then for each concurrency C
sends a fixed number of requests (one image each) from C client threads with httpx, and reports requests/s and the
p50 / p99 latency, plus how many batches the server ran (its /health counters).

Without ``--tasks``: two adapters given with ``--adapter`` (AdaptFormer-16 and a linear probe), every request asks
both. With ``--tasks 8,256``: for each N, N AdaptFormer-16 adapters (10 classes) under an ``--adapter-root`` served
with ``--max-resident`` and ``--max-cached N``; each request asks one task drawn uniformly (seeded); one request per
task warms the store first (so the timed load sees device and host hits and evictions, not first reads). Answers
other than 200 (429 queue full, 503 no free device slot) are counted, not timed.

    python benchmarks/serve_load.py --json reports/bench/serve_cpu.json --markdown
    python benchmarks/serve_load.py --tasks 8,256 --clients 1,16,64 --requests 256 --markdown
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import load_average, machine_info
from taskset import write_tasks

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


def _start(adapters: list[str], args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "adaptformer.cli", "serve", *adapters, "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--precision",
               args.precision]  # fmt: skip
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


def _post(url: str, image: bytes, task: str | None) -> tuple[int, float]:
    start = time.perf_counter()
    data = {"tasks": task} if task is not None else None
    response = httpx.post(f"{url}/classify", files={"files": ("x.png", image, "image/png")}, data=data, timeout=300)
    if response.status_code not in (200, 429, 503):
        response.raise_for_status()
    return response.status_code, time.perf_counter() - start


def load(url: str, clients: int, tasks: list[str | None], image: bytes) -> dict[str, Any]:
    """``len(tasks)`` requests (request i asks ``tasks[i]``; None: every task) from ``clients`` threads."""
    before = httpx.get(f"{url}/health").json()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda task: _post(url, image, task), tasks))
    seconds = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    latencies = sorted(t for status, t in answers if status == 200)
    quantile = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"clients": clients, "requests": len(tasks), "answered": len(latencies), "seconds": seconds,
            "requests_per_s": len(latencies) / seconds, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * quantile[98], "refused": {s: sum(a == s for a, _ in answers) for s in (429, 503)},
            "batches": after["batches"] - before["batches"], "load_average": load_average()}  # fmt: skip


def run_levels(adapters: list[str], args: argparse.Namespace, names: list[str] | None) -> list[dict[str, Any]]:
    """Start a server with ``adapters`` (its command-line flags), warm it, then one load per concurrency level."""
    process, url = _start(adapters, args)
    try:
        size = 32 if args.backbone == "vit_shapes_patch8_32" else 224
        image = _png(0, size)
        for name in names or [None]:  # warm-up: every task once
            _post(url, image, name)
        results = []
        for level, clients in enumerate(int(c) for c in args.clients.split(",")):
            if names is None:
                tasks: list[str | None] = [None] * args.requests
            else:
                draw = torch.randint(len(names), (args.requests,), generator=torch.Generator().manual_seed(level))
                tasks = [names[k] for k in draw.tolist()]
            results.append(load(url, clients, tasks, image))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_shapes_patch8_32")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--tasks", default=None, help="comma-separated N: N adapters under --adapter-root (see above)")
    parser.add_argument("--max-resident", type=int, default=64, help="serve --max-resident (with --tasks)")
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
        if args.tasks is None:
            dirs = _adapters(Path(folder), args.backbone)
            results = [{"tasks": 2, **r} for r in run_levels([f"--adapter={d}" for d in dirs], args, None)]
        else:
            results = []
            for n in map(int, args.tasks.split(",")):
                root = Path(folder) / f"n{n}"
                dirs = write_tasks(root, args.backbone, "af16", n, 10, None, tiny=False)
                flags = [f"--adapter-root={root}", f"--max-resident={args.max_resident}", f"--max-cached={n}"]
                results += [{"tasks": n, **r} for r in run_levels(flags, args, [d.name for d in dirs])]
    report = {"backbone": args.backbone, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "max_resident": args.max_resident if args.tasks else None, "precision": args.precision,
              "command": "python " + " ".join(sys.argv), "machine": machine_info(torch.device("cpu")),
              "results": results}  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        print("| tasks | clients | requests/s | p50 ms | p99 ms | batches for the requests | refused 429 / 503 |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
        for r in results:
            print(
                f"| {r['tasks']} | {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['batches']} / {r['requests']} | {r['refused'][429]} / {r['refused'][503]} |"
            )
    else:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
