"""Every task type in one multi-task model: single-label, multi-label (per-task thresholds) and segmentation tasks
answered for the same images in one call, video tasks for video files; per sample each answer equals its single-task
model's (``adaptformer predict``'s views, masks and label PNGs); a task asked of the other kind of input is refused,
naming it and its type."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import VIT
from tests.inference.task_adapters import image_task_adapters, video_task_adapters
from tests.segmentation.tiny_segmenters import tiny_segmenter

from adaptformer import save_adapter
from adaptformer.cli import main
from adaptformer.data import build_image_transform
from adaptformer.inference.evaluate import load_trained_model, predict_files, video_settings
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.tasktypes import MaskAnswer, MultiLabelAnswer, TaskTypeError
from adaptformer.preprocessing import Preprocessing
from adaptformer.saving import AdapterFileError, create_model_from_adapter, read_adapter_config

ATOL = 1e-5


@pytest.fixture(scope="module")
def image_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return image_task_adapters(tmp_path_factory.mktemp("types"))


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 56), (32, 32), (48, 36)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_image_task_type_answers_as_its_single_task_model_in_one_call(
    image_adapters: dict[str, Path], tmp_path: Path, seed: int
) -> None:
    multi = MultiTaskModel.from_adapters(list(image_adapters.values()), list(image_adapters)).eval()
    assert [multi.task(t).kind for t in multi.tasks] == ["single-label", "multi-label", "segmentation"]
    assert [multi.task(t).threshold for t in multi.tasks] == [None, 0.5, None]  # predict's default
    images = _images(5, seed)
    order = random.Random(seed)
    tasks = [order.sample(multi.tasks, order.randint(1, 3)) for _ in images]  # a mixture of types per image
    results = multi.classify(images, tasks, top_k=2)
    singles = {name: create_model_from_adapter(d).eval() for name, d in image_adapters.items() if name != "scene"}
    for image, asked, result in zip(images, tasks, results, strict=True):
        assert list(result) == asked
        for name in asked:
            if name == "scene":
                continue
            x = build_image_transform(Preprocessing.from_model(singles[name]), train=False)(image)[None]
            with torch.no_grad():
                logits = singles[name](x)[0]
            if name == "animals":  # today's answer: the softmax top-k, (class, index, probability)
                expected = logits.softmax(0).topk(2)
                assert [j for _, j, _ in result[name]] == expected.indices.tolist()
                assert [c for c, _, _ in result[name]] == [["cat", "dog", "emu"][j] for j in expected.indices]
                torch.testing.assert_close(
                    torch.tensor([p for *_, p in result[name]]), expected.values, atol=ATOL, rtol=0
                )
            else:
                answer = result[name]
                assert isinstance(answer, MultiLabelAnswer) and answer.threshold == 0.5 and len(answer.top) == 2
                probabilities = logits.sigmoid()
                assert {j for _, j, _ in answer.above} == {j for j, p in enumerate(probabilities.tolist()) if p >= 0.5}
                for _, j, p in (*answer.above, *answer.top):
                    assert p == pytest.approx(float(probabilities[j]), abs=ATOL)
    # segmentation: the label PNG and fractions predict writes for the same images
    paths = []
    for i, (image, asked) in enumerate(zip(images, tasks, strict=True)):
        if "scene" in asked:
            image.save(tmp_path / f"im{i}.png")
            paths.append((i, tmp_path / f"im{i}.png"))
    if paths:
        assert main(["predict", "--adapter", str(image_adapters["scene"]), "--out", str(tmp_path / "out"),
                     *[str(p) for _, p in paths]]) == 0  # fmt: skip
    for i, path in paths:
        mask = results[i]["scene"]
        assert isinstance(mask, MaskAnswer) and mask.labels.shape == (images[i].height, images[i].width)
        assert mask.png() == (tmp_path / "out" / path.name).read_bytes()
        assert [c for c, _, _ in mask.present] == [c for c, f in sorted(zip(mask.classes, mask.fractions, strict=True),
                                                                         key=lambda t: -t[1]) if f > 0]  # fmt: skip


def test_thresholds_are_per_task_and_checked(image_adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters([image_adapters["animals"]]).eval()
    multi.add_task("strict", image_adapters["tags"], threshold=0.9)
    multi.add_task("loose", image_adapters["tags"], threshold=0.05)
    image = _images(1, 3)[0]
    (result,) = multi.classify([image], [["strict", "loose"]], top_k=3)
    assert (result["strict"].threshold, result["loose"].threshold) == (0.9, 0.05)
    assert result["strict"].top == result["loose"].top  # the same head: the same probabilities
    assert all(p >= 0.9 for *_, p in result["strict"].above) and all(p >= 0.05 for *_, p in result["loose"].above)
    assert len(result["loose"].above) == sum(p >= 0.05 for *_, p in result["loose"].top)
    multi.set_threshold("strict", 0.05)
    (again,) = multi.classify([image], [["strict"]], top_k=3)
    assert again["strict"].above == result["loose"].above
    with pytest.raises(ValueError, match=r"task 'strict': a threshold must be a number in \(0, 1\), got 1.5"):
        multi.set_threshold("strict", 1.5)
    with pytest.raises(ValueError, match="task 'animals' is a single-label task; a threshold applies to multi-label"):
        multi.set_threshold("animals", 0.3)
    with pytest.raises(ValueError, match="task 'x' .*: a threshold applies to multi-label tasks; this one is not"):
        multi.add_task("x", image_adapters["animals"], threshold=0.3)


def test_a_segmentation_task_shares_the_backbone_and_is_removed_cleanly(image_adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters([image_adapters["animals"], image_adapters["scene"]], ["animals", "scene"])
    plain = {id(t) for t in (*multi._plain[0].parameters(), *multi._plain[0].buffers())}
    frozen = [p for p in multi.task_model("scene").backbone.parameters() if not p.requires_grad]
    assert frozen and all(id(p) in plain for p in frozen)  # no copy of the backbone for the segmentation task
    with pytest.raises(TaskTypeError, match="task 'scene' is a segmentation task: it runs on its own model"):
        multi.task_ids(["animals", "scene"])
    multi.remove_task("scene")
    assert multi.tasks == ("animals",)
    assert list(multi.classify(_images(1, 4))[0]) == ["animals"]


def test_a_segmentation_adapter_of_another_backbone_build_is_refused(
    image_adapters: dict[str, Path], tmp_path: Path
) -> None:
    fixed = save_adapter(tiny_segmenter(VIT, "adaptformer", "linear", dynamic_img_size=False).eval(),
                         tmp_path / "fixed", ["a", "b", "c"])  # fmt: skip
    multi = MultiTaskModel.from_adapters([image_adapters["animals"]])
    with pytest.raises(AdapterFileError, match=rf"{fixed}: a segmentation adapter whose backbone was built with "
                                               r"kwargs .*'dynamic_img_size': False"):  # fmt: skip
        multi.add_task("fixed", fixed)
    assert multi.tasks == ("animals",)


@pytest.fixture(scope="module")
def video_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return video_task_adapters(tmp_path_factory.mktemp("video-types"))


@pytest.mark.parametrize("seed", [0, 1])
def test_video_tasks_answer_as_predict_and_refuse_images(
    video_adapters: dict[str, Path], videos: dict[str, Path], seed: int
) -> None:
    multi = MultiTaskModel.from_adapters(list(video_adapters.values()), list(video_adapters), max_batch=4).eval()
    assert [multi.task(t).kind for t in multi.tasks] == ["video", "video"]
    order = random.Random(seed)
    files = order.sample([videos["webm"], videos["mp4"], videos["long"], videos["avi"]], 4)
    asked = [["labels", "motion"], ["motion"], ["labels"], ["motion", "labels"]]  # each task: 3 of the 4 files
    results = multi.classify(files, asked, top_k=2)
    for name, directory in video_adapters.items():
        info = read_adapter_config(directory)
        model, _ = load_trained_model(directory)
        threshold = 0.5 if info.multi_label else None
        mine = [(f, r[name]) for f, r in zip(files, results, strict=True) if name in r]
        top_k = len(info.classes) if info.multi_label else 2  # multi-label: predict lists every class at the threshold
        expected = predict_files(model, [f for f, _ in mine], top_k, "fp32", "cpu", video_settings(info), threshold)
        assert len(expected) == 3
        for (_, answer), want in zip(mine, expected, strict=True):
            found = answer.above if info.multi_label else answer
            assert [j for _, j, _ in found] == [j for j, _ in want.top]
            torch.testing.assert_close(torch.tensor([p for *_, p in found]), torch.tensor([p for _, p in want.top]),
                                       atol=ATOL, rtol=0)  # fmt: skip
    image = _images(1, 5)[0]
    with pytest.raises(TaskTypeError, match="task 'motion' is a video task: it takes video files, not images"):
        multi.classify([image], [["motion"]])
    assert multi.tasks_for(image) == [] and multi.tasks_for(videos["mp4"]) == ["motion", "labels"]


def test_an_image_task_asked_of_a_video_file_is_refused(image_adapters: dict[str, Path], videos) -> None:
    multi = MultiTaskModel.from_adapters([image_adapters["tags"]], ["tags"])
    with pytest.raises(TaskTypeError, match=rf"task 'tags' is a multi-label task: it takes images, not video files "
                                            rf"\({videos['mp4']}\)"):  # fmt: skip
        multi.prepare(videos["mp4"], ["tags"])
