"""``adaptformer serve``: many tasks on one frozen backbone behind an HTTP API and a page (:mod:`.app`, its
``create_app``), with concurrent requests batched into mixed-task batches (:mod:`.batcher`), each request read within
:class:`ServeLimits` (:mod:`.limits`, :mod:`.upload`) and run under uvicorn (:mod:`.server`). Needs the ``serve``
extra (FastAPI, uvicorn, python-multipart) for :mod:`.app` and :mod:`.server`; this package's top imports neither, so
the command line reads :class:`ServeLimits` for its flags without them."""

from .batcher import Batcher
from .limits import ServeLimits

__all__ = ["Batcher", "ServeLimits"]
