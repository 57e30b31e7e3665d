"""The HTTP service of ``adaptformer serve``: a JSON API over a
:class:`~adaptformer.inference.multitask.MultiTaskModel`, plus a small page to try it (FastAPI app, served by uvicorn).

- ``GET /health`` (and ``HEAD``): ``{"status": "ok", "tasks": N, "requests": ..., "batches": ...}``;
- ``GET /tasks``: each task's name, classes, method, trainable parameters, ``type`` (``single-label``,
  ``multi-label``, ``video``, ``segmentation``), ``threshold`` (multi-label tasks; else null) and ``video``;
- ``POST /classify``: multipart form with one or more ``files`` (images or videos), optional ``tasks``
  (comma-separated; default: every task that takes each file: the video tasks for a video, the others for an image)
  and ``top_k`` (ASCII digits, default 5) -> ``{"results": [{"file": NAME, "tasks": {TASK: ANSWER}}]}``, one ANSWER
  per task in its type's shape:

  - single-label (an image or a video task): ``[{"class", "index", "prob"}, ...]``, the softmax top-k, best first
    (the answer of every earlier version);
  - multi-label (an image or a video task): ``{"threshold": T, "above": [{"class", "index", "prob"}, ...], "top":
    [...]}``: every class whose sigmoid probability is at least the task's threshold (``serve --threshold
    TASK=VALUE``; default 0.5) and the top-k, both best first;
  - segmentation: ``{"mask": BASE64, "width": W, "height": H, "classes": [{"class", "index", "fraction"}, ...]}``:
    the label PNG ``adaptformer predict`` writes (palette mode, a pixel's value its class index, the image's own
    size), base64 in the JSON (one request answers every task of every file), and the classes present, most pixels
    first.

  A video task's answer averages its recorded test views, as ``predict`` does. Image classification rows of
  concurrent requests are batched together as mixed-task batches (:class:`~.batcher.Batcher`), video and
  segmentation tasks run on their own models in the same batch call, grouped per task;
- ``GET /``: the page (``page.html``, self-contained: the tasks and adapters with their states and the cache's
  counters, previews of the chosen files, the tasks to ask, each answer drawn in its type's shape). There is no
  ``/docs`` or ``/openapi.json``: this docstring and the README are the reference;
- the operator's endpoints (``/health/live``, ``/health/ready``, ``/metrics``, ``/adapters``, ``POST`` and ``DELETE
  /adapters/{name}``) are :mod:`.ops`'s. A task of ``/classify`` that is an adapter of the
  :class:`~.adapters.AdapterStore` (``--adapter-root``) is loaded by that request, and kept until its batch ran.

Images are accepted by their bytes, never their names: PNG, JPEG, WebP, BMP and GIF (its first frame)
(:data:`~adaptformer.data.image.reading.ACCEPTED_FORMATS`; no other Pillow plugin ever parses a client's bytes);
videos likewise: MP4/MOV, WebM/Matroska and AVI (:mod:`.video`, each through its own demuxer only). The body is read
within :class:`~.limits.ServeLimits` as it streams (:mod:`.upload`); each file's header is checked (format, pixel
count; a video's frame size, duration and frame count from its header and packets) before anything is decoded, and
decoding and preprocessing run in a pool of ``decode_workers`` threads, never on the event loop.

Every error, whatever its status, is ``{"error": MESSAGE}`` (one line, never a repr of a Python object): 400 not an
image, no file, a malformed form, a task of another type than a file (an image task asked of a video, a video task
of an image: the message names the file, the task and its type), a video that cannot be decoded; 404 an unknown task
or endpoint; 405 a method an endpoint does not take; 408 a body slower than ``body_timeout``; 413 a file, image
(pixels), video (frame pixels, seconds, frames), form or request over its limit; 415 a format outside the
allow-list, or not a multipart form; 422 a bad ``top_k``, a field given twice, an image over 100 times as long as it
is wide, an adapter that cannot be loaded; 401 an admin call without the token, 403 admin calls with no token
configured; 409 an adapter of another backbone, unloading a fixed or busy one; 429 over ``max_queue`` requests in
progress (``Retry-After``); 431 headers over 16 KB; 503 too many uploads at once, every resident adapter in use; 504
no answer within ``deadline_s``; 500 a bug (logged with its traceback). An answer sent before the request's body was
read to its end closes the connection. A client that disconnects mid-upload is logged as one line. The service keeps
serving. Every request is counted and timed in ``/metrics`` and logged as one JSON line (:mod:`.metrics`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI reads the handlers' annotations from here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ...data.image.reading import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    ImageFormatError,
    ImageTooLargeError,
    open_image,
    read_image,
)
from ...precision import resolve_precision
from ..multitask import MultiTaskModel
from ..tasktypes import Answer, MaskAnswer, MultiLabelAnswer
from .adapters import AdapterStore
from .batcher import Batcher
from .limits import MAX_FILES, Refused, ServeLimits, clipped
from .metrics import Observe, ServeMetrics
from .ops import Readiness, add_ops_routes
from .upload import ClientGone, multipart_boundary, read_upload
from .video import ACCEPTED_VIDEOS, check_video, prepare_video, video_container

logger = logging.getLogger(__name__)

__all__ = ["HEADER_BYTES", "MAX_ASPECT", "MAX_FILES", "create_app"]

MAX_ASPECT = 100
"""The longest side of an accepted image, at most this many times its shortest: resizing the shorter side to the
model's input multiplies the pixel count by the aspect ratio (a 1 x 40,000,000 image would become gigapixels)."""
HEADER_BYTES = 16 * 2**10
"""A request's headers, at most (h11's limit for headers that arrive in pieces)."""
_STATUS = ((ImageFormatError, 415), (ImageTooLargeError, 413), (ImageDecodeError, 400))
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error: ``{"error": MESSAGE}``, reprs of Python objects cut out."""
    return JSONResponse({"error": _REPR.sub("<object>", message)}, status_code=status, headers=headers)


class GuardHeadersAndBodies:
    """ASGI middleware: a request whose headers exceed :data:`HEADER_BYTES` is refused (431; uvicorn's own limit only
    holds for headers that arrive in pieces), and an answer sent before the request's body was read to its end (a
    refusal mid-upload) carries ``Connection: close``, so the server closes the connection instead of reading and
    discarding the rest."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        headers = dict(scope["headers"])
        unread = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"

        async def receiving() -> dict[str, Any]:
            nonlocal unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if size > HEADER_BYTES:
            refusal = _error(431, f"request headers of {size} bytes; the limit is {HEADER_BYTES // 1024} KB")
            return await refusal(scope, receiving, sending)
        await self.app(scope, receiving, sending)


