"""The main job (``adaptformer demo``): AdaptFormer versus a linear probe versus full fine-tuning on real data, in a few
CPU minutes and without downloads.

It is a subset of the miniature reproduction (:mod:`adaptformer.study.run`): the tiny ViT pre-trained here on procedural
shapes (``vit_shapes_patch8_32``) is adapted to scikit-learn's handwritten digits by the three methods, each through
the same ``train()`` as ``adaptformer train``, with the validation split for model selection and the held-out test
split for the reported top-1. It prints the table with the trainable-parameter counts and where the plot and the
AdaptFormer adapter file were written.

AdaptFormer's bottleneck is 16: the paper's ratio for ViT-B (64 of 768 channels, 1/12) applied to this width of 128
gives about 11, and 16 is the nearest size the study runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..saving import WEIGHTS_NAME
from .report import format_table, ranking
from .run import StudyReport, StudySettings, run_study

logger = logging.getLogger(__name__)

DEMO_METHODS = ("linear", "adaptformer-16", "full")


def run_demo(
    output_dir: str | Path = "runs/demo", epochs: int | None = None, jobs: int = 2, quick: bool = False
) -> StudyReport:
    """Run the demo, print its table and file locations, and return the study report.

    Args:
        output_dir: folder for the runs (one per method), results.md/json and the plot.
        epochs: training epochs of each run (None: the study's digits recipe).
        jobs: runs side by side, one CPU thread each.
        quick: a tiny setting (1 epoch on a fifth of the training data) that only checks the pipeline.
    """
    out = Path(output_dir)
    settings = StudySettings(
        tasks=("digits",), methods=DEMO_METHODS, seeds=(0,), epochs=epochs, output_dir=str(out), runs_dir=str(out),
        quick=quick, jobs=jobs,
    )  # fmt: skip
    print(f"adapting the pre-trained vit_shapes_patch8_32 to the digits dataset: {', '.join(DEMO_METHODS)}")
    report = run_study(settings)
    adapter = next(Path(r["output_dir"]) for r in report.runs if r["family"] == "adaptformer") / "adapter"
    weights = adapter / WEIGHTS_NAME
    print()
    print(format_table(report.rows, settings.tasks))
    print()
    print(f"ranking by test top-1: {ranking(report.rows, 'digits')}")
    for row in report.rows:
        print(f"trainable parameters, {row['method']:>15}: {row['trainable_params']:>10,}")
    print(f"plot:    {report.files['plot']}")
    print(f"table:   {report.files['markdown']} (every run: {report.files['json']})")
    print(f"adapter: {weights} ({weights.stat().st_size / 1024:.1f} KiB)")
    print(f"reuse it: adaptformer eval --adapter {adapter}")
    print(f"took {report.seconds:.0f} s for {len(report.runs)} training runs")
    return report
