"""Dynamic adapters of ``adaptformer serve --adapter-root`` (:mod:`adaptformer.inference.serve.adapters`): the store's
two LRU tiers in process (hits, evictions, a reload after eviction gives the same logits, a load in flight joined,
leases, name and path checks), then a real server on loopback: the admin token, loading on the first request and by
``POST``, ``DELETE``, ``GET /adapters``, damaged, half-written, deleted and foreign adapters, ``--adapter NAME=DIR``,
and no server path or traceback in any answer."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from tests.servers import Server, serving, write_adapter

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.serve.adapters import AdapterStore, adapter_folder, public_message
from adaptformer.inference.serve.limits import Refused
from adaptformer.saving import create_model_from_adapter

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``pinned`` (the --adapter) beside a root of four adapters a..d, two of them as runs write them
    (``NAME/adapter``)."""
    base = tmp_path_factory.mktemp("store")
    root = base / "root"
    found = {"base": base, "root": root, "pinned": write_adapter(base / "pinned" / "adapter", 9, 3)}
    for i, name in enumerate("abcd"):
        folder = root / name / "adapter" if i % 2 else root / name
        found[name] = write_adapter(folder, i, 4 + i, "adaptformer" if i < 3 else "linear")
    return found


def _store(adapters: dict[str, Path], max_resident: int, max_cached: int) -> AdapterStore:
    model = MultiTaskModel.from_adapters([adapters["pinned"]]).eval()
    fingerprint = model.task("pinned").adapter.backbone_fingerprint
    return AdapterStore(model, adapters["root"], max_resident, max_cached, fingerprint)


