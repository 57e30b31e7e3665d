"""What the executor tests share: a two-point sweep and a two-task benchmark on the tiny backbone (run through the
command line, in this process), their reports without what differs between runs of the same work (times, memory,
the worker's name, the scheduler's job records), and the training process of a run folder, found and signalled as a
scheduler would kill or preempt it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.data.release_files import write_vtab_task

from adaptformer.cli import main

SWEEP_FLAGS = ["--model.backbone", "vit_shapes_patch8_32", "--data.dataset", "synthetic",
               "--data.options", "{num_samples: 24, image_size: 32}", "--optim.epochs", "1",
               "--optim.warmup_epochs", "0", "--optim.batch_size", "8", "--optim.precision", "fp32",
               "--data.num_workers", "0", "--run.device", "cpu"]  # fmt: skip
BENCH_FLAGS = ["--model.backbone", "vit_shapes_patch8_32", "--model.checkpoint", "timm", "--optim.epochs", "1",
               "--optim.warmup_epochs", "0", "--optim.batch_size", "4", "--optim.effective_batch", "4",
               "--optim.eval_batch_size", "8", "--optim.precision", "fp32", "--data.num_workers", "0",
               "--run.device", "cpu"]  # fmt: skip
POINTS = ["bottleneck=2", "bottleneck=4"]
TASKS = ["patch_camelyon", "kitti"]
# differ between two runs of the same work: times, memory, who ran it, the scheduler's job
VARYING = {"train_seconds", "tune_seconds", "wall_seconds", "peak_memory_mb", "worker", "train_minutes", "job", "jobs"}


def write_sweep(folder: Path) -> Path:
    spec = folder / "sweep.yaml"
    spec.write_text("grid: {model.method.bottleneck: [2, 4]}\n")
    return spec


def write_tasks(data: Path) -> Path:
    for task in TASKS:
        write_vtab_task(data, task)
    return data


def cli(*argv: str) -> tuple[int, dict[str, Any], str]:
    """``adaptformer ARGV`` in this process: exit code, the summary line, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}, err.getvalue()


def sweep(spec: Path, out: Path, *executor: str) -> tuple[int, dict[str, Any], str]:
    return cli("sweep", str(spec), "--out", str(out), *executor, "--", *SWEEP_FLAGS)


def benchmark(data: Path, out: Path, *executor: str) -> tuple[int, dict[str, Any], str]:
    return cli("benchmark", "vtab", "--method", "lora8", "--data-dir", str(data), "--out", str(out), "--tasks",
               ",".join(TASKS), "--no-tune", *executor, "--", *BENCH_FLAGS)  # fmt: skip


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def stable_report(out: Path) -> dict[str, Any]:
    """``results.json`` without what differs between two runs of the same work."""
    return _stable(json.loads((out / "results.json").read_text()))


def training_process(folder: Path) -> int | None:
    """The pid of the ``adaptformer train`` process writing ``folder`` (None: none runs)."""
    wanted = f"--run.output_dir\0{folder}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"adaptformer.cli\0train\0" in cmdline and wanted in cmdline:
                return int(entry.name)
    return None


def signal_when_training(folder: Path, target: str, signum: int, timeout_s: float = 300.0) -> threading.Thread:
    """A thread that waits until the run of ``folder`` trains (its config.yaml is written), then sends ``signum`` to
    its training process (``target="run"``) or to that process's parent, the job running the unit (``"job"``).
    ``thread.sent`` says whether it did."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = training_process(folder) if (folder / "config.yaml").is_file() else None
            if pid is not None:
                if target == "job":
                    pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                os.kill(pid, signum)
                thread.sent = True  # type: ignore[attr-defined]
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.sent = False  # type: ignore[attr-defined]
    thread.start()
    return thread


KILL = signal.SIGKILL
PREEMPT = signal.SIGUSR2
