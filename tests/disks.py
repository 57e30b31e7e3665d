"""Real file-system faults for the tests: a small disk that fills up (a tmpfs mounted for the test) and a read-only
folder.

Mounting needs root: run as another user (or where ``mount`` is refused), the tests that need a mount are skipped with
the reason, which ``pytest -rs`` shows. A user's read-only folder is a folder of mode 0o555; root writes through
modes, so root's is a tmpfs mounted read-only.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

DISK_SIZE = 2 * 2**20  # bytes
PAGE = 4096  # tmpfs counts its space in pages


class ReadOnlyFolder(NamedTuple):
    path: Path
    cause: str  # what the library's OutputError says of it


def mount_tmpfs(folder: Path, size: int, read_only: bool = False) -> None:
    """Mount a tmpfs of ``size`` bytes at ``folder`` (created); skips the test, saying why, where that is not
    possible."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root; the tests run as uid {os.geteuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs: no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or f'mount exited {done.returncode}'}")


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "--lazy", str(folder)], check=True, capture_output=True, timeout=30)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk mounted at ``disk`` with one file, then give back ``leave`` bytes (whole pages); returns the
    file, whose removal frees the space again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 2**16)  # the disk takes whole pages: the last write stops at a page's end
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler
