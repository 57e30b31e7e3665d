"""The operator's endpoints of ``adaptformer serve`` (the classify API is :mod:`.app`):

- ``GET /health/live``: 200 while the process serves HTTP at all (a liveness probe: restart it when this fails);
- ``GET /health/ready``: 200 ``{"status": "ready"}`` once the batcher runs, 503 from SIGTERM on (draining: finish
  what was accepted, take nothing new) (a readiness probe: send traffic only while it is 200);
- ``GET /metrics``: Prometheus text format (:mod:`.metrics`);
- ``GET /adapters``: every adapter, ``{"adapters": [{"name", "state": "resident" | "cached" | "available",
  "pinned", "method", "task_type", "classes", "bytes", "in_use"}], "max_resident", "max_cached"}`` (folders not
  loaded yet: name and state only);
- ``POST /adapters/{name}``, ``DELETE /adapters/{name}``: load (200 ``{"name", "state": "resident", "was": STATE}``)
  or unload (200 ``{"name", "state": "available", "was": STATE}``) an adapter of ``--adapter-root``. Both need
  ``Authorization: Bearer TOKEN`` (``--admin-token`` or the ``ADAPTFORMER_ADMIN_TOKEN`` environment variable,
  compared in constant time): 401 without it or with another; 403 when the server has no token (admin endpoints
  off).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .adapters import AdapterStore
from .limits import Refused
from .metrics import ServeMetrics

__all__ = ["ADMIN_TOKEN_ENV", "Readiness", "add_ops_routes"]

ADMIN_TOKEN_ENV = "ADAPTFORMER_ADMIN_TOKEN"
_BEARER = HTTPBearer(auto_error=False)  # module level: FastAPI resolves the handlers' annotations here


@dataclass
class Readiness:
    """Whether the app takes traffic: ``started`` by its lifespan, ``draining`` from SIGTERM on (:mod:`.server`)."""

    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


def add_ops_routes(
    app: FastAPI, store: AdapterStore, metrics: ServeMetrics, readiness: Readiness, admin_token: str | None
) -> None:
    """The routes of the module docstring on ``app``."""

    def admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if not admin_token:
            raise Refused(403, f"admin endpoints are off: start serve with --admin-token or {ADMIN_TOKEN_ENV}")
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, admin_token.encode()):
            what = "a wrong token" if credentials is not None else "no 'Authorization: Bearer TOKEN' header"
            raise Refused(401, f"admin endpoint: {what}", headers={"WWW-Authenticate": "Bearer"})

    @app.api_route("/health/live", methods=["GET", "HEAD"])
    async def live() -> dict[str, Any]:
        return {"status": "alive"}

    @app.api_route("/health/ready", methods=["GET", "HEAD"])
    async def ready() -> Any:
        if readiness.ready:
            return {"status": "ready"}
        why = "draining: the server is shutting down" if readiness.draining else "starting"
        return JSONResponse({"error": why}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/adapters", methods=["GET", "HEAD"])
    async def adapters() -> dict[str, Any]:
        return {"adapters": store.listing(), "max_resident": store.max_resident, "max_cached": store.max_cached}

    @app.post("/adapters/{name}", dependencies=[Depends(admin)])
    async def load(name: str) -> dict[str, Any]:
        if store.root is None:
            raise Refused(404, "this server has no --adapter-root: its adapters are fixed at start-up")
        was = await store.load(name)
        return {"name": name, "state": store.state(name), "was": was}

    @app.delete("/adapters/{name}", dependencies=[Depends(admin)])
    async def unload(name: str) -> dict[str, Any]:
        if store.root is None:
            raise Refused(404, "this server has no --adapter-root: its adapters are fixed at start-up")
        was = await store.unload(name)
        return {"name": name, "state": store.state(name), "was": was}
