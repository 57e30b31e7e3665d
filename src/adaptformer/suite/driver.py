"""``adaptformer benchmark``: run a suite's protocol task by task, as separate ``adaptformer train`` processes.

Per task (folder ``OUT/<task>/``), as the VTAB-1k / FGVC protocol prescribes:

1. tune: for each candidate setting (one, or each point of ``--grid``), train on train800 (FGVC: train.json) and
   evaluate on val200 (val.json) every epoch; the candidate with the best last-epoch validation accuracy is chosen
   (the first on ties), and the best epoch on validation is recorded beside it where it differs;
2. final: retrain the chosen setting on train800val200 (train + val) and test the last epoch once on test.txt
   (test.json): the number the table reports. The test split is read by this stage only.

Each stage is one run folder (``tune-<k>/``, ``final/``) of ``adaptformer train`` with the shipped recipe
``<suite>_<task>_<method>``, the user's train flags and the stage's ``data.options``, started with ``--launcher``
(``python`` by default; ``torchrun --nproc_per_node 8`` runs the task on 8 GPUs). A stage whose ``test.json`` exists
is done and skipped; an unfinished one resumes (``--run.resume true``). A task is done when ``result.json`` is
written (by the task itself, wherever it ran). Tasks run on an executor (:mod:`.executors`: in this process, as
submitit jobs on Slurm, or as Ray tasks); drivers and workers sharing ``OUT`` claim tasks atomically
(:mod:`.dispatch`, :mod:`.claims`), and a task one of them saw fail is not tried again by the others in the same
round. ``OUT/benchmark.json`` records the settings, so every later worker or re-run must use the same ones.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.records import write_json
from .claims import CLAIM_FILE, default_worker_name
from .dispatch import Summary, Unit, dispatch
from .executors import ExecutorSettings, open_executor
from .stages import SuiteError, grid_points, overrides_flags, pin_settings, run_stage, train_command
from .tasks import Suite, get_suite

logger = logging.getLogger(__name__)

__all__ = ["RESULT_FILE", "SETTINGS_FILE", "BenchmarkError", "BenchmarkSettings", "grid_points", "run_benchmark"]

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
JOB_FILE = "job.json"  # the scheduler's job of the task (executor, job id, log files)
SETTINGS_FILE = "benchmark.json"
# The driver sets these per stage; a train flag naming one would silently fight it.
OWNED_FLAGS = ("--data.dataset", "--data.data_dir", "--data.options", "--run.output_dir", "--run.resume",
               "--run.overwrite", "--recipe", "--config")  # fmt: skip


BenchmarkError = SuiteError  # settings that do not fit the suite, the output folder, or a stage that failed


@dataclass(frozen=True)
class BenchmarkSettings:
    """What a benchmark run is (recorded in ``OUT/benchmark.json``; the last three may differ between workers).

    Args:
        suite: "vtab" or "fgvc".
        method: a row of the shipped protocol recipes (adaptformer8, adaptformer8_ln, adaptformer64, lora8,
            adapter_plus8, and with PACE adaptformer8_pace, adapter_plus8_pace).
        data_dir: the folder holding the suite's task folders.
        output_dir: the benchmark's folder (one sub-folder per task).
        tasks: the tasks to run (default: all of the suite).
        grid: dotted train key -> candidate values, tuned per task on the validation split (empty: one candidate).
        tune: run the tuning stage (False: only the final stage; needs an empty grid).
        train_flags: extra ``adaptformer train`` flags for every stage (e.g. ``--model.checkpoint FILE``).
        launcher: the command that runs ``-m adaptformer.cli train ...`` (default: this Python).
        worker: this worker's name in claims (default ``host:pid``).
        stale_after_s: a claim without heartbeat for this long belongs to a dead worker and is taken over.
    """

    suite: str
    method: str
    data_dir: Path
    output_dir: Path
    tasks: tuple[str, ...] = ()
    grid: dict[str, list[Any]] = field(default_factory=dict)
    tune: bool = True
    train_flags: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    worker: str = field(default_factory=default_worker_name)
    stale_after_s: float = 600.0

    def recorded(self) -> dict[str, Any]:
        """The part every worker must share."""
        return {"suite": self.suite, "method": self.method, "tasks": list(self.tasks), "grid": self.grid,
                "tune": self.tune, "train_flags": list(self.train_flags)}  # fmt: skip


def check_settings(settings: BenchmarkSettings) -> tuple[Suite, tuple[str, ...]]:
    """The suite and the tasks to run, after every check that needs no training."""
    suite = get_suite(settings.suite)
    suite.check_method(settings.method)
    tasks = settings.tasks or suite.tasks
    suite.check_tasks(list(tasks))
    grid_points(settings.grid)
    if settings.grid and not settings.tune:
        raise BenchmarkError("--grid needs the tuning stage (it chooses among the grid on the validation split); drop "
                             "--no-tune")  # fmt: skip
    for flag in settings.train_flags:
        name = flag.split("=", 1)[0]
        if name in OWNED_FLAGS:
            raise BenchmarkError(f"train flag {name}: the benchmark sets it for each stage; remove it")
        if name.startswith("--") and name[2:] in settings.grid:
            raise BenchmarkError(f"train flag {name} is also a --grid key; give it in one place")
    if not settings.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {settings.data_dir} is not a folder (expected the suite's task folders)")
    for point in grid_points(settings.grid) if settings.tune else [{}]:
        _check_flags(settings, suite, tasks[0], point)
    return suite, tuple(tasks)


def _check_flags(settings: BenchmarkSettings, suite: Suite, task: str, point: dict[str, Any]) -> None:
    """Parse a stage's configuration here, as ``adaptformer train`` will, so that a bad train flag or grid value
    stops the benchmark before any task starts."""
    from ..engine.config.parser import parse_cli
    from ..recipes import recipe_config

    recipe = suite.recipe(task, settings.method)
    arguments = train_arguments(settings, suite, task, "final", point, settings.output_dir / task / "final")
    parse_cli(arguments[2:], [(f"recipe {recipe}", recipe_config(recipe))])  # what train does with --recipe


def record_settings(settings: BenchmarkSettings, tasks: tuple[str, ...]) -> None:
    """Write ``OUT/benchmark.json`` on first use; later runs and workers must match it."""
    pin_settings(settings.output_dir / SETTINGS_FILE, {**settings.recorded(), "tasks": list(tasks)}, "benchmark")


def train_arguments(
    settings: BenchmarkSettings, suite: Suite, task: str, stage: str, point: dict[str, Any], folder: Path
) -> list[str]:
    """The ``adaptformer train`` arguments of one stage (recipe, data, folder, the user's flags, the grid point)."""
    return [
        "--recipe", suite.recipe(task, settings.method), "--data.data_dir", str(settings.data_dir),
        "--data.options", json.dumps(suite.options(task, stage)), "--run.output_dir", str(folder),
        *settings.train_flags, *overrides_flags(point),
    ]  # fmt: skip


def stage_command(
    settings: BenchmarkSettings, suite: Suite, task: str, stage: str, point: dict[str, Any], folder: Path
) -> list[str]:
    """The command of one stage; an unfinished stage's folder is resumed."""
    return train_command(settings.launcher, train_arguments(settings, suite, task, stage, point, folder), folder)


def run_task(settings: BenchmarkSettings, suite: Suite, task: str) -> dict[str, Any]:
    """Both stages of ``task``; returns what ``result.json`` holds."""
    folder = settings.output_dir / task
    log = folder / "train.log"
    started = time.perf_counter()
    points = grid_points(settings.grid) if settings.tune else [{}]
    candidates = []
    if settings.tune:
        for k, point in enumerate(points):
            stage = folder / f"tune-{k}"
            done = run_stage(stage_command(settings, suite, task, "tune", point, stage), stage, log)
            candidates.append({
                "settings": point, "val_acc1": done["test"]["acc1"], "val_epoch": done["test"]["epoch"],
                "best_val_acc1": done["best_val_acc1"], "best_val_epoch": done["best_val_epoch"],
                "train_seconds": done["train_seconds"],
            })  # fmt: skip
    chosen = max(range(len(candidates)), key=lambda k: candidates[k]["val_acc1"]) if candidates else 0
    final = run_stage(
        stage_command(settings, suite, task, "final", points[chosen], folder / "final"), folder / "final", log
    )
    test = final["test"]
    return {
        "task": task, "group": suite.groups.get(task), "method": settings.method, "chosen": points[chosen],
        "candidates": candidates, "test_acc1": test["acc1"], "test_acc5": test.get("acc5"),
        "test_split": test["split"], "test_n": test.get("n"), "final_epoch": test["epoch"],
        "trainable_parameters": test.get("trainable_parameters"), "train_seconds": final["train_seconds"],
        "tune_seconds": sum(c["train_seconds"] for c in candidates), "peak_memory_mb": test.get("peak_memory_mb"),
        "memory": test.get("memory"), "wall_seconds": time.perf_counter() - started, "worker": settings.worker,
    }  # fmt: skip


WorkerSummary = Summary  # what one worker (driver) did: ran, already_done, held_elsewhere, failed


def run_benchmark(settings: BenchmarkSettings, executor: ExecutorSettings | None = None) -> Summary:
    """Work through the suite's unfinished tasks this worker can claim, on ``executor`` (default: in this process;
    see the module docstring)."""
    suite, tasks = check_settings(settings)
    with open_executor(executor or ExecutorSettings(), settings.output_dir) as running:
        record_settings(settings, tasks)
        units = [task_unit(settings.output_dir, task) for task in tasks]
        logger.info("%s %s: %d task(s) on the %s executor (worker %s)", suite.name, settings.method, len(tasks),
                    running.name, settings.worker)  # fmt: skip
        return dispatch(units, functools.partial(execute_task, settings), running, settings.worker,
                        settings.stale_after_s)  # fmt: skip


def task_unit(output_dir: Path, task: str) -> Unit:
    folder = output_dir / task
    return Unit(task, folder / RESULT_FILE, folder / CLAIM_FILE, folder / FAILED_FILE, folder / JOB_FILE)


def execute_task(settings: BenchmarkSettings, task: str) -> str | None:
    """Both stages of ``task`` and its ``result.json``, wherever the executor runs it; the error if it failed."""
    suite = get_suite(settings.suite)
    logger.info("%s %s: task %s", suite.name, settings.method, task)
    try:
        result = run_task(settings, suite, task)
    except BenchmarkError as error:
        return str(error)
    write_json(settings.output_dir / task / RESULT_FILE, _finite(result))
    return None


def _finite(result: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}


def parse_grid(text: str | None) -> dict[str, list[Any]]:
    """``--grid 'optim.lr: [0.001, 0.005]'`` (YAML or JSON: dotted train key -> list of values)."""
    if text is None:
        return {}
    import yaml

    try:
        grid = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise BenchmarkError(f"--grid {text!r} is not YAML: {error}") from None
    if not isinstance(grid, dict) or not all(isinstance(k, str) for k in grid):
        raise BenchmarkError(f"--grid {text!r}: expected a mapping of dotted train keys to lists, e.g. "
                             "'{optim.lr: [0.001, 0.005], model.method.scale: [0.1, 1.0]}'")  # fmt: skip
    grid_points(grid)
    return grid


def split_launcher(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text)) if text else ()
