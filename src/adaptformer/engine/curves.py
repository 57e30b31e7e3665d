"""The training curves of a run, ``<output_dir>/curves.png``: loss, learning rate and validation accuracy per epoch.

Drawn from the records of ``metrics.jsonl`` (so the plot of a resumed run covers every epoch, those before the
resume included) with matplotlib's object-oriented API: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import save_figure
from .config.sections import TrainConfig

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.png"


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that have a number under ``key`` (validation runs every eval_every epochs;
    a non-finite value is written as null)."""
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [e for e, _ in points], [v for _, v in points]


def plot_curves(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw the per-epoch ``records`` (as in metrics.jsonl, epochs numbered from 1) to the PNG file ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    loss_ax, lr_ax, acc_ax = fig.subplots(1, 3)
    multi_label = any("val_map" in r for r in records)
    scores = (("val_map", "mAP"), ("val_of1", "OF1"), ("val_cf1", "CF1")) if multi_label else (
        ("val_acc1", "top-1"), ("val_acc5", "top-5"))  # fmt: skip
    panels = (
        (loss_ax, "loss", (("train_loss", "train"), ("val_loss", "validation"))),
        (lr_ax, "learning rate (at the epoch's end)", (("lr", "lr"),)),
        (acc_ax, f"validation {'mAP / F1' if multi_label else 'accuracy'} (%)", scores),
    )
    for ax, label, keys in panels:
        drawn = 0
        for key, name in keys:
            epochs, values = _series(records, key)
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
                drawn += 1
        if drawn == 0:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="tab:gray")
        elif len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, wrap=True)
    return save_figure(fig, path, dpi=100)


def draw_run_curves(cfg: TrainConfig, records: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """``out/curves.png`` of the run ``cfg`` from its metrics records, titled by what the run trained; None (logged)
    before the first epoch has finished."""
    if not records:
        logger.info("no epoch finished yet: no %s", CURVES_FILE)
        return None
    title = f"{out}: {cfg.model.backbone}, {cfg.model.method_name}, {cfg.data.dataset} (seed {cfg.run.seed})"
    path = plot_curves(records, out / CURVES_FILE, title)
    logger.info("training curves: %s", path)
    return path
