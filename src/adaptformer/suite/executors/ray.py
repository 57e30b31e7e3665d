"""``--executor ray``: each unit a Ray task asking for ``num_cpus`` / ``num_gpus`` (:class:`~.settings.RaySettings`),
on the cluster at ``address`` (``ray://HOST:PORT`` through Ray Client, ``HOST:PORT`` of the head, ``auto``), on the
one this process is already connected to, or on a local cluster started for the command and stopped after it.

An address is tried before anything starts (a TCP connection to it, then ``ray.init``), and a unit whose request no
node of the cluster can meet is refused then too, rather than waiting forever. Ray retries a task whose worker died
(a lost node, the OOM killer: ``max_retries``); the retried task resumes the unit's run folder. A task that failed for
good is reported, and the next invocation runs its unit again, which resumes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import ray

from .base import ExecutorError, Job, UnitRun
from .settings import RaySettings

logger = logging.getLogger(__name__)

__all__ = ["RayExecutor", "check_address"]

CONNECT_TIMEOUT_S = 10.0
MAX_RETRIES = 3  # a task whose worker died is run again this often (each resumes the unit's run folder)


def check_address(address: str) -> None:
    """Fail, naming ``address``, when nothing listens there (``ray.init`` would wait a long while to say so)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--ray.address {address}: expected ray://HOST:PORT, HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ExecutorError(f"--ray.address {address}: the Ray cluster cannot be reached ({error})") from None


def _run(run: UnitRun) -> str | None:
    return run()


class RayExecutor:
    """The units as Ray tasks (see the module docstring)."""

    name = "ray"
    one_at_a_time = False

    def __init__(self, settings: RaySettings) -> None:
        self.settings, self._started = settings, False
        if not ray.is_initialized():  # else: the cluster this process is connected to (the Python API's caller's)
            if settings.address is not None:
                check_address(settings.address)
            try:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ExecutorError(f"--ray.address {settings.address}: cannot connect to Ray ({error})") from None
            self._started = True
        self.address = ray.get_runtime_context().gcs_address
        self._check_resources()
        self._task = ray.remote(_run).options(
            num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, max_retries=MAX_RETRIES, name="adaptformer-unit"
        )

    def _check_resources(self) -> None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for key, asked in (("CPU", self.settings.num_cpus), ("GPU", self.settings.num_gpus)):
            most = max((n.get(key, 0.0) for n in nodes), default=0.0)
            if asked > most:
                self.close()
                raise ExecutorError(f"--ray.num_{key.lower()}s {asked:g}: no node of the Ray cluster at {self.address} "
                                    f"has that many (the largest has {most:g})")  # fmt: skip

    def submit(self, runs: list[UnitRun]) -> list[Job]:
        jobs = []
        for run in runs:
            ref = self._task.remote(run)
            record = {"executor": "ray", "address": self.address, "task_id": ref.task_id().hex()}
            jobs.append(Job(run.name, record, ref))
        return jobs

    def wait(self, jobs: list[Job]) -> Iterator[tuple[Job, str | None]]:
        pending = {job.handle: job for job in jobs}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            yield job, _outcome(job)

    def cancel(self, jobs: list[Job]) -> None:
        for job in jobs:
            ray.cancel(job.handle, force=True)

    def close(self) -> None:
        if self._started:
            ray.shutdown()
            self._started = False


def _outcome(job: Job) -> str | None:
    """The unit's own error, or why its task ended without a result (its worker died more often than retried)."""
    try:
        return ray.get(job.handle)
    except ray.exceptions.RayError as error:
        lines = str(error).strip().splitlines()
        reason = lines[-1] if lines else type(error).__name__
        return (
            f"ray task {job.record['task_id']} of {job.name} ended without finishing ({reason}); run the command "
            "again to resume it"
        )
