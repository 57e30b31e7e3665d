"""A run on several machines (multi-node ``torchrun``): every process must see the run folder the main process writes.

Only the main process (global rank 0) writes ``run.output_dir``, but every process reads from it: the training state
it resumes from and the selected adapter it tests. On machines that do not share that folder (a relative
``--run.output_dir`` started from different working directories, or a local disk per node) the other processes would
resume from a state of their own, or from none, and test an adapter they never saw. :func:`check_shared_folder`
finds that out before the first step: the main process creates a file with a fresh random name in the folder, every
process looks for it, and a process that cannot see it fails the run on every process at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..files import temporary_name
from .distributed import DistributedContext, all_gather_objects
from .run_folder import CONFIG_FILE, RunFolderError


def check_shared_folder(out: Path, ctx: DistributedContext) -> None:
    """Raise :class:`RunFolderError` on every process when a process of this run cannot see what the main process
    writes in ``out`` (called by all processes, after the main one created ``out``); a no-op for one process."""
    if not ctx.enabled:
        return
    probe = None
    if ctx.is_main:  # named like an interrupted save of config.yaml: a later run removes it if this one dies first
        probe = temporary_name(out / CONFIG_FILE)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    name = all_gather_objects(probe.name if probe is not None else None, ctx)[0]
    views = all_gather_objects(((out / name).is_file(), socket.gethostname(), str(out.resolve())), ctx)
    if probe is not None:
        probe.unlink()
    blind = [(rank, host, folder) for rank, (seen, host, folder) in enumerate(views) if not seen]
    if blind:
        where = "; ".join(f"process {rank} on {host} looked in {folder}" for rank, host, folder in blind)
        raise RunFolderError(
            f"--run.output_dir {out} is not one folder shared by every process of this run: process 0 on "
            f"{views[0][1]} wrote {views[0][2]}, which {len(blind)} of {ctx.world_size} processes cannot see "
            f"({where}). Every process reads the training state and the adapter from it: put it on a filesystem "
            "that every node mounts at the same path (NFS, Lustre, ...), and give an absolute path"
        )
