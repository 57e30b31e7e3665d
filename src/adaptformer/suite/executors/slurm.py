"""``--executor slurm``: each unit a submitit job, submitted together (one Slurm job array), with the partition, time
limit, GPUs, CPUs and memory of :class:`~.settings.SlurmSettings`.

Each job runs :class:`Requeueable`, a ``submitit.helpers.Checkpointable``: when Slurm preempts the job or its time
limit nears, it sends SIGUSR2; submitit then calls the callable's ``checkpoint``, which hands back the same unit, and
requeues the job; the exit stops the unit's training run as Ctrl-C does (it saves its state,
:func:`~adaptformer.suite.stages.run_stage`), and the requeued job resumes its run folder. A job that died for good
(cancelled, out of memory, requeued too often) is reported with its job id and log files, and the next invocation of
the command submits its unit again, which resumes. ``cluster: local`` runs the same jobs as local processes through
submitit's local executor (preemption there is a SIGUSR2 to the job's process, which requeues it the same way).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import submitit

from .base import ExecutorError, Job, UnitRun
from .settings import SlurmSettings

logger = logging.getLogger(__name__)

__all__ = ["Requeueable", "SlurmExecutor", "check_partition"]

POLL_S = {"slurm": 15.0, "local": 0.5}  # how often the jobs' states are read (Slurm's through sacct)


class Requeueable(submitit.helpers.Checkpointable):
    """A unit as a submitit job; ``checkpoint`` (the inherited one) resubmits it unchanged: its run folder holds the
    state to resume from."""

    def __init__(self, run: UnitRun) -> None:
        self.run = run

    def __call__(self) -> str | None:
        return self.run()


def check_partition(partition: str | None) -> None:
    """Fail, naming what is missing, when this machine cannot submit to Slurm or has no partition ``partition``."""
    if shutil.which("sbatch") is None:
        raise ExecutorError("--executor slurm: sbatch is not on PATH (this machine has no Slurm client); run the "
                            "command on a login node of the cluster, or give --slurm.cluster local to run the jobs "
                            "here through submitit's local executor")  # fmt: skip
    if partition is None or shutil.which("sinfo") is None:
        return
    listed = subprocess.run(["sinfo", "--noheader", "--format", "%R"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        raise ExecutorError(f"--slurm.partition {partition}: sinfo failed (exit {listed.returncode}): "
                            f"{listed.stderr.strip()}")  # fmt: skip
    partitions = listed.stdout.split()
    if partition not in partitions:
        raise ExecutorError(f"--slurm.partition {partition}: no such partition; sinfo lists {', '.join(partitions)}")


class SlurmExecutor:
    """The units as submitit jobs (see the module docstring); job files and logs in ``log_dir/<job id>/``."""

    name = "slurm"
    one_at_a_time = False

    def __init__(self, settings: SlurmSettings, log_dir: Path) -> None:
        if settings.cluster == "slurm":
            check_partition(settings.partition)
        self.settings = settings
        self._executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=settings.cluster)
        parameters = {"name": "adaptformer", "timeout_min": settings.time_min, "gpus_per_node": settings.gpus_per_node,
                      "cpus_per_task": settings.cpus_per_task, "mem_gb": settings.mem_gb,
                      "slurm_partition": settings.partition,
                      "slurm_array_parallelism": settings.array_parallelism}  # fmt: skip
        self._executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})

    def submit(self, runs: list[UnitRun]) -> list[Job]:
        with self._executor.batch():
            handles = [self._executor.submit(Requeueable(run)) for run in runs]
        jobs = []
        for run, handle in zip(runs, handles, strict=True):
            record = {"executor": "slurm", "cluster": self.settings.cluster, "job_id": str(handle.job_id),
                      "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr)}  # fmt: skip
            logger.info("%s: submitted as job %s (logs: %s)", run.name, handle.job_id, handle.paths.stdout)
            jobs.append(Job(run.name, record, handle))
        return jobs

    def wait(self, jobs: list[Job]) -> Iterator[tuple[Job, str | None]]:
        pending = list(jobs)
        while pending:
            ended = [job for job in pending if job.handle.done()]
            for job in ended:
                pending.remove(job)
                yield job, _outcome(job)
            if pending and not ended:
                time.sleep(POLL_S[self.settings.cluster])

    def cancel(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.handle.cancel(check=False)

    def close(self) -> None:
        """Jobs live on the cluster; nothing to disconnect."""


def _outcome(job: Job) -> str | None:
    """The unit's own error, or why its job ended without a result (with the job's log files)."""
    failure = job.handle.exception()
    if failure is None:
        return job.handle.result()
    reason = str(failure).strip().splitlines()
    return (f"{job.record['cluster']} job {job.record['job_id']} of {job.name} ended without finishing "
            f"({reason[-1] if reason else type(failure).__name__}); its logs: {job.record['stdout']}, "
            f"{job.record['stderr']}; run the command again to resume it")  # fmt: skip
