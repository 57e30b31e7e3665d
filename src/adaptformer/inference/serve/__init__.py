"""``adaptformer serve``: many tasks on one frozen backbone behind an HTTP API and a page (:mod:`.app`, its
``create_app``), with concurrent requests batched into mixed-task batches (:mod:`.batcher`), each request read within
:class:`ServeLimits` (:mod:`.limits`, :mod:`.upload`) and run under uvicorn (:mod:`.server`); adapters loaded and
evicted while it serves (:mod:`.adapters`), and what an operator reads and calls (:mod:`.metrics`, :mod:`.ops`). Needs
the ``serve`` extra (FastAPI, uvicorn, python-multipart, prometheus-client) for :mod:`.app`, :mod:`.ops`,
:mod:`.metrics` and :mod:`.server`; this package's top imports none of them, so the command line reads
:class:`ServeLimits` for its flags without them."""

from .batcher import Batcher
from .limits import ServeLimits

__all__ = ["Batcher", "ServeLimits"]
