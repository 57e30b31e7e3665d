"""Atomic task claims in a shared folder, so that independent workers (one per GPU, array jobs of a cluster
scheduler, several machines on a shared file system) split a suite between them with no scheduler of their own, and
so that drivers on a scheduler (:mod:`.dispatch`: Slurm jobs, Ray tasks) never run a unit another one holds.

A worker owns a task while its claim file (``<task>/claim.json``; a sweep's points: ``OUT/logs/<point>.claim.json``,
outside the run folder) is its own: created with ``O_CREAT | O_EXCL`` (atomic on local file
systems and on NFS v3+), kept fresh by a heartbeat (its modification time, touched every ``heartbeat_s``), removed
when the task ends. A claim whose heartbeat is older than ``stale_after_s`` belongs to a worker that died: another
worker takes it over under an exclusive takeover lock (one takeover at a time, and a claim created meanwhile is never
removed), and the training run it left behind resumes from its last state. A worker that is alive but stalled longer
than ``stale_after`` can lose its claim this way: choose ``stale_after`` well above the heartbeat. A scheduler's job
beats on its driver's claim too (:meth:`Claim.stop` ends its beat without removing the file), so a unit stays held
while its job runs, even after its driver died.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = ["CLAIM_FILE", "HEARTBEAT_S", "Claim", "default_worker_name", "try_claim"]

CLAIM_FILE = "claim.json"
HEARTBEAT_S = 30.0
LOCK_STALE_S = 60.0  # a takeover takes milliseconds; a lock this old was left by a worker that died in one


def default_worker_name() -> str:
    """``host:pid``, unique among the workers sharing a folder."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Claim:
    """A held claim: refreshes its heartbeat in a background thread until :meth:`release` (or the ``with`` block
    ends)."""

    def __init__(self, path: Path, worker: str, heartbeat_s: float) -> None:
        self.path, self.worker = path, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name=f"claim {path}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # taken over as stale (we were too slow): the other worker now owns the task
                logger.warning("%s: the claim of %s was taken over by another worker", self.path, self.worker)
                return

    def still_held(self) -> bool:
        """Whether the claim file is still this worker's (a worker that stalled past ``stale_after`` may lose it)."""
        try:
            return json.loads(self.path.read_text()).get("worker") == self.worker
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    def stop(self) -> None:
        """Stop the heartbeat, leaving the file: what a scheduler's job does with the claim its driver holds (it keeps
        the claim fresh while it runs, so a driver that died leaves a running job's unit to it, not to another)."""
        self._stop.set()
        self._thread.join()

    def release(self) -> None:
        self.stop()
        if self.still_held():
            self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _create(path: Path, worker: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"worker": worker, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
    return True


def try_claim(
    folder: Path, worker: str, stale_after_s: float, heartbeat_s: float = HEARTBEAT_S, name: str = CLAIM_FILE
) -> Claim | None:
    """Claim the task whose claim file is ``folder / name`` for ``worker``; None if another live worker holds it.

    ``stale_after_s`` must exceed ``heartbeat_s`` by a margin (a busy file system delays a touch)."""
    if stale_after_s <= heartbeat_s:
        raise ValueError(f"stale_after ({stale_after_s} s) must be longer than the heartbeat ({heartbeat_s} s)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if _create(path, worker):
        return Claim(path, worker, heartbeat_s)
    if _age(path) <= stale_after_s:
        return None
    # Taking over a stale claim: one worker at a time (an exclusive takeover lock), so that no worker removes a claim
    # another one has just created.
    lock = folder / f".{name}.takeover"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        if _age(lock) > LOCK_STALE_S:  # left by a worker that died inside a takeover
            lock.unlink(missing_ok=True)
        return None
    try:
        age = _age(path)
        if age <= stale_after_s:  # released or claimed again meanwhile (a missing file reads as infinitely old)
            return Claim(path, worker, heartbeat_s) if age == math.inf and _create(path, worker) else None
        try:
            holder = json.loads(path.read_text()).get("worker", "?")
        except (OSError, json.JSONDecodeError):
            holder = "?"
        path.unlink(missing_ok=True)
        logger.warning("%s: taking over the claim of %s (no heartbeat for %.0f s)", folder, holder, age)
        return Claim(path, worker, heartbeat_s) if _create(path, worker) else None
    finally:
        lock.unlink(missing_ok=True)


def _age(path: Path) -> float:
    """Seconds since ``path`` was last touched; infinity if it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return math.inf
