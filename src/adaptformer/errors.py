"""The library's error types. Each names the file, key, value or module at fault and what was expected.

- :class:`UnsupportedModelError` (a ``TypeError``): a backbone or block a method or option cannot work with.
- ``CheckpointError`` (:mod:`adaptformer.pretrained`), ``AdapterFileError`` (:mod:`adaptformer.saving`) and
  ``TrainingStateError`` (:mod:`adaptformer.engine.checkpointing`) are ``ValueError`` s for bad files.
"""

from __future__ import annotations


class UnsupportedModelError(TypeError):
    """A model (or one of its blocks) that a method, head or speed option does not support."""
