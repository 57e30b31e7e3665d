"""What ``adaptformer benchmark`` and ``adaptformer sweep`` share: one training run ("stage") is an ordinary
``adaptformer train`` run folder started as a subprocess (through ``--launcher``), skipped when its ``test.json``
exists and resumed (``--run.resume true``) when its folder does; grids of dotted train keys become train flags; and
the settings an output folder was started with are pinned in one JSON file, so a later run (or a worker started at
the same moment) with other settings is refused instead of mixing two experiments in one table.

Ctrl-C reaches the training run too (one process group): the driver waits for it to stop, then raises a
``KeyboardInterrupt`` naming the run folder, which the command line reports in one line with how to resume.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any

from ..engine.records import METRICS_FILE, TEST_FILE, write_json

logger = logging.getLogger(__name__)

__all__ = ["SuiteError", "failed_since", "grid_points", "overrides_flags", "pin_settings", "run_stage", "train_command"]

STOP_GRACE_S = 10.0  # after Ctrl-C, how long a training run may take to stop by itself before it is terminated


class SuiteError(ValueError):
    """Settings that do not fit the suite or sweep, the output folder, or a training run that failed."""


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order given (the first key varies slowest)."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SuiteError(f"--grid: {key} must map to a non-empty list of values, got {values!r}")
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _flag_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def overrides_flags(point: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 0.01}`` -> ``["--optim.lr", "0.01"]`` (values as JSON, strings as they are)."""
    return [part for key, value in point.items() for part in (f"--{key}", _flag_value(value))]


def train_command(launcher: tuple[str, ...], arguments: list[str], folder: Path) -> list[str]:
    """The ``adaptformer train`` command of one run folder; an unfinished run's folder is resumed."""
    resume = ["--run.resume", "true"] if folder.exists() else []
    return [*(launcher or (sys.executable,)), "-m", "adaptformer.cli", "train", *arguments, *resume]


def run_stage(command: list[str], folder: Path, log: Path) -> dict[str, Any]:
    """Run one stage (or find it done) and read what it wrote: test.json + the per-epoch validation record."""
    if not (folder / TEST_FILE).is_file():
        logger.info("%s: %s", folder, shlex.join(command))
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            code = _wait(_start(command, out), folder, log)
        if code != 0 or not (folder / TEST_FILE).is_file():
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise SuiteError(f"{folder}: the training run failed (exit {code}); its log {log} ends:\n{tail}")
    test, epochs = read_run(folder)
    vals = [(r["val_acc1"], r["epoch"]) for r in epochs if r.get("val_acc1") is not None]
    best = max(vals, key=lambda v: v[0]) if vals else (None, None)  # max keeps the first of equal values
    return {"test": test, "best_val_acc1": best[0], "best_val_epoch": best[1],
            "train_seconds": sum(r.get("seconds") or 0.0 for r in epochs), "epochs": len(epochs)}  # fmt: skip


def _start(command: list[str], out: IO[str]) -> subprocess.Popen:
    """Start a training run with the preemption signal blocked: on a cluster the scheduler's warning (SIGUSR2, which
    Slurm sends to every process of a job) is for the submitit job that runs this stage to act on (it stops the run
    with SIGINT, saving its state, and requeues itself); by its default action it would kill the run mid-epoch."""
    preempt = getattr(signal, "SIGUSR2", None)
    if preempt is None:  # not a POSIX system: no scheduler sends it
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {preempt})  # the child inherits the mask, then exec keeps it
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _wait(process: subprocess.Popen, folder: Path, log: Path) -> int:
    """The exit status of a training run; on Ctrl-C, the run is stopped (it saw the Ctrl-C too, or is terminated
    after :data:`STOP_GRACE_S`) and a ``KeyboardInterrupt`` naming it is raised (its last saved state is kept). A job
    that exits meanwhile (submitit requeueing a preempted job exits it from its signal handler) first stops the run
    as Ctrl-C would, so that the requeued job resumes the run folder instead of racing a run left behind."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        raise KeyboardInterrupt(f"while training {folder} (its log: {log})") from None
    except SystemExit:
        process.send_signal(signal.SIGINT)
        _stop(process)
        raise


def _stop(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()


def failed_since(path: Path, started: float) -> str | None:
    """The error recorded in the failure file ``path`` if it was written after ``started`` (by another worker of the
    same round, which tried the run already: not retried until the command is run again); else None."""
    try:
        if path.stat().st_mtime < started:
            return None
        return str(json.loads(path.read_text()).get("error"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A finished run folder's test.json and metrics.jsonl records; a missing or damaged file is a SuiteError naming
    it (a hand-copied or half-deleted folder stops one point, not the whole suite)."""
    try:
        test = json.loads((folder / TEST_FILE).read_text())
        lines = (folder / METRICS_FILE).read_text().splitlines()
        return test, [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        message = f"{folder}: its run files cannot be read ({error}); remove the folder to run it again"
        raise SuiteError(message) from error


def pin_settings(path: Path, mine: dict[str, Any], command: str) -> None:
    """Write ``path`` on first use; later runs (and workers) must give the same settings. Of workers starting at
    the same moment exactly one writes it (a hard link never replaces a file), and the others are compared to it."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        mine_file = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        write_json(mine_file, mine)
        try:
            os.link(mine_file, path)
        except FileExistsError:
            pass  # another worker was first
        finally:
            mine_file.unlink()
    theirs, mine = json.loads(path.read_text()), json.loads(json.dumps(mine))  # both as JSON reads them
    differ = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if differ:
        lines = "; ".join(f"{k}: recorded {a!r}, given {b!r}" for k, (a, b) in differ.items())
        raise SuiteError(f"{path}: this folder's {command} was started with other settings ({lines}); use the "
                         "same settings to continue it, or another --out")  # fmt: skip