def _logits(store: AdapterStore, name: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return store.model(x, store.model.task_ids([name] * len(x)))[name]


def test_two_lru_tiers_count_hits_misses_and_evictions_and_reloads_give_the_same_logits(adapters: dict) -> None:
    store = _store(adapters, max_resident=2, max_cached=1)
    x = torch.randn(3, 3, 32, 32)
    single = {n: create_model_from_adapter(adapters[n]).eval() for n in "abc"}

    async def main() -> None:
        assert await store.load("a") == "available" and await store.load("b") == "available"
        torch.testing.assert_close(_logits(store, "a", x), single["a"](x), atol=1e-5, rtol=0)
        assert await store.load("c") == "available"  # a, the least recently used, leaves for host memory
        assert [store.state(n) for n in "abcd"] == ["cached", "resident", "resident", "available"]
        assert await store.load("d") == "available"  # b to host memory, a dropped from it (max_cached 1)
        assert [store.state(n) for n in "abcd"] == ["available", "cached", "resident", "resident"]
        assert await store.load("b") == "cached"  # back from host memory, no file read
        assert await store.load("a") == "available"  # read again
        assert await store.load("a") == "resident"
        s = store.stats
        assert (s.misses, s.host_hits, s.device_hits, s.device_evictions, s.host_evictions) == (5, 1, 1, 4, 2)
        assert store.resident == 2 and store.cached == 1 and set(store.model.tasks) == {"pinned", "b", "a"}
        for name in "ab":  # reattached from host memory, or re-read after leaving it: the same logits
            torch.testing.assert_close(_logits(store, name, x), single[name](x), atol=1e-5, rtol=0)
        torch.testing.assert_close(_logits(store, "pinned", x), create_model_from_adapter(adapters["pinned"]).eval()(x),
                                   atol=1e-5, rtol=0)  # fmt: skip

    asyncio.run(main())


def test_loads_run_beside_requests_are_joined_in_flight_and_leased_adapters_stay(adapters: dict) -> None:
    store = _store(adapters, max_resident=1, max_cached=0)
    read = store._read

    def slow_read(name: str, folder: Path):  # a large adapter on a slow disk
        time.sleep(0.3)
        return read(name, folder)

    store._read = slow_read  # type: ignore[method-assign]

    async def main() -> None:
        loads = asyncio.gather(*(store.load("a") for _ in range(6)))
        await asyncio.sleep(0.05)  # the load reads its folder in a worker thread: the event loop and the model are free
        started = time.monotonic()
        async with store.using(["pinned"]):
            assert store.model_lock.acquire(timeout=0.05)  # a batch could run now
            store.model_lock.release()
        assert time.monotonic() - started < 0.1 and store.state("a") == "available"
        assert await loads == ["available"] * 6
        assert (store.stats.misses, store.stats.joined) == (1, 5)
        async with store.using(["a"]):  # a request holds a; loading b would evict it
            with pytest.raises(Refused, match=r"all 1 resident adapters \(--max-resident\) are in use") as refusal:
                await store.load("b")
            assert refusal.value.status == 503 and store.state("a") == "resident"
        await store.load("b")
        assert [store.state(n) for n in "ab"] == ["available", "resident"]
        async with store.using(["c", "nosuch", "d"]):  # c loads; an unknown name ends the lookups (a 404 follows)
            assert store.state("c") == "resident" and store.state("d") == "available"

    asyncio.run(main())


def test_names_that_leave_the_root_are_refused(adapters: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(adapters["a"])  # a symlink to a real adapter outside the root
    (root / "sneaky").mkdir()
    shutil.copy(adapters["a"] / "adapter_config.json", root / "sneaky")
    (root / "sneaky" / "adapter_model.safetensors").symlink_to(adapters["a"] / "adapter_model.safetensors")
    (root / "empty").mkdir()
    for name, status, message in [("..", 400, "expected one folder name"), ("/etc", 400, "no '.', '/' or '..'"),
                                  ("a.b", 400, "expected one folder name"), ("", 400, "expected one folder name"),
                                  ("out", 400, "leads out of the adapter root"),
                                  ("sneaky", 400, "a file of its folder leads out"),
                                  ("empty", 422, "holds no adapter_config.json"),
                                  ("nosuch", 404, "unknown adapter"),
                                  ("half", 400, "task name 'half' .* is reserved")]:  # fmt: skip
        with pytest.raises(Refused, match=message) as refusal:
            adapter_folder(root, name)
        assert refusal.value.status == status and str(tmp_path) not in refusal.value.message


def test_public_messages_carry_no_server_path(tmp_path: Path) -> None:
    message = f"{tmp_path}/root/x/weights.bin: SHA-256 differs; see /etc/other/file.json"
    assert public_message(message, tmp_path) == "ADAPTER_ROOT/root/x/weights.bin: SHA-256 differs; see <path>"


# ------------------------------------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def server(adapters: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**os.environ, "ADAPTFORMER_ADMIN_TOKEN": TOKEN}
    args = ["--adapter", f"fixed={adapters['pinned']}", "--adapter-root", str(adapters["root"]), "--max-resident",
            "1", "--max-cached", "1", "--precision", "fp32"]  # fmt: skip
    with serving(args, env=env, log=tmp_path_factory.mktemp("log") / "serve.log") as running:
        yield running


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 255 - value, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _answer(response: httpx.Response, status: int, adapters: dict) -> dict:
    """The JSON of ``response`` after checking its status and that it names no server path, has no traceback."""
    assert response.status_code == status, response.text
    assert str(adapters["base"]) not in response.text and "Traceback" not in response.text
    assert "/tmp" not in response.text and str(Path.home()) not in response.text
    return response.json()


def _classify(url: str, tasks: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"files": ("x.png", _png(40), "image/png")}, data={"tasks": tasks},
                      timeout=60)  # fmt: skip


def _admin(method: str, url: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, url, headers=headers, timeout=60)


def _metric(url: str, sample: str) -> float:
    """One sample's value in ``/metrics`` (0 when absent). Tests read differences: under pytest-xdist another test
    may have used this server before."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.rsplit(" ", 1)[0] == sample), 0.0)


COUNTERS = ('adaptformer_adapter_hits_total{tier="host"}', 'adaptformer_adapter_evictions_total{tier="device"}',
            "adaptformer_adapter_misses_total", "adaptformer_adapter_load_failures_total")  # fmt: skip


def test_admin_calls_need_the_bearer_token(server: Server, adapters: dict) -> None:
    for token, what in [(None, "no 'Authorization: Bearer TOKEN' header"), ("wrong", "a wrong token"),
                        (TOKEN + "x", "a wrong token")]:  # fmt: skip
        for method in ("POST", "DELETE"):
            response = _admin(method, f"{server.url}/adapters/a", token)
            assert _answer(response, 401, adapters) == {"error": f"admin endpoint: {what}"}
            assert response.headers["www-authenticate"] == "Bearer"


def test_adapters_load_on_first_request_and_by_post_and_unload_by_delete(server: Server, adapters: dict) -> None:
    for row in httpx.get(f"{server.url}/adapters").json()["adapters"]:  # whatever earlier tests left loaded
        if row["state"] != "available" and not row["pinned"]:
            _admin("DELETE", f"{server.url}/adapters/{row['name']}")
    before = [_metric(server.url, c) for c in COUNTERS]
    offline = MultiTaskModel.from_adapters([adapters["b"], adapters["pinned"]], names=["b", "fixed"]).eval()
    (expected,) = offline.classify([Image.open(io.BytesIO(_png(40)))], [["b", "fixed"]], top_k=3)
    body = _answer(_classify(server.url, "b,fixed"), 200, adapters)  # b: loaded by this request
    got = body["results"][0]["tasks"]
    for task, top in expected.items():
        assert [r["class"] for r in got[task][:3]] == [c for c, _, _ in top]
        assert [r["prob"] for r in got[task][:3]] == pytest.approx([p for _, _, p in top], abs=1e-5)
    assert _answer(_admin("POST", f"{server.url}/adapters/c"), 200, adapters) == {"name": "c", "state": "resident",
                                                                                   "was": "available"}  # fmt: skip
    listing = httpx.get(f"{server.url}/adapters").json()
    assert (listing["max_resident"], listing["max_cached"]) == (1, 1)
    rows = {a["name"]: a for a in listing["adapters"]}
    assert [rows[n]["state"] for n in ("fixed", "b", "c")] == ["resident", "cached", "resident"]
    assert rows["fixed"]["pinned"] and rows["c"]["method"] == "adaptformer" and rows["c"]["bytes"] > 0
    assert rows["c"]["task_type"] == "classification" and rows["c"]["classes"] == 6 and rows["c"]["in_use"] == 0
    assert rows["fixed"]["bytes"] > 0
    assert all(set(r) == {"name", "state"} for r in rows.values() if r["state"] == "available")  # not read yet
    assert _answer(_admin("POST", f"{server.url}/adapters/b"), 200, adapters)["was"] == "cached"
    assert _answer(_admin("DELETE", f"{server.url}/adapters/b"), 200, adapters) == {"name": "b", "state": "available",
                                                                                     "was": "resident"}  # fmt: skip
    assert _answer(_admin("DELETE", f"{server.url}/adapters/fixed"), 409, adapters)["error"].startswith(
        "task 'fixed' was given with --adapter"
    )
    tasks = [t["name"] for t in httpx.get(f"{server.url}/tasks").json()["tasks"]]
    assert tasks == ["fixed"]  # b unloaded, c in host memory
    after = [_metric(server.url, c) for c in COUNTERS]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 2, 2, 0]  # hit b; evicted b, c; read b, c
    assert _metric(server.url, 'adaptformer_adapters{state="resident"}') == 0
    assert _metric(server.url, 'adaptformer_adapters{state="cached"}') == 1


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [("%2E%2E", 400, "adapter name '..': expected one folder name"), ("a.b", 400, "expected one folder name"),
     ("nosuch", 404, "unknown adapter 'nosuch': no such folder under the adapter root")],
)  # fmt: skip
def test_names_outside_the_root_are_refused_by_the_server(
    server: Server, adapters: dict, name, status, message
) -> None:
    assert message in _answer(_admin("POST", f"{server.url}/adapters/{name}"), status, adapters)["error"]


def test_damaged_half_written_foreign_and_deleted_adapters_get_a_clear_error(server: Server, adapters: dict) -> None:
    root = adapters["root"]
    failures = _metric(server.url, COUNTERS[3])
    (root / "damaged").mkdir()
    (root / "damaged" / "adapter_config.json").write_text("{ not json")
    half = root / "partial"  # copied in while the server runs: the config is there, the weights half-written
    half.mkdir()
    shutil.copy(adapters["a"] / "adapter_config.json", half)
    (half / "adapter_model.safetensors").write_bytes((adapters["a"] / "adapter_model.safetensors").read_bytes()[:500])
    write_adapter(root / "foreign", 3, 4, checkpoint=None, init_seed=7)  # the same architecture, other weights
    (root / "unready").mkdir()  # a folder whose copy has not reached adapter_config.json yet
    cases = {"damaged": (422, "adapter 'damaged' cannot be loaded: "), "partial": (422, "SHA-256 differs"),
             "foreign": (409, "adapter 'foreign' was trained on another backbone: vit_shapes_patch8_32 (fingerprint "
                              "sha256:"),
             "unready": (422, "its folder holds no adapter_config.json (half-copied?)")}  # fmt: skip
    for name, (status, message) in cases.items():
        for response in (_classify(server.url, name), _admin("POST", f"{server.url}/adapters/{name}")):
            assert message in _answer(response, status, adapters)["error"]
    foreign = _answer(_admin("POST", f"{server.url}/adapters/foreign"), 409, adapters)["error"]
    assert foreign.count("sha256:") == 2  # both fingerprints
    shutil.copy(adapters["a"] / "adapter_model.safetensors", half)  # the copy completes: no failure is remembered
    assert _answer(_classify(server.url, "partial"), 200, adapters)["results"][0]["tasks"]["partial"]
    # deleted while resident: it serves from memory until it leaves; then it is an unknown task
    assert _answer(_admin("POST", f"{server.url}/adapters/d"), 200, adapters)["state"] == "resident"
    shutil.rmtree(root / "d")
    assert list(_answer(_classify(server.url, "d"), 200, adapters)["results"][0]["tasks"]) == ["d"]
    _answer(_admin("DELETE", f"{server.url}/adapters/d"), 200, adapters)
    assert "unknown task 'd'" in _answer(_classify(server.url, "d"), 404, adapters)["error"]
    assert "unknown adapter 'd'" in _answer(_admin("POST", f"{server.url}/adapters/d"), 404, adapters)["error"]
    assert _answer(_classify(server.url, "fixed"), 200, adapters)["results"][0]["tasks"]["fixed"]
    assert _metric(server.url, COUNTERS[3]) - failures == 7  # 3 folders twice, foreign once more (unready: no load)


def test_concurrent_requests_for_one_adapter_share_its_load(server: Server, adapters: dict) -> None:
    _admin("DELETE", f"{server.url}/adapters/a")
    misses = _metric(server.url, COUNTERS[2])
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _classify(server.url, "a"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    answers = [r.json()["results"][0]["tasks"]["a"] for r in responses]
    for answer in answers:  # the same image, the same adapter: one answer (to the rounding of the batch it ran in)
        assert [c["class"] for c in answer] == [c["class"] for c in answers[0]]
        assert [c["prob"] for c in answer] == pytest.approx([c["prob"] for c in answers[0]], abs=1e-5)
    assert _metric(server.url, COUNTERS[2]) - misses == 1  # read once, whoever came first


def test_thresholds_given_for_root_adapters_apply_when_they_load(tmp_path: Path) -> None:
    """``serve --threshold NAME=VALUE`` for an adapter of the root: the multi-label task answers at that threshold once
    loaded (and reloaded); asked of a task that is not multi-label, the load is refused naming it."""
    from tests.inference.task_adapters import image_task_adapters

    found = image_task_adapters(tmp_path)
    model = MultiTaskModel.from_adapters([found["animals"]], names=["pinned"]).eval()
    store = AdapterStore(model, tmp_path, 1, 0, model.task("pinned").adapter.backbone_fingerprint,
                         {"tags": 0.3, "animals": 0.4})  # fmt: skip

    async def main() -> None:
        await store.load("tags")
        assert model.task("tags").threshold == 0.3 and model.task("tags").kind == "multi-label"
        with pytest.raises(Refused, match=r"adapter 'animals' is not multi-label: --threshold animals=0.4"):
            await store.load("animals")

    asyncio.run(main())
