"""Reading ``POST /classify``'s multipart form as it streams in, within :class:`~.limits.ServeLimits`.

The body is read message by message from the ASGI ``receive`` into python-multipart's streaming parser, whose callbacks
count bytes per part and in all: a request is refused (:class:`~.limits.Refused`) as soon as it crosses a limit (a
file over ``max_upload_mb``, a body over ``max_request_mb``, declared or chunked, more than ``max_files`` files, a
field over :data:`FIELD_BYTES`), or when its body has not arrived within ``body_timeout`` seconds (408); nothing is
buffered past the limit. A client that disconnects mid-body raises :class:`ClientGone`.

Form fields: ``files`` (every part of that name, a file or not), ``tasks`` and ``top_k`` (at most once each, UTF-8);
parts of other names are counted against the limits and dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .limits import Refused, ServeLimits, clipped

__all__ = ["FIELDS", "FIELD_BYTES", "ClientGone", "Upload", "multipart_boundary", "read_upload"]

FIELDS = ("tasks", "top_k")
"""The form's text fields; each may be given once."""
FIELD_BYTES = 64 * 2**10
"""A text field's value, at most (``tasks`` naming a few thousand tasks fits)."""
HEADER_BYTES = 8 * 2**10
"""One part's headers, at most."""
OTHER_PARTS = 16
"""Parts other than ``files`` in one form, at most."""


class ClientGone(Exception):
    """The client closed the connection before its request body was read (``received`` bytes of it)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"disconnected after {received} bytes of the request body")
        self.received = received


@dataclass
class Upload:
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (file name as sent, bytes) in form order
    fields: dict[str, str] = field(default_factory=dict)  # FIELDS given, by name


def multipart_boundary(headers: Mapping[str, str], limits: ServeLimits) -> bytes:
    """The boundary of a request's multipart form, checked from its headers alone (nothing of the body read)."""
    kind, options = parse_options_header(headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        shown = clipped(kind.decode("latin-1")) if kind else "none"
        raise Refused(415, f"expected a multipart/form-data upload (field 'files'), got content type {shown}")
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 70:  # RFC 2046
        raise Refused(400, "the multipart/form-data content type needs a boundary of 1 to 70 characters")
    declared = headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limits.request_bytes:
        raise Refused(413, f"request body of {int(declared)} bytes; the limit is {limits.max_request_mb:g} MB")
    return boundary


class _Form:
    """python-multipart's callbacks: one part at a time, its headers, then its data, each counted."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits, self.upload, self.ended = limits, Upload(), False
        self.other_parts = 0
        self._start_part()

    def _start_part(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.header_field, self.header_value, self.header_bytes = b"", b"", 0
        self.name, self.filename, self.data, self.keep = "", "", bytearray(), False

    def on_part_begin(self) -> None:
        self._start_part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_value += data[start:end]

    def _count_header(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > HEADER_BYTES:
            raise Refused(413, f"a form part's headers exceed {HEADER_BYTES // 1024} KB")

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise Refused(400, "a form part has no 'Content-Disposition: form-data; name=...' header")
        self.name = options[b"name"].decode("utf-8", "replace")
        self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if self.name == "files":
            if len(self.upload.files) >= self.limits.max_files:
                raise Refused(413, f"more than {self.limits.max_files} images in one request")
            self.keep = True
            return
        self.other_parts += 1
        if self.other_parts > OTHER_PARTS:
            raise Refused(413, f"more than {OTHER_PARTS} form fields other than 'files'")
        if self.name in FIELDS and self.name in self.upload.fields:
            raise Refused(422, f"the field '{self.name}' is given more than once")
        self.keep = self.name in FIELDS

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = len(self.data) + end - start
        if self.name == "files" and size > self.limits.file_bytes:
            shown = clipped(self.filename) if self.filename else f"file {len(self.upload.files) + 1}"
            raise Refused(413, f"{shown} is over the limit of {self.limits.max_upload_mb:g} MB a file")
        if self.name in FIELDS and size > FIELD_BYTES:
            raise Refused(413, f"the field '{self.name}' is over {FIELD_BYTES // 1024} KB")
        if self.keep:
            self.data += data[start:end]

    def on_part_end(self) -> None:
        if self.name == "files":
            self.upload.files.append((self.filename, bytes(self.data)))
        elif self.keep:
            try:
                self.upload.fields[self.name] = self.data.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(400, f"the field '{self.name}' is not UTF-8 text") from None
        self._start_part()

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict[str, Callable[..., None]]:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished", "part_data",
                 "part_end", "end")  # fmt: skip
        return {f"on_{n}": getattr(self, f"on_{n}") for n in names}


async def read_upload(receive: Callable[[], Awaitable[dict[str, Any]]], boundary: bytes, limits: ServeLimits) -> Upload:
    """The form of a request whose headers :func:`multipart_boundary` passed, read from ``receive`` within
    ``limits`` (whose ``body_timeout`` runs from this call)."""
    form = _Form(limits)
    parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    deadline, received = loop.time() + limits.body_timeout, 0
    more = True
    while more:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:  # a class of its own on Python 3.10
            raise Refused(408, f"the request body did not arrive within {limits.body_timeout:g} s "
                               f"({received} bytes did)") from None  # fmt: skip
        if message["type"] == "http.disconnect":
            raise ClientGone(received)
        chunk, more = message.get("body", b""), message.get("more_body", False)
        received += len(chunk)
        if received > limits.request_bytes:
            raise Refused(413, f"request body over the limit of {limits.max_request_mb:g} MB")
        try:
            parser.write(chunk)
        except FormParserError as error:
            raise Refused(400, f"malformed multipart/form-data body: {error}") from None
    parser.finalize()
    if not form.ended:
        raise Refused(400, "the multipart/form-data body ended before its closing boundary")
    return form.upload
