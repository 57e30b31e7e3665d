"""A miniature reproduction of AdaptFormer's claims (Chen et al., NeurIPS 2022, Figure 1, Tables 1 and 4).

Every method of the paper's comparison (linear probe, VPT-deep with 1/4/16/64 prompt tokens, AdaptFormer with
bottleneck 1/4/16/64, full fine-tuning), and beside them the baselines of today's PETL benchmarks at about
AdaptFormer-4/16/64's trainable parameters (LoRA on q, v with rank 2/8/32; Adapter+ with bottleneck 4/16/64), is
trained on tasks that need no download, a few seeds each, through the same :func:`adaptformer.engine.train.train` that
users run:

- ``digits``: scikit-learn's real 8x8 handwritten digits (upscaled to 32x32 by the transform), adapted from the tiny
  ViT pre-trained here on procedural shapes (``vit_shapes_patch8_32``);
- ``motion``: synthetic clips whose class is the direction of motion, on a video ViT of the same size whose weights
  are the shapes ViT inflated to video (``inflate-image``): an image-pre-trained backbone on a temporal task, the
  paper's Table 4 setting;
- ``digits-multilabel``: 1-3 of those digits per image, multi-label (the paper's Table 2 kind of task), scored by mAP;
- ``digits-seg``: semantic segmentation of those digits on larger canvases, scored by mIoU: the paper's first open
  question, whether AdaptFormer works for dense prediction.

The paper's ablations (adapters in the first or last half of the blocks, the sequential form, the scale s) are variants
of adaptformer-64 (``METHODS`` with an ``ablation``), reported in their own table. After the runs, the AdaptFormer
adapters of the first seed are inspected on test images (:mod:`~adaptformer.inference.inspection`: the adapter's output
relative to the frozen MLP branch, and how far the class token (a segmentation model: each patch token) moves from the
frozen backbone's, per block), drawn in ``adapters_inside.png``.

Model selection uses the validation split carved from the training data; the reported number is the test split's
top-1 (mAP for a multi-label task, mIoU for a segmentation task) of the selected adapter. :func:`run_study` writes
``results.json`` (every run), ``results.md`` (mean +/- std over seeds and trainable parameters) and
``accuracy_vs_params.png`` (the paper's Figure 1, one panel per task).

Runs go to a pool of worker processes with one intra-op thread each: these models are tiny, and on a shared 2-core
machine two single-threaded runs side by side are faster than one run on two threads (which stalls whenever the
other cores are busy). fp32, because it measured faster than bf16 autocast for models this small on CPU.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import signal
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.shapes_vit import SHAPES_VIT_FILE
from ..engine.config.layers import merge_config
from ..engine.config.parser import parse_mapping
from ..engine.config.sections import OptimConfig
from ..engine.metrics import LABELS
from ..files import atomic_write_text, make_folder
from ..methods import get_method
from ..segmentation import IGNORE_INDEX
from .inside import inspect_adapters
from .report import plot_accuracy_vs_params, plot_adapters_inside, write_markdown
from .robustness import RobustnessPlan, evaluate_run, report_robustness, robustness_flags
from .tasks import METHODS, Task, default_tasks

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_FILE = "accuracy_vs_params.png"
INSIDE_FILE = "adapters_inside.png"
METRIC_LABELS = {**LABELS, "miou": "mIoU"}  # how the report names each task's score


@dataclass(frozen=True)
class StudySettings:
    """What to run. ``epochs`` None keeps each task's own; ``jobs`` is the number of runs side by side."""

    tasks: tuple[str, ...] = ("digits", "motion")
    methods: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.is_default)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    output_dir: str = "reports/study"
    runs_dir: str = "runs/study"
    quick: bool = False
    pretrained: bool = True
    jobs: int = 2
    robustness: RobustnessPlan | None = None  # evaluate every run under corruptions after training
    resume: bool = False  # continue the runs of an earlier invocation instead of replacing them

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        known_tasks = default_tasks()
        unknown = [t for t in self.tasks if t not in known_tasks]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(known_tasks)}")
        if not (self.tasks and self.methods and self.seeds):
            raise ValueError("need at least one task, one method and one seed")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")

    def command(self) -> str:
        """The ``adaptformer study`` command line that repeats these settings."""
        parts = ["adaptformer study", "--tasks", ",".join(self.tasks), "--methods", ",".join(self.methods)]
        parts += ["--seeds", ",".join(map(str, self.seeds)), "--output-dir", self.output_dir]
        parts += ["--runs-dir", self.runs_dir, "--jobs", str(self.jobs)]
        parts += ["--epochs", str(self.epochs)] if self.epochs is not None else []
        parts += ["--quick"] if self.quick else []
        parts += ["--random-init"] if not self.pretrained else []
        parts += robustness_flags(self.robustness) if self.robustness is not None else []
        parts += ["--resume"] if self.resume else []
        return " ".join(parts)