def _named(fields: dict[str, str]) -> list[str]:
    return [t.strip() for t in fields.get("tasks", "").split(",") if t.strip()]


def _options(fields: dict[str, str], model: MultiTaskModel) -> tuple[list[str], int]:
    """The tasks (each once, in the order given; none: every task that takes each file) and the top-k a form asks
    for."""
    wanted = list(dict.fromkeys(_named(fields)))
    for name in wanted:
        if name not in model.tasks:
            raise Refused(404, f"unknown task {clipped(name)}; this service has {list(model.tasks)}")
    top_text = fields.get("top_k", "5").strip()
    if not re.fullmatch(r"[0-9]{1,9}", top_text) or int(top_text) < 1:  # ASCII digits: int() takes others too
        raise Refused(422, f"top_k must be a positive integer (ASCII digits), got {clipped(top_text)}")
    return wanted, int(top_text)


def _file_tasks(model: MultiTaskModel, name: str, video: bool, wanted: list[str]) -> list[str]:
    """The tasks file ``name`` (a video or an image) is asked of: ``wanted``, each checked to take that kind of file,
    or (none named) every task that does."""
    kind = "a video" if video else "an image"
    for task in wanted:
        info = model.task(task)
        if (info.kind == "video") != video:
            takes = "video files" if info.kind == "video" else "images"
            raise Refused(400, f"{clipped(name)} is {kind}, but task {task!r} is a {info.kind} task: it takes {takes}")
    tasks = wanted or [t for t in model.tasks if (model.task(t).kind == "video") == video]
    if not tasks:
        types = sorted({model.task(t).kind for t in model.tasks})
        raise Refused(400, f"{clipped(name)} is {kind}; no task of this service takes one (its task types: {types})")
    return tasks


def _answer(answer: Answer) -> Any:
    """One task's answer as JSON (the shapes the module docstring lists)."""
    if isinstance(answer, MultiLabelAnswer):
        return {"threshold": answer.threshold, "above": _top(answer.above), "top": _top(answer.top)}
    if isinstance(answer, MaskAnswer):
        height, width = answer.labels.shape
        return {"mask": base64.b64encode(answer.png()).decode("ascii"), "width": width, "height": height,
                "classes": [{"class": c, "index": j, "fraction": f} for c, j, f in answer.present]}  # fmt: skip
    return _top(answer)


