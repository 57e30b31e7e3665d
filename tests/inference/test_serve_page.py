"""The page of ``adaptformer serve`` (``GET /``) in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by setup.sh): one real server on loopback with three fixed tasks (single-label ``animals``, multi-label
``tags`` with ``--threshold tags=0.3``, segmentation ``scene``) and an ``--adapter-root`` holding a ``spare``
multi-label adapter and a ``broken`` one. The page lists the adapters with their method, type and state, previews
the chosen files, sends only the ticked tasks, draws each answer as the JSON API gives it (bars; a segmentation mask
as a canvas overlay whose pixels are the label PNG's classes in the legend's colours), shows an API error as its
message, and fits a 360 px window; a second server, of video tasks, draws a video's answers. One image server and one
browser for the module."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.inference.task_adapters import image_task_adapters, video_task_adapters
from tests.servers import running_server
from tests.video_files import write_video

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900")
WAIT_S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("serve-page")
    dirs = image_task_adapters(base / "fixed")
    root = base / "root"
    shutil.copytree(dirs["tags"], root / "spare" / "adapter")
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{")  # damaged: a request for it is refused
    args = [*(a for name, d in dirs.items() for a in ("--adapter", f"{name}={d}")), "--adapter-root", str(root),
            "--threshold", "tags=0.3", "--precision", "fp32", "--max-wait-ms", "20"]  # fmt: skip
    with running_server(args) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    # Chromium comes from setup.sh (Debian's chromium + chromium-driver): missing, these tests fail, never skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), "run scripts/install_browser.sh (setup.sh does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two small noise PNGs of different shapes, a short MP4 and a text file."""
    out = {}
    for seed, size in ((0, (40, 56)), (1, (32, 32))):
        pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
        out[f"image{seed}"] = tmp_path / f"image{seed}.png"
        Image.fromarray(pixels).save(out[f"image{seed}"])
    out["video"] = write_video(tmp_path / "clip.mp4", num_frames=5)
    out["text"] = tmp_path / "notes.txt"
    out["text"].write_text("plain text, no image")
    return out


