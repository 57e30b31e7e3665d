"""The HTTP service of ``adaptformer serve``: a JSON API over a
:class:`~adaptformer.inference.multitask.MultiTaskModel`, plus a small page to try it (FastAPI app, served by uvicorn).

- ``GET /health``: ``{"status": "ok", "tasks": N, "requests": ..., "batches": ...}``;
- ``GET /tasks``: each task's name, classes, method, trainable parameters;
- ``POST /classify``: multipart form with one or more ``files`` (images), optional ``tasks`` (comma-separated; default:
  every image task) and ``top_k`` (default 5) -> ``{"results": [{"file": NAME, "tasks": {TASK: [{"class", "index",
  "prob"}, ...]}}]}``. Concurrent requests are batched together (:class:`~.batcher.Batcher`);
- ``GET /``: the page.

Bad requests get a 4xx with ``{"error": MESSAGE}``: 400 not an image or no file, 404 unknown task, 413 too large
(an image over the limit, or more than ``MAX_FILES`` images),
415 not a multipart form, 422 a bad ``top_k``. The service keeps serving.
"""

from __future__ import annotations

import io
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI reads the handlers' annotations from here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from ..multitask import MultiTaskModel
from .batcher import Batcher

__all__ = ["MAX_FILES", "create_app"]

MAX_FILES = 64  # images per request


def create_app(
    model: MultiTaskModel,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 10.0,
    precision: str = "fp32",
) -> Any:
    """The FastAPI app serving ``model`` (in eval mode, on its device)."""
    model.eval()
    batcher = Batcher(lambda images, tasks, k: model.classify(images, tasks, k, precision), max_batch, max_wait_ms)
    limit = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: Any):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="adaptformer serve", lifespan=lifespan)

    class Refused(Exception):
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:  # a bug: say so in JSON, keep serving
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(404)
    async def not_found(request: Request, error: Any) -> JSONResponse:
        return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"}, status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, error: Any) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)

    image_tasks = [t for t in model.tasks if not model.task(t).is_video]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "tasks": len(model.tasks), "requests": s.requests, "batches": s.batches,
                "samples": s.samples, "largest_batch": s.largest_batch}  # fmt: skip

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": [{"name": i.name, "classes": i.classes, "method": i.method, "trainable_parameters":
                           i.num_parameters, "video": i.is_video} for i in map(model.task, model.tasks)]}  # fmt: skip

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise Refused(415, f"expected a multipart/form-data upload (field 'files'), got content type {kind!r}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit * MAX_FILES:
            raise Refused(413, f"request of {int(length)} bytes; the limit is {MAX_FILES} images of "
                               f"{max_upload_mb:g} MB")  # fmt: skip
        form = await request.form()
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not uploads:
            raise Refused(400, "no image: upload one or more files in the form field 'files'")
        if len(uploads) > MAX_FILES:
            raise Refused(413, f"{len(uploads)} images in one request; the limit is {MAX_FILES}")
        wanted = [t.strip() for t in str(form.get("tasks") or "").split(",") if t.strip()] or image_tasks
        for name in wanted:
            if name not in model.tasks:
                raise Refused(404, f"unknown task {name!r}; this service has {list(model.tasks)}")
            if model.task(name).is_video:
                raise Refused(400, f"task {name!r} classifies videos, not images")
        top_text = str(form.get("top_k") or "5")
        if not top_text.isdigit() or int(top_text) < 1:
            raise Refused(422, f"top_k must be a positive integer, got {top_text!r}")
        images = []
        for upload in uploads:
            data = await upload.read()
            if len(data) > limit:
                raise Refused(413, f"{upload.filename}: {len(data)} bytes; the limit is {max_upload_mb:g} MB")
            try:
                with Image.open(io.BytesIO(data)) as opened:
                    images.append(opened.convert("RGB"))
            except (UnidentifiedImageError, OSError) as error:
                raise Refused(400, f"{upload.filename}: not an image ({error})") from None
        results = await batcher.submit(images, [list(wanted)] * len(images), int(top_text))
        return {"results": [
            {"file": upload.filename, "tasks": {t: [{"class": c, "index": j, "prob": p} for c, j, p in top]
                                                for t, top in result.items()}}
            for upload, result in zip(uploads, results, strict=True)
        ]}  # fmt: skip

    page = (resources.files(__package__) / "page.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app
