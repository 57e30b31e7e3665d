"""Every writer of :mod:`adaptformer.files`, given a real fault (a read-only folder, a path below a file, a folder
where a file goes, a full disk), raises one OutputError naming the path and the cause in words, and leaves what was
there as it was: no temporary file, no half-written file, no half of a pair, no half line."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from tests.disks import PAGE, ReadOnlyFolder, fill

from adaptformer.errors import OutputError
from adaptformer.files import (
    append_text,
    atomic_write_bytes,
    atomic_write_files,
    atomic_write_text,
    check_file_path,
    leftover_temporaries,
    make_folder,
    save_figure,
)

# Each file writer, writing the file it is given.
FILE_WRITERS: dict[str, Callable[[Path], object]] = {
    "atomic_write_bytes": lambda path: atomic_write_bytes(path, b"data"),
    "atomic_write_text": lambda path: atomic_write_text(path, "text"),
    "atomic_write_files": lambda path: atomic_write_files({path: b"data"}),
    "append_text": lambda path: append_text(path, "line\n"),
    "save_figure": lambda path: save_figure(Figure(figsize=(1, 1)), path),
    "check_file_path": check_file_path,
}
WRITERS = {**FILE_WRITERS, "make_folder": make_folder}


def _error(write: Callable[[Path], object], path: Path) -> OutputError:
    with pytest.raises(OutputError) as caught:
        write(path)
    return caught.value


@pytest.mark.parametrize("writer", [w for w in WRITERS if w != "check_file_path"])
def test_a_read_only_folder_is_named_with_its_cause(read_only_folder: ReadOnlyFolder, writer: str) -> None:
    path = read_only_folder.path / "out.png"
    error = _error(WRITERS[writer], path)
    assert str(error) == f"cannot write {path}: {read_only_folder.cause}"
    assert error.errno in (errno.EROFS, errno.EACCES) and isinstance(error, OSError)  # `except OSError` still works
    assert list(read_only_folder.path.iterdir()) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_path_below_a_file_names_the_file(tmp_path: Path, writer: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's file")
    path = notes / "run" / "out.png"
    assert str(_error(WRITERS[writer], path)) == f"cannot write {path}: a parent of the path is a file: {notes}"
    assert notes.read_text() == "the user's file"


@pytest.mark.parametrize("writer", FILE_WRITERS)
def test_a_folder_where_a_file_goes_is_named(tmp_path: Path, writer: str) -> None:
    folder = tmp_path / "out.png"
    folder.mkdir()
    assert str(_error(WRITERS[writer], folder)) == f"cannot write {folder}: it is a folder; a file path is expected"
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []  # no temporary file anywhere


def test_a_file_where_a_folder_goes_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    assert (
        str(_error(make_folder, tmp_path / "run"))
        == f"cannot write {tmp_path / 'run'}: it is a file; a folder is expected"
    )


def test_a_full_disk_leaves_the_file_as_it_was(small_disk: Path) -> None:
    path = small_disk / "checkpoint.pt"
    atomic_write_bytes(path, b"the last good state")
    filler = fill(small_disk)
    error = _error(lambda p: atomic_write_bytes(p, b"\1" * 10 * PAGE), path)
    assert str(error) == f"cannot write {path}: no space left on the device" and error.errno == errno.ENOSPC
    assert path.read_bytes() == b"the last good state" and leftover_temporaries(path) == []
    filler.unlink()  # space freed: the same write succeeds
    atomic_write_bytes(path, b"\1" * 10 * PAGE)
    assert path.read_bytes() == b"\1" * 10 * PAGE


def test_files_written_together_keep_their_old_contents_when_one_does_not_fit(small_disk: Path) -> None:
    weights, config = small_disk / "adapter_model.safetensors", small_disk / "adapter_config.json"
    atomic_write_files({weights: b"old weights", config: b"old config"})
    fill(small_disk, leave=2 * PAGE)  # room for the new weights, not for the config after them
    error = _error(lambda _: atomic_write_files({weights: b"w" * PAGE, config: b"c" * 3 * PAGE}), config)
    assert str(error) == f"cannot write {config}: no space left on the device"
    assert (weights.read_bytes(), config.read_bytes()) == (b"old weights", b"old config")
    assert leftover_temporaries(weights) == leftover_temporaries(config) == []


def test_an_append_that_does_not_fit_is_cut_back(small_disk: Path) -> None:
    log = small_disk / "metrics.jsonl"
    append_text(log, '{"epoch": 1}\n')
    filler = fill(small_disk)  # the log's page still has room: the disk takes part of the line, then refuses
    error = _error(lambda p: append_text(p, '{"epoch": 2, "notes": "' + "x" * 3 * PAGE + '"}\n'), log)
    assert str(error) == f"cannot write {log}: no space left on the device"
    assert log.read_text() == '{"epoch": 1}\n'  # never half a line
    filler.unlink()
    append_text(log, '{"epoch": 2}\n')
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
