"""What an operator of ``adaptformer serve`` reads: Prometheus metrics (prometheus-client, one registry per app, at
``GET /metrics``) and one JSON access-log line per request (logger ``adaptformer.access``), both written by one ASGI
middleware (:class:`Observe`) around the whole app, so refusals by other middleware are counted too.

Metrics (every name starts with ``adaptformer_``): ``requests_total{endpoint,status}``, ``request_seconds{endpoint}``
(a histogram), ``batch_samples`` (a histogram of the samples of each mixed-task batch), ``batch_seconds``,
``queue_depth`` (requests waiting for a batch), ``requests_in_progress`` (classify requests accepted and not yet
answered: what ``--max-queue`` bounds), ``rejected_total{reason}`` (``queue_full``, ``deadline``) and the adapter
cache: ``adapter_hits_total{tier}`` (``device``, ``host``), ``adapter_misses_total`` (read from the folder),
``adapter_evictions_total{tier}``, ``adapter_load_failures_total``, ``adapter_loads_joined_total``, ``adapters{state}``
(``resident``, ``cached``). The endpoint label is the route's template (``/adapters/{name}``), or ``other`` for a path
no route has, so a client cannot grow the label set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .adapters import AdapterStore

__all__ = ["Observe", "ServeMetrics"]

access_log = logging.getLogger("adaptformer.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _AdapterCollector(Collector):
    """The :class:`~.adapters.AdapterStore`'s counters, read when scraped."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def collect(self) -> Any:
        s = self.store.stats
        hits = CounterMetricFamily("adaptformer_adapter_hits", "adapter lookups that found it loaded", labels=["tier"])
        hits.add_metric(["device"], s.device_hits)
        hits.add_metric(["host"], s.host_hits)
        yield hits
        yield CounterMetricFamily("adaptformer_adapter_misses", "adapters read from their folder", value=s.misses)
        evictions = CounterMetricFamily("adaptformer_adapter_evictions", "adapters evicted", labels=["tier"])
        evictions.add_metric(["device"], s.device_evictions)
        evictions.add_metric(["host"], s.host_evictions)
        yield evictions
        yield CounterMetricFamily("adaptformer_adapter_load_failures", "adapter loads refused", value=s.failures)
        yield CounterMetricFamily("adaptformer_adapter_loads_joined", "loads that joined one in flight", value=s.joined)
        states = GaugeMetricFamily("adaptformer_adapters", "dynamic adapters by state", labels=["state"])
        states.add_metric(["resident"], self.store.resident)
        states.add_metric(["cached"], self.store.cached)
        yield states


class ServeMetrics:
    """The app's Prometheus registry and its metrics."""

    def __init__(self, store: AdapterStore, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adaptformer_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("adaptformer_request_seconds", "time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_samples = Histogram("adaptformer_batch_samples", "samples in a mixed-task batch",
                                       buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.batch_seconds = Histogram("adaptformer_batch_seconds", "time of one mixed-task forward",
                                       buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.in_progress = Gauge("adaptformer_requests_in_progress", "classify requests accepted, not answered",
                                 registry=r)  # fmt: skip
        self.rejected = Counter("adaptformer_rejected", "classify requests refused by the queue bound or deadline",
                                ["reason"], registry=r)  # fmt: skip
        Gauge("adaptformer_queue_depth", "requests waiting for a batch", registry=r).set_function(queue_depth)
        r.register(_AdapterCollector(store))


def _endpoint(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


class Observe:
    """ASGI middleware: each HTTP request counted and timed in :class:`ServeMetrics`, and logged as one JSON line
    (method, path, status, duration, bytes sent, the tasks a handler names in ``request.state.tasks``; never a
    body)."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = 500, 0

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            endpoint = _endpoint(scope)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            line = {"method": scope["method"], "path": scope["path"][:200], "status": status,
                    "duration_ms": round(seconds * 1000, 2), "bytes": sent,
                    "tasks": (scope.get("state") or {}).get("tasks", [])[:64]}  # fmt: skip
            access_log.info(json.dumps(line))
