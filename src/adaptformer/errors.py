"""The library's own exceptions: the user-facing errors that the command line reports as ``error: ...`` (exit 2).

Each subclasses the built-in exception it refines, so ``except TypeError`` (or ``ImportError``, ``ValueError``)
written against earlier versions still catches it, while the command line can catch exactly these and let a plain
``TypeError`` from a bug surface with its traceback. ``AdapterFileError`` (:mod:`adaptformer.saving`) and
``TrainingStateError`` (:mod:`adaptformer.engine.checkpointing`) are ``ValueError`` s for bad files of their kind.
``OutputError`` is an ``OSError``: a file or folder the library could not write (:func:`adaptformer.files.writing`
raises it).
"""

from __future__ import annotations


class UnsupportedModelError(TypeError):
    """A model the library cannot work with (no supported block family for a method, no classifier, no activation
    checkpointing); the message names what the model has and what is supported."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model; the message names the file and keys."""


class MissingDependencyError(ImportError):
    """An optional dependency that a feature needs is not installed; the message names the extra to install."""


class OutputError(OSError):
    """A file or folder the library could not write. Raised as ``OutputError(errno, cause, path)``, like an OSError;
    ``cause`` says in words why (``"no space left on the device"``), and the message reads
    ``cannot write PATH: CAUSE``."""

    def __str__(self) -> str:
        if self.filename is None:  # raised as OutputError("message")
            return super().__str__()
        return f"cannot write {self.filename}: {self.strerror}"
