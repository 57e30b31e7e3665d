"""``adaptformer serve``: the real server on localhost with two adapters on the shipped tiny backbone, its JSON API
through a real HTTP client (concurrent requests equal the offline predictions and are batched) and bad requests (the
page is test_serve_page.py's). Every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from PIL import Image
from tests.servers import running_server, serve_adapters

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.serve import Batcher, ServeLimits


def _png(value: int, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, (3 * value) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: ~3 bytes per pixel."""
    buffer = io.BytesIO()
    Image.frombytes(
        "RGB", (side, side), bytes(torch.randint(0, 256, (side * side * 3,), dtype=torch.uint8).tolist())
    ).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    dirs = serve_adapters(tmp_path_factory.mktemp("serve"))
    serve_args = ["--adapter", str(dirs[0]), "--adapter", str(dirs[1]), "--max-wait-ms", "100", "--max-upload-mb",
                  "0.05", "--precision", "fp32"]  # fmt: skip
    with running_server(serve_args) as url:
        offline = MultiTaskModel.from_adapters(dirs).eval()
        yield {"url": url, "offline": offline}


def _classify(url: str, images: list[bytes], **form: str) -> httpx.Response:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return httpx.post(f"{url}/classify", files=files, data=form, timeout=60)


def _expected(offline: MultiTaskModel, data: bytes, top_k: int, tasks: list[str] | None = None) -> dict:
    (result,) = offline.classify([Image.open(io.BytesIO(data))], None if tasks is None else [tasks], top_k)
    return result


def _same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for task, top in expected.items():
        assert [r["class"] for r in got[task]] == [c for c, _, _ in top]
        assert [r["prob"] for r in got[task]] == pytest.approx([p for _, _, p in top], abs=1e-5)


def test_health_and_tasks(server: dict) -> None:
    health = httpx.get(f"{server['url']}/health").json()
    assert health["status"] == "ok" and health["tasks"] == 2
    tasks = httpx.get(f"{server['url']}/tasks").json()["tasks"]
    assert [(t["name"], len(t["classes"]), t["method"]) for t in tasks] == [("digits", 10, "adaptformer"),
                                                                            ("shapes", 4, "linear")]  # fmt: skip


def test_one_request_for_all_or_chosen_tasks(server: dict) -> None:
    images = [_png(10), _png(200)]
    response = _classify(server["url"], images, top_k="3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["file"] for r in body["results"]] == ["0.png", "1.png"]
    for data, result in zip(images, body["results"], strict=True):
        _same(result["tasks"], _expected(server["offline"], data, 3))
    chosen = _classify(server["url"], images[:1], tasks="shapes", top_k="9").json()["results"][0]["tasks"]
    _same(chosen, _expected(server["offline"], images[0], 9, ["shapes"]))  # 4 classes: all of them


def test_concurrent_requests_are_batched_and_equal_the_offline_predictions(server: dict) -> None:
    before = httpx.get(f"{server['url']}/health").json()
    images = [_png(15 * i) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda data: _classify(server["url"], [data], top_k="2"), images))
    assert [r.status_code for r in responses] == [200] * 16
    for data, response in zip(images, responses, strict=True):
        _same(response.json()["results"][0]["tasks"], _expected(server["offline"], data, 2))
    after = httpx.get(f"{server['url']}/health").json()
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # several requests shared a mixed-task batch
    assert after["largest_batch"] >= 4


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG of ``width`` x ``height`` whose pixel data is one empty IDAT chunk: enough for a header check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _form(url: str, *parts: bytes, boundary: str = "b0undary") -> httpx.Response:
    """POST /classify with a multipart body written by hand: each part its headers, a blank line, its data."""
    body = b"".join(b"--%s\r\n%s\r\n" % (boundary.encode(), part) for part in parts) + b"--%s--\r\n" % boundary.encode()
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return httpx.post(f"{url}/classify", content=body, headers=kind, timeout=60)


