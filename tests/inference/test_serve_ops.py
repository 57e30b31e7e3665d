"""What an operator of ``adaptformer serve`` relies on (:mod:`adaptformer.inference.serve.ops`, ``.metrics``,
``.server``), on real servers on loopback: liveness and readiness, Prometheus metrics, one JSON access-log line per
request, 429 with Retry-After under a burst over ``--max-queue``, 504 past ``--deadline-s``, the admin endpoints off
without a token, a client that leaves while its request waits for a batch, and SIGTERM finishing every accepted
request."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image
from starlette.testclient import TestClient
from tests.servers import Server, serve_adapters, serving

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.serve.app import create_app
from adaptformer.inference.serve.server import DrainingServer

MAX_QUEUE = 3


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return serve_adapters(tmp_path_factory.mktemp("ops"))


@pytest.fixture(scope="module")
def server(dirs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--adapter", str(dirs[0]), "--adapter", str(dirs[1]), "--max-queue", str(MAX_QUEUE), "--max-wait-ms",
            "400"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ADAPTFORMER_ADMIN_TOKEN"}
    with serving(args, log=tmp_path_factory.mktemp("log") / "serve.log", env=env) as running:
        yield running


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 20, 255 - value)).save(buffer, "PNG")
    return buffer.getvalue()


def _classify(url: str, value: int = 7, **form: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"files": ("x.png", _png(value), "image/png")}, data=form, timeout=60)


def _metric(url: str, sample: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.rsplit(" ", 1)[0] == sample), 0.0)


def test_liveness_readiness_and_the_old_health(server: Server) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/health/ready").json() == {"status": "ready"}
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["tasks"] == 2 and {"requests", "batches"} <= set(health)


def test_prometheus_metrics(server: Server) -> None:
    done = _metric(server.url, 'adaptformer_requests_total{endpoint="/classify",status="200"}')
    assert _classify(server.url).status_code == 200
    httpx.get(f"{server.url}/no/such/path")
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert _metric(server.url, 'adaptformer_requests_total{endpoint="/classify",status="200"}') == done + 1
    samples = ['adaptformer_requests_total{endpoint="other",status="404"}',  # a client cannot grow the labels
               'adaptformer_request_seconds_bucket{endpoint="/classify",le="+Inf"}', "adaptformer_batch_samples_sum",
               "adaptformer_batch_seconds_count", "adaptformer_queue_depth", "adaptformer_requests_in_progress",
               'adaptformer_adapters{state="resident"}', 'adaptformer_adapter_hits_total{tier="device"}',
               "adaptformer_adapter_misses_total", 'adaptformer_adapter_evictions_total{tier="host"}']  # fmt: skip
    for sample in samples:
        assert f"\n{sample} " in text, sample
    assert _metric(server.url, "adaptformer_batch_samples_sum") >= 2  # one image, two tasks: two samples
    assert "/no/such/path" not in text


def test_one_json_access_log_line_per_request(server: Server) -> None:
    assert _classify(server.url, 99, tasks="shapes").status_code == 200
    assert httpx.get(f"{server.url}/tasks").status_code == 200
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    classify = [line for line in lines if line["path"] == "/classify" and line["tasks"] == ["shapes"]][-1]
    assert set(classify) == {"method", "path", "status", "duration_ms", "bytes", "tasks"}
    assert (classify["method"], classify["status"]) == ("POST", 200) and classify["bytes"] > 0
    assert classify["duration_ms"] > 0
    assert any(line["path"] == "/tasks" and line["status"] == 200 for line in lines)
    assert max(len(line) for line in server.log.read_text().splitlines()) < 1000  # no image bytes


def test_a_burst_over_the_queue_gets_429_with_retry_after(server: Server) -> None:
    rejected = _metric(server.url, 'adaptformer_rejected_total{reason="queue_full"}')
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda i: _classify(server.url, i), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= MAX_QUEUE  # the first MAX_QUEUE are accepted
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"].startswith(f"busy: {MAX_QUEUE} requests are queued (--max-queue)")
        else:
            assert set(response.json()["results"][0]["tasks"]) == {"digits", "shapes"}
    assert _metric(server.url, 'adaptformer_rejected_total{reason="queue_full"}') - rejected == statuses.count(429)
    assert _classify(server.url).status_code == 200


def test_admin_endpoints_are_off_without_a_token(server: Server) -> None:
    for method in ("POST", "DELETE"):
        response = httpx.request(method, f"{server.url}/adapters/digits", headers={"Authorization": "Bearer x"})
        assert response.status_code == 403
        assert response.json() == {"error": "admin endpoints are off: start serve with --admin-token or "
                                             "ADAPTFORMER_ADMIN_TOKEN"}  # fmt: skip
    listing = httpx.get(f"{server.url}/adapters").json()["adapters"]
    assert [(a["name"], a["state"], a["pinned"]) for a in listing] == [("digits", "resident", True),
                                                                        ("shapes", "resident", True)]  # fmt: skip


def test_a_client_that_leaves_while_its_request_waits_for_a_batch(server: Server) -> None:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\r\n" + _png(3)
            + b"\r\n--b--\r\n")  # fmt: skip
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(head + body)  # the whole request, then gone before the batch (--max-wait-ms 400) runs
    time.sleep(1.0)
    assert _classify(server.url).status_code == 200
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
    assert "Traceback" not in server.log.read_text()


def test_a_request_past_its_deadline_gets_504(dirs: list[Path], tmp_path: Path) -> None:
    args = ["--adapter", str(dirs[0]), "--deadline-s", "0.3", "--max-wait-ms", "3000"]
    with serving(args, log=tmp_path / "serve.log") as running:
        started = time.monotonic()
        response = _classify(running.url)
        assert response.status_code == 504 and time.monotonic() - started < 2.5  # not held until the batch ran
        assert response.json() == {"error": "no answer within --deadline-s 0.3 s (the request waited for its upload, "
                                            "an adapter load or a batch); try again"}  # fmt: skip
        assert _metric(running.url, 'adaptformer_rejected_total{reason="deadline"}') == 1
        time.sleep(3.0)  # the batch that would have held it runs without it
        assert httpx.get(f"{running.url}/health/ready").status_code == 200
        assert "Traceback" not in running.log.read_text()


def test_sigterm_finishes_every_accepted_request(dirs: list[Path], tmp_path: Path) -> None:
    args = ["--adapter", str(dirs[0]), "--adapter", str(dirs[1]), "--max-wait-ms", "3000"]
    with serving(args, log=tmp_path / "serve.log") as running, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_classify, running.url, 10 * i) for i in range(6)]
        deadline = time.monotonic() + 10
        while _metric(running.url, "adaptformer_requests_in_progress") < 6:  # all accepted, waiting for a batch
            assert time.monotonic() < deadline, "the requests were not accepted"
            time.sleep(0.05)
        os.kill(running.pid, signal.SIGTERM)
        responses = [f.result(timeout=30) for f in futures]
        assert [r.status_code for r in responses] == [200] * 6
        assert all(set(r.json()["results"][0]["tasks"]) == {"digits", "shapes"} for r in responses)
        assert running.process.wait(timeout=30) == -signal.SIGTERM  # uvicorn re-raises the signal once it is done
        with pytest.raises(httpx.TransportError):  # it no longer listens
            httpx.get(f"{running.url}/health/live", timeout=2)
        assert "draining" in running.log.read_text()


def test_sigterm_turns_the_app_unready_before_it_stops(dirs: list[Path]) -> None:
    app = create_app(MultiTaskModel.from_adapters(dirs[1:]))
    server = DrainingServer(uvicorn.Config(app))
    with TestClient(app) as client:
        assert client.get("/health/ready").json() == {"status": "ready"}
        server.handle_exit(signal.SIGTERM, None)
        response = client.get("/health/ready")
        assert response.status_code == 503 and response.json() == {"error": "draining: the server is shutting down"}
        assert client.get("/health/live").status_code == 200 and server.should_exit
