"""The study's report: a markdown table (task x method, mean +/- std test score, top-1, mAP or mIoU, and trainable
parameters), the ablations' table, the accuracy-versus-trainable-parameters plot of the AdaptFormer paper's Figure 1
(log x, one panel per task) and the plot of what the adapters do inside.

matplotlib (a dependency of the package) is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, save_figure
from ..inference.inspection_files import PATCH_TOKENS

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


def _metric(rows: Sequence[dict[str, Any]], task: str) -> str:
    """The score a task is reported in: top-1, mAP for a multi-label task, mIoU for a segmentation task."""
    return next((r.get("metric", "top-1") for r in rows if r["task"] == task), "top-1")


def _score(row: dict[str, Any]) -> str:
    spread = f" ± {row['std_score']:.2f}" if row["std_score"] is not None else ""
    return f"{row['mean_score']:.2f}{spread}"


def format_table(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """A markdown table: one row per method, per task its trainable parameters and test score mean +/- std."""
    cells = {(r["task"], r["method"]): r for r in rows}
    header = ["method"] + [f"{t} {col}" for t in tasks for col in ("params", f"{_metric(rows, t)} (%)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in _methods_in_order(rows):
        entries = [method]
        for task in tasks:
            row = cells.get((task, method))
            entries += ["", ""] if row is None else [f"{row['trainable_params']:,}", _score(row)]
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines)


def format_ablations(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str | None:
    """The ablations (variants of adaptformer-64, as the paper's Table 3) beside adaptformer-64 itself, one row per
    variant, one score column per task; None when the study ran none."""
    kinds = list(dict.fromkeys(r["ablation"] for r in rows if r.get("ablation")))
    if not kinds:
        return None
    cells = {(r["task"], r["method"]): r for r in rows}
    header = ["ablation", "variant"] + [f"{t} {_metric(rows, t)} (%)" for t in tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in kinds:
        methods = [m for m in _methods_in_order(rows) if any(r["method"] == m and r.get("ablation") == kind
                                                            for r in rows)]  # fmt: skip
        for method in [*methods, "adaptformer-64"]:
            row_cells = [cells.get((t, method)) for t in tasks]
            if not any(row_cells):
                continue
            label = method.removeprefix("adaptformer-64-") if method != "adaptformer-64" else "adaptformer-64 (all "\
                "blocks, parallel, s 0.1)"  # fmt: skip
            lines.append("| " + " | ".join([kind, label, *(_score(c) if c else "" for c in row_cells)]) + " |")
    return "\n".join(lines)


def ranking(rows: Sequence[dict[str, Any]], task: str) -> str:
    """Methods of ``task`` from best to worst mean test score, e.g. ``full 97.1 > adaptformer-64 96.8 > ...``."""
    ranked = sorted((r for r in rows if r["task"] == task), key=lambda r: -r["mean_score"])
    return " > ".join(f"{r['method']} {r['mean_score']:.1f}" for r in ranked)


def write_markdown(
    path: Path, record: dict[str, Any], plot_name: str, inside_name: str | None = None, extra: Sequence[str] = ()
) -> None:
    """results.md: the command, the time it took, the table, the ablations, the rankings, the recipe of each task, the
    plot, what the adapters do inside (``inside_name``, when the study inspected adapters) and ``extra`` lines."""
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
        *([f"Assembled from two invocations: {record['assembled']}.", ""] if record.get("assembled") else []),
        "Test score (%) of the adapter selected by the same score on the validation split (10% of the training "
        "split): top-1, or mAP (mean over classes of average precision) for a multi-label task, "
        + (
            "or mIoU (mean over classes of intersection over union, over every pixel of the test split) for a "
            "segmentation task, "
            if any(r.get("metric") == "mIoU" for r in rows)
            else ""
        )
        + (
            f"mean ± sample standard deviation over seeds {seeds}"
            if len(settings["seeds"]) > 1
            else f"seed {seeds} (one seed: no standard deviation)"
        )
        + "; params = trainable parameters (head included).",
        "",
        format_table(rows, tasks),
        "",
        *_ablation_lines(rows, tasks),
        "Ranking by mean test score:",
        "",
        *[f"- {task}: {ranking(rows, task)}" for task in tasks],
        "",
        "Tasks (every method of a task uses the same recipe):",
        "",
    ]
    lines += [f"- {task}: {recipe_line(record['tasks'][task])}." for task in tasks]
    lines += ["", f"![accuracy versus trainable parameters]({plot_name})", ""]
    if inside_name is not None:
        lines += _inside_lines(record["inside"], inside_name)
    atomic_write_text(path, "\n".join([*lines, *extra]))


def _ablation_lines(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    table = format_ablations(rows, tasks)
    if table is None:
        return []
    return ["Ablations of adaptformer-64 (the paper's Table 3 on SSv2: adapters in the first or last half of the "
            "blocks only, sequential vs parallel, the scale s), same recipe and seeds; blocks1-3 / blocks4-6 are the "
            "first / last three of the 6 blocks, counted from 1 as the paper counts (layers [0, 1, 2] / [3, 4, 5]):",
            "", table, ""]  # fmt: skip


def _inside_lines(inside: Sequence[dict[str, Any]], inside_name: str) -> list[str]:
    """What the inspected adapters do: per adapter the mean over its blocks of ||s A|| / ||MLP branch|| and of
    ||s A|| / ||x'||, and how far the pooled feature the head reads moved from the frozen backbone's."""
    lines = [
        "## What the adapters do inside",
        "",
        f"`adaptformer inspect` on the first seed's AdaptFormer adapters, {inside[0]['num_samples']} test images each: "
        "the adapter's output relative to the frozen MLP branch and to the residual stream (ratio of RMS norms over "
        "tokens and images, mean over adapted blocks), and the drift of the feature the head reads from the frozen "
        "backbone's (relative L2 distance, cosine similarity"
        + (
            "; a segmentation task: of each patch token the decode head reads, averaged over tokens, its images read "
            "as the windows its evaluation feeds the backbone"
            if any(r["feature"] == PATCH_TOKENS for r in inside)
            else ""
        )
        + "). Per block in the figure.",
        "",
        "| task | adapter | adapter / MLP | adapter / residual | head feature drift | cosine |",
        "|---|---|---|---|---|---|",
    ]
    for r in inside:
        mlp = sum(a["adapter_mlp"] for a in r["adapters"]) / len(r["adapters"])
        residual = sum(a["adapter_residual"] for a in r["adapters"]) / len(r["adapters"])
        lines.append(f"| {r['task']} | {r['method']} | {mlp:.3f} | {residual:.3f} | {r['pooled']['relative_l2']:.3f} "
                     f"| {r['pooled']['cosine']:.3f} |")  # fmt: skip
    return [*lines, "", f"![what the adapters do inside]({inside_name})", ""]


def recipe_line(info: dict[str, Any]) -> str:
    """A task's description and recipe as the report shows them, from its record: ``config`` (nested configuration
    data shared by every run of the task), ``method_settings`` (per method family) and ``full_lr_scale``."""
    config = info["config"]
    model, data, optim = config.get("model", {}), config.get("data", {}), config.get("optim", {})
    keys = ["epochs", "warmup_epochs", "batch_size", "optimizer", "lr" if optim.get("lr") else "blr", "schedule",
            "precision"]  # fmt: skip
    recipe = ", ".join(f"{k} {optim[k]}" for k in keys if k in optim)
    recipe += "".join(f", {k} {data[k]}" for k in ("crop_scale", "flip", "segmentation") if data.get(k) is not None)
    recipe += f", model.head {model['head']}" if model.get("head") else ""
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


def plot_accuracy_vs_params(
    path: Path, rows: Sequence[dict[str, Any]], tasks: Sequence[str], chance: dict[str, float] | None = None
) -> None:
    """Test score (mean, std as error bars) versus trainable parameters (log x), one panel per task (paper Fig. 1);
    ``chance`` (the score of a guess per task) is drawn as a dashed line. Ablation variants are left out (their own
    table) and so are regularised variants (the robustness section)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # constrained layout makes room for the (wrapped) title, the labels and the legends at any number of panels
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task and not r.get("ablation") and not r.get("consistency")]
        for family in dict.fromkeys([*FAMILY_STYLE, *(r["family"] for r in task_rows)]):
            label, colour, marker = FAMILY_STYLE.get(family, (family, None, "o"))
            points = sorted((r for r in task_rows if r["family"] == family), key=lambda r: r["trainable_params"])
            if not points:
                continue
            xs = [r["trainable_params"] for r in points]
            ys = [r["mean_score"] for r in points]
            errors = [r["std_score"] or 0.0 for r in points]  # one seed: no error bar
            size = 12 if marker == "*" else 7
            ax.errorbar(xs, ys, yerr=errors, color=colour, marker=marker, markersize=size, capsize=3, label=label,
                        linestyle="-" if len(points) > 1 else "none")  # fmt: skip
            for r in points:
                if r["size"] is not None:
                    ax.annotate(str(r["size"]), (r["trainable_params"], r["mean_score"]), textcoords="offset points",
                                xytext=(4, -11), fontsize=8, color=colour)  # fmt: skip
        if chance and task in chance:
            ax.axhline(chance[task], color="tab:gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"test {_metric(rows, task)} (%)")
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("AdaptFormer miniature reproduction: accuracy vs trainable parameters (mean ± std over seeds)",
                 wrap=True)  # fmt: skip
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_adapters_inside(path: Path, inside: Sequence[dict[str, Any]]) -> None:
    """Per task (a row of panels): the adapter's output relative to the frozen MLP branch per block, and the class
    token's relative drift from the frozen backbone's per block, one line per inspected adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in inside))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False, layout="constrained")
    for (ratio_ax, drift_ax), task in zip(axes, tasks, strict=True):
        for r in (r for r in inside if r["task"] == task):
            blocks = [a["block"] for a in r["adapters"]]
            ratio_ax.plot(blocks, [a["adapter_mlp"] for a in r["adapters"]], marker="o", label=r["method"])
            drift_ax.plot([d["block"] for d in r["drift"]], [d["relative_l2"] for d in r["drift"]], marker="o",
                          label=r["method"])  # fmt: skip
        ratio_ax.set_ylabel("||s A|| / ||MLP branch||")
        feature = next(r["feature"] for r in inside if r["task"] == task)
        drift_ax.set_ylabel(f"{feature} drift (relative L2)")
        for ax in (ratio_ax, drift_ax):
            ax.set_title(task)
            ax.set_xlabel("block (from 0, as inspect.json and AdaptFormerConfig.layers count)")
            ax.grid(True, alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        drift_ax.legend(fontsize=7, loc="best")
    fig.suptitle("What the adapters do inside: adapter output vs the frozen MLP branch, and the drift from the frozen "
                 "backbone, per block (first seed)", wrap=True)  # fmt: skip
    save_figure(fig, path, dpi=110)
    plt.close(fig)