def _field(name: str, value: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (name.encode(), value)


MULTIPART = "multipart/form-data"
SENDS = {  # id: (request, status, part of the message)
    "json-body": (lambda u: httpx.post(f"{u}/classify", json={"image": "x"}), 415, "expected a multipart/form-data"),
    "not-an-image": (lambda u: _classify(u, [b"not an image at all"]), 415, "'0.png': not one of the accepted formats"),
    "truncated-png": (lambda u: _classify(u, [_png(7)[:60]]), 400, "'0.png': image file is truncated"),
    "unknown-task": (lambda u: _classify(u, [_png(1)], tasks="digits,cars"), 404, "unknown task 'cars'; this service"),
    "many-unknown-tasks": (lambda u: _classify(u, [_png(1)], tasks="x" * 9000), 404, "unknown task 'xxxxxxxx"),
    "too-large": (lambda u: _classify(u, [_noise_png(200)]), 413, "'0.png' is over the limit of 0.05 MB a file"),
    "pixels-over-the-limit": (lambda u: _classify(u, [_header_only_png(12000, 12000)]), 413,
                              "'0.png': 12000x12000 = 144000000 pixels; the limit is 40000000 pixels"),
    "pillows-bomb-limit": (lambda u: _classify(u, [_header_only_png(20000, 20000)]), 413, "decompression bomb"),
    "needle-shape": (lambda u: _classify(u, [_header_only_png(1, 5000)]), 422, "more than 100 times as long"),
    "top-k-zero": (lambda u: _classify(u, [_png(1)], top_k="0"), 422, "top_k must be a positive integer"),
    "top-k-superscript": (lambda u: _classify(u, [_png(1)], top_k="\u00b2"), 422, "(ASCII digits), got '\u00b2'"),
    "top-k-fullwidth": (lambda u: _classify(u, [_png(1)], top_k="\uff15"), 422, "top_k must be a positive integer"),
    "top-k-arabic": (lambda u: _classify(u, [_png(1)], top_k="\u0663"), 422, "top_k must be a positive integer"),
    "top-k-5000-digits": (lambda u: _classify(u, [_png(1)], top_k="9" * 5000), 422, "got '99999"),
    "top-k-twice": (lambda u: _form(u, _field("top_k", b"1"), _field("top_k", b"2")), 422, "'top_k' is given more"),
    "tasks-not-utf8": (lambda u: _form(u, _field("tasks", b"\xff\xfe")), 400, "the field 'tasks' is not UTF-8 text"),
    "no-disposition": (lambda u: _form(u, b"Content-Type: image/png\r\n\r\nxx"), 400, "no 'Content-Disposition"),
    "unclosed-form": (lambda u: httpx.post(f"{u}/classify", content=b"--b\r\n" + _field("top_k", b"1"),
                                           headers={"Content-Type": "multipart/form-data; boundary=b"}), 400,
                      "ended before its closing boundary"),
    "no-boundary": (lambda u: httpx.post(f"{u}/classify", content=b"x", headers={"Content-Type": MULTIPART}), 400,
                    "needs a boundary"),
    "no-file": (lambda u: httpx.post(f"{u}/classify", data={"top_k": "1"}, files={"other": ("a", b"b")}), 400,
                "no image"),
    "no-endpoint": (lambda u: httpx.get(f"{u}/nothing"), 404, "no such endpoint: GET '/nothing'"),
    "docs-off": (lambda u: httpx.get(f"{u}/docs"), 404, "no such endpoint: GET '/docs'"),
    "redoc-off": (lambda u: httpx.get(f"{u}/redoc"), 404, "no such endpoint: GET '/redoc'"),
    "openapi-off": (lambda u: httpx.get(f"{u}/openapi.json"), 404, "no such endpoint: GET '/openapi.json'"),
    "wrong-method": (lambda u: httpx.delete(f"{u}/health"), 405, "DELETE is not allowed on /health"),
    "get-classify": (lambda u: httpx.get(f"{u}/classify?top_k=2"), 405, "GET is not allowed on /classify"),
    "huge-headers": (lambda u: httpx.get(f"{u}/health", headers={"X-Big": "x" * 100_000}), 431,
                     "request headers of 100"),
}  # fmt: skip


@pytest.mark.parametrize(("send", "status", "message"), SENDS.values(), ids=SENDS.keys())
def test_every_error_is_one_json_shape_a_4xx_and_the_service_keeps_serving(server: dict, send, status, message) -> None:
    response = send(server["url"])
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and message in body["error"], body
    assert " at 0x" not in body["error"] and len(body["error"]) < 400  # no repr, no echo of a huge field
    assert _classify(server["url"], [_png(5)]).status_code == 200


def test_odd_but_valid_requests(server: dict) -> None:
    # thousands of task names, each repeated: each task runs once per image
    many = _classify(server["url"], [_png(3)], tasks=",".join(["shapes", "digits"] * 3000), top_k="1")
    assert many.status_code == 200 and list(many.json()["results"][0]["tasks"]) == ["shapes", "digits"]
    no_name = _form(server["url"], b'Content-Disposition: form-data; name="files"; filename=""\r\n\r\n' + _png(3))
    assert no_name.status_code == 200 and no_name.json()["results"][0]["file"] == ""
    head = httpx.head(f"{server['url']}/health")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"max_pixels": 0}, "max_pixels must be an int >= 1"), ({"body_timeout": float("inf")}, "body_timeout must be"),
     ({"max_upload_mb": -1.0}, "max_upload_mb must be > 0"), ({"decode_workers": 1.5}, "decode_workers must be")],
)  # fmt: skip
def test_serve_limits_are_checked_on_construction(limits: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServeLimits(**limits)


def test_the_batcher_groups_concurrent_requests_and_returns_each_its_own() -> None:
    calls: list[int] = []

    def classify(images, tasks, top_k):  # deterministic: the answer names the image and its tasks
        calls.append(len(images))
        return [
            {t: [(f"{image}-{t}", 0, 1.0)] * top_k for t in wanted} for image, wanted in zip(images, tasks, strict=True)
        ]

    async def main() -> list:
        batcher = Batcher(classify, max_batch=64, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([f"img{i}"], [["a", "b"]], 1 + i % 2) for i in range(10)))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert [r[0]["a"][0][0] for r in results] == [f"img{i}-a" for i in range(10)]
    assert [len(r[0]["b"]) for r in results] == [1 + i % 2 for i in range(10)]  # each request's own top-k
    assert sum(calls) == 10 and len(calls) < 10
