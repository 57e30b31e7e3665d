"""Dynamic adapters for ``adaptformer serve --adapter-root DIR``: an adapter is named by its folder under ``DIR``
(``DIR/NAME`` or ``DIR/NAME/adapter``, as a run writes it) and joins the multi-task model on its first request or on
``POST /adapters/NAME``; ``DELETE /adapters/NAME`` drops it.

Two LRU tiers, as vLLM and LoRAX keep LoRA adapters for language models: at most ``max_resident`` adapters attached
to the model on its device, and at most ``max_cached`` more in host memory. An adapter evicted from the device keeps
its tensors in host memory (its trainable parameters, the rest is the shared backbone's), so bringing it back moves
them to the device and re-attaches it without reading its folder again; one evicted from host memory is read again
on its next request. A request holds a lease on its tasks from their lookup to its batch's end, so an adapter a
request needs is never evicted under it.

Loading never blocks requests for resident adapters: the folder is read and checked in a worker thread, and the
model changes (attach, detach) take ``model_lock``, which the batcher holds while a batch runs, so they happen
between batches. A second request for an adapter that is loading joins that load. Every failure is a
:class:`~.limits.Refused` whose message names the adapter, never a server path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...saving import CONFIG_NAME, AdapterInfo, read_adapter_config, task_type
from ..multitask import MultiTaskModel, check_task_name
from .limits import Refused, clipped

logger = logging.getLogger(__name__)

__all__ = ["AdapterStore", "CacheStats", "adapter_folder", "public_message"]

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
"""An adapter's name: its folder's name under the root (a task name: no '.', no '/')."""
LISTED = 10_000
"""``GET /adapters`` lists at most this many folders of the root."""
_PATH = re.compile(r"(?<![\w.])/[^\s'\",;:()]+")


def public_message(message: str, root: Path | None = None) -> str:
    """``message`` without server paths: the adapter root becomes ``ADAPTER_ROOT``, any other absolute path
    ``<path>``."""
    if root is not None:
        for spelling in {str(root.resolve()), str(root)}:
            message = message.replace(spelling, "ADAPTER_ROOT")
    return _PATH.sub("<path>", message)


def adapter_folder(root: Path, name: str) -> Path:
    """The adapter folder ``name`` names under ``root``: ``root/name`` if it holds an adapter_config.json, else
    ``root/name/adapter``. A name that is not one folder name, or whose folder leads out of ``root`` (a symlink), is
    refused (400); a name with no folder 404."""
    if not NAME.fullmatch(name):
        raise Refused(400, f"adapter name {clipped(name)}: expected one folder name of the adapter root (letters, "
                           "digits, '_' and '-'; no '.', '/' or '..')")  # fmt: skip
    try:
        check_task_name(name, "a folder of the adapter root")
    except ValueError as error:
        raise Refused(400, str(error)) from None
    base = root.resolve()
    for candidate in (root / name, root / name / "adapter"):
        real = candidate.resolve()
        if not real.is_relative_to(base):
            raise Refused(400, f"adapter {name!r} leads out of the adapter root (a symlink); refused")
        if (real / CONFIG_NAME).is_file():
            if any(not f.resolve().is_relative_to(base) for f in real.iterdir()):
                raise Refused(400, f"adapter {name!r}: a file of its folder leads out of the adapter root; refused")
            return real
    if (root / name).exists():
        raise Refused(422, f"adapter {name!r}: its folder holds no {CONFIG_NAME} (half-copied?), nor does "
                           f"{name}/adapter")  # fmt: skip
    raise Refused(404, f"unknown adapter {name!r}: no such folder under the adapter root")


@dataclass
class CacheStats:
    """The counters of :class:`AdapterStore` (``/metrics`` reads them)."""

    device_hits: int = 0  # the adapter was on the device
    host_hits: int = 0  # it was in host memory: re-attached without reading its folder
    misses: int = 0  # read from its folder
    joined: int = 0  # a load that waited for the same adapter's load in flight
    failures: int = 0  # loads refused: damaged, half-written, another backbone, ...
    device_evictions: int = 0  # moved from the device to host memory
    host_evictions: int = 0  # dropped from host memory


@dataclass
class _Entry:
    task_model: nn.Module
    info: AdapterInfo
    directory: Path
    bytes: int


def _own_parameters(task_model: nn.Module) -> list[nn.Parameter]:
    """A task model's own tensors: its trainable parameters (adapter, head); the frozen rest is the shared
    backbone's."""
    return [p for p in task_model.parameters() if p.requires_grad]


