"""Concurrent requests into mixed-task batches: requests wait in a queue; one worker takes the first, collects more
until ``max_batch`` samples or ``max_wait_ms`` have passed, and runs them as ONE call of its ``classify`` in a thread
(the event loop keeps serving meanwhile). The server's is
:meth:`~adaptformer.inference.multitask.MultiTaskModel.classify_inputs`: its requests arrive decoded and preprocessed
(:meth:`~adaptformer.inference.multitask.MultiTaskModel.prepare`, in the server's decode pool)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tasktypes import top_k_of

logger = logging.getLogger(__name__)

__all__ = ["Batcher"]

# images (or their prepared inputs), one task list per image, top_k -> one {task: top list} per image
Classify = Callable[[Sequence[Any], Sequence[Sequence[str]], int], list[dict[str, Any]]]


@dataclass
class _Request:
    images: list[Any]
    tasks: list[list[str]]
    top_k: int
    done: asyncio.Future[list[dict[str, Any]]]

    @property
    def samples(self) -> int:
        return sum(len(t) for t in self.tasks)


@dataclass
class BatcherStats:
    requests: int = 0
    batches: int = 0
    samples: int = 0
    largest_batch: int = 0
    seconds: float = 0.0
    latest: list[int] = field(default_factory=list)  # requests per batch, the last few


class Batcher:
    """Queue + one worker task; :meth:`submit` from request handlers, :meth:`start` / :meth:`stop` with the app."""

    def __init__(self, classify: Classify, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.classify, self.max_batch, self.max_wait = classify, max_batch, max_wait_ms / 1000
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, images: list[Any], tasks: list[list[str]], top_k: int) -> list[dict[str, Any]]:
        """The results of ``images`` (one task list each), classified in some batch with other requests."""
        assert self._queue is not None, "Batcher.start() first"
        done: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(images, tasks, top_k, done))
        return await done

    async def _collect(self) -> list[_Request]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while sum(r.samples for r in batch) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:  # a class of its own on Python 3.10
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = [r for r in await self._collect() if not r.done.done()]  # a request past its deadline is gone
            if not batch:
                continue
            images = [image for r in batch for image in r.images]
            tasks = [t for r in batch for t in r.tasks]
            top_k = max(r.top_k for r in batch)
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(self.classify, images, tasks, top_k)
            except Exception as error:  # the requests learn why; the worker keeps serving
                logger.exception("batch of %d requests failed", len(batch))
                for r in batch:
                    if not r.done.done():
                        r.done.set_exception(error)
                continue
            s = self.stats
            s.batches += 1
            s.requests += len(batch)
            s.samples += sum(len(t) for t in tasks)
            s.largest_batch = max(s.largest_batch, sum(r.samples for r in batch))
            s.seconds += time.perf_counter() - started
            s.latest = [*s.latest[-99:], len(batch)]
            start = 0
            for r in batch:
                mine = results[start : start + len(r.images)]
                start += len(r.images)
                trimmed = [{task: top_k_of(answer, r.top_k) for task, answer in one.items()} for one in mine]
                if not r.done.done():
                    r.done.set_result(trimmed)