def _open(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#adapters tr[data-name]"))


def _tick(driver, wanted: set[str]) -> None:
    from selenium.webdriver.common.by import By

    for box in driver.find_elements(By.CSS_SELECTOR, "input.task"):
        if box.is_selected() != (box.get_attribute("value") in wanted):
            box.click()


def _classify(driver, paths: list[Path], top_k: int | None = None) -> None:
    """Choose ``paths``, set top-k, press Classify and wait for every file's answers (or an error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in paths))
    if top_k is not None:
        driver.find_element(By.ID, "topk").clear()
        driver.find_element(By.ID, "topk").send_keys(str(top_k))
    driver.find_element(By.ID, "go").click()

    def done(d) -> bool:
        answered = d.find_elements(By.CSS_SELECTOR, ".result") and not d.find_elements(By.CSS_SELECTOR, ".pending")
        return bool(d.find_element(By.ID, "error").text or answered)

    WebDriverWait(driver, WAIT_S).until(done)


def _api(url: str, path: Path, **form: str) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"files": (path.name, path.read_bytes())}, data=form, timeout=60)


def _bars(answer) -> list[tuple[str, str, bool]]:
    """An answer's bars as (class, probability shown, highlighted)."""
    from selenium.webdriver.common.by import By

    bars = answer.find_elements(By.CSS_SELECTOR, ".bar")
    return [(b.get_attribute("data-class"), b.find_element(By.CSS_SELECTOR, ".value").text,
             "above" in b.get_attribute("class").split()) for b in bars]  # fmt: skip


def _answers(driver, name: str) -> dict:
    from selenium.webdriver.common.by import By

    result = driver.find_element(By.CSS_SELECTOR, f'.result[data-file="{name}"]')
    return {a.get_attribute("data-task"): a for a in result.find_elements(By.CSS_SELECTOR, ".answer")}


def test_the_page_is_one_file_that_loads_nothing_from_elsewhere(server: str) -> None:
    page = httpx.get(f"{server}/").text
    assert "<script>" in page and "<style>" in page  # inline
    for reference in ("<script src", "<link", "@import", "url(", "http://", "https://", "//cdn"):
        assert reference not in page, reference


def test_the_panel_lists_the_adapters_with_method_type_state_and_the_cache(
    server: str, browser, files: dict[str, Path]
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server)

    def panel() -> dict[str, tuple[str, ...]]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#adapters tr[data-name]")
        return {r.get_attribute("data-name"): tuple(r.find_element(By.CSS_SELECTOR, f".{c}").text for c in
                                                    ("method", "type", "classes", "state")) for r in rows}  # fmt: skip

    rows = panel()
    assert list(rows) == ["animals", "tags", "scene", "broken", "spare"]  # the fixed ones, then the root's folders
    assert rows["animals"] == ("adaptformer", "single-label", "3", "resident (fixed)")
    assert rows["tags"] == ("adaptformer", "multi-label (threshold 0.3)", "3", "resident (fixed)")
    assert rows["scene"] == ("adaptformer", "segmentation", "3", "resident (fixed)")
    assert rows["spare"] == ("?", "?", "?", "available")  # a folder not read yet: its name and state only
    ticked = {b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, "input.task") if b.is_selected()}
    loaded = {t["name"] for t in httpx.get(f"{server}/tasks").json()["tasks"]}
    assert ticked == loaded  # the server's default: every loaded task
    # a request loads spare; Refresh shows it resident, with what its folder says, and the cache's counters
    assert _api(server, files["image1"], tasks="spare").status_code == 200
    misses = next(float(line.split()[-1]) for line in httpx.get(f"{server}/metrics").text.splitlines()
                  if line.startswith("adaptformer_adapter_misses_total "))  # fmt: skip
    browser.find_element(By.ID, "refresh").click()
    WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: panel()["spare"][3] == "resident"
    )  # the panel's rows are replaced when it refreshes
    assert panel()["spare"] == ("adaptformer", "multi-label (threshold 0.5)", "3", "resident")
    cache = browser.find_element(By.ID, "cache").text
    assert cache.startswith("device: 1 / 8 resident, host: 0 / 64 cached") and f"misses {misses:g}" in cache, cache


def test_previews_show_every_chosen_file(server: str, browser, files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server)
    browser.find_element(By.ID, "file").send_keys("\n".join(str(files[k]) for k in ("image0", "video", "image1")))
    figures = browser.find_elements(By.CSS_SELECTOR, "#previews figure.preview")
    assert [f.get_attribute("data-file") for f in figures] == ["image0.png", "clip.mp4", "image1.png"]
    assert [f.text for f in figures] == ["image0.png", "clip.mp4", "image1.png"]
    assert figures[1].find_elements(By.TAG_NAME, "video") and not figures[1].find_elements(By.TAG_NAME, "img")
    images = [figures[i].find_element(By.TAG_NAME, "img") for i in (0, 2)]
    WebDriverWait(browser, WAIT_S).until(lambda d: all(i.get_property("complete") for i in images))
    assert [(i.get_property("naturalWidth"), i.get_property("naturalHeight")) for i in images] == [(56, 40), (32, 32)]


def test_the_ticked_tasks_are_sent_and_drawn_as_the_api_answers(server: str, browser, files: dict[str, Path]) -> None:
    _open(browser, server)
    _tick(browser, {"tags", "scene"})  # animals off
    _classify(browser, [files["image0"], files["image1"]], top_k=2)
    for name in ("image0", "image1"):
        answers = _answers(browser, f"{name}.png")
        assert list(answers) == ["tags", "scene"]
        expected = _api(server, files[name], tasks="tags,scene", top_k="2").json()["results"][0]["tasks"]
        tags = expected["tags"]
        above = {c["class"] for c in tags["above"]}
        assert _bars(answers["tags"]) == [(c["class"], f"{c['prob']:.3f}", c["class"] in above) for c in tags["top"]]
        chips = answers["tags"].find_elements("css selector", ".chip")
        assert [c.text for c in chips] == [c["class"] for c in tags["above"]]
        assert answers["scene"].get_attribute("data-type") == "segmentation"
    # the default (what the server chooses): every loaded task; single-label bars equal the API's top-k
    _open(browser, server)
    _classify(browser, [files["image1"]], top_k=3)
    expected = _api(server, files["image1"], top_k="3").json()["results"][0]["tasks"]
    answers = _answers(browser, "image1.png")
    assert list(answers) == list(expected)
    assert _bars(answers["animals"]) == [(c["class"], f"{c['prob']:.3f}", False) for c in expected["animals"]]


