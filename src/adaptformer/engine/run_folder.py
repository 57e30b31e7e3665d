"""The run folder (``run.output_dir``): the files a run owns there, and the folders a run may start in.

A new run starts in a missing or empty folder. A folder that holds anything is refused, naming the two ways on:
``--run.resume true`` continues the run whose training state is there, ``--run.overwrite true`` removes that run's
files (those of :data:`RUN_FILES`, nothing else) and starts again. :func:`check_run_folder` only reads; the training
entry point validates its inputs (weights, data, model, training state) before :func:`prepare_run_folder` changes
anything, so a run that fails on bad input leaves the folder as it was.

Files are saved atomically (a temporary file renamed into place); a process killed while saving leaves the temporary
file behind, and the next run in the folder removes it. While a run trains it holds the folder
(:func:`run_folder_lock`), so a second process started on the same folder is refused instead of training beside it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..cards import CARD_NAME
from ..files import leftover_temporaries, make_folder, writing
from ..saving import CONFIG_NAME, WEIGHTS_NAME
from .checkpointing import STATE_FILE
from .curves import CURVES_FILE
from .records import METRICS_FILE, TENSORBOARD_DIR, TEST_FILE

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, STATE_FILE, TEST_FILE, CURVES_FILE, ADAPTER_DIR, TENSORBOARD_DIR)
CONFIG_HEADER = "# adaptformer training configuration"  # the first line of a run's config.yaml (TrainConfig.to_yaml)


class RunFolderError(ValueError):
    """An output folder a run may not start in; the message names the folder and the ways on."""


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths)


def stale_temporaries(out: Path) -> list[Path]:
    """Temporary files that saves into ``out`` (and its adapter folder) left behind when they were interrupted."""
    adapter = out / ADAPTER_DIR
    targets = [out / name for name in RUN_FILES] + [adapter / WEIGHTS_NAME, adapter / CONFIG_NAME]
    return [tmp for target in targets if target.parent.is_dir() for tmp in leftover_temporaries(target)]


def _written_by_a_run(path: Path) -> bool:
    """Whether ``path`` (named like one of :data:`RUN_FILES`) is what a run writes there, so overwrite may remove it:
    config.yaml only with the header runs write, folders only holding what runs put in them."""
    if path.name == CONFIG_FILE:
        return path.is_file() and run_config_folder(path) is not None
    if path.name == ADAPTER_DIR:
        allowed = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME}
        stale = set(stale_temporaries(path.parent))
        return path.is_dir() and all(p.name in allowed or p in stale for p in path.iterdir())
    if path.name == TENSORBOARD_DIR:
        return path.is_dir() and all(p.is_file() and p.name.startswith("events.out.tfevents") for p in path.iterdir())
    return path.is_file()


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Whether a run may start in ``out``; reads only. Returns the earlier run's files that ``overwrite`` removes
    (:func:`prepare_run_folder` does), and raises :class:`RunFolderError` for a folder the run may not start in."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise RunFolderError(f"--run.output_dir {out} is a file, not a folder")
    named = [out / name for name in RUN_FILES if (out / name).exists()]
    foreign = [p for p in named if not _written_by_a_run(p)]
    owned = [p for p in named if p not in foreign]
    if overwrite:
        if foreign:
            raise RunFolderError(
                f"--run.overwrite true: {out} holds {_names(foreign)}, named like a run's files but not written by a "
                "run (a config.yaml without the run header, or a folder with other files in it); move them away or "
                "choose another --run.output_dir"
            )
        return owned
    temporaries = set(stale_temporaries(out))
    present = sorted(p for p in out.iterdir() if p not in temporaries)
    if resume:
        if (out / STATE_FILE).is_file():
            return []
        # config.yaml alone: a run stopped before its first save starts from the beginning
        earlier = [p for p in present if not (p.name == CONFIG_FILE and p in owned)]
        if earlier:
            raise RunFolderError(
                f"--run.resume true: {out} has no {STATE_FILE} to continue from, but holds {_names(earlier[:10])}; "
                "start again there with --run.overwrite true (removes an earlier run's files), or choose another "
                "--run.output_dir"
            )
        return []
    if present:
        removes = f"removes {_names(owned)}" if owned else "none of these files is a run's: nothing is removed"
        raise RunFolderError(
            f"--run.output_dir {out} is not empty (it holds {_names(present[:10])}"
            f"{', ...' if len(present) > 10 else ''}); continue the run there with --run.resume true, start it "
            f"again with --run.overwrite true ({removes}), or choose another --run.output_dir"
        )
    return []


def prepare_run_folder(out: Path, earlier: Sequence[Path]) -> None:
    """Remove ``earlier`` (what :func:`check_run_folder` returned) and the temporary files of interrupted saves, then
    create ``out``. Only the main process calls this, after the run's inputs were validated."""
    with writing(out):  # a read-only folder refuses the first removal
        _clear(out, earlier)
    make_folder(out)


def _clear(out: Path, earlier: Sequence[Path]) -> None:
    """Remove ``earlier`` and the temporary files of interrupted saves from ``out``."""
    if earlier:
        logger.info("run.overwrite: removing the earlier run's %s from %s", _names(earlier), out)
        for path in earlier:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    stale = stale_temporaries(out) if out.is_dir() else []
    if stale:
        logger.info("removing %d temporary files of interrupted saves in %s: %s", len(stale), out, _names(stale))
        for path in stale:
            path.unlink(missing_ok=True)
    if earlier:
        others = sorted(out.iterdir())
        if others:
            logger.info("run.overwrite: keeping what is not a run's file in %s: %s", out, _names(others))


@contextmanager
def run_folder_lock(out: Path, resume: bool, overwrite: bool, earlier: Sequence[Path]) -> Iterator[None]:
    """Hold ``out`` (created if missing) for one run: an exclusive ``flock`` on the folder itself, so it gains no
    file, released when the run ends or its process dies. A process that finds it held is refused; once held, the
    folder is checked again (another run may have written it since :func:`check_run_folder` saw it)."""
    make_folder(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"--run.output_dir {out}: another process is training in it now; wait for it to end (then continue "
                "it with --run.resume true), or choose another --run.output_dir"
            ) from None
        except OSError as e:  # a file system without locks on folders (some network ones): not guarded
            logger.debug("cannot lock %s (%s); a second run started there would not be refused", out, e)
        if check_run_folder(out, resume, overwrite) != list(earlier):
            raise RunFolderError(f"--run.output_dir {out}: another run wrote into it since this one checked it")
        yield
    finally:
        os.close(fd)


def run_config_folder(config_file: str | Path | None) -> Path | None:
    """The run folder that ``config_file`` is the config.yaml of, or None when it is not a run's config.yaml (another
    name, or not written by a run)."""
    if config_file is None:
        return None
    path = Path(config_file)
    if path.name != CONFIG_FILE or not path.is_file():
        return None
    with path.open() as f:
        first = f.readline()
    return path.parent if first.startswith(CONFIG_HEADER) else None
