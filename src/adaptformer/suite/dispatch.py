"""What the benchmark and the sweep drivers share: working through their units (tasks, points) on an executor
(:mod:`.executors`), each unit exactly once among every driver and worker sharing the output folder.

Per unit: done (its done-file exists) -> skipped; else it is claimed (:mod:`.claims`; a unit another live driver
holds is left to it), looked at again (finished or failed meanwhile, by another worker of this round: not tried again
until the command is run again), and run. The local executor claims and runs one unit at a time; a scheduler's
executor claims every unit it can, submits them together, records each job (``job`` file: job id, log files) and
holds the claims until the jobs end; the jobs themselves keep the claims fresh, so a driver that dies leaves running
jobs their units. Several drivers on one folder are coordinated this way, whatever their executors: each unit runs
once. A unit that failed gets a ``failed`` file with the error (and its job); one that finishes loses it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.records import write_json
from .claims import Claim, try_claim
from .executors import Executor, Job, UnitRun, Work
from .stages import failed_since

logger = logging.getLogger(__name__)

__all__ = ["Summary", "Unit", "dispatch"]


@dataclass(frozen=True)
class Unit:
    """Where one unit's state lives: its done-file, claim, failure record and job record."""

    name: str
    done: Path
    claim: Path
    failed: Path
    job: Path


@dataclass
class Summary:
    """What one driver did."""

    ran: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    held_elsewhere: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def dispatch(units: list[Unit], work: Work, executor: Executor, worker: str, stale_after_s: float) -> Summary:
    """Run the units this driver can claim on ``executor`` (see the module docstring)."""
    started, summary = time.time(), Summary()
    if executor.one_at_a_time:
        for unit in units:
            claim = _claim(unit, worker, stale_after_s, started, summary)
            if claim is not None:
                with claim:
                    _run(executor, {unit.name: (unit, claim)}, work, worker, summary)
        return summary
    claimed: dict[str, tuple[Unit, Claim]] = {}
    try:
        for unit in units:
            claim = _claim(unit, worker, stale_after_s, started, summary)
            if claim is not None:
                claimed[unit.name] = (unit, claim)
        if claimed:
            _run(executor, claimed, work, worker, summary)
    finally:
        for _, claim in claimed.values():
            claim.release()
    return summary


def _claim(unit: Unit, worker: str, stale_after_s: float, started: float, summary: Summary) -> Claim | None:
    """The unit's claim, or None (recorded in ``summary``) when it is done, held or failed in this round."""
    if unit.done.is_file():
        summary.already_done.append(unit.name)
        return None
    claim = try_claim(unit.claim.parent, worker, stale_after_s, name=unit.claim.name)
    if claim is None:
        summary.held_elsewhere.append(unit.name)
        return None
    tried = failed_since(unit.failed, started)
    if unit.done.is_file() or tried is not None:  # done or failed by another worker between our look and our claim
        claim.release()
        if tried is None:
            summary.already_done.append(unit.name)
        else:
            summary.failed[unit.name] = tried
        return None
    return claim


def _run(executor: Executor, claimed: dict[str, tuple[Unit, Claim]], work: Work, worker: str, summary: Summary) -> None:
    """Submit the claimed units, record their jobs, and note each end (releasing its claim); Ctrl-C (or any error)
    cancels the jobs still running."""
    runs = [UnitRun(name, work, unit.claim, worker, Path.cwd()) for name, (unit, _) in claimed.items()]
    jobs = executor.submit(runs)
    for job in jobs:
        _record_job(claimed[job.name][0], job)
    pending = {job.name: job for job in jobs}
    try:
        for job, error in executor.wait(jobs):
            del pending[job.name]
            unit, claim = claimed[job.name]
            _finish(unit, job, error, worker, summary)
            claim.release()
    finally:
        if pending:
            executor.cancel(list(pending.values()))


def _record_job(unit: Unit, job: Job) -> None:
    if job.record:
        write_json(unit.job, job.record)
    else:  # run here: a job of an earlier run on a scheduler is no longer this unit's
        unit.job.unlink(missing_ok=True)


def _finish(unit: Unit, job: Job, error: str | None, worker: str, summary: Summary) -> None:
    if error is None:
        unit.failed.unlink(missing_ok=True)
        summary.ran.append(unit.name)
        return
    logger.error("%s", error)
    summary.failed[unit.name] = error
    record: dict[str, Any] = {"worker": worker, "error": error, **({"job": job.record} if job.record else {})}
    write_json(unit.failed, record)
