"""Every file and folder the library writes goes through here: run folders, adapters, training state, run records,
exports, reports and prepared datasets.

Two promises. A file is written so that a crash or a full disk never leaves a half-written one: a temporary name
beside the target, fsync, then an atomic rename (:func:`atomic_write_files`); an append that fails is cut back to
where it started (:func:`append_text`). And an OS error while writing (a read-only folder, a full disk, a path below
a file, a folder where a file goes) is turned, here and only here (:func:`writing`), into one
:class:`~adaptformer.errors.OutputError` naming the path and the cause in words, which the command line shows as one
``error:`` line.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError

# The causes a user can act on, in words; any other errno keeps the system's own text.
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EISDIR: "it is a folder; a file path is expected",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.EFBIG: "the file is too large for the file system",
    errno.EIO: "an input/output error on the device",
}


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path``'s parents (from the root down), or ``path`` itself, that exists and is not a folder."""
    for candidate in [*reversed(path.parents), path]:
        if not candidate.exists():
            return None
        if not candidate.is_dir():
            return candidate
    return None


def _cause(path: Path, error: OSError) -> str:
    if error.errno in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir where a file is
        blocker = file_in_the_way(path)
        if blocker == path:
            return "it is a file; a folder is expected"
        if blocker is not None:
            return f"a parent of the path is a file: {blocker}"
    if error.errno in CAUSES:
        return CAUSES[error.errno]
    return (error.strerror or str(error)).lower()


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Writes ``path`` (yielded as a Path): an OSError raised inside becomes an :class:`OutputError` naming ``path``
    (not a temporary file's name) and the cause. An OutputError from a nested write passes through unchanged."""
    path = Path(path)
    try:
        yield path
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(error.errno, _cause(path, error), str(path)) from error


def check_file_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it can become a file; :class:`OutputError` now, before any work, when it is a folder or
    one of its parents is a file."""
    path = Path(path)
    with writing(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if file_in_the_way(path.parent) is not None:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` and its parents (nothing if it is there); returns it as a Path."""
    with writing(path) as folder:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def temporary_name(path: Path) -> Path:
    """A fresh name beside ``path`` for :func:`atomic_write_files`' temporary file: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def leftover_temporaries(path: Path) -> list[Path]:
    """The temporary files of :func:`atomic_write_files` for ``path`` that are still there: a process killed while
    writing ``path`` leaves one behind (``path`` itself then still holds its previous content)."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def discard(path: Path) -> None:
    """Remove the file ``path`` if it is there (a temporary file after a failure). Only a file that is there is
    removed: a read-only file system refuses to remove even a missing one, and that would hide the first error."""
    if os.path.lexists(path):
        path.unlink(missing_ok=True)


def _write_temporary(path: Path, data: bytes, sync: bool) -> Path:
    """``data`` in a new temporary file beside ``path``, on disk if ``sync`` (fsync); removed again if that fails.

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
            if sync:
                os.fsync(f.fileno())  # a full disk may only say so here (delayed allocation)
    except BaseException:
        discard(tmp)
        raise
    return tmp


def atomic_write_files(contents: Mapping[Path, bytes], sync: bool = True) -> None:
    """Write each ``{path: data}`` through a temporary file in its folder and an atomic rename. Every temporary file
    is written before the first rename, so a failure while writing (a full disk) leaves all the files as they were:
    an adapter's weights never sit beside another save's config. ``sync=False`` skips the fsync, for the thousands of
    small files of a written dataset (4x faster for ``prepare digits``), which a power loss may leave empty."""
    temporaries: dict[Path, Path] = {}
    try:
        for path, data in contents.items():
            with writing(check_file_path(path)):
                temporaries[path] = _write_temporary(path, data, sync)
        for path, tmp in temporaries.items():
            with writing(path):
                os.replace(tmp, path)
    finally:
        for tmp in temporaries.values():
            discard(tmp)  # renamed ones are gone already


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    atomic_write_files({Path(path): data}, sync)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`atomic_write_bytes` does."""
    atomic_write_bytes(path, text.encode())


def save_figure(fig: Any, path: Path, **savefig: Any) -> Path:
    """A matplotlib figure written to ``path`` atomically, in the format of its suffix (``savefig`` options such as
    ``dpi`` passed on)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` (created if missing). A failed append (a full disk) is cut back, so the
    file never ends in half a line."""
    data = memoryview(text.encode())
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]  # a full disk may take part of it, then refuse the rest
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def read_json_object(path: Path, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (a ValueError subclass, the caller's file error) naming the file when it
    is not valid JSON or not an object."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); expected a JSON object (truncated or corrupt?)") from e
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