def _size(task_model: nn.Module) -> int:
    """The bytes of a task model's own tensors."""
    return sum(p.numel() * p.element_size() for p in _own_parameters(task_model))


def _move(task_model: nn.Module, device: torch.device) -> None:
    for p in _own_parameters(task_model):
        p.data = p.data.to(device)


class AdapterStore:
    """The adapters of ``root`` on ``model`` (see the module docstring); ``pinned``: the tasks given at start-up
    (``--adapter``), always on the device and not counted in ``max_resident``; ``fingerprint``: the backbone's
    (an adapter recording another one is refused, both named)."""

    def __init__(
        self,
        model: MultiTaskModel,
        root: Path | None,
        max_resident: int = 8,
        max_cached: int = 64,
        fingerprint: str | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        if max_resident < 1 or max_cached < 0:
            raise ValueError(f"max_resident must be >= 1 and max_cached >= 0, got {max_resident}, {max_cached}")
        self.model, self.root, self.fingerprint = model, root, fingerprint
        self.max_resident, self.max_cached = max_resident, max_cached
        self.thresholds = dict(thresholds or {})  # multi-label adapters' thresholds (serve --threshold NAME=VALUE)
        self.pinned = tuple(model.tasks)
        self.model_lock = threading.Lock()  # held by each batch; attach and detach take it between batches
        self.stats = CacheStats()
        self._resident: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._cached: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._leases: dict[str, int] = {}
        self._change = asyncio.Lock()  # one change of the tiers at a time
        self._device = next(model.parameters()).device

    @property
    def resident(self) -> int:
        return len(self._resident)

    @property
    def cached(self) -> int:
        return len(self._cached)

    def state(self, name: str) -> str:
        if name in self.pinned or name in self._resident:
            return "resident"
        return "cached" if name in self._cached else "available"

    def _folder(self, name: str) -> Path:
        if self.root is None:
            raise Refused(404, f"unknown task {clipped(name)}; this server has no --adapter-root, its tasks are "
                               f"{list(self.model.tasks)}")  # fmt: skip
        return adapter_folder(self.root, name)

    def listing(self) -> list[dict[str, Any]]:
        """Every adapter: the pinned and loaded ones, then the root's other folders (at most :data:`LISTED`)."""
        rows = [self._row(n, self.model.task(n).adapter, _size(self.model.task_model(n))) for n in self.pinned]
        for tier in (self._resident, self._cached):
            rows += [self._row(n, e.info, e.bytes) for n, e in tier.items()]
        if self.root is not None and self.root.is_dir():
            known = {r["name"] for r in rows}
            names = sorted(p.name for _, p in zip(range(LISTED), self.root.iterdir(), strict=False))
            rows += [{"name": n, "state": "available"} for n in names if n not in known and NAME.fullmatch(n)]
        return rows

    def _row(self, name: str, info: AdapterInfo, size: int) -> dict[str, Any]:
        return {"name": name, "state": self.state(name), "pinned": name in self.pinned, "method": info.spec.method,
                "task_type": task_type(info.task), "classes": info.spec.num_classes, "bytes": size,
                "in_use": self._leases.get(name, 0)}  # fmt: skip

    # ------------------------------------------------------------------------------------------------ loading

    async def load(self, name: str) -> str:
        """Make ``name`` resident; its state before (``resident``, ``cached`` or ``available``)."""
        before = self.state(name)
        if name in self.pinned:
            self.stats.device_hits += 1
            return before
        if name in self._resident:
            self._resident.move_to_end(name)
            self.stats.device_hits += 1
            return before
        if name in self._loading:
            self.stats.joined += 1
        else:
            self._loading[name] = asyncio.ensure_future(self._bring(name))
            self._loading[name].add_done_callback(lambda _: self._loading.pop(name, None))
        await asyncio.shield(self._loading[name])  # a client that leaves does not cancel the load others join
        return before

    async def _bring(self, name: str) -> None:
        entry = self._cached.pop(name, None)
        if entry is not None:
            self.stats.host_hits += 1
            await asyncio.to_thread(_move, entry.task_model, self._device)
        else:
            folder = self._folder(name)
            try:
                entry = await asyncio.to_thread(self._read, name, folder)
            except Refused:
                self.stats.failures += 1
                raise
            except Exception as error:  # damaged, half-written, deleted meanwhile, another method or task type
                self.stats.failures += 1
                logger.warning("adapter %s cannot be loaded: %s", name, error)
                message = public_message(str(error).replace(str(folder), name), self.root)
                raise Refused(422, f"adapter {name!r} cannot be loaded: {message}") from None
            self.stats.misses += 1
        async with self._change:
            try:
                await self._evict(keep=self.max_resident - 1)
            except Refused:
                if name not in self._cached and self.max_cached:  # no room on the device: back to host memory
                    await asyncio.to_thread(_move, entry.task_model, torch.device("cpu"))
                    self._cached[name] = entry
                raise
            await asyncio.to_thread(self._locked, self.model.add_task_model, name, entry.task_model, entry.info,
                                    entry.directory, self.thresholds.get(name))  # fmt: skip
            self._resident[name] = entry
        logger.info("adapter %s resident (%d resident, %d cached)", name, self.resident, self.cached)

    def _read(self, name: str, folder: Path) -> _Entry:
        """The adapter in ``folder``, read and checked (in a worker thread: the model is not touched)."""
        info = read_adapter_config(folder)
        recorded = info.backbone_fingerprint
        if info.spec.backbone != self.model.backbone_name or (recorded and self.fingerprint and
                                                              recorded != self.fingerprint):  # fmt: skip
            raise Refused(409, f"adapter {name!r} was trained on another backbone: {info.spec.backbone} "
                               f"(fingerprint {recorded}); this server's is {self.model.backbone_name} "
                               f"(fingerprint {self.fingerprint})")  # fmt: skip
        if name in self.thresholds and not info.multi_label:
            raise Refused(422, f"adapter {name!r} is not multi-label: --threshold {name}={self.thresholds[name]:g} "
                               "applies to multi-label tasks only")  # fmt: skip
        task_model = self.model.load_task_model(folder, info)
        return _Entry(task_model, info, folder, _size(task_model))

    def _locked(self, change: Any, *args: Any) -> Any:
        with self.model_lock:
            return change(*args)

    async def _evict(self, keep: int) -> None:
        """Down to ``keep`` resident adapters (the least recently used without a lease leave for host memory), then
        to ``max_cached`` in host memory."""
        while len(self._resident) > keep:
            name = next((n for n in self._resident if not self._leases.get(n)), None)
            if name is None:
                raise Refused(503, f"all {len(self._resident)} resident adapters (--max-resident) are in use by "
                                   "requests; try again")  # fmt: skip
            entry = self._resident.pop(name)
            await asyncio.to_thread(self._locked, self.model.remove_task, name)
            self.stats.device_evictions += 1
            if self.max_cached:
                await asyncio.to_thread(_move, entry.task_model, torch.device("cpu"))
                self._cached[name] = entry
        while len(self._cached) > self.max_cached:
            self._cached.popitem(last=False)
            self.stats.host_evictions += 1

    async def unload(self, name: str) -> str:
        """Drop ``name`` from the device and host memory; its state before. A pinned task is refused (409), one in use
        too (409)."""
        if name in self.pinned:
            raise Refused(409, f"task {name!r} was given with --adapter: it stays for the server's lifetime")
        if name in self._loading:
            with contextlib.suppress(Refused):
                await asyncio.shield(self._loading[name])
        before = self.state(name)
        if before == "available":
            self._folder(name)  # 400 / 404 for names that are no adapter
            return before
        async with self._change:
            if self._leases.get(name):
                raise Refused(409, f"adapter {name!r} is in use by {self._leases[name]} requests; try again")
            if self._resident.pop(name, None) is not None:
                await asyncio.to_thread(self._locked, self.model.remove_task, name)
            self._cached.pop(name, None)
        logger.info("adapter %s unloaded", name)
        return before

    @contextlib.asynccontextmanager
    async def using(self, names: Iterable[str]) -> AsyncIterator[None]:
        """The block runs with every adapter of ``names`` that is not a task yet loaded (names that are neither a
        task nor a folder of the root are left for the caller to refuse), none of them evicted until it ends."""
        names = list(dict.fromkeys(names))
        for name in names:
            self._leases[name] = self._leases.get(name, 0) + 1
        try:
            for name in names:
                if name in self._resident:
                    self._resident.move_to_end(name)
                    self.stats.device_hits += 1
                elif name not in self.model.tasks and self.root is not None and NAME.fullmatch(name):
                    try:
                        await self._load_known(name)
                    except _NoFolder:
                        break  # an unknown task: the caller refuses the request
            yield
        finally:
            for name in names:
                self._leases[name] -= 1
                if not self._leases[name]:
                    del self._leases[name]

    async def _load_known(self, name: str) -> None:
        try:
            await self.load(name)
        except Refused as refusal:
            if refusal.status == 404:
                raise _NoFolder from None
            raise


class _NoFolder(Exception):
    """A name with no folder under the root: not an adapter, the caller's "unknown task"."""
