"""Atomic task claims in a shared folder, so that independent workers (one per GPU, array jobs of a cluster
scheduler, several machines on a shared file system) split a suite between them with no scheduler of their own.

A worker owns a task while ``<task>/claim.json`` is its file: created with ``O_CREAT | O_EXCL`` (atomic on local file
systems and on NFS v3+), kept fresh by a heartbeat (its modification time, touched every ``heartbeat_s``), removed
when the task ends. A claim whose heartbeat is older than ``stale_after_s`` belongs to a worker that died: another
worker takes it over by renaming it away first (a rename is atomic, so of two workers racing for the same stale claim
exactly one succeeds) and then claiming as usual; the training run it left behind resumes from its last state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = ["CLAIM_FILE", "Claim", "default_worker_name", "try_claim"]

CLAIM_FILE = "claim.json"


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

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
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


def try_claim(folder: Path, worker: str, stale_after_s: float, heartbeat_s: float = 30.0) -> Claim | None:
    """Claim the task whose folder is ``folder`` for ``worker``; None if another live worker holds it.

    ``stale_after_s`` must exceed ``heartbeat_s`` by a margin (a busy file system delays a touch)."""
    if stale_after_s <= heartbeat_s:
        raise ValueError(f"stale_after ({stale_after_s} s) must be longer than the heartbeat ({heartbeat_s} s)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    if _create(path, worker):
        return Claim(path, worker, heartbeat_s)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # released in between: try once more
        return Claim(path, worker, heartbeat_s) if _create(path, worker) else None
    if age <= stale_after_s:
        return None
    stale = path.with_name(f".{CLAIM_FILE}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(path, stale)  # exactly one of several racing workers wins this
    except FileNotFoundError:
        return None
    if time.time() - stale.stat().st_mtime <= stale_after_s:
        # Another worker took the stale claim over between our look and our rename: we moved its fresh claim; put it
        # back (link fails only if yet another worker claimed in between, which then owns the task) and step aside.
        with contextlib.suppress(FileExistsError):
            os.link(stale, path)
        stale.unlink()
        return None
    try:
        holder = json.loads(stale.read_text()).get("worker", "?")
    except (OSError, json.JSONDecodeError):
        holder = "?"
    stale.unlink(missing_ok=True)
    logger.warning("%s: taking over the claim of %s (no heartbeat for %.0f s)", folder, holder, age)
    return Claim(path, worker, heartbeat_s) if _create(path, worker) else None
