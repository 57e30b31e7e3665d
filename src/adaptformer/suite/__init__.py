"""Benchmark suites of the PETL community (VTAB-1k, FGVC) run under their protocol: task definitions
(:mod:`.tasks`), atomic task claims for several workers (:mod:`.claims`), the per-task driver (:mod:`.driver`) and
the table and plot (:mod:`.report`). ``adaptformer benchmark`` is the command line. Beside them ``adaptformer sweep``
(:mod:`.sweep`, :mod:`.sweep_report`): a grid of overrides or a shipped set of recipes as runs, one table, one plot.
Both start their training runs through :mod:`.stages`, and run their units (tasks, points) on an executor
(:mod:`.executors`: in this process, as submitit jobs on Slurm, as Ray tasks) through :mod:`.dispatch`."""

from .driver import BenchmarkError, BenchmarkSettings, parse_grid, run_benchmark, split_launcher
from .report import BenchmarkReport, read_report, write_report
from .tasks import SUITES, Suite, get_suite

__all__ = [
    "SUITES",
    "BenchmarkError",
    "BenchmarkReport",
    "BenchmarkSettings",
    "Suite",
    "get_suite",
    "parse_grid",
    "read_report",
    "run_benchmark",
    "split_launcher",
    "write_report",
]
