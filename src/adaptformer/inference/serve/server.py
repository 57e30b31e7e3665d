"""Running the app under uvicorn (:func:`run`), with uvicorn's h11 protocol given two things it lacks
(:class:`GuardedH11Protocol`): a deadline for a request's headers (uvicorn waits for a half-sent request line or
header forever: a client could hold any number of connections by never finishing them) and the service's error shape
for a request h11 cannot parse (uvicorn answers plain text); and uvicorn's server turning the app unready on SIGTERM
(:class:`DrainingServer`) before it stops listening and finishes the requests it accepted."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DrainingServer", "GuardedH11Protocol", "run"]

logger = logging.getLogger(__name__)

MALFORMED = "malformed HTTP request (its request line or headers cannot be parsed, or the headers exceed 16 KB)"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a connection whose request headers have not all arrived within ``header_timeout``
    seconds of its start (or of the previous answer) is closed."""

    header_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in: the app has it
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:  # as uvicorn's, in the service's error shape
        body = json.dumps({"error": MALFORMED}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):  # fmt: skip
            self.transport.write(self.conn.send(event))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM or Ctrl-C the app's readiness turns to draining (``/health/ready`` answers 503)
    before uvicorn stops listening, closes idle connections and waits for the requests it accepted."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        readiness = getattr(self.config.app.state, "readiness", None)
        if readiness is not None:
            readiness.draining = True
        logger.info("signal %d: draining (no new connections; accepted requests are finished)", sig)
        super().handle_exit(sig, frame)


def _json_access_log() -> None:
    """The access log (logger ``adaptformer.access``, one JSON object a line) on stderr, without a prefix, whatever
    the command line's log level."""
    access = logging.getLogger("adaptformer.access")
    access.setLevel(logging.INFO)
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False


def run(app: Any, host: str, port: int, header_timeout: float, grace_s: float | None = None) -> None:
    """Serve ``app`` on ``host:port`` until Ctrl-C or SIGTERM; then finish the requests it accepted, waiting at most
    ``grace_s`` seconds (None: as long as they take)."""
    protocol = type("Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})
    _json_access_log()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol,
                            timeout_graceful_shutdown=grace_s)  # fmt: skip
    DrainingServer(config).run()