def test_the_segmentation_overlay_has_the_masks_colours(server: str, browser, files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server)
    _tick(browser, {"scene"})
    _classify(browser, [files["image0"]])
    answer = _answers(browser, "image0.png")["scene"]
    expected = _api(server, files["image0"], tasks="scene").json()["results"][0]["tasks"]["scene"]
    labels = np.array(Image.open(io.BytesIO(base64.b64decode(expected["mask"]))))  # (H, W) class indices
    canvas = answer.find_element(By.CSS_SELECTOR, "canvas.overlay")
    width, height, rgba = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return [c.width, c.height, Array.from(d)];",
        canvas,
    )
    pixels = np.array(rgba, dtype=np.uint8).reshape(height, width, 4)
    assert (height, width) == labels.shape == (40, 56)
    legend = answer.find_elements(By.CSS_SELECTOR, ".legend li")
    colours = {int(li.get_attribute("data-index")): tuple(int(v) for v in li.get_attribute("data-rgb").split(","))
               for li in legend}  # fmt: skip
    assert list(colours) == [c["index"] for c in expected["classes"]] and sorted(colours) == sorted(np.unique(labels))
    assert len(colours) >= 2  # a map of one class would not tell the classes' colours apart
    assert len(set(colours.values())) == len(colours)  # a colour per class
    want = np.zeros_like(pixels)
    for index, rgb in colours.items():
        want[labels == index] = (*rgb, 255)
    assert np.array_equal(pixels, want)
    shown = [f"{c['class']}: {100 * c['fraction']:.1f}% of pixels" for c in expected["classes"]]
    assert [li.text for li in legend] == shown
    image = answer.find_element(By.CSS_SELECTOR, ".stack img")
    assert canvas.rect == image.rect  # the overlay lies exactly on the image


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _label_png(labels: np.ndarray, depth: int, filter_type: int, colour_type: int = 3) -> bytes:
    """``labels`` as a PNG written by hand: rows packed at ``depth`` bits, each filtered with PNG filter
    ``filter_type`` (Pillow picks its filters itself), palette (3) or grey (0)."""
    height, width = labels.shape
    per_byte = 8 // depth
    padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.int64)
    padded[:, :width] = labels
    shifts = np.arange(per_byte - 1, -1, -1) * depth  # the first pixel in the high bits
    rows = (padded.reshape(height, -1, per_byte) << shifts).sum(-1)  # (H, bytes a row)
    body, previous = b"", np.zeros(rows.shape[1], dtype=np.int64)
    for row in rows:
        left, upper_left = np.concatenate([[0], row[:-1]]), np.concatenate([[0], previous[:-1]])
        paeth = np.array([_paeth(*t) for t in zip(left, previous, upper_left, strict=True)])
        predicted = [np.zeros_like(row), left, previous, (left + previous) // 2, paeth][filter_type]
        body += bytes([filter_type]) + bytes(((row - predicted) % 256).tolist())
        previous = row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    palette = chunk(b"PLTE", bytes(i % 256 for i in range(3 * 2**depth))) if colour_type == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + header + palette + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def test_the_page_reads_the_class_indices_of_any_label_png(server: str, browser) -> None:
    """The page decodes a label PNG's indices itself (a browser drawing it would apply the PNG's own palette): every
    bit depth, every row filter, palette or grey; anything else is refused with a message."""
    _open(browser, server)
    read = "const [png, done] = arguments; labelMap(png).then(l => done(Array.from(l)), e => done(e.message));"
    rng = np.random.default_rng(0)
    for depth in (1, 2, 4, 8):
        labels = rng.integers(0, 2**depth, (5, 11))  # 11 pixels a row: a part-filled last byte below 8 bits
        for filter_type, colour_type in [*((f, 3) for f in range(5)), (4, 0)]:
            png = base64.b64encode(_label_png(labels, depth, filter_type, colour_type)).decode()
            assert browser.execute_async_script(read, png) == labels.ravel().tolist(), (depth, filter_type)
    rgb = io.BytesIO()
    Image.new("RGB", (4, 4)).save(rgb, "PNG")
    refused = browser.execute_async_script(read, base64.b64encode(rgb.getvalue()).decode())
    assert refused == "the label PNG is not a label map (colour type 2, 8 bits)"


@pytest.mark.parametrize(("name", "tasks"), [("text", None), ("video", None), ("image1", "broken")])
def test_an_api_error_is_shown_as_its_message(server: str, browser, files: dict[str, Path], name, tasks) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server)
    if tasks is not None:
        _tick(browser, {tasks})
    _classify(browser, [files[name]])
    expected = _api(server, files[name], **({"tasks": tasks} if tasks else {})).json()
    assert list(expected) == ["error"]
    assert browser.find_element(By.ID, "error").text == expected["error"]
    assert not browser.find_elements(By.CSS_SELECTOR, ".result")


