"""A miniature reproduction of AdaptFormer's claims (Chen et al., NeurIPS 2022, Figure 1, Tables 1 and 4).

Every method of the paper's comparison (linear probe, VPT-deep with 1/4/16/64 prompt tokens, AdaptFormer with
bottleneck 1/4/16/64, full fine-tuning) is trained on two tasks that need no download, a few seeds each, through the
same :func:`adaptformer.train.train` that users run:

- ``digits``: scikit-learn's real 8x8 handwritten digits (upscaled to 32x32 by the transform), adapted from the tiny
  ViT pre-trained here on procedural shapes (``vit_shapes_patch8_32``);
- ``motion``: synthetic clips whose class is the direction of motion, on a video ViT of the same size whose weights
  are the shapes ViT inflated to video (``inflate-image``): an image-pre-trained backbone on a temporal task, the
  paper's Table 4 setting.

Model selection uses the validation split carved from the training data; the reported number is the test split's
top-1 of the selected adapter. :func:`run_study` writes ``results.json`` (every run), ``results.md`` (mean +/- std
over seeds and trainable parameters) and ``accuracy_vs_params.png`` (the paper's Figure 1, one panel per task).

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
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from ..engine.config import OptimConfig, merge_config
from ..methods import get_method
from ..models.shapes_vit import SHAPES_VIT_ARGS, SHAPES_VIT_FILE
from .report import plot_accuracy_vs_params, require_matplotlib, write_markdown

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_FILE = "accuracy_vs_params.png"


@dataclass(frozen=True)
class Method:
    """One point of the comparison: a registered method family (:func:`adaptformer.methods.get_method`), its size
    for the plot (prompt tokens or bottleneck width; None for a family without one) and the fields of the family's
    config that select this point (``("num_tokens", 16), ("deep", True)``); the others keep the config's defaults.
    The family and the fields are checked against the registry on construction."""

    name: str
    family: str
    size: int | None = None
    fields: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        get_method(self.family).config.from_dict(dict(self.fields))  # a registered family, fields of its config

    def method_config(self) -> dict[str, Any]:
        """This point's method config as plain data, e.g. ``{"name": "vpt", "num_tokens": 16, "deep": True}``."""
        return {"name": self.family, **dict(self.fields)}

    def overrides(self) -> dict[str, Any]:
        """The nested configuration that selects this point: ``{"model": {"method": ...}}``."""
        return {"model": {"method": self.method_config()}}


def _sized(family: str, field_name: str, sizes: Sequence[int], **fixed: Any) -> tuple[Method, ...]:
    """``family-N`` for every N in ``sizes``: the family's ``field_name`` set to N (and ``fixed`` set as given)."""
    return tuple(Method(f"{family}-{n}", family, n, ((field_name, n), *fixed.items())) for n in sizes)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("linear", "linear"),
        *_sized("vpt", "num_tokens", (1, 4, 16, 64), deep=True),  # VPT-deep, the paper's baseline
        *_sized("adaptformer", "bottleneck", (1, 4, 16, 64)),
        Method("full", "full"),
    )
}


@dataclass(frozen=True)
class Task:
    """A dataset, the backbone adapted to it and the recipe, identical for every method (as in the paper).

    ``config`` is nested TrainConfig data (model, data, optim and run sections, no method); ``quick`` is merged over
    it for ``--quick`` (:func:`adaptformer.engine.config.merge_config`). ``checkpoint`` is the pre-trained weights
    (None: random initialisation). ``method_settings`` maps a method family to fields of its config that this task
    sets (they apply to that family's runs only; a point's own fields, such as its size, win). ``full_lr_scale``
    multiplies the learning rate (``optim.lr``, else ``optim.blr``) of the methods that train the backbone (full
    fine-tuning) only, as the paper did for SVHN and Food-101 (0.1x, "unstable otherwise").
    """

    name: str
    description: str
    num_classes: int
    config: dict[str, Any]
    quick: dict[str, Any]
    checkpoint: str | None
    checkpoint_source: str = "timm"
    full_lr_scale: float = 1.0
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family, settings in self.method_settings.items():
            get_method(family).config.from_dict(settings)  # a registered family, fields of its config

    def method_config(self, method: Method) -> dict[str, Any]:
        """The method config of ``method``'s runs on this task: the task's settings for the family, then the point's."""
        return {"name": method.family, **self.method_settings.get(method.family, {}), **dict(method.fields)}


