"""Where the units of ``adaptformer benchmark`` (tasks) and ``adaptformer sweep`` (points) run.

An executor takes units, each a picklable :class:`UnitRun` (the unit's work, a function of its name that returns
None when it finished or the error that stopped it), runs them and reports each one's end:

* ``local`` (:mod:`.local`): in this process, one after another; workers sharing an output folder split the units
  between them through file claims (:mod:`..claims`), the fallback where there is no scheduler;
* ``slurm`` (:mod:`.slurm`): one submitit job per unit, submitted together as a Slurm job array, requeued by
  submitit when Slurm preempts it or its time runs out;
* ``ray`` (:mod:`.ray`): one Ray task per unit with its CPU / GPU request, retried by Ray when its worker dies.

Every unit is an ordinary run folder that resumes, so a job that was killed (by the scheduler, a lost node, a
preemption) resumes where it stopped when it runs again: in the same invocation (a requeued job, a retried task) or
at the next one. The driver stays the only writer of the report; the libraries are imported only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import MissingDependencyError
from .base import Executor, ExecutorError, Job, UnitRun, Work
from .settings import EXECUTORS, ExecutorSettings, RaySettings, SlurmSettings, load_executor_settings

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "ExecutorSettings", "Job", "RaySettings", "SlurmSettings",
           "UnitRun", "Work", "load_executor_settings", "open_executor"]  # fmt: skip

EXTRAS = {"slurm": ("submitit", "slurm"), "ray": ("ray", "ray")}  # executor -> (module it needs, the extra)


def require(name: str) -> None:
    """A MissingDependencyError naming the extra when executor ``name``'s library is not installed."""
    if name not in EXTRAS:
        return
    module, extra = EXTRAS[name]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(f"--executor {name} needs {module}, which is not installed: "
                                     f"pip install 'adaptformer[{extra}]'") from error  # fmt: skip


@contextmanager
def open_executor(settings: ExecutorSettings, output_dir: Path) -> Iterator[Executor]:
    """The executor ``settings`` name, connected and checked (a missing library, an unknown Slurm partition, an
    unreachable Ray address: an error here); closed when the block ends."""
    require(settings.name)
    executor: Executor
    if settings.name == "slurm":
        from .slurm import SlurmExecutor

        log_dir = Path(settings.slurm.log_dir) if settings.slurm.log_dir else output_dir / "logs" / "submitit"
        executor = SlurmExecutor(settings.slurm, log_dir)
    elif settings.name == "ray":
        from .ray import RayExecutor

        executor = RayExecutor(settings.ray)
    else:
        from .local import LocalExecutor

        executor = LocalExecutor()
    try:
        yield executor
    finally:
        executor.close()
