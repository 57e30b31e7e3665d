"""``adaptformer benchmark vtab|fgvc``: a whole VTAB-1k or FGVC suite under its protocol (:mod:`adaptformer.suite`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .args import add_executor_arguments, add_worker_arguments, executor_settings

DESCRIPTION = (
    "Run every task of a PETL benchmark suite with a shipped protocol recipe (recipes/vtab_fgvc.yaml): per task, "
    "tune on train800 -> val200 (FGVC: train.json -> val.json), choosing among the --grid points by last-epoch "
    "validation top-1, then retrain the chosen setting on train800val200 (train + val) and test its last epoch once. "
    "Writes OUT/<task>/{tune-K,final}/ (ordinary `adaptformer train` run folders), OUT/<task>/result.json and, after "
    "each task, OUT/results.md, results.json and results.png (per-task test top-1, the mean over tasks, for VTAB-1k "
    "the mean of the three group means, validation numbers, trainable parameters, train time, peak memory). "
    "Resumable: run the same command again and finished tasks and stages are skipped, an interrupted one resumes. "
    "Tasks run in this process (--executor local), as submitit jobs on Slurm (--executor slurm) or as Ray tasks "
    "(--executor ray); a task whose job was killed resumes when it runs again. Several workers or drivers may share "
    "OUT (one per GPU, array jobs on a cluster, drivers on different executors): each claims an unfinished task "
    "atomically, so every task runs once. Train flags for every stage go after --, e.g. -- --model.checkpoint "
    "vit_b16_in21k.pth."
)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ..suite import BenchmarkSettings, parse_grid, run_benchmark, split_launcher, write_report
    from ..suite.claims import default_worker_name

    out = Path(args.out)
    if args.report_only:
        files = write_report(out)
        print(json.dumps({k: str(v) for k, v in files.items()}))
        return 0
    if args.method is None or args.data_dir is None:
        raise ValueError("adaptformer benchmark needs --method and --data-dir (or --report-only)")
    settings = BenchmarkSettings(
        suite=args.suite, method=args.method, data_dir=Path(args.data_dir), output_dir=out,
        tasks=tuple(args.tasks or ()), grid=parse_grid(args.grid), tune=args.tune, train_flags=tuple(args.train_flags),
        launcher=split_launcher(args.launcher), worker=args.worker or default_worker_name(),
        stale_after_s=args.stale_after * 60,
    )  # fmt: skip
    summary = run_benchmark(settings, executor_settings(args))
    files = write_report(out)
    print(files["markdown"].read_text(), end="")
    print(json.dumps({"ran": summary.ran, "already_done": summary.already_done,
                      "held_by_other_workers": summary.held_elsewhere, "failed": list(summary.failed),
                      **{k: str(v) for k, v in files.items()}}))  # fmt: skip
    if summary.failed:
        print(f"error: {len(summary.failed)} task(s) failed: {', '.join(summary.failed)} (see OUT/<task>/train.log; "
              "run the command again to retry them)", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_benchmark_command(sub: Any) -> None:
    """The ``benchmark`` subcommand."""
    parser = sub.add_parser(
        "benchmark", help="run a VTAB-1k or FGVC suite under its protocol; writes one table and a plot",
        description=DESCRIPTION, usage="adaptformer benchmark {vtab,fgvc} [options] [-- TRAIN_FLAGS ...]",
    )  # fmt: skip
    parser.add_argument("suite", choices=("vtab", "fgvc"), help="the suite")
    parser.add_argument("--method", default=None,
                        help="a method row of the protocol recipes: adaptformer8, adaptformer8_ln, adaptformer64, "
                        "lora8, adapter_plus8, adaptformer8_pace, adapter_plus8_pace (`adaptformer recipes` lists "
                        "them as vtab_<task>_<method>)")  # fmt: skip
    parser.add_argument("--data-dir", default=None, help="the folder holding the suite's task folders")
    parser.add_argument("--out", required=True, help="the benchmark's folder (shared by every worker)")
    parser.add_argument("--tasks", type=_comma_list, default=None, help="comma-separated subset (default: all)")
    parser.add_argument(
        "--grid", default=None,
        help="settings tuned per task on the validation split, as YAML: dotted train keys -> lists, e.g. "
        "'{optim.lr: [0.001, 0.005], model.method.scale: [0.1, 1.0]}' (default: the recipe's setting only)",
    )  # fmt: skip
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                        help="run the tuning stage (default: yes; --no-tune runs only the final stage)")  # fmt: skip
    parser.add_argument(
        "--launcher", default=None,
        help="command that runs `-m adaptformer.cli train ...` for each stage (default: this Python); e.g. "
        "'torchrun --nproc_per_node 8' to train each task on 8 GPUs",
    )  # fmt: skip
    add_worker_arguments(parser, "task")
    add_executor_arguments(parser, "task")
    parser.add_argument("--report-only", action="store_true", help="only (re)write OUT's table and plot")
    parser.set_defaults(func=_cmd_benchmark)