@dataclass(frozen=True)
class Cell:
    """One training run: a task, a method, a seed, and its configuration (nested TrainConfig data)."""

    task: str
    method: str
    seed: int
    num_classes: int
    config: dict[str, Any] = field(repr=False)
    robustness: RobustnessPlan | None = None


def task_recipe(task: Task, settings: StudySettings) -> dict[str, Any]:
    """The configuration every run of ``task`` shares under ``settings`` (nested; no method, seed or output folder):
    the task's recipe, its ``quick`` part for ``--quick``, the epochs of ``settings`` and the checkpoint."""
    base = merge_config(task.config, task.quick) if settings.quick else task.config
    if settings.epochs is not None:
        warmup = min(base["optim"]["warmup_epochs"], settings.epochs)
        base = merge_config(base, {"optim": {"epochs": settings.epochs, "warmup_epochs": warmup}})
    base = merge_config(base, {"model": {"checkpoint": task.checkpoint, "checkpoint_source": task.checkpoint_source}})
    return copy.deepcopy(base)


def build_cells(settings: StudySettings) -> list[Cell]:
    """Every (task, method, seed) run of ``settings``, in report order."""
    tasks = default_tasks(settings.pretrained)
    cells = []
    for task_name in settings.tasks:
        task = tasks[task_name]
        base = task_recipe(task, settings)
        for method_name in settings.methods:
            method = METHODS[method_name]
            update: dict[str, Any] = {"model": {"method": task.method_config(method)}, "optim": {}}
            if method.consistency is not None:
                update["optim"]["consistency"] = {"variant": method.consistency}
            scale = task.full_lr_scale if get_method(method.family).trains_backbone else 1.0
            scale *= task.lr_scales.get(method.family, 1.0)
            if scale != 1.0:
                optim = base["optim"]
                key = "lr" if optim.get("lr") is not None else "blr"
                update["optim"][key] = optim.get(key, OptimConfig.blr) * scale
            for seed in settings.seeds:
                out = Path(settings.runs_dir) / task_name / method_name / f"seed{seed}"
                # a study run again replaces its runs, or (resume) continues each where it stopped: a finished run
                # is only tested again, an interrupted one goes on from its last checkpoint
                run = {"seed": seed, "output_dir": str(out), "resume" if settings.resume else "overwrite": True}
                config = merge_config(base, {**update, "run": run})
                plan = settings.robustness
                cells.append(Cell(task_name, method_name, seed, task.num_classes, copy.deepcopy(config), plan))
    return cells


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell with :func:`adaptformer.engine.train.train`; its test and validation score (top-1, mAP for a
    multi-label task, mIoU for a segmentation task), size and time."""
    from ..engine.train import build_model, train
    from ..model import count_trainable

    cfg = parse_mapping(cell.config)
    weightless = replace(cfg, model=replace(cfg.model, checkpoint=None))  # the count does not need the weights
    logging.disable(logging.WARNING)  # train() warns about a missing checkpoint itself
    try:
        trainable = count_trainable(build_model(weightless, cell.num_classes))
    finally:
        logging.disable(logging.NOTSET)
    started = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - started
    if result.test is None:
        raise RuntimeError(f"{cell.task}/{cell.method}/seed {cell.seed}: the run stopped before its test")
    method = METHODS[cell.method]
    evaluated = {}
    if cell.robustness is not None:
        interpolate = cell.method in cell.robustness.interpolate
        evaluated["robustness"] = evaluate_run(result.output_dir, cell.robustness, interpolate)
    return {
        "task": cell.task, "method": cell.method, "family": method.family, "size": method.size,
        "ablation": method.ablation, "consistency": method.consistency, "seed": cell.seed,
        "trainable_params": trainable,
        "metric": METRIC_LABELS[result.metric], "test_score": float(result.test[result.metric]),
        "val_score": result.best_val, "selected_epoch": result.best_epoch, "epochs": cfg.optim.epochs,
        "seconds": round(seconds, 2), "output_dir": str(result.output_dir), **evaluated,
    }  # fmt: skip


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Ctrl-C reaches the workers too. A worker that raised KeyboardInterrupt would report it as its cell's result and
    # take the next cell, so the pool (and the study) would not stop; it ends at once instead, and the main process,
    # stopped by the same Ctrl-C, finds the pool broken and says what stopped.
    signal.signal(signal.SIGINT, _stop_worker)


def _stop_worker(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def _cost(cell: Cell) -> float:
    """A rough relative cost, to start the slowest runs first so the pool finishes together."""
    tokens = cell.config["model"]["method"].get("num_tokens", 0)  # prompt tokens lengthen every block's sequence
    pace = 1.3 if cell.config["optim"].get("consistency", {}).get("variant") == "pace" else 1.0
    curve = 2.0 if cell.robustness is not None and cell.method in cell.robustness.interpolate else 1.0
    return cell.config["optim"]["epochs"] * (1.0 + tokens / 16) * (2.0 if cell.task == "motion" else 1.0) * pace * curve


def run_cells(cells: Sequence[Cell], jobs: int) -> list[dict[str, Any]]:
    """Run ``cells`` on ``jobs`` worker processes (in this process when ``jobs`` is 1); results in cell order."""
    if jobs == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [_logged(run_cell(c), i + 1, len(cells)) for i, c in enumerate(cells)]
        finally:
            torch.set_num_threads(threads)
    results: dict[int, dict[str, Any]] = {}
    order = sorted(range(len(cells)), key=lambda i: -_cost(cells[i]))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        futures = {pool.submit(run_cell, cells[i]): i for i in order}
        for future in as_completed(futures):
            results[futures[future]] = _logged(future.result(), len(results) + 1, len(cells))
    return [results[i] for i in range(len(cells))]


def _logged(run: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    logger.info(
        "[%d/%d] %s %s seed %d: test %s %.2f%% (val %.2f%%, %s params, %.1f s)", done, total, run["task"],
        run["method"], run["seed"], run["metric"], run["test_score"], run["val_score"] or 0.0,
        f"{run['trainable_params']:,}", run["seconds"],
    )  # fmt: skip
    return run


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of the test score over seeds, per (task, method), in run order (the
    standard deviation is None for a single seed: it is undefined there, not zero)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["method"]), []).append(run)
    rows = []
    for (task, method), members in groups.items():
        scores = [r["test_score"] for r in members]
        rows.append({
            "task": task, "method": method, "family": members[0]["family"], "size": members[0]["size"],
            "ablation": members[0].get("ablation"), "consistency": members[0].get("consistency"),
            "metric": members[0]["metric"],
            "trainable_params": members[0]["trainable_params"], "seeds": [r["seed"] for r in members],
            "mean_score": statistics.fmean(scores), "std_score": statistics.stdev(scores) if len(scores) > 1 else None,
            "seconds": sum(r["seconds"] for r in members),
        })  # fmt: skip
    return rows


def machine() -> dict[str, Any]:
    """The machine and versions the study ran on."""
    import timm

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "timm": timm.__version__, "load_average_at_start": list(os.getloadavg()),
    }  # fmt: skip


@dataclass
class StudyReport:
    """What a study wrote: the summary rows, every run, the wall time and the files."""

    settings: StudySettings
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    seconds: float
    files: dict[str, Path]


def run_study(settings: StudySettings) -> StudyReport:
    """Run every cell of ``settings`` and write results.json, results.md and the plot to ``settings.output_dir``."""
    tasks = default_tasks(settings.pretrained)
    for name in settings.tasks:
        checkpoint = tasks[name].checkpoint
        if checkpoint is not None and not SHAPES_VIT_FILE.is_file():
            raise FileNotFoundError(
                f"the pre-trained shapes ViT is missing ({SHAPES_VIT_FILE}); run scripts/pretrain_shapes.py, or pass "
                "--random-init for randomly initialised backbones"
            )
    cells = build_cells(settings)
    env = machine()
    logger.info("study: %d runs (%s), %d at a time", len(cells), settings.command(), settings.jobs)
    started = time.perf_counter()
    runs = run_cells(cells, settings.jobs)
    seconds = time.perf_counter() - started
    rows = summarise(runs)

    out = make_folder(settings.output_dir)
    record = {
        "command": settings.command(), "settings": asdict(settings), "seconds": round(seconds, 1), "machine": env,
        "tasks": task_records(settings), "summary": rows, "runs": runs,
    }  # fmt: skip
    files = {"json": out / RESULTS_JSON, "markdown": out / RESULTS_MD, "plot": out / PLOT_FILE}
    inside = inspect_adapters(runs, settings)
    if inside:
        record["inside"] = inside
        files["inside"] = out / INSIDE_FILE
        plot_adapters_inside(files["inside"], inside)
    extra: list[str] = []
    if settings.robustness is not None:
        record["robustness"], files["robustness"], extra = report_robustness(runs, settings.robustness, out)
    atomic_write_text(files["json"], json.dumps(record, indent=1) + "\n")
    write_markdown(files["markdown"], record, PLOT_FILE, INSIDE_FILE if inside else None, extra)
    chance = {n: chance_score(tasks[n], settings) for n in settings.tasks}
    plot_accuracy_vs_params(files["plot"], rows, settings.tasks, chance)
    logger.info("study done in %.1f min: %s", seconds / 60, ", ".join(str(p) for p in files.values()))
    return StudyReport(settings, runs, rows, seconds, files)


def task_records(settings: StudySettings) -> dict[str, dict[str, Any]]:
    """What the report records of each task: its description, the configuration shared by all its runs (nested; no
    method, seed or output folder; the checkpoint as :func:`portable_path` shows it), its method settings, its lr
    scale for full fine-tuning and its number of classes."""
    tasks, records = default_tasks(settings.pretrained), {}
    for name in settings.tasks:
        task = tasks[name]
        config = task_recipe(task, settings)
        if config["model"].get("checkpoint"):
            config["model"]["checkpoint"] = portable_path(config["model"]["checkpoint"])
        records[name] = {
            "description": task.description, "config": config, "method_settings": copy.deepcopy(task.method_settings),
            "full_lr_scale": task.full_lr_scale, "lr_scales": dict(task.lr_scales), "num_classes": task.num_classes,
        }  # fmt: skip
    return records


def portable_path(path: str) -> str:
    """``path`` as a report shows it: files shipped inside the package as ``<adaptformer>/...`` (the same on every
    install, unlike the absolute path of this checkout); anything else unchanged."""
    package = Path(__file__).resolve().parents[1]  # the adaptformer package (this file is adaptformer/study/run.py)
    try:
        return f"<adaptformer>/{Path(path).resolve().relative_to(package).as_posix()}"
    except ValueError:
        return path


def chance_score(task: Task, settings: StudySettings) -> float:
    """The test score of guessing (percent): 1 / classes top-1; for a multi-label task the mAP of scores that ignore
    the image, which is the mean over classes of the share of test images that have the class; for a segmentation
    task the mIoU of the most common class predicted everywhere (its IoU is its share of the pixels, every other
    class present scores 0)."""
    config = task_recipe(task, settings)
    from ..data import build_image_dataset
    from ..data.image import IMAGE_DATASETS
    from ..data.segmentation import SEGMENTATION_DATASETS, build_segmentation_dataset

    kind, options = config["data"]["dataset"], config["data"].get("options", {})
    if kind in SEGMENTATION_DATASETS and not SEGMENTATION_DATASETS[kind].needs_root:
        masks = build_segmentation_dataset(kind, None, "test", None, **options).masks  # type: ignore[attr-defined]
        counts = np.bincount(masks[masks != IGNORE_INDEX].ravel(), minlength=task.num_classes)
        return 100.0 * counts.max() / counts.sum() / np.count_nonzero(counts)
    if kind not in IMAGE_DATASETS or IMAGE_DATASETS[kind].needs_root:
        return 100.0 / task.num_classes
    test = build_image_dataset(kind, None, "test", None, **options)
    label_sets = getattr(test, "label_sets", None)
    if label_sets is None:
        return 100.0 / task.num_classes
    counts = [sum(c in labels for labels in label_sets) for c in range(task.num_classes)]
    return 100.0 * statistics.fmean(n / len(label_sets) for n in counts if n)
