"""The benchmark's table and plot, from the tasks' ``result.json`` files: each task's final-epoch test top-1 (and its
validation numbers from the tuning stage), the mean over tasks and, for VTAB-1k, the mean of the three group means
(the two conventions published tables mix), the trainable parameters, train time and peak memory.

A table of an unfinished benchmark shows what is done and says which tasks are missing; its means are left empty
(a mean over some of the tasks is not comparable to anything published).
"""

from __future__ import annotations

import fcntl
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write_bytes, save_figure, writing
from .driver import JOB_FILE, RESULT_FILE, SETTINGS_FILE, BenchmarkError
from .tasks import Suite, get_suite

__all__ = ["BenchmarkReport", "read_report", "write_report"]


@dataclass(frozen=True)
class BenchmarkReport:
    """The collected results of one benchmark folder."""

    suite: Suite
    method: str
    tasks: tuple[str, ...]
    results: dict[str, dict[str, Any]]  # finished tasks only
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # tasks run by a scheduler: job id, log files

    @property
    def missing(self) -> list[str]:
        return [t for t in self.tasks if t not in self.results]

    def task_mean(self) -> float | None:
        """Mean test top-1 over every task (None until all are done)."""
        if self.missing:
            return None
        return statistics.fmean(self.results[t]["test_acc1"] for t in self.tasks)

    def group_means(self) -> dict[str, float | None]:
        """Mean test top-1 per group, over the group's tasks in this benchmark (None while one is missing)."""
        means: dict[str, float | None] = {}
        for group in self.suite.group_order:
            members = [t for t in self.tasks if self.suite.groups[t] == group]
            if members:
                done = [self.results[t]["test_acc1"] for t in members if t in self.results]
                means[group] = statistics.fmean(done) if len(done) == len(members) else None
        return means

    def mean_of_group_means(self) -> float | None:
        means = list(self.group_means().values())
        return statistics.fmean(means) if means and None not in means else None  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name, "method": self.method, "tasks": list(self.tasks), "missing": self.missing,
            "mean": self.task_mean(), "group_means": self.group_means(),
            "mean_of_group_means": self.mean_of_group_means(),
            "results": [self.results[t] for t in self.tasks if t in self.results], "jobs": self.jobs,
        }  # fmt: skip


def read_report(output_dir: Path) -> BenchmarkReport:
    """The results under ``output_dir`` (a folder ``adaptformer benchmark`` wrote)."""
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        raise BenchmarkError(f"{output_dir}: no {SETTINGS_FILE}; not a folder `adaptformer benchmark` wrote")
    settings = json.loads(path.read_text())
    suite = get_suite(settings["suite"])
    tasks = tuple(settings["tasks"])
    results, jobs = {}, {}
    for task in tasks:
        file, job = output_dir / task / RESULT_FILE, output_dir / task / JOB_FILE
        if file.is_file():
            results[task] = json.loads(file.read_text())
        if job.is_file():
            jobs[task] = json.loads(job.read_text())
    return BenchmarkReport(suite, settings["method"], tasks, results, jobs)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _validation(result: dict[str, Any]) -> tuple[str, str]:
    """(last-epoch validation top-1 of the chosen candidate, the best epoch's where it is higher)."""
    candidates = result.get("candidates") or []
    if not candidates:
        return "", ""
    chosen = next((c for c in candidates if c["settings"] == result["chosen"]), candidates[0])
    best = ""
    if chosen["best_val_acc1"] is not None and chosen["best_val_acc1"] > chosen["val_acc1"]:
        best = f"{chosen['best_val_acc1']:.2f} (epoch {chosen['best_val_epoch']})"
    return _pct(chosen["val_acc1"]), best


