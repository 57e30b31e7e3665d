"""``adaptformer serve`` under abuse, on loopback with real sockets: a bounded load test (a few dozen connections, each
with a deadline) showing that a small request cannot cost the server much memory, time or trust.

Formats outside the allow-list never reach their Pillow plugin (a fake Ghostscript on the server's PATH is never run);
a PNG bomb is refused from its header without the memory a decode would take; ``/health`` answers while large images
decode; bodies over a limit (chunked included) are cut off while they stream; stalled headers and bodies are timed
out; a disconnect is one log line, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from tests.servers import Server, serve_adapters, serving

BODY_TIMEOUT = 2.0  # seconds: the server's --body-timeout
MAX_UPLOADS = 4
LIMITS = ["--body-timeout", str(BODY_TIMEOUT), "--max-upload-mb", "1", "--max-request-mb", "8", "--max-pixels",
          "16000000", "--max-uploads", str(MAX_UPLOADS), "--decode-workers", "2"]  # fmt: skip
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
BOUNDARY = "abuse-boundary"


def _png_bomb(width: int, height: int) -> bytes:
    """A real RGB PNG of ``width`` x ``height`` black pixels: a few hundred KB that decode to 3 bytes a pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, rows = zlib.compressobj(9), bytes(1 + 3 * width) * 100  # each row: filter byte 0, then the pixels
    idat = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_gs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ``gs`` that only leaves a mark: Pillow's EPS plugin runs ``gs`` to read an EPS file."""
    root = tmp_path_factory.mktemp("fake_gs")
    (root / "bin").mkdir()
    gs = root / "bin" / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {root / 'ran'}\nexit 1\n")
    gs.chmod(0o755)
    return {"bin": root / "bin", "mark": root / "ran"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_gs: dict[str, Path]) -> Iterator[Server]:
    dirs = serve_adapters(tmp_path_factory.mktemp("abuse"))
    env = {**os.environ, "PATH": f"{fake_gs['bin']}{os.pathsep}{os.environ['PATH']}"}
    args = ["--adapter", str(dirs[0]), "--adapter", str(dirs[1]), *LIMITS]
    with serving(args, log=tmp_path_factory.mktemp("log") / "serve.log", env=env) as running:
        yield running


def _post(url: str, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{url}/classify", files=parts, data=form, timeout=30)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _head(url: str, length: int | None = None) -> bytes:
    """The request line and headers of a multipart POST /classify (chunked when ``length`` is None)."""
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /classify HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{size}\r\n\r\n").encode()  # fmt: skip


def _part_start(name: str = "x.png") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip


def _answer(connection: socket.socket, timeout: float) -> tuple[int, dict, bool]:
    """Read until the server closes (or ``timeout``): (status, JSON body, whether it closed)."""
    connection.settimeout(timeout)
    data, closed = b"", False
    try:
        while chunk := connection.recv(65536):
            data += chunk
        closed = True
    except (TimeoutError, ConnectionResetError):
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), closed


def _log_lines(server: Server) -> list[str]:
    return server.log.read_text().splitlines()


def test_formats_outside_the_allow_list_never_reach_their_plugin(server: Server, fake_gs: dict[str, Path]) -> None:
    eps = fake_gs["bin"].parent / "x.eps"
    eps.write_bytes(EPS)
    control = f"from PIL import Image; Image.open(r'{eps}').load()"  # Pillow alone, same PATH: runs the fake gs
    env = {**os.environ, "PATH": f"{fake_gs['bin']}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-c", control], env=env, capture_output=True, timeout=60)
    assert fake_gs["mark"].exists(), "the control did not run gs: the test would prove nothing"
    fake_gs["mark"].unlink()
    tiff = _encoded(Image.new("RGB", (16, 16), (9, 99, 199)), "TIFF")
    for data in (EPS, tiff):
        response = _post(server.url, [("x.png", data)])
        assert response.status_code == 415, response.text
        assert "not one of the accepted formats (PNG, JPEG, WEBP, BMP, GIF)" in response.json()["error"]
    assert not fake_gs["mark"].exists()


def test_a_png_bomb_is_refused_from_its_header_quickly_without_memory(server: Server) -> None:
    bomb = _png_bomb(12000, 12000)  # 144 megapixels, 432 MB decoded, under Pillow's own refusal (179 MP)
    assert len(bomb) < 600_000
    before = server.peak_rss_mb()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:  # 4 requests at once, 16 bombs each (6.7 MB of PNG, 7 GB of pixels)
        responses = list(pool.map(lambda _: _post(server.url, [(f"{i}.png", bomb) for i in range(16)]), range(4)))
    seconds = time.perf_counter() - started
    growth = server.peak_rss_mb() - before
    print(f"64 bombs of 12000x12000 refused in {seconds:.2f} s; server peak memory +{growth:.0f} MB")
    assert [r.status_code for r in responses] == [413] * 4
    assert "12000x12000 = 144000000 pixels; the limit is 16000000 pixels" in responses[0].json()["error"]
    assert seconds < 10 and growth < 150  # one decode alone would take 432 MB and seconds


def test_health_answers_while_large_images_decode(server: Server) -> None:
    photo = _encoded(Image.new("RGBA", (4000, 3900), (200, 30, 60, 128)), "PNG")  # 15.6 MP: decodes, converts
    decoding: list[float] = []

    def classify() -> None:
        started = time.perf_counter()
        response = _post(server.url, [(f"{i}.png", photo) for i in range(4)], top_k="1")
        assert response.status_code == 200, response.text
        decoding.append(time.perf_counter() - started)

    workers = [threading.Thread(target=classify) for _ in range(2)]
    for w in workers:
        w.start()
    waits = []
    with httpx.Client(timeout=30) as client:
        while any(w.is_alive() for w in workers):
            started = time.perf_counter()
            assert client.get(f"{server.url}/health").status_code == 200
            waits.append(time.perf_counter() - started)
            time.sleep(0.05)
    for w in workers:
        w.join()
    print(
        f"8 images of 15.6 MP: requests took {max(decoding):.2f} s; /health {len(waits)} times, at most "
        f"{max(waits):.3f} s"
    )
    assert len(decoding) == 2 and len(waits) >= 5
    assert max(waits) < 1.0 and max(decoding) > 2 * max(waits)  # decoded on the event loop, /health waited seconds


