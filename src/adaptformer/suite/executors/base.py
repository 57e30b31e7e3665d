"""The executor protocol and what its implementations share: a unit as it runs (:class:`UnitRun`), a submitted job
(:class:`Job`) and the error of a scheduler out of reach (:class:`ExecutorError`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..claims import HEARTBEAT_S, Claim
from ..stages import SuiteError

__all__ = ["Executor", "ExecutorError", "Job", "UnitRun", "Work"]

Work = Callable[[str], "str | None"]  # runs the unit of that name; None when it finished, else the error


class ExecutorError(SuiteError):
    """A scheduler that cannot be reached or used (named), found before any unit starts."""


@dataclass(frozen=True)
class UnitRun:
    """One unit as it runs wherever the executor puts it: its work, in the driver's working folder (relative paths
    of the command line, ``OUT`` and train flags alike, mean there what they mean to the driver; a Ray worker starts
    elsewhere), with a heartbeat on the claim its driver holds (so that a driver that dies leaves a unit whose job
    still runs to that job)."""

    name: str
    work: Work
    claim: Path
    worker: str
    cwd: Path
    heartbeat_s: float = HEARTBEAT_S

    def __call__(self) -> str | None:
        os.chdir(self.cwd)
        beat = Claim(self.claim, self.worker, self.heartbeat_s) if self.claim.is_file() else None
        try:
            return self.work(self.name)
        finally:
            if beat is not None:
                beat.stop()


@dataclass
class Job:
    """A submitted unit: its name, what the report records of it (executor, job id, log files) and the library's
    handle."""

    name: str
    record: dict[str, Any] = field(default_factory=dict)
    handle: Any = None


class Executor(Protocol):
    """Runs units; built by :func:`open_executor`, which fails there, before any unit, if the scheduler is out of
    reach."""

    name: str
    one_at_a_time: bool  # True: the driver claims a unit, runs it, then claims the next (the local executor)

    def submit(self, runs: list[UnitRun]) -> list[Job]:
        """Start the units (a scheduler queues them); one job per unit, in order."""

    def wait(self, jobs: list[Job]) -> Iterator[tuple[Job, str | None]]:
        """Each job as it ends, with None (finished) or the error (the unit's own, or why its job died)."""

    def cancel(self, jobs: list[Job]) -> None:
        """Stop jobs that have not ended (the driver was interrupted)."""

    def close(self) -> None:
        """Disconnect (a Ray cluster this executor started is stopped)."""