def test_a_mixed_upload_shows_the_images_answers_and_the_videos_refusal(
    server: str, browser, files: dict[str, Path]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server)
    _tick(browser, {"animals"})
    _classify(browser, [files["image1"], files["video"]])  # one request a kind: the images', the video's (refused)
    WebDriverWait(browser, WAIT_S).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".pending"))
    refusal = _api(server, files["video"]).json()["error"]
    assert browser.find_element(By.ID, "error").text == refusal and "'clip.mp4' is a video" in refusal
    assert [r.get_attribute("data-file") for r in browser.find_elements(By.CSS_SELECTOR, ".result")] == ["image1.png"]
    expected = _api(server, files["image1"], tasks="animals").json()["results"][0]["tasks"]
    assert _bars(_answers(browser, "image1.png")["animals"]) == [
        (c["class"], f"{c['prob']:.3f}", False) for c in expected["animals"]
    ]


def test_a_narrow_window_stacks_the_panels_and_never_scrolls_sideways(
    server: str, browser, files: dict[str, Path]
) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(360, 800)
    try:
        _open(browser, server)
        assert browser.execute_script("return window.innerWidth") <= 360
        _tick(browser, {"animals", "tags", "scene"})
        _classify(browser, [files["image0"], files["image1"]], top_k=3)
        assert len(_answers(browser, "image0.png")) == 3
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        panel, upload = browser.find_element(By.ID, "panel").rect, browser.find_element(By.ID, "upload").rect
        assert panel["y"] + panel["height"] <= upload["y"]  # stacked, not side by side
    finally:
        browser.set_window_size(1200, 900)


def test_a_video_server_draws_each_video_tasks_answer_as_the_api_gives_it(
    tmp_path_factory: pytest.TempPathFactory, browser, files: dict[str, Path]
) -> None:
    """A second server, of the tiny video ViT's tasks (single-label ``motion``, multi-label ``labels``): an MP4 is
    previewed as a video and answered by both tasks, bars and chips equal to the JSON API's."""
    dirs = video_task_adapters(tmp_path_factory.mktemp("serve-page-video"))
    args = [*(a for name, d in dirs.items() for a in ("--adapter", f"{name}={d}")), "--precision", "fp32",
            "--threshold", "labels=0.4"]  # fmt: skip
    with running_server(args) as url:
        _open(browser, url)
        _classify(browser, [files["video"]], top_k=2)
        expected = _api(url, files["video"], top_k="2").json()["results"][0]["tasks"]
        answers = _answers(browser, "clip.mp4")
        assert list(answers) == list(expected) == ["motion", "labels"]
        assert _bars(answers["motion"]) == [(c["class"], f"{c['prob']:.3f}", False) for c in expected["motion"]]
        labels = expected["labels"]
        above = {c["class"] for c in labels["above"]}
        assert _bars(answers["labels"]) == [
            (c["class"], f"{c['prob']:.3f}", c["class"] in above) for c in labels["top"]
        ]
        chips = answers["labels"].find_elements("css selector", ".chip")
        assert [c.text for c in chips] == [c["class"] for c in labels["above"]]
