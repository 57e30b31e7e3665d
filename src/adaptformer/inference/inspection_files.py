"""The files ``adaptformer inspect`` writes from an :class:`~adaptformer.inference.inspection.InspectionReport`:
``inspect.json`` (the report), ``inspect.md`` (one table row per block) and ``inspect.png`` (ratios and drift against
the block index)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write_files, make_folder

if TYPE_CHECKING:
    from .inspection import InspectionReport

FILES = ("inspect.json", "inspect.md", "inspect.png")
HEADLINE = "ratio of RMS norms over all tokens and samples"
PATCH_TOKENS = "patch tokens"  # a segmentation model's drift: each patch token against its frozen counterpart


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """``out_dir`` as a Path, if it is missing or empty, or ``overwrite``; FileExistsError otherwise."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace its {', '.join(FILES)}")
    return out


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _title(report: InspectionReport) -> str:
    return f"{report.method} ({report.form})" if report.form else report.method


def format_markdown(report: InspectionReport) -> str:
    """``inspect.md``: one table row per block (adapter columns empty where a block has no adapter) and the pooled
    feature."""
    rows = {r.block: r for r in report.adapters}
    feature = report.feature
    per_token = feature == PATCH_TOKENS
    averaged = "every patch token of every input (each against its frozen counterpart)" if per_token else "inputs"
    head = "decode head input (patch tokens)" if per_token else "head input (pooled)"
    lines = [
        f"# What the adapters do: {report.backbone}, {_title(report)}, {report.num_samples} inputs",
        "",
        "adapter/MLP = ||a|| / ||MLP(LN(x'))||, adapter/residual = ||a|| / ||x|| (a: the module's output, "
        "AdaptFormer's s·A; x: the residual stream it is added to; per-token L2 norms over the channels; headline: the "
        f"{HEADLINE}, in brackets: the mean of the per-token ratio; adapter/MLP only for a module beside the MLP). "
        f"Drift: the {feature} after the block vs the frozen backbone's (adapters off), relative L2 distance and "
        f"cosine similarity, averaged over {averaged}.",
        "",
        f"| block (from 0) | adapter/MLP | adapter/residual | {feature} relative drift | cosine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in report.drift:
        r = rows.get(d.block)  # type: ignore[arg-type]
        beside_mlp = r is not None and r.adapter_mlp is not None
        mlp = f"{_number(r.adapter_mlp)} ({_number(r.adapter_mlp_token_mean)})" if r and beside_mlp else "–"
        residual = f"{_number(r.adapter_residual)} ({_number(r.adapter_residual_token_mean)})" if r else "–"
        lines.append(f"| {d.block} | {mlp} | {residual} | {_number(d.relative_l2)} | {d.cosine:.6f} |")
    p = report.pooled
    lines.append(f"| {head} | – | – | {_number(p.relative_l2)} | {p.cosine:.6f} |")
    return "\n".join(lines) + "\n"


def plot_inspection(report: InspectionReport) -> bytes:
    """``inspect.png``: the two adapter ratios and the drift against the block index."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    mlp_ax, residual_ax, drift_ax = fig.subplots(1, 3)
    for ax, label, headline, mean in (
        (mlp_ax, "adapter / MLP branch", "adapter_mlp", "adapter_mlp_token_mean"),
        (residual_ax, "adapter / residual stream", "adapter_residual", "adapter_residual_token_mean"),
    ):
        rows = [r for r in report.adapters if getattr(r, headline) is not None]  # no MLP ratio for a post-block module
        blocks = [r.block for r in rows]
        ax.plot(blocks, [getattr(r, headline) for r in rows], marker="o", label="RMS ratio")
        ax.plot(blocks, [getattr(r, mean) for r in rows], marker="x", ls="--", label="per-token mean")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    blocks = [d.block for d in report.drift]
    drift_ax.plot(blocks, [d.relative_l2 for d in report.drift], marker="o", color="tab:red", label="relative L2")
    drift_ax.set_ylabel(f"{report.feature} drift (relative L2)")
    cosine_ax = drift_ax.twinx()
    cosine_ax.plot(blocks, [d.cosine for d in report.drift], marker="x", ls="--", color="tab:blue")
    cosine_ax.set_ylabel("cosine similarity", color="tab:blue")
    for ax in (mlp_ax, residual_ax, drift_ax):
        ax.set_xlabel("block")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{report.backbone}, {_title(report)}, {report.num_samples} inputs", wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_inspection(report: InspectionReport, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``inspect.json``, ``inspect.md`` and ``inspect.png`` to ``out_dir`` (created; each file atomically) and
    return their paths by name. A non-empty ``out_dir`` is refused (FileExistsError) unless ``overwrite``."""
    out = make_folder(check_out_dir(out_dir, overwrite))
    contents = {
        "inspect.json": (json.dumps(report.to_dict(), indent=2) + "\n").encode(),
        "inspect.md": format_markdown(report).encode(),
        "inspect.png": plot_inspection(report),
    }
    paths = {name: out / name for name in contents}
    atomic_write_files({paths[name]: data for name, data in contents.items()})
    return paths
