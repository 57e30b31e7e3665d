"""``adaptformer demo`` and ``adaptformer study``: the research code (:mod:`adaptformer.study`), imported only when one
of these commands runs; the library never imports it."""

from __future__ import annotations

import argparse
from typing import Any

from .args import at_least, comma_list


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..study import run_demo

    run_demo(output_dir=args.output_dir, epochs=args.epochs, jobs=args.jobs, quick=args.quick)
    return 0


def _robustness_plan(args: argparse.Namespace) -> Any:
    """The study's :class:`~adaptformer.study.robustness.RobustnessPlan` from ``--robustness`` and its flags (None
    without ``--robustness``; its flags without it are refused, not ignored)."""
    from ..study.robustness import RobustnessPlan

    given = {k: getattr(args, k) for k in ("corruptions", "severities", "interpolate", "alphas", "num_samples")}
    if not args.robustness:
        flags = {"interpolate": "--interpolate-methods", "num_samples": "--robustness-samples"}
        named = [flags.get(k, f"--{k}") for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"{', '.join(named)} only apply with --robustness")
        return None
    return RobustnessPlan(**{k: v if k == "num_samples" else tuple(v) for k, v in given.items() if v is not None})


def _cmd_study(args: argparse.Namespace) -> int:
    from ..study import StudySettings, format_table, run_study

    settings = StudySettings(
        tasks=tuple(args.tasks), methods=tuple(args.methods), seeds=tuple(int(s) for s in args.seeds),
        epochs=args.epochs, output_dir=args.output_dir, runs_dir=args.runs_dir, quick=args.quick,
        pretrained=not args.random_init, jobs=args.jobs, robustness=_robustness_plan(args), resume=args.resume,
    )  # fmt: skip
    report = run_study(settings)
    print(format_table(report.rows, settings.tasks))
    print(f"{len(report.runs)} runs in {report.seconds / 60:.1f} min; " + ", ".join(map(str, report.files.values())))
    return 0


def add_study_commands(sub: Any) -> None:
    """The ``demo`` and ``study`` subcommands."""
    from ..study import METHODS, StudySettings, default_tasks
    from ..study.robustness import RobustnessPlan
    from .robustness import alpha_list, corruption_list, severity_list

    defaults = StudySettings()
    demo = sub.add_parser(
        "demo", help="the main job: AdaptFormer vs linear probe vs full fine-tuning on digits (a few CPU minutes)"
    )
    demo.add_argument("--output-dir", default="runs/demo", help="runs, table and plot go here (default: runs/demo)")
    demo.add_argument("--epochs", type=at_least(1), default=None, help="training epochs (default: the study's)")
    demo.add_argument("--jobs", type=at_least(1), default=2, help="runs side by side, one CPU thread each (default: 2)")
    demo.add_argument("--quick", action="store_true", help="a few-second setting that only checks the pipeline")
    demo.set_defaults(func=_cmd_demo)
    study = sub.add_parser(
        "study", help="miniature reproduction: every method x task x seed; writes a table and the paper's Figure 1",
        description="Train linear, VPT-deep 1/4/16/64, AdaptFormer 1/4/16/64, LoRA 2/8/32, Adapter+ 4/16/64 and full "
        "fine-tuning on real digits and on synthetic motion video (image backbone inflated to video), several seeds, "
        "through `adaptformer train`'s engine; optionally multi-label digits (mAP) and the paper's ablations "
        "(adaptformer-64-*: blocks, form, scale). Writes results.json, results.md, accuracy_vs_params.png and, for "
        "AdaptFormer adapters on image tasks, adapters_inside.png to --output-dir.",
    )  # fmt: skip
    study.add_argument("--tasks", type=comma_list, default=list(defaults.tasks),
                       help=f"comma-separated, from {','.join(default_tasks())} (default: "
                       f"{','.join(defaults.tasks)})")  # fmt: skip
    study.add_argument("--methods", type=comma_list, default=list(defaults.methods),
                       help=f"comma-separated, from {','.join(METHODS)} (default: all but the adaptformer-64-* "
                       "ablations)")  # fmt: skip
    study.add_argument("--seeds", type=comma_list, default=[str(s) for s in defaults.seeds],
                       help="comma-separated training seeds (default: 0,1,2)")  # fmt: skip
    study.add_argument(
        "--epochs", type=at_least(1), default=None, help="training epochs of every run (default: per task)"
    )
    study.add_argument("--output-dir", default=defaults.output_dir, help="report folder (default: reports/study)")
    study.add_argument("--runs-dir", default=defaults.runs_dir, help="training runs (default: runs/study)")
    study.add_argument(
        "--jobs", type=at_least(1), default=defaults.jobs, help="runs side by side, 1 thread each (default: 2)"
    )
    study.add_argument("--quick", action="store_true", help="tiny data, 1 epoch: checks the pipeline, not the claims")
    study.add_argument("--random-init", action="store_true", help="randomly initialised backbones (a control)")
    study.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted study: each run folder under --runs-dir goes on from its last checkpoint (a "
        "finished run is only tested again; with --robustness, an evaluation it saved for the same plan is reused) "
        "instead of being replaced; a run whose recorded configuration differs is refused",
    )  # fmt: skip
    plan = RobustnessPlan()
    study.add_argument(
        "--robustness", action="store_true",
        help="after training, evaluate every run on its test split under ImageNet-C's corruptions (image "
        "classification tasks; pip install 'adaptformer[robustness]'); adds a robustness table and robustness.png",
    )  # fmt: skip
    study.add_argument(
        "--corruptions", type=corruption_list, default=None,
        help="with --robustness: corruption names or groups common/extra/all (default: common, ImageNet-C's 15)",
    )  # fmt: skip
    study.add_argument(
        "--severities", type=severity_list, default=None,
        help=f"with --robustness: comma-separated, 1-5 (default: {','.join(map(str, plan.severities))})",
    )  # fmt: skip
    study.add_argument(
        "--interpolate-methods", dest="interpolate", type=comma_list, default=None,
        help="with --robustness: the methods whose runs are also evaluated with their contribution scaled by each "
        f"--alphas value (default: {','.join(plan.interpolate)})",
    )  # fmt: skip
    alphas = ",".join(f"{a:g}" for a in plan.alphas)
    study.add_argument(
        "--alphas", type=alpha_list, default=None,
        help=f"with --robustness: the interpolation's alphas in [0, 1] (default: {alphas})",
    )  # fmt: skip
    study.add_argument(
        "--robustness-samples", dest="num_samples", type=at_least(1), default=None,
        help="with --robustness: test images evaluated, spread evenly over the split (default: all)",
    )  # fmt: skip
    study.set_defaults(func=_cmd_study)
