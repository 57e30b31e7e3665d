"""``--executor local``: the units run in this process, one after another (each unit's training runs are
subprocesses, started through ``--launcher``). Workers that share an output folder split the units between them
through the claims their driver takes one unit at a time (:mod:`..claims`)."""

from __future__ import annotations

from collections.abc import Iterator

from .base import Job, UnitRun

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Runs each unit when it is waited for; Ctrl-C reaches its training run and stops the driver."""

    name = "local"
    one_at_a_time = True

    def submit(self, runs: list[UnitRun]) -> list[Job]:
        return [Job(run.name, handle=run) for run in runs]

    def wait(self, jobs: list[Job]) -> Iterator[tuple[Job, str | None]]:
        for job in jobs:
            yield job, job.handle.work(job.name)  # the driver's own claim has its heartbeat already

    def cancel(self, jobs: list[Job]) -> None:
        """Nothing runs between waits."""

    def close(self) -> None:
        """Nothing to disconnect."""