def test_a_chunked_body_over_the_limit_is_cut_off_while_it_streams(server: Server) -> None:
    connection = _connect(server.url)
    connection.sendall(_head(server.url) + b"%x\r\n%s\r\n" % (len(_part_start()), _part_start()))
    block = os.urandom(64 * 1024)
    sent, answered = 0, False
    deadline = time.monotonic() + 20
    try:
        while sent < 500 * 2**20 and time.monotonic() < deadline:  # it would send 500 MB
            connection.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
            connection.settimeout(0.01)
            try:
                if connection.recv(1, socket.MSG_PEEK):
                    answered = True
                    break
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        answered = True
    status, body, closed = _answer(connection, 5)
    connection.close()
    print(f"a chunked upload answered after {sent / 2**20:.2f} MB sent")
    assert answered and status == 413 and closed
    assert body == {"error": "'x.png' is over the limit of 1 MB a file"}
    assert sent < 8 * 2**20  # cut off at the 1 MB file limit (plus what the sockets buffer), not at 500 MB


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([(f"{i}.png", b"\0" * 700_000) for i in range(13)], "request body over the limit of 8 MB"),
        ([(f"{i}.png", b"\0") for i in range(65)], "more than 64 images in one request"),
    ],
    ids=["total-size", "file-count"],
)
def test_a_chunked_form_over_a_total_limit_is_refused(server: Server, files: list, message: str) -> None:
    def parts() -> Iterator[bytes]:  # an iterator: httpx sends it chunked, with no Content-Length to check
        for name, data in files:
            yield _part_start(name) + data + b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    kind = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    response = httpx.post(f"{server.url}/classify", content=parts(), headers=kind, timeout=30)
    assert response.status_code == 413 and response.json() == {"error": message}


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(server: Server) -> None:
    connection = _connect(server.url)
    connection.sendall(_head(server.url, length=500 * 2**20))
    status, body, closed = _answer(connection, 5)
    connection.close()
    assert (status, body, closed) == (413, {"error": "request body of 524288000 bytes; the limit is 8 MB"}, True)


def test_stalled_headers_and_bodies_are_timed_out_while_the_service_keeps_serving(server: Server) -> None:
    bodies, headers = [], []
    started = time.monotonic()
    for _ in range(24):  # more than --max-uploads: the rest wait for a slot, then time out too
        connection = _connect(server.url)
        connection.sendall(_head(server.url, length=100_000) + _part_start() + b"\x89PNG" * 100)
        bodies.append(connection)
    for _ in range(12):
        connection = _connect(server.url)
        connection.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        headers.append(connection)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    with ThreadPoolExecutor(len(bodies) + len(headers)) as pool:
        answers = list(pool.map(lambda c: _answer(c, 4 * BODY_TIMEOUT), bodies))
        closed = list(pool.map(lambda c: c.recv(1024), headers))  # b"": closed without an answer
    seconds = time.monotonic() - started
    for c in bodies + headers:
        c.close()
    print(
        f"24 stalled bodies and 12 stalled headers closed within {seconds:.1f} s: "
        f"{[a[0] for a in answers].count(408)} x 408, {[a[0] for a in answers].count(503)} x 503"
    )
    assert all(a[2] for a in answers) and closed == [b""] * 12
    assert {a[0] for a in answers} <= {408, 503} and [a[0] for a in answers].count(408) >= MAX_UPLOADS
    assert all(list(a[1]) == ["error"] for a in answers)
    assert seconds < 4 * BODY_TIMEOUT


def test_headers_over_the_limit_in_pieces_get_the_json_400(server: Server) -> None:
    connection = _connect(server.url)
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(20):  # 40 KB, in pieces: uvicorn's h11 refuses an incomplete header block over 16 KB
            connection.sendall(b"x" * 2048)
            time.sleep(0.01)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, body, closed = _answer(connection, 5)
    connection.close()
    assert (status, closed) == (400, True) and body["error"].startswith("malformed HTTP request")


def test_a_client_that_disconnects_mid_upload_is_one_log_line(server: Server) -> None:
    before = len(_log_lines(server))
    photo = _encoded(Image.new("RGB", (32, 32), (1, 2, 3)), "PNG")
    whole = _part_start() + photo + f"\r\n--{BOUNDARY}--\r\n".encode()
    for i in range(13):  # 10 leave mid-body, 3 right after a whole request (nothing to log: their answer is dropped)
        connection = _connect(server.url)
        if i < 10:
            connection.sendall(_head(server.url, length=100_000) + _part_start() + b"\x89PNG" * 100)
        else:
            connection.sendall(_head(server.url, length=len(whole)) + whole)
        time.sleep(0.05)
        connection.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = _log_lines(server)[before:]
        if sum("disconnected during the upload" in line for line in new) >= 10:
            break
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    new = _log_lines(server)[before:]
    gone = [line for line in new if "disconnected during the upload" in line]
    assert len(gone) == 10, new
    assert all(line.startswith("INFO adaptformer.inference.serve.app: client 127.0.0.1:") for line in gone)
    assert not [line for line in _log_lines(server) if "Traceback" in line or "ERROR" in line]
