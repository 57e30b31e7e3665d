"""``adaptformer serve``: many tasks on one frozen backbone behind an HTTP API and a page (:mod:`.app`), with
concurrent requests batched into mixed-task batches (:mod:`.batcher`). Needs the ``serve`` extra (FastAPI, uvicorn,
python-multipart)."""

from .app import create_app
from .batcher import Batcher

__all__ = ["Batcher", "create_app"]
