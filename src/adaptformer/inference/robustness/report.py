"""The robustness report of one or several evaluations (the adapter, the reference it is normalised by, and whatever
else a caller compares): clean accuracy, accuracy per corruption and severity, corruption errors, retention.

Definitions (Hendrycks & Dietterich 2019; errors and accuracies in percent, E = 100 - top-1):

- mean error: the unnormalised mean of E over every corruption and severity;
- corruption error of corruption c: CE_c = 100 * sum_s E_{s,c} / sum_s E^ref_{s,c}, the reference's errors on the same
  images (ImageNet-C's reference is AlexNet; here the ``--reference`` adapter, e.g. a linear probe of the same
  backbone); mCE: the mean of CE_c over the corruptions;
- retention: shifted top-1 / clean top-1 (1.0: nothing lost), per cell, per corruption table (its mean top-1 over
  the clean top-1) and per shifted set.

With ``--interpolate`` the report also has ``interpolation``: for each alpha (the method's contribution scaled by it,
:mod:`.interpolation`) the clean top-1 beside the mean top-1 of each corruption table and each shifted set, plotted
in ``interpolation.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from ...files import atomic_write_text, make_folder, save_figure
from .evaluation import Scores

FILES = ("robustness.json", "robustness.png")
CURVE_FILE = "interpolation.png"
Table = Mapping[str, Mapping[int, float]]  # corruption -> severity -> top-1 (percent)


def mean_error(table: Table) -> float:
    """The mean top-1 error (percent) over every corruption and severity of ``table``."""
    return fmean(100.0 - acc for row in table.values() for acc in row.values())


def corruption_errors(table: Table, reference: Table) -> dict[str, float]:
    """CE_c of every corruption of ``table``, normalised by ``reference``'s errors at the same severities."""
    errors = {}
    for corruption, row in table.items():
        if corruption not in reference or set(reference[corruption]) != set(row):
            raise ValueError(f"the reference was not evaluated on {corruption} at severities {sorted(row)}")
        ours = sum(100.0 - acc for acc in row.values())
        theirs = sum(100.0 - acc for acc in reference[corruption].values())
        if theirs == 0:
            raise ValueError(
                f"the reference makes no error on {corruption} at severities {sorted(row)}: its errors cannot "
                "normalise the corruption error (choose a weaker reference, or report the unnormalised mean error)"
            )
        errors[corruption] = 100.0 * ours / theirs
    return errors


def retention(accuracy: float, clean: float) -> float | None:
    """``accuracy`` / ``clean`` (None when the clean accuracy is 0: nothing to retain)."""
    return accuracy / clean if clean > 0 else None


def _table_entry(table: Table, clean: float, reference: Table | None) -> dict[str, Any]:
    mean_acc = fmean(acc for row in table.values() for acc in row.values())
    entry: dict[str, Any] = {
        "acc1": {c: {str(s): acc for s, acc in row.items()} for c, row in table.items()},
        "mean_acc1": mean_acc,
        "mean_error": mean_error(table),
        "retention": retention(mean_acc, clean),
        "retention_by": {c: {str(s): retention(acc, clean) for s, acc in row.items()} for c, row in table.items()},
    }
    if reference is not None:
        errors = corruption_errors(table, reference)
        entry["ce"] = errors
        entry["mce"] = fmean(errors.values())
    return entry


