"""The study's report: a markdown table (task x method, mean +/- std test top-1 and trainable parameters) and the
accuracy-versus-trainable-parameters plot of the AdaptFormer paper's Figure 1 (log x, one panel per task).

The plot needs matplotlib, an optional dependency (the ``demo`` extra); it is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import MissingDependencyError

INSTALL_HINT = "pip install 'adaptformer[demo]' (or, in a checkout, bash setup.sh demo)"

FAMILY_STYLE = {  # family: (label, colour, marker); other families are drawn as (name, the next colour, "o")
    "linear": ("linear probe", "tab:gray", "s"),
    "vpt": ("VPT-deep (tokens)", "tab:blue", "o"),
    "adaptformer": ("AdaptFormer (bottleneck)", "tab:red", "*"),
    "lora": ("LoRA q,v (rank)", "tab:green", "^"),
    "adapter_plus": ("Adapter+ (bottleneck)", "tab:purple", "v"),
    "full": ("full fine-tuning", "black", "D"),
}


def _methods_in_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def format_table(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """A markdown table: one row per method, per task its trainable parameters and test top-1 mean +/- std."""
    cells = {(r["task"], r["method"]): r for r in rows}
    header = ["method"] + [f"{t} {col}" for t in tasks for col in ("params", "top-1 (%)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in _methods_in_order(rows):
        entries = [method]
        for task in tasks:
            row = cells.get((task, method))
            if row is None:
                entries += ["", ""]
                continue
            spread = f" ± {row['std_acc1']:.2f}" if row["std_acc1"] is not None else ""
            entries += [f"{row['trainable_params']:,}", f"{row['mean_acc1']:.2f}{spread}"]
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines)


def ranking(rows: Sequence[dict[str, Any]], task: str) -> str:
    """Methods of ``task`` from best to worst mean test top-1, e.g. ``full 97.1 > adaptformer-64 96.8 > ...``."""
    ranked = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["mean_acc1"])
    return " > ".join(f"{r['method']} {r['mean_acc1']:.1f}" for r in ranked)


def write_markdown(path: Path, record: dict[str, Any], plot_name: str) -> None:
    """results.md: the command, the time it took, the table, the rankings, the recipe of each task and the plot."""
    rows, settings, env = record["summary"], record["settings"], record["machine"]
    tasks = settings["tasks"]
    seeds = ", ".join(map(str, settings["seeds"]))
    minutes, seconds = divmod(round(record["seconds"]), 60)
    load = ", ".join(f"{x:.1f}" for x in env["load_average_at_start"])
    lines = [
        "# AdaptFormer, miniature reproduction",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Wall time: {minutes} min {seconds:02d} s for {len(record['runs'])} training runs, {settings['jobs']} at a "
        f"time, on {env['cores']} CPU cores ({env['cpu']}; load average at start {load}); "
        f"Python {env['python']}, torch {env['torch']}, timm {env['timm']}.",
        "",
        "Test top-1 (%) of the adapter selected by validation top-1 (10% of the training split), "
        + (
            f"mean ± sample standard deviation over seeds {seeds}"
            if len(settings["seeds"]) > 1
            else f"seed {seeds} (one seed: no standard deviation)"
        )
        + "; params = trainable parameters (head included).",
        "",
        format_table(rows, tasks),
        "",
        "Ranking by mean test top-1:",
        "",
        *[f"- {task}: {ranking(rows, task)}" for task in tasks],
        "",
        "Tasks (every method of a task uses the same recipe):",
        "",
    ]
    lines += [f"- {task}: {recipe_line(record['tasks'][task])}." for task in tasks]
    lines += ["", f"![accuracy versus trainable parameters]({plot_name})", ""]
    path.write_text("\n".join(lines))


def recipe_line(info: dict[str, Any]) -> str:
    """A task's description and recipe as the report shows them, from its record: ``config`` (nested configuration
    data shared by every run of the task), ``method_settings`` (per method family) and ``full_lr_scale``."""
    config = info["config"]
    model, data, optim = config.get("model", {}), config.get("data", {}), config.get("optim", {})
    keys = ["epochs", "warmup_epochs", "batch_size", "optimizer", "lr" if optim.get("lr") else "blr", "precision"]
    recipe = ", ".join(f"{k} {optim[k]}" for k in keys if k in optim)
    recipe += "".join(f", {k} {data[k]}" for k in ("crop_scale", "flip") if data.get(k) is not None)
    if data.get("options"):
        recipe += f", data.options {data['options']}"
    for family, settings in info.get("method_settings", {}).items():
        recipe += f"; {family} runs with " + ", ".join(f"{k} {v}" for k, v in settings.items())
    if info["full_lr_scale"] != 1.0:
        recipe += f"; full fine-tuning at {info['full_lr_scale']:g}x that learning rate (as the paper on SVHN/Food)"
    for family, scale in info.get("lr_scales", {}).items():
        recipe += f"; {family} at {scale:g}x that learning rate (chosen on the validation split)"
    checkpoint = f"checkpoint {model.get('checkpoint')} ({model.get('checkpoint_source', 'timm')})"
    return f"{info['description']}; {recipe}; {checkpoint}"


def require_matplotlib() -> ModuleType:
    """The matplotlib module; a MissingDependencyError naming the fix when it is not installed."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError(
            f"the study's plot needs matplotlib, an optional dependency that is not installed: {INSTALL_HINT}"
        ) from e
    return matplotlib


def plot_accuracy_vs_params(
    path: Path, rows: Sequence[dict[str, Any]], tasks: Sequence[str], chance: dict[str, float] | None = None
) -> None:
    """Test top-1 (mean, std as error bars) versus trainable parameters (log x), one panel per task (paper Fig. 1);
    ``chance`` (top-1 % of a uniform guess per task) is drawn as a dashed line."""
    require_matplotlib().use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # constrained layout makes room for the (wrapped) title, the labels and the legends at any number of panels
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task]
        for family in dict.fromkeys([*FAMILY_STYLE, *(r["family"] for r in task_rows)]):
            label, colour, marker = FAMILY_STYLE.get(family, (family, None, "o"))
            points = sorted((r for r in task_rows if r["family"] == family), key=lambda r: r["trainable_params"])
            if not points:
                continue
            xs = [r["trainable_params"] for r in points]
            ys = [r["mean_acc1"] for r in points]
            errors = [r["std_acc1"] or 0.0 for r in points]  # one seed: no error bar
            size = 12 if marker == "*" else 7
            ax.errorbar(xs, ys, yerr=errors, color=colour, marker=marker, markersize=size, capsize=3, label=label,
                        linestyle="-" if len(points) > 1 else "none")  # fmt: skip
            for r in points:
                if r["size"] is not None:
                    ax.annotate(str(r["size"]), (r["trainable_params"], r["mean_acc1"]), textcoords="offset points",
                                xytext=(4, -11), fontsize=8, color=colour)  # fmt: skip
        if chance and task in chance:
            ax.axhline(chance[task], color="tab:gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("AdaptFormer miniature reproduction: accuracy vs trainable parameters (mean ± std over seeds)",
                 wrap=True)  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)
