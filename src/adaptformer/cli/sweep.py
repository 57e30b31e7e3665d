"""``adaptformer sweep``: a grid of overrides (or a shipped set of recipes) as training runs, one table, one plot
(:mod:`adaptformer.suite.sweep`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .args import add_executor_arguments, add_worker_arguments, executor_settings

DESCRIPTION = (
    "Run a set of `adaptformer train` runs that differ by a few settings, then write one table and one plot. SWEEP is "
    "a shipped sweep (--list: paper Tables 2 and 6, the SSv2 ablations, the accuracy-vs-parameters figure) or a YAML "
    "file: "
    "{base: RECIPE|CONFIG, grid: {dotted.key: [v1, v2], ...}, points: [{name, recipe, set: {dotted.key: value}}], "
    "x: trainable_parameters|point|dotted.key, series: dotted.key}. Each point is a run folder OUT/<point>/; the "
    "table is OUT/results.md and results.json (settings, trainable parameters, validation and test metric, selected "
    "epoch, train minutes, the paper's number for a shipped recipe), the plot OUT/results.png. Resumable: run the "
    "same command again and finished points are skipped, an interrupted one resumes; OUT/sweep.json refuses other "
    "settings. Points run in this process (--executor local), as submitit jobs on Slurm (--executor slurm) or as "
    "Ray tasks (--executor ray); a point whose job was killed resumes when it runs again. Several workers or drivers "
    "may share OUT (one per GPU, array jobs on a cluster, drivers on different executors): each claims an unfinished "
    "point atomically, so every point is trained once. Train flags for every point go after --, e.g. "
    "-- --data.data_dir DATA --model.checkpoint ckpt.pth."
)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..suite.claims import default_worker_name
    from ..suite.driver import split_launcher
    from ..suite.sweep import SweepSettings, load_sweep, run_sweep, shipped_sweeps
    from ..suite.sweep_report import write_sweep_report

    if args.list:
        for name, definition in shipped_sweeps().items():
            print(f"{name:<20} {definition['title']} ({len(definition['points'])} points)")
        return 0
    if args.out is None:
        raise ValueError("adaptformer sweep needs --out (or --list)")
    out = Path(args.out)
    if args.report_only:
        files = write_sweep_report(out)
        print(json.dumps({k: str(v) for k, v in files.items()}))
        return 0
    if args.sweep is None:
        raise ValueError("adaptformer sweep needs SWEEP: a shipped sweep name (see --list) or a YAML file")
    settings = SweepSettings(
        sweep=load_sweep(args.sweep), output_dir=out, train_flags=tuple(args.train_flags),
        launcher=split_launcher(args.launcher), worker=args.worker or default_worker_name(),
        stale_after_s=args.stale_after * 60,
    )  # fmt: skip
    summary = run_sweep(settings, executor_settings(args))
    files = write_sweep_report(out)
    print(files["markdown"].read_text(), end="")
    print(json.dumps({"ran": summary.ran, "already_done": summary.already_done,
                      "held_by_other_workers": summary.held_elsewhere, "failed": list(summary.failed),
                      **{k: str(v) for k, v in files.items()}}))  # fmt: skip
    if summary.failed:
        print(f"error: {len(summary.failed)} point(s) failed: {', '.join(summary.failed)} (see OUT/logs/<point>.log; "
              "run the command again to retry them)", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def add_sweep_command(sub: Any) -> None:
    """The ``sweep`` subcommand."""
    parser = sub.add_parser(
        "sweep", help="run a grid of overrides or a shipped set of recipes; writes one table and one plot",
        description=DESCRIPTION, usage="adaptformer sweep [SWEEP] --out DIR [options] [-- TRAIN_FLAGS ...]",
    )  # fmt: skip
    parser.add_argument("sweep", nargs="?", default=None, help="a shipped sweep (see --list) or a sweep YAML file")
    parser.add_argument("--out", default=None, help="the sweep's folder: one run folder per point, the table, the plot")
    parser.add_argument("--list", action="store_true", help="list the shipped sweeps")
    parser.add_argument(
        "--launcher", default=None,
        help="command that runs `-m adaptformer.cli train ...` for each point (default: this Python); e.g. "
        "'torchrun --nproc_per_node 8'",
    )  # fmt: skip
    add_worker_arguments(parser, "point")
    add_executor_arguments(parser, "point")
    parser.add_argument("--report-only", action="store_true", help="only (re)write OUT's table and plot")
    parser.set_defaults(func=_cmd_sweep)
