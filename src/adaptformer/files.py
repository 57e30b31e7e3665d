"""Files written so that a crash never leaves a half-written one: a temporary name beside the target, fsync, then an
atomic rename. Adapter folders, training state, run records and reports all write through here."""

from __future__ import annotations

import glob
import os
import secrets
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A fresh name beside ``path`` for :func:`atomic_write_bytes`'s temporary file: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def leftover_temporaries(path: Path) -> list[Path]:
    """The temporary files of :func:`atomic_write_bytes` for ``path`` that are still there: a process killed while
    writing ``path`` leaves one behind (``path`` itself then still holds its previous content)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename.

    The file gets the permissions ``open()`` would give a new file (0o666 less the umask; the kernel applies it), not
    the owner-only 0o600 of ``tempfile.mkstemp``.
    """
    while True:
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # a name drawn twice: draw another
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
