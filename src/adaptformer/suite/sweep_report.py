"""The table and plot of an ``adaptformer sweep`` folder, from its run folders: per point the settings it changes,
the trainable parameters, the selected epoch's validation metric, the test metric (top-1, or mAP for multi-label
tasks), the selected epoch, the train time and, for a point that is a shipped recipe as it stands, the paper's number.
The plot draws the test metric against the sweep's x (log axis for trainable parameters), one line per series.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import yaml

from ..engine.metrics import LABELS, PRIMARY
from ..engine.records import TEST_FILE
from ..files import atomic_write_bytes, save_figure, writing
from .stages import SuiteError, read_run
from .sweep import SWEEP_FILE, Sweep, SweepPoint, dotted, failed_file, job_file

__all__ = ["read_sweep_results", "write_sweep_report"]


def _paper(point: SweepPoint) -> float | None:
    from ..recipes import recipe_names, recipe_paper_score

    if point.overrides or point.recipe not in recipe_names():
        return None  # the paper's number belongs to the recipe as it stands
    return recipe_paper_score(point.recipe)


def _plot_value(sweep: Sweep, key: str | None, point: SweepPoint, test: dict[str, Any], config: dict[str, Any]) -> Any:
    if key is None:
        return None
    if key == "trainable_parameters":
        return test.get("trainable_parameters")
    if key == "point":
        return point.name
    try:
        return dotted(config, key)
    except KeyError:
        return None


def _row(sweep: Sweep, point: SweepPoint, output_dir: Path) -> dict[str, Any]:
    folder = output_dir / point.name
    row: dict[str, Any] = {"name": point.name, "recipe": point.recipe, "overrides": point.overrides,
                           "paper": _paper(point)}  # fmt: skip
    job = job_file(output_dir, point.name)
    if job.is_file():  # run by a scheduler: its job id and log files
        row["job"] = json.loads(job.read_text())
    if not (folder / TEST_FILE).is_file():
        failed = failed_file(output_dir, point.name)
        row["status"] = "failed" if failed.is_file() else "not finished"
        if failed.is_file():
            row["error"] = json.loads(failed.read_text())["error"]
        return row
    try:
        test, epochs = read_run(folder)
    except SuiteError as error:
        return {**row, "status": "failed", "error": str(error)}
    config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    metric = PRIMARY[test.get("task") == "multi-label"]
    row.update({
        "status": "done", "metric": metric, "test": test.get(metric), "val": test.get(f"val_{metric}"),
        "trainable_parameters": test.get("trainable_parameters"), "selected_epoch": test.get("epoch"),
        "train_minutes": sum(r.get("seconds") or 0.0 for r in epochs) / 60,
        "x": _plot_value(sweep, sweep.x, point, test, config),
        "series": _plot_value(sweep, sweep.series, point, test, config),
    })  # fmt: skip
    return row


def read_sweep_results(output_dir: Path) -> tuple[Sweep, list[dict[str, Any]]]:
    """The sweep recorded in ``output_dir`` and one row per point (finished or not)."""
    path = output_dir / SWEEP_FILE
    if not path.is_file():
        raise SuiteError(f"{output_dir}: no {SWEEP_FILE}; not a folder `adaptformer sweep` wrote")
    sweep = Sweep.from_dict(json.loads(path.read_text())["sweep"])
    return sweep, [_row(sweep, point, output_dir) for point in sweep.points]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _metric_label(rows: list[dict[str, Any]]) -> str:
    names = sorted({LABELS.get(r["metric"], r["metric"]) for r in rows if r["status"] == "done"})
    return " / ".join(names) or "top-1"


def format_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    metric = _metric_label(rows)
    head = ["point", "recipe", "settings", "trainable params", f"val {metric} (selected epoch)", f"test {metric}",
            "selected epoch", "train min", "paper"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        start = [r["name"], r["recipe"] or "", settings]
        if r["status"] != "done":
            lines.append("| " + " | ".join([*start, r["status"], "", "", "", "", _number(r["paper"])]) + " |")
            continue
        params = "" if r["trainable_parameters"] is None else f"{r['trainable_parameters']:,}"
        epoch = "" if r["selected_epoch"] is None else str(r["selected_epoch"])
        cells = [params, _number(r["val"]), _number(r["test"]), epoch, f"{r['train_minutes']:.1f}", _number(r["paper"])]
        lines.append("| " + " | ".join([*start, *cells]) + " |")
    missing = [r["name"] for r in rows if r["status"] != "done"]
    note = f"\nnot finished: {', '.join(missing)}\n" if missing else ""
    return f"{sweep.title}: test {metric} of each point's selected epoch\n\n" + "\n".join(lines) + "\n" + note


def plot_sweep(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> Path:
    """Test metric vs the sweep's x, one line per series; the paper's numbers as hollow markers where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r["x"] is not None and r["test"] is not None]
    categorical = any(not isinstance(r["x"], (int, float)) or isinstance(r["x"], bool) for r in done)
    ticks = list(dict.fromkeys(str(r["x"]) for r in done)) if categorical else []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, series in enumerate(dict.fromkeys(r["series"] for r in done)):
        members = [r for r in done if r["series"] == series]
        if not categorical:
            members.sort(key=lambda r: r["x"])
        xs = [ticks.index(str(r["x"])) if categorical else r["x"] for r in members]
        label = "" if series is None else str(series)
        ax.plot(xs, [r["test"] for r in members], marker="o", color=f"C{k}", label=label or None)
        paper = [(x, r["paper"]) for x, r in zip(xs, members, strict=True) if r["paper"] is not None]
        if paper:
            ax.plot(*zip(*paper, strict=True), marker="o", markerfacecolor="none", linestyle=":", color=f"C{k}",
                    label=f"{label} (paper)".strip())  # fmt: skip
    if categorical:
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=8)
    elif sweep.x == "trainable_parameters":
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters" if sweep.x == "trainable_parameters" else sweep.x)
    ax.set_ylabel(f"test {_metric_label(rows)} (%)")
    ax.set_title(sweep.title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def write_sweep_report(output_dir: Path) -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``results.png`` in ``output_dir`` (under a lock, each replaced
    atomically, like the benchmark's report)."""
    read_sweep_results(output_dir)  # a folder `adaptformer sweep` wrote, before anything is written into it
    with writing(output_dir / ".report.lock") as path:
        lock = path.open("a")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sweep, rows = read_sweep_results(output_dir)
        files = {"markdown": output_dir / "results.md", "json": output_dir / "results.json"}
        atomic_write_bytes(files["markdown"], format_markdown(sweep, rows).encode())
        summary = {"sweep": sweep.to_dict(), "points": rows, "missing": [r["name"] for r in rows
                   if r["status"] != "done"]}  # fmt: skip
        atomic_write_bytes(files["json"], (json.dumps(summary, indent=2) + "\n").encode())
        files["plot"] = plot_sweep(sweep, rows, output_dir / "results.png")
    return files