def _top(top: list[tuple[str, int, float]]) -> list[dict[str, Any]]:
    return [{"class": c, "index": j, "prob": p} for c, j, p in top]


def create_app(
    model: MultiTaskModel,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    limits: ServeLimits | None = None,
    precision: str = "fp32",
    store: AdapterStore | None = None,
    admin_token: str | None = None,
) -> Any:
    """The FastAPI app serving ``model`` (in eval mode, on its device) within ``limits`` (default
    :class:`~.limits.ServeLimits`); ``store``: its dynamic adapters (default: none, the model's tasks only);
    ``admin_token``: the bearer token of the admin endpoints (:mod:`.ops`; None: they answer 403)."""
    limits = limits if limits is not None else ServeLimits()
    store = store if store is not None else AdapterStore(model, None)
    model.eval()
    precision = resolve_precision(precision, next(model.parameters()).device).name  # "auto" resolved (and logged) once

    def run_batch(inputs: list[dict[str, Any]], tasks: Any, top_k: int) -> list[dict[str, Any]]:
        started = time.perf_counter()
        with store.model_lock:  # adapters attach and detach between batches
            results = model.classify_inputs(inputs, top_k, precision)
        metrics.batch_samples.observe(sum(len(one) for one in inputs))
        metrics.batch_seconds.observe(time.perf_counter() - started)
        return results

    batcher = Batcher(run_batch, max_batch, max_wait_ms)
    metrics = ServeMetrics(store, lambda: batcher.queued)
    readiness = Readiness()
    pool = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="serve-decode")
    uploads = asyncio.Semaphore(limits.max_uploads)
    in_progress = 0  # classify requests accepted and not yet answered (at most limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: Any):
        batcher.start()
        readiness.started = True
        yield
        readiness.started = False
        await batcher.stop()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="adaptformer serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardHeadersAndBodies)
    app.add_middleware(Observe, metrics=metrics)
    app.state.readiness = readiness  # the server sets readiness.draining on SIGTERM
    add_ops_routes(app, store, metrics, readiness, admin_token)

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, error: ClientGone) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        logger.info("client %s disconnected during the upload (%d bytes received)", client, error.received)
        return Response(status_code=400)  # nobody reads it: the server drops it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {clipped(request.url.path)}"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return _error(error.status_code, message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(e.get("msg", "invalid request")) for e in error.errors()))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:  # a bug: uvicorn logs its traceback
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "tasks": len(model.tasks), "requests": s.requests, "batches": s.batches,
                "samples": s.samples, "largest_batch": s.largest_batch}  # fmt: skip

    @app.api_route("/tasks", methods=["GET", "HEAD"])
    async def tasks() -> dict[str, Any]:
        return {"tasks": [{"name": i.name, "classes": i.classes, "method": i.method, "trainable_parameters":
                           i.num_parameters, "video": i.is_video, "type": i.kind, "threshold": i.threshold}
                          for i in map(model.task, model.tasks)]}  # fmt: skip

    def check(data: bytes, name: str) -> None:  # the header only: format, pixel count, shape; a video's packets
        if video_container(data) is not None:
            check_video(data, name, limits)
            return
        with open_image(data, name=name, formats=ACCEPTED_FORMATS, max_pixels=limits.max_pixels) as image:
            width, height = image.size
        if max(width, height) > MAX_ASPECT * min(width, height):  # its shorter side scaled up to the input's
            raise Refused(422, f"{clipped(name)}: {width}x{height} pixels, more than {MAX_ASPECT} times as long as "
                               "it is wide")  # fmt: skip

    def prepare(data: bytes, name: str, wanted: list[str]) -> dict[str, Any]:
        if video_container(data) is not None:
            return prepare_video(model, data, name, _file_tasks(model, name, True, wanted))
        tasks = _file_tasks(model, name, False, wanted)
        return model.prepare(read_image(data, name=name, formats=ACCEPTED_FORMATS, max_pixels=limits.max_pixels), tasks)

    async def in_pool(work: Any, files: list[tuple[str, bytes]], *args: Any) -> list[Any]:
        """``work(data, name, *args)`` for every file in the pool; the first failure (in file order) refuses."""
        loop = asyncio.get_running_loop()
        names = [name or f"file {i + 1}" for i, (name, _) in enumerate(files)]
        futures = [loop.run_in_executor(pool, work, data, n, *args) for n, (_, data) in zip(names, files, strict=True)]
        try:
            return [await f for f in futures]
        except ImageDecodeError as error:
            status = next(s for kind, s in _STATUS if isinstance(error, kind))
            videos = any(model.task(t).kind == "video" for t in model.tasks)  # adapters come and go
            also = f" or a video ({ACCEPTED_VIDEOS})" if status == 415 and videos else ""
            raise Refused(status, f"{clipped(str(error.path))}: {error.reason}{also}") from None
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()  # not started yet: never will; running: its result is dropped
                elif not f.cancelled():
                    f.exception()  # retrieved, so asyncio logs no "exception was never retrieved"

    async def admitted() -> None:
        """A slot among ``max_uploads``, waited for up to ``body_timeout`` (then 503); the caller releases it."""
        acquire = asyncio.ensure_future(uploads.acquire())
        done, _ = await asyncio.wait({acquire}, timeout=limits.body_timeout)
        if not done:
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
            if not acquire.cancelled():  # acquired as the wait ended (asyncio.wait_for could lose such a slot)
                uploads.release()
            raise Refused(503, f"busy: {limits.max_uploads} uploads in progress; try again")

    @contextlib.asynccontextmanager
    async def accepted() -> Any:
        """One of ``max_queue`` places (else 429 at once, before the body is read), answered within
        ``deadline_s`` (else 504)."""
        nonlocal in_progress
        if in_progress >= limits.max_queue:
            metrics.rejected.labels("queue_full").inc()
            s = batcher.stats
            wait = math.ceil(s.seconds / s.batches * (1 + batcher.queued / max_batch)) if s.batches else 1
            raise Refused(429, f"busy: {limits.max_queue} requests are queued (--max-queue); retry after {wait} s",
                          headers={"Retry-After": str(max(1, wait))})  # fmt: skip
        in_progress += 1
        metrics.in_progress.inc()
        try:
            async with asyncio.timeout(limits.deadline_s):
                yield
        except TimeoutError:
            metrics.rejected.labels("deadline").inc()
            raise Refused(504, f"no answer within --deadline-s {limits.deadline_s:g} s (the request waited for its "
                               "upload, an adapter load or a batch); try again") from None  # fmt: skip
        finally:
            in_progress -= 1
            metrics.in_progress.dec()

    async def read_and_prepare(
        request: Request, leases: contextlib.AsyncExitStack
    ) -> tuple[list[str], int, list[dict[str, Any]]]:
        """A request's file names, top-k and input tensors (each file's tasks); its bytes are dropped on return. Its
        tasks are loaded if they are adapters of the store, and held (not evicted) until ``leases`` closes."""
        boundary = multipart_boundary(request.headers, limits)
        await admitted()
        try:
            upload = await read_upload(request.receive, boundary, limits)
            if not upload.files:
                raise Refused(400, "no image: upload one or more files in the form field 'files'")
            await leases.enter_async_context(store.using(_named(upload.fields)))
            wanted, top_k = _options(upload.fields, model)
            request.state.tasks = wanted  # for the access log
            await in_pool(check, upload.files)  # a bad file refuses the request before any is decoded
            for i, (name, data) in enumerate(upload.files):  # so does a task of another type than a file
                _file_tasks(model, name or f"file {i + 1}", video_container(data) is not None, wanted)
            inputs = await in_pool(prepare, upload.files, wanted)
        finally:
            uploads.release()
        return [name for name, _ in upload.files], top_k, inputs

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        async with accepted(), contextlib.AsyncExitStack() as leases:
            names, top_k, inputs = await read_and_prepare(request, leases)
            results = await batcher.submit(inputs, [list(one) for one in inputs], top_k)

        def answers() -> dict[str, Any]:
            return {"results": [{"file": name, "tasks": {t: _answer(a) for t, a in result.items()}}
                                for name, result in zip(names, results, strict=True)]}  # fmt: skip

        if any(isinstance(a, MaskAnswer) for result in results for a in result.values()):
            return await asyncio.get_running_loop().run_in_executor(pool, answers)  # PNG encoding: off the loop
        return answers()

    page = (resources.files(__package__) / "page.html").read_text()

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app
