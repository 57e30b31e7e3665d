"""The study's robustness question (the AdaptFormer paper's second open one): does an adapter keep the frozen
backbone's robustness, or trade it for in-distribution accuracy?

With a :class:`RobustnessPlan`, every run of the study is evaluated after training on its clean test split and on that
split under ImageNet-C's corruptions (:func:`adaptformer.inference.robustness.evaluate_robustness`, the same code as
``adaptformer robustness``), and the runs of the plan's ``interpolate`` methods also with their contribution scaled by
each alpha (:mod:`adaptformer.inference.robustness.interpolation`: AdaptFormer's scale times alpha, full fine-tuning's
weights ``(1 - alpha) * pre-trained + alpha * fine-tuned``; the trained head at every alpha). The summary puts each
method's clean top-1 beside its mean top-1 under the corruptions, the retention (corrupted / clean), the mean
corruption error relative to the linear probe of the same seed (mCE; the frozen backbone's robustness is the
reference), and the curves along alpha; :func:`plot_robustness` draws them.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.shift import COMMON_CORRUPTIONS
from ..data.shift.corruptions import check_corruptions, check_severities
from ..files import atomic_write_text, save_figure

ROBUSTNESS_FILE = "robustness.png"
EVALUATION_FILE = "study_robustness.json"  # a run's evaluation, in its run folder
REFERENCE = "linear"  # the method whose errors normalise the mCE: the frozen backbone's own robustness
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class RobustnessPlan:
    """What each run is evaluated on after training.

    Args:
        corruptions: ImageNet-C corruption names (default: its 15).
        severities: severities, each in 1-5 (default: 1, 3 and 5).
        interpolate: the study's methods whose runs are also evaluated along ``alphas``.
        alphas: the scales of the method's contribution, each in [0, 1].
        seed: the corruptions' seed.
        num_samples: test images evaluated, spread evenly over the split (None: all of it).
    """

    corruptions: tuple[str, ...] = COMMON_CORRUPTIONS
    severities: tuple[int, ...] = (1, 3, 5)
    interpolate: tuple[str, ...] = ("adaptformer-64", "full")
    alphas: tuple[float, ...] = ALPHAS
    seed: int = 0
    num_samples: int | None = None

    def __post_init__(self) -> None:
        from ..inference.robustness.interpolation import check_alphas

        object.__setattr__(self, "corruptions", check_corruptions(self.corruptions))
        object.__setattr__(self, "severities", check_severities(self.severities))
        object.__setattr__(self, "alphas", check_alphas(self.alphas))
        object.__setattr__(self, "interpolate", tuple(self.interpolate))


def evaluate_run(output_dir: str | Path, plan: RobustnessPlan, interpolate: bool) -> dict[str, Any]:
    """One trained run (``output_dir``/adapter) under the plan's corruptions: clean top-1, top-1 per corruption and
    severity, their mean; with ``interpolate``, the clean and mean corrupted top-1 at each alpha.

    The result is also saved in the run folder (``EVALUATION_FILE``) with the plan and the adapter's weights
    fingerprint, and reused when asked again for the same plan and weights (a resumed study)."""
    saved = Path(output_dir) / EVALUATION_FILE
    key = {"plan": asdict(plan), "interpolate": interpolate, "weights": _weights_digest(Path(output_dir) / "adapter")}
    if saved.is_file():
        record = json.loads(saved.read_text())
        if record.get("key") == json.loads(json.dumps(key)):
            return record["result"]
    result = _evaluate(output_dir, plan, interpolate)
    atomic_write_text(saved, json.dumps({"key": key, "result": result}) + "\n")
    return json.loads(json.dumps(result))  # as a reused one reads (severities as strings)


def _weights_digest(adapter: Path) -> str:
    """A digest of the adapter folder's weight files: a retrained run never reuses an older evaluation."""
    digest = hashlib.sha256()
    for path in sorted(adapter.glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _evaluate(output_dir: str | Path, plan: RobustnessPlan, interpolate: bool) -> dict[str, Any]:
    from ..engine.config.parser import parse_data_cli
    from ..engine.distributed import init_distributed
    from ..engine.splits import DataSpec
    from ..inference.evaluate import load_trained_model, overridden_source
    from ..inference.robustness import RobustnessSettings, evaluate_robustness
    from ..inference.robustness.evaluation import SYNTHETIC
    from ..inference.robustness.interpolation import interpolated, pretrained_state

    adapter = Path(output_dir) / "adapter"
    model, info = load_trained_model(adapter)
    if info.training is None:
        raise ValueError(f"{adapter} records no training data to corrupt")
    data = {"dataset": info.training.dataset, "options": dict(info.training.dataset_options), "num_workers": 0}
    spec = DataSpec.from_config(parse_data_cli([], data))
    settings = RobustnessSettings(
        corruptions=plan.corruptions, severities=plan.severities, seed=plan.seed, num_samples=plan.num_samples
    )
    ctx = init_distributed("cpu")

    def scores_of(evaluated: Any) -> dict[str, Any]:
        scores = evaluate_robustness(evaluated, info, spec, "test", ctx, settings)
        table = scores.corruptions[SYNTHETIC]
        accuracies = [acc for row in table.values() for acc in row.values()]
        return {"clean_acc1": scores.clean, "n": scores.n, "corrupted_acc1": statistics.fmean(accuracies),
                "acc1": table}  # fmt: skip

    result = scores_of(model)
    if interpolate:
        method = info.spec.registered
        pretrained = None
        if method.interpolation is not None and method.interpolation.pretrained:
            pretrained = pretrained_state(str(adapter), info, overridden_source(info))
        curve = []
        for alpha in plan.alphas:
            point = result if alpha == 1.0 else scores_of(interpolated(model, alpha, pretrained))
            curve.append({"alpha": alpha, "clean_acc1": point["clean_acc1"], "corrupted_acc1": point["corrupted_acc1"]})
        result["interpolation"] = curve
    return result


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def _retention(scores: Sequence[dict[str, Any]]) -> dict[str, float | None] | None:
    """Mean and std over seeds of corrupted / clean top-1 (:func:`~adaptformer.inference.robustness.report.retention`);
    None when a seed scored 0 clean (nothing to retain): never a mean over the other seeds only."""
    from ..inference.robustness.report import retention

    ratios = [retention(s["corrupted_acc1"], s["clean_acc1"]) for s in scores]
    return None if any(r is None for r in ratios) else _mean_std(ratios)  # type: ignore[arg-type]


def summarise_robustness(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, method) over seeds: clean and mean corrupted top-1, retention, mCE against the linear probe of the
    same task and seed (when the study ran it), mean top-1 per corruption and the interpolation curve."""
    from ..inference.robustness.report import corruption_errors

    evaluated = [r for r in runs if "robustness" in r]
    references = {(r["task"], r["seed"]): r["robustness"]["acc1"] for r in evaluated if r["method"] == REFERENCE}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in evaluated:
        groups.setdefault((run["task"], run["method"]), []).append(run)
    rows = []
    for (task, method), members in groups.items():
        scores = [m["robustness"] for m in members]
        row: dict[str, Any] = {
            "task": task, "method": method, "family": members[0]["family"],
            "consistency": members[0].get("consistency"), "trainable_params": members[0]["trainable_params"],
            "seeds": [m["seed"] for m in members],
            "clean_acc1": _mean_std([s["clean_acc1"] for s in scores]),
            "corrupted_acc1": _mean_std([s["corrupted_acc1"] for s in scores]),
            "retention": _retention(scores),
            "by_corruption": {
                c: statistics.fmean(statistics.fmean(s["acc1"][c].values()) for s in scores) for c in scores[0]["acc1"]
            },
        }  # fmt: skip
        pairs = [(m["robustness"]["acc1"], references.get((task, m["seed"]))) for m in members]
        if all(ref is not None for _, ref in pairs):
            mces = [statistics.fmean(corruption_errors(ours, ref).values()) for ours, ref in pairs]  # type: ignore[arg-type]
            row["mce"] = _mean_std(mces)
        curves = [s["interpolation"] for s in scores if "interpolation" in s]
        if curves:
            row["interpolation"] = [
                {"alpha": points[0]["alpha"], "clean_acc1": _mean_std([p["clean_acc1"] for p in points]),
                 "corrupted_acc1": _mean_std([p["corrupted_acc1"] for p in points])}
                for points in zip(*curves, strict=True)
            ]  # fmt: skip
        rows.append(row)
    return rows


def _cell(stat: dict[str, float | None] | None, digits: int = 2) -> str:
    if stat is None:
        return ""
    spread = f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.{digits}f}{spread}"


def robustness_lines(rows: Sequence[dict[str, Any]], plan: dict[str, Any], plot_name: str) -> list[str]:
    """The robustness section of results.md: the table, the corruptions per method, the curves, the plot."""
    severities = ", ".join(map(str, plan["severities"]))
    lines = [
        "## Robustness: the test split under ImageNet-C's corruptions",
        "",
        f"Each run's selected adapter on its clean test split and on that split under {len(plan['corruptions'])} "
        f"corruptions at severities {severities} (imagecorruptions-imaug, applied at the model's input resolution, "
        f"corruption seed {plan['seed']}). corrupted = mean top-1 over every corruption and severity; retention = "
        f"corrupted / clean; mCE = mean over corruptions of 100 x the summed errors over the summed errors of the "
        f"linear probe of the same seed (the frozen backbone's own robustness: 100 = as robust as it, lower = better). "
        "Mean ± std over seeds; `-pace` rows trained with PACE consistency regularisation (`--optim.consistency."
        "variant pace`, the paper's defaults).",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        lines += [f"### {task}", "", "| method | params | clean top-1 | corrupted top-1 | retention | mCE |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in task_rows:
            lines.append(
                f"| {r['method']} | {r['trainable_params']:,} | {_cell(r['clean_acc1'])} | "
                f"{_cell(r['corrupted_acc1'])} | {_cell(r['retention'], 3)} | {_cell(r.get('mce'), 1)} |"
            )
        corruptions = list(task_rows[0]["by_corruption"])
        lines += ["", "Mean top-1 per corruption (over severities and seeds):", "",
                  "| method | " + " | ".join(c.replace("_", " ") for c in corruptions) + " |",
                  "|---|" + "---|" * len(corruptions)]  # fmt: skip
        for r in task_rows:
            lines.append(f"| {r['method']} | " + " | ".join(f"{r['by_corruption'][c]:.1f}" for c in corruptions) + " |")
        for r in (r for r in task_rows if "interpolation" in r):
            lines += ["", f"{r['method']} with its contribution scaled by alpha (the trained head at every alpha):", "",
                      "| alpha | clean top-1 | corrupted top-1 |", "|---|---|---|"]  # fmt: skip
            lines += [f"| {p['alpha']:g} | {_cell(p['clean_acc1'])} | {_cell(p['corrupted_acc1'])} |"
                      for p in r["interpolation"]]  # fmt: skip
        lines.append("")
    return [*lines, f"![robustness]({plot_name})", ""]


def plot_robustness(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Three panels (the first task): clean vs corrupted top-1 per method (error bars: std over seeds), top-1 per
    corruption per method (a heatmap), clean and corrupted top-1 along alpha for the interpolated methods."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    task = rows[0]["task"]
    task_rows = [r for r in rows if r["task"] == task]
    fig, (scatter, heat, curve) = plt.subplots(1, 3, figsize=(18, 5.2), layout="constrained")
    for r in task_rows:
        pace = r.get("consistency") is not None
        scatter.errorbar(
            r["clean_acc1"]["mean"], r["corrupted_acc1"]["mean"], xerr=r["clean_acc1"]["std"] or 0.0,
            yerr=r["corrupted_acc1"]["std"] or 0.0, marker="s" if pace else "o", capsize=2,
            fillstyle="none" if pace else "full",
        )  # fmt: skip
        scatter.annotate(r["method"], (r["clean_acc1"]["mean"], r["corrupted_acc1"]["mean"]), fontsize=7,
                         textcoords="offset points", xytext=(4, 3))  # fmt: skip
    scatter.set_xlabel("clean top-1 (%)")
    scatter.set_ylabel("mean corrupted top-1 (%)")
    scatter.set_title(f"{task}: clean vs corrupted (open squares: PACE)", fontsize=10)
    scatter.grid(True, alpha=0.3)
    corruptions = list(task_rows[0]["by_corruption"])
    grid = [[r["by_corruption"][c] for c in corruptions] for r in task_rows]
    image = heat.imshow(grid, aspect="auto", cmap="viridis")
    heat.set_xticks(range(len(corruptions)), [c.replace("_", " ") for c in corruptions], rotation=60, ha="right",
                    fontsize=7)  # fmt: skip
    heat.set_yticks(range(len(task_rows)), [r["method"] for r in task_rows], fontsize=8)
    heat.set_title("top-1 per corruption (mean over severities and seeds)", fontsize=10)
    fig.colorbar(image, ax=heat, shrink=0.8)
    for r in (r for r in task_rows if "interpolation" in r):
        alphas = [p["alpha"] for p in r["interpolation"]]
        for key, style in (("clean_acc1", "-"), ("corrupted_acc1", "--")):
            curve.errorbar(alphas, [p[key]["mean"] for p in r["interpolation"]], capsize=2, linestyle=style,
                           yerr=[p[key]["std"] or 0.0 for p in r["interpolation"]], marker="o",
                           label=f"{r['method']} {key.removesuffix('_acc1')}")  # fmt: skip
    curve.set_xlabel("alpha (0: the frozen backbone with the trained head)")
    curve.set_ylabel("top-1 (%)")
    curve.set_title("interpolation along alpha", fontsize=10)
    curve.grid(True, alpha=0.3)
    if curve.get_legend_handles_labels()[0]:
        curve.legend(fontsize=8)
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def robustness_flags(plan: RobustnessPlan) -> list[str]:
    """The ``adaptformer study`` flags that repeat ``plan``."""
    return [
        "--robustness", "--corruptions", ",".join(plan.corruptions),
        "--severities", ",".join(map(str, plan.severities)), "--interpolate-methods", ",".join(plan.interpolate),
        "--alphas", ",".join(f"{a:g}" for a in plan.alphas),
        *(["--robustness-samples", str(plan.num_samples)] if plan.num_samples is not None else []),
    ]  # fmt: skip


def report_robustness(
    runs: Sequence[dict[str, Any]], plan: RobustnessPlan, out: Path
) -> tuple[list[dict[str, Any]], Path, list[str]]:
    """The study's robustness summary, its plot (written to ``out``) and its section of results.md."""
    rows = summarise_robustness(runs)
    path = out / ROBUSTNESS_FILE
    plot_robustness(path, rows)
    return rows, path, robustness_lines(rows, asdict(plan), ROBUSTNESS_FILE)