def build_report(
    evaluations: Mapping[str, Scores],
    reference: str | None = None,
    interpolation: Mapping[float, str] | None = None,
    **about: Any,
) -> dict[str, Any]:
    """The report (JSON-ready) of ``evaluations`` by label; ``reference`` (a label among them) normalises the
    corruption errors of every evaluation (its own mCE is 100); ``interpolation``: alpha -> the label of its
    evaluation, for the curve along alpha; ``about`` goes to the top level (adapter folders, dataset, seed, ...)."""
    if reference is not None and reference not in evaluations:
        raise ValueError(f"the reference {reference!r} is not among the evaluations {list(evaluations)}")
    ref = evaluations[reference] if reference is not None else None
    models = {}
    for label, scores in evaluations.items():
        tables = {
            source: _table_entry(table, scores.clean, ref.corruptions.get(source) if ref is not None else None)
            for source, table in scores.corruptions.items()
        }
        shifted = {
            kind: {"acc1": acc, "n": scores.shifted_n[kind], "retention": retention(acc, scores.clean)}
            for kind, acc in scores.shifted.items()
        }
        models[label] = {"clean_acc1": scores.clean, "n": scores.n, "corruptions": tables, "shifted": shifted}
    report = {**about, "reference": reference, "models": models}
    if interpolation:
        missing = [label for label in interpolation.values() if label not in models]
        if missing:
            raise ValueError(f"the interpolation names evaluations that are not there: {missing}")
        report["interpolation"] = [_curve_point(alpha, label, models[label]) for alpha, label in
                                   sorted(interpolation.items())]  # fmt: skip
    return report


def _curve_point(alpha: float, label: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """One alpha of the curve: clean top-1 and the mean top-1 of every corruption table and shifted set."""
    shifted = {source: entry["mean_acc1"] for source, entry in model["corruptions"].items()}
    shifted.update({kind: entry["acc1"] for kind, entry in model["shifted"].items()})
    return {"alpha": alpha, "label": label, "clean_acc1": model["clean_acc1"], "shifted_acc1": shifted}


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """``out`` if it is missing or empty, or ``overwrite``; FileExistsError otherwise (never clobber a report)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace its {', '.join(FILES)}")
    return out


def plot_heatmaps(report: Mapping[str, Any], path: Path) -> Path:
    """One heatmap per model and corruption table: top-1 per corruption (rows) and severity (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(label, source, entry) for label, model in report["models"].items()
              for source, entry in model["corruptions"].items()]  # fmt: skip
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no corruptions evaluated", ha="center", va="center")
        try:
            return save_figure(fig, path, dpi=120)
        finally:
            plt.close(fig)
    rows = max(len(entry["acc1"]) for _, _, entry in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 1.2 + 0.35 * rows), squeeze=False)
    try:
        for ax, (label, source, entry) in zip(axes[0], panels, strict=True):
            corruptions = list(entry["acc1"])
            severities = sorted({s for row in entry["acc1"].values() for s in row}, key=int)
            grid = [[entry["acc1"][c].get(s, float("nan")) for s in severities] for c in corruptions]
            image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 60 else "black")  # fmt: skip
            ax.set_xticks(range(len(severities)), severities)
            ax.set_yticks(range(len(corruptions)), corruptions, fontsize=7)
            ax.set_xlabel("severity")
            clean = report["models"][label]["clean_acc1"]
            ax.set_title(f"{label} ({source}): top-1 %, clean {clean:.1f}", fontsize=8)
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
        return save_figure(fig, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_interpolation(curve: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Clean top-1 and each shifted mean top-1 (corruption tables, shifted sets) against alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [point["alpha"] for point in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    try:
        ax.plot(alphas, [point["clean_acc1"] for point in curve], "o-", color="black", label="clean")
        for source in curve[0]["shifted_acc1"]:
            ax.plot(alphas, [point["shifted_acc1"][source] for point in curve], "o--", label=source)
        ax.set_xlabel("alpha (0: frozen backbone + trained head, 1: trained model)")
        ax.set_ylabel("top-1 %")
        ax.set_title("clean vs shifted accuracy along alpha", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return save_figure(fig, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_report(report: Mapping[str, Any], out: Path) -> list[Path]:
    """``robustness.json`` and ``robustness.png`` in ``out`` (created), each written atomically, and with an
    interpolation ``interpolation.png``."""
    import json

    make_folder(out)
    json_path = out / FILES[0]
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    files = [json_path, plot_heatmaps(report, out / FILES[1])]
    if report.get("interpolation"):
        files.append(plot_interpolation(report["interpolation"], out / CURVE_FILE))
    return files
