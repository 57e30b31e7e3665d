"""The ``adaptformer`` command line (``python -m adaptformer.cli``, ``torchrun -m adaptformer.cli train ...``): one
module per command group, :mod:`.args` for the argument types and groups they share, :mod:`.main` for the dispatch."""

from .main import USER_ERRORS, build_parser, main

__all__ = ["USER_ERRORS", "build_parser", "main"]