def format_markdown(report: BenchmarkReport) -> str:
    """The table: one row per task, then the means."""
    split = report.suite.tune_split
    grid = any(r.get("chosen") for r in report.results.values())
    head = ["task", *(["group"] if report.suite.groups else []), f"{split} top-1 (last epoch)",
            f"{split} best epoch (if not last)", *(["chosen"] if grid else []), "test top-1 (last epoch)",
            "trainable params", "train min (final)", "peak memory MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for task in report.tasks:
        r = report.results.get(task)
        group = [report.suite.groups[task]] if report.suite.groups else []
        if r is None:
            lines.append("| " + " | ".join([task, *group, "not finished", *[""] * (len(head) - 2 - len(group))]) + " |")
            continue
        val, best = _validation(r)
        chosen = [", ".join(f"{k}={v}" for k, v in r["chosen"].items())] if grid else []
        params = "" if r.get("trainable_parameters") is None else f"{r['trainable_parameters']:,}"
        memory = "" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f} ({r.get('memory')})"
        lines.append("| " + " | ".join([task, *group, val, best, *chosen, _pct(r["test_acc1"]), params,
                                        f"{r['train_seconds'] / 60:.1f}", memory]) + " |")  # fmt: skip
    test_column = head.index("test top-1 (last epoch)")

    def summary(label: str, value: float | None) -> str:
        row = [label, *[""] * (len(head) - 1)]
        row[test_column] = _pct(value)
        return "| " + " | ".join(row) + " |"

    lines.append(summary(f"**mean of {len(report.tasks)} tasks**", report.task_mean()))
    if report.suite.groups:
        lines += [summary(f"mean {group}", mean) for group, mean in report.group_means().items()]
        lines.append(summary("**mean of group means**", report.mean_of_group_means()))
    title = f"{report.suite.name} / {report.method}: test top-1 at the last epoch of the final run"
    note = ""
    if report.missing:
        note = f"\nnot finished: {', '.join(report.missing)} (means are given once every task is done)\n"
    return f"{title}\n\n" + "\n".join(lines) + "\n" + note


def plot_report(report: BenchmarkReport, path: Path) -> Path:
    """Test top-1 per task as bars (coloured by group), with the mean(s) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tasks = [t for t in report.tasks if t in report.results]
    values = [report.results[t]["test_acc1"] for t in tasks]
    groups = [report.suite.groups.get(t, "") for t in tasks]
    palette = {g: f"C{i}" for i, g in enumerate(dict.fromkeys(groups))}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(tasks) + 2), 4.2))
    ax.bar(range(len(tasks)), values, color=[palette[g] for g in groups])
    for label, mean, style in (("mean of tasks", report.task_mean(), "--"),
                               ("mean of group means", report.mean_of_group_means(), ":")):  # fmt: skip
        if mean is not None and (label == "mean of tasks" or report.suite.groups):
            ax.axhline(mean, color="k", linestyle=style, linewidth=1, label=f"{label} {mean:.2f}")
    handles = [Patch(color=colour, label=group) for group, colour in palette.items() if group]
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%), last epoch")
    ax.set_ylim(0, 100)
    missing = f" ({len(report.missing)} tasks missing)" if report.missing else ""
    ax.set_title(f"{report.suite.name}: {report.method}{missing}")
    handles = [*ax.get_legend_handles_labels()[0], *handles]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def write_report(output_dir: Path) -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``results.png`` in ``output_dir``. Workers finishing at the same time take
    turns (a lock around reading the results and writing the files), so the last one writes what every worker
    finished, and each file is replaced atomically."""
    read_report(output_dir)  # a folder `adaptformer benchmark` wrote, before anything is written into it
    with writing(output_dir / ".report.lock") as path:
        lock = path.open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_report(output_dir)
    finally:
        lock.close()  # releases the lock


def _write_report(output_dir: Path) -> dict[str, Path]:
    report = read_report(output_dir)
    files = {"markdown": output_dir / "results.md", "json": output_dir / "results.json"}
    atomic_write_bytes(files["markdown"], format_markdown(report).encode())
    atomic_write_bytes(files["json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    if report.results:
        files["plot"] = plot_report(report, output_dir / "results.png")
    return files
