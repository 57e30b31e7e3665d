"""``adaptformer serve`` with every task type: one request answers single-label, multi-label (the ``--threshold`` given)
and segmentation tasks for its images, each in its type's shape and equal to the offline model; a video server
classifies MP4/WebM uploads as predict does; a task of another type than a file, a video over a limit, and a file that
is neither image nor video are refused with a clear 4xx, and the server keeps serving. Real servers on loopback."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.inference.task_adapters import image_task_adapters, video_task_adapters
from tests.servers import running_server
from tests.video_files import write_video

from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.serve.video import video_container
from adaptformer.inference.tasktypes import MaskAnswer, MultiLabelAnswer

ATOL = 1e-5


def _png(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _post(url: str, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files=[("files", f) for f in files], data=form, timeout=120)


def _same_top(got: list[dict], expected: list[tuple[str, int, float]]) -> None:
    assert [(r["class"], r["index"]) for r in got] == [(c, j) for c, j, _ in expected]
    assert [r["prob"] for r in got] == pytest.approx([p for *_, p in expected], abs=ATOL)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    dirs = image_task_adapters(tmp_path_factory.mktemp("serve-types"))
    args = [a for d in dirs.values() for a in ("--adapter", str(d))]
    with running_server([*args, "--threshold", "tags=0.3", "--precision", "fp32", "--max-wait-ms", "200"]) as url:
        offline = MultiTaskModel.from_adapters(list(dirs.values())).eval()
        offline.set_threshold("tags", 0.3)
        yield {"url": url, "offline": offline}


def test_one_request_answers_every_image_task_type_as_the_offline_model(image_server: dict) -> None:
    url, offline = image_server["url"], image_server["offline"]
    tasks = httpx.get(f"{url}/tasks").json()["tasks"]
    assert [(t["name"], t["type"], t["threshold"]) for t in tasks] == [
        ("animals", "single-label", None), ("tags", "multi-label", 0.3), ("scene", "segmentation", None)]  # fmt: skip
    images = [_png(0, (40, 56)), _png(1, (32, 32))]
    response = _post(url, [("a.png", images[0]), ("b.png", images[1])], top_k="2")  # every task: the default
    assert response.status_code == 200, response.text
    chosen = _post(url, [("c.png", images[1])], tasks="scene,tags", top_k="3")
    assert list(chosen.json()["results"][0]["tasks"]) == ["scene", "tags"]
    pairs = [(images[0], response.json()["results"][0]["tasks"], 2), (images[1], response.json()["results"][1]["tasks"],
             2), (images[1], chosen.json()["results"][0]["tasks"], 3)]  # fmt: skip
    for data, got, top_k in pairs:
        (expected,) = offline.classify([Image.open(io.BytesIO(data))], [list(got)], top_k)
        for task, answer in expected.items():
            if isinstance(answer, MultiLabelAnswer):
                assert got[task]["threshold"] == 0.3
                _same_top(got[task]["above"], answer.above)
                _same_top(got[task]["top"], answer.top)
            elif isinstance(answer, MaskAnswer):
                assert base64.b64decode(got[task]["mask"]) == answer.png()  # predict's label PNG
                mask = Image.open(io.BytesIO(base64.b64decode(got[task]["mask"])))
                assert (mask.mode, mask.size) == ("P", (got[task]["width"], got[task]["height"]))
                assert mask.size == Image.open(io.BytesIO(data)).size
                assert [(c["class"], c["index"]) for c in got[task]["classes"]] == [
                    (c, j) for c, j, _ in answer.present
                ]
                assert sum(c["fraction"] for c in got[task]["classes"]) == pytest.approx(1.0)
            else:
                _same_top(got[task], answer)  # the single-label shape of every earlier version


def test_concurrent_requests_of_every_type_share_batches_and_equal_the_offline_model(image_server: dict) -> None:
    url, offline = image_server["url"], image_server["offline"]
    asks = ["animals", "tags", "scene", "animals,tags", "scene,animals", "tags,scene,animals"]
    images = [_png(10 + i, (32, 40)) for i in range(len(asks))]
    before = httpx.get(f"{url}/health").json()
    with ThreadPoolExecutor(len(asks)) as pool:
        pairs = zip(images, asks, strict=True)
        responses = list(pool.map(lambda p: _post(url, [("x.png", p[0])], tasks=p[1], top_k="3"), pairs))
    assert [r.status_code for r in responses] == [200] * len(asks)
    assert httpx.get(f"{url}/health").json()["batches"] - before["batches"] < len(asks)  # requests shared batches
    for data, ask, response in zip(images, asks, responses, strict=True):
        got = response.json()["results"][0]["tasks"]
        assert list(got) == ask.split(",")
        (expected,) = offline.classify([Image.open(io.BytesIO(data))], [ask.split(",")], 3)
        if "animals" in got:
            _same_top(got["animals"], expected["animals"])
        if "tags" in got:
            _same_top(got["tags"]["above"], expected["tags"].above)
        if "scene" in got:
            assert base64.b64decode(got["scene"]["mask"]) == expected["scene"].png()


def test_image_tasks_refuse_a_video_and_unknown_bytes_name_both_kinds(image_server: dict, videos) -> None:
    url = image_server["url"]
    mp4 = Path(videos["mp4"]).read_bytes()
    response = _post(url, [("clip.mp4", mp4)], tasks="tags")
    assert response.status_code == 400
    assert response.json()["error"] == "'clip.mp4' is a video, but task 'tags' is a multi-label task: it takes images"
    default = _post(url, [("clip.mp4", mp4)])
    assert default.status_code == 400 and "'clip.mp4' is a video; no task of this service takes one" in default.text
    assert _post(url, [("x.png", _png(2, (32, 32)))]).status_code == 200  # still serving


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    dirs = video_task_adapters(tmp_path_factory.mktemp("serve-video"))
    args = [a for d in dirs.values() for a in ("--adapter", str(d))]
    with running_server(
        [*args, "--precision", "fp32", "--max-video-frames", "30", "--max-video-seconds", "2", "--max-upload-mb", "1"]
    ) as url:
        yield {"url": url, "offline": MultiTaskModel.from_adapters(list(dirs.values())).eval()}


def test_video_uploads_are_classified_as_predict_does(video_server: dict, videos) -> None:
    url, offline = video_server["url"], video_server["offline"]
    files = [videos["webm"], videos["mp4"], videos["avi"]]
    response = _post(url, [(f.name, f.read_bytes()) for f in files], top_k="2")
    assert response.status_code == 200, response.text
    expected = offline.classify(files, None, 2)
    for got, want in zip(response.json()["results"], expected, strict=True):
        assert list(got["tasks"]) == ["motion", "labels"]
        _same_top(got["tasks"]["motion"], want["motion"])
        assert got["tasks"]["labels"]["threshold"] == 0.5
        _same_top(got["tasks"]["labels"]["above"], want["labels"].above)


@pytest.mark.parametrize(
    ("upload", "status", "message"),
    [
        (lambda v, t: ("x.png", _png(3, (32, 32))), 400, "'x.png' is an image; no task of this service takes one"),
        (lambda v, t: ("long.mp4", v["long"].read_bytes()), 413, "'long.mp4' (MP4/MOV): 32 frames; the limit is 30"),
        (
            lambda v, t: ("long.webm", write_video(t / "long.webm", num_frames=31).read_bytes()),
            413,
            "'long.webm' (WebM/Matroska): more than 30 frames",
        ),  # no count in its header: its packets are counted
        (lambda v, t: ("vfr.mp4", v["vfr"].read_bytes()), 413, "'vfr.mp4' (MP4/MOV): 3.24 s long; the limit is 2 s"),
        (lambda v, t: ("cut.mp4", v["mp4"].read_bytes()[:400]), 400, "'cut.mp4' (MP4/MOV): "),
        (lambda v, t: ("notes.txt", b"plain text, no video"), 415, "or a video (MP4/MOV, WebM/Matroska, AVI)"),
    ],
    ids=["image-to-video-tasks", "too-many-frames", "too-many-packets", "too-long", "truncated", "neither"],
)
def test_bad_video_requests_are_refused_and_the_server_keeps_serving(
    video_server: dict, videos, tmp_path: Path, upload, status: int, message: str
) -> None:
    url = video_server["url"]
    response = _post(url, [upload(videos, tmp_path)])
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "/tmp" not in response.text and "Traceback" not in response.text
    named = _post(url, [("x.png", _png(3, (32, 32)))], tasks="motion")
    assert named.json()["error"] == "'x.png' is an image, but task 'motion' is a video task: it takes video files"
    assert _post(url, [("a.mp4", videos["mp4"].read_bytes())]).status_code == 200


@pytest.mark.parametrize(
    ("make", "container"),
    [
        (lambda v: v["mp4"].read_bytes(), "mp4"),
        (lambda v: v["webm"].read_bytes(), "webm"),
        (lambda v: v["mkv"].read_bytes(), "webm"),  # Matroska: WebM's container
        (lambda v: v["avi"].read_bytes(), "avi"),
        (lambda v: _png(0, (8, 8)), None),
        (lambda v: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None),  # a HEIF still image
        (lambda v: b"RIFF\x10\x00\x00\x00WEBPVP8 ", None),  # RIFF, but WebP
    ],
    ids=["mp4", "webm", "mkv", "avi", "png", "heic", "webp"],
)
def test_video_containers_are_judged_by_their_bytes(videos, make, container: str | None) -> None:
    assert video_container(make(videos)) == container