_RECIPE: dict[str, Any] = {
    # Paper Table 5 (no weight decay, linear warmup then cosine per iteration, momentum 0.9 for SGD), shortened to fit
    # the 20-minute budget on 2 CPU cores; fp32 (faster than bf16 autocast for these tiny models on CPU).
    "data": {"num_workers": 0, "val_split": 0.1, "split_seed": 0},
    "optim": {"momentum": 0.9, "weight_decay": 0.0, "precision": "fp32", "eval_batch_size": 512},
    "run": {"device": "cpu", "select": "best", "log_every": 10_000},
}  # fmt: skip

# The video ViT built to match the shapes ViT, so the image weights inflate into it one to one.
VIDEO_KWARGS: dict[str, Any] = {
    "img_size": SHAPES_VIT_ARGS["img_size"], "patch_size": SHAPES_VIT_ARGS["patch_size"],
    "embed_dim": SHAPES_VIT_ARGS["embed_dim"], "depth": SHAPES_VIT_ARGS["depth"],
    "num_heads": SHAPES_VIT_ARGS["num_heads"], "tubelet_size": 2, "num_frames": 4,
    # the image backbone's input normalisation (its pretrained_cfg), which its weights expect
    "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}  # fmt: skip


# Per task: the dataset, the backbone and the recipe (nested TrainConfig data), and what --quick changes in them. The
# recipes were picked on the validation split of seed-0 pilots (never the test split). Digits: SGD with blr 1.0 beat
# 0.1, 0.5 and 2.0 for the frozen-backbone methods (their zero-initialised adapters barely move at the paper's 0.1 in
# ~200 steps; pilots with the earlier backbone); full fine-tuning diverged or degraded at blr >= 0.3, hence the
# paper's own 0.1x for it. Digits' augmentation: no flip (digits are not mirror-symmetric: a mirrored 2, 3 or 7 is no
# digit at all) and no random crop (an upscaled 8x8 digit has no detail to spare): RandomResizedCrop keeping at least
# 50% / 80% / 100% of the area gave validation top-1 61.8 / 67.4 / 71.5 (linear), 60.4 / 70.8 / 76.4
# (AdaptFormer-16) and 86.1 / 90.3 / 90.3 (full) at 8 epochs; 16 epochs then beat 8 (linear 75.0, AdaptFormer-16
# 83.3). Motion: no SGD setting (blr 0.03-1.0) lifted any method above chance within the budget; AdamW at 3e-4 was
# the one setting where one did (full); at 3e-3 (10 epochs) the frozen-backbone methods' training loss stayed near ln 4.
# Why the frozen-backbone methods stay at chance: scripts/motion_controls.py (reports/study/motion_controls.md).
DIGITS_CONFIG: dict[str, Any] = merge_config(_RECIPE, {
    "model": {"backbone": "vit_shapes_patch8_32"},
    "data": {"dataset": "digits", "crop_scale": [1.0, 1.0], "flip": False},
    "optim": {"epochs": 16, "warmup_epochs": 1, "batch_size": 64, "optimizer": "sgd", "blr": 1.0},
})  # fmt: skip
DIGITS_QUICK: dict[str, Any] = {"data": {"options": {"test_fraction": 0.8}}, "optim": {"epochs": 1, "warmup_epochs": 0}}
MOTION_CONFIG: dict[str, Any] = merge_config(_RECIPE, {
    "model": {"backbone": "video_vit_small_patch16_224", "kwargs": VIDEO_KWARGS},
    "data": {"dataset": "synthetic-video", "options": {"num_samples": 512, "num_classes": 4},
             "video": {"test_clips": 1, "test_crops": 1}},
    "optim": {"epochs": 10, "warmup_epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": 3e-4},
})  # fmt: skip
MOTION_METHOD_SETTINGS: dict[str, dict[str, Any]] = {"adaptformer": {"dropout": 0.0}}  # the paper's for video
MOTION_QUICK: dict[str, Any] = {
    "data": {"options": {"num_samples": 64, "num_classes": 4}}, "optim": {"epochs": 1, "warmup_epochs": 0},
}  # fmt: skip


def default_tasks(pretrained: bool = True) -> dict[str, Task]:
    """The study's tasks; ``pretrained=False`` uses randomly initialised backbones (a control, and for tests)."""
    digits = Task(
        "digits",
        "scikit-learn's digits (1,797 real 8x8 images, 10 classes, a stratified held-out test split), "
        "vit_shapes_patch8_32",
        10,
        DIGITS_CONFIG,
        DIGITS_QUICK,
        "timm" if pretrained else None,
        full_lr_scale=0.1,
    )
    motion = Task(
        "motion",
        "synthetic motion video (the class is the direction of motion; 4 frames of 32x32), the shapes ViT "
        "inflated to a video ViT of the same size (paper Table 4: image-pre-trained backbone on video)",
        4,
        MOTION_CONFIG,
        MOTION_QUICK,
        str(SHAPES_VIT_FILE) if pretrained else None,
        "inflate-image",
        method_settings=MOTION_METHOD_SETTINGS,
    )
    return {t.name: t for t in (digits, motion)}


@dataclass(frozen=True)
class StudySettings:
    """What to run. ``epochs`` None keeps each task's own; ``jobs`` is the number of runs side by side."""

    tasks: tuple[str, ...] = ("digits", "motion")
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    output_dir: str = "reports/study"
    runs_dir: str = "runs/study"
    quick: bool = False
    pretrained: bool = True
    jobs: int = 2

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
        return " ".join(parts)


@dataclass(frozen=True)
class Cell:
    """One training run: a task, a method, a seed, and its configuration (nested TrainConfig data)."""

    task: str
    method: str
    seed: int
    num_classes: int
    config: dict[str, Any] = field(repr=False)


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
            update: dict[str, Any] = {"model": {"method": task.method_config(method)}}
            if get_method(method.family).trains_backbone and task.full_lr_scale != 1.0:
                optim = base["optim"]
                key = "lr" if optim.get("lr") is not None else "blr"
                update["optim"] = {key: optim.get(key, OptimConfig.blr) * task.full_lr_scale}
            for seed in settings.seeds:
                out = Path(settings.runs_dir) / task_name / method_name / f"seed{seed}"
                config = merge_config(base, {**update, "run": {"seed": seed, "output_dir": str(out)}})
                cells.append(Cell(task_name, method_name, seed, task.num_classes, copy.deepcopy(config)))
    return cells


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell with :func:`adaptformer.train.train`; its test top-1, validation top-1, size and time."""
    from ..engine.config import TrainConfig
    from ..model import count_trainable
    from ..train import build_model, train

    cfg = TrainConfig.from_dict(cell.config)
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
    return {
        "task": cell.task, "method": cell.method, "family": METHODS[cell.method].family,
        "size": METHODS[cell.method].size, "seed": cell.seed, "trainable_params": trainable,
        "test_acc1": float(result.test["acc1"]), "test_acc5": float(result.test["acc5"]),
        "val_acc1": result.best_val_acc1, "selected_epoch": result.best_epoch, "epochs": cfg.optim.epochs,
        "seconds": round(seconds, 2), "output_dir": str(result.output_dir),
    }  # fmt: skip


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)


def _cost(cell: Cell) -> float:
    """A rough relative cost, to start the slowest runs first so the pool finishes together."""
    tokens = cell.config["model"]["method"].get("num_tokens", 0)  # prompt tokens lengthen every block's sequence
    return cell.config["optim"]["epochs"] * (1.0 + tokens / 16) * (2.0 if cell.task == "motion" else 1.0)


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
        "[%d/%d] %s %s seed %d: test top-1 %.2f%% (val %.2f%%, %s params, %.1f s)", done, total, run["task"],
        run["method"], run["seed"], run["test_acc1"], run["val_acc1"] or 0.0, f"{run['trainable_params']:,}",
        run["seconds"],
    )  # fmt: skip
    return run


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of test top-1 over seeds, per (task, method), in run order (the standard
    deviation is None for a single seed: it is undefined there, not zero)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["method"]), []).append(run)
    rows = []
    for (task, method), members in groups.items():
        accs = [r["test_acc1"] for r in members]
        rows.append({
            "task": task, "method": method, "family": members[0]["family"], "size": members[0]["size"],
            "trainable_params": members[0]["trainable_params"], "seeds": [r["seed"] for r in members],
            "mean_acc1": statistics.fmean(accs), "std_acc1": statistics.stdev(accs) if len(accs) > 1 else None,
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
    """Run every cell of ``settings`` and write results.json, results.md and the plot to ``settings.output_dir``.

    Fails before training, naming the fix, when matplotlib (the ``demo`` extra) is not installed."""
    require_matplotlib()
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

    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": settings.command(), "settings": asdict(settings), "seconds": round(seconds, 1), "machine": env,
        "tasks": task_records(settings), "summary": rows, "runs": runs,
    }  # fmt: skip
    files = {"json": out / RESULTS_JSON, "markdown": out / RESULTS_MD, "plot": out / PLOT_FILE}
    files["json"].write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(files["markdown"], record, PLOT_FILE)
    chance = {n: 100.0 / tasks[n].num_classes for n in settings.tasks}
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
            "full_lr_scale": task.full_lr_scale, "num_classes": task.num_classes,
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
