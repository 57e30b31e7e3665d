"""Video through the shared engine and command line: list/folder/synthetic kinds, multi-view testing (also under
torchrun), bad videos, the preparer CLI, and the paper's video recipes. Tiny real videos are written with PyAV."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.video_files import write_video

from adaptformer.cli import main
from adaptformer.data import train_val_split
from adaptformer.data.video import VIDEO_DATASETS, VideoDecodeError
from adaptformer.engine import DataConfig, Predictions, TrainConfig, VideoConfig, scaled_lr
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.loop import multi_view_metrics
from adaptformer.engine.splits import DataSpec, VideoSettings, load_split
from adaptformer.engine.train import build_model
from adaptformer.factory import build_backbone, create_model
from adaptformer.model import count_trainable
from adaptformer.recipes import load_recipe, recipe_names

VIDEO = "video_vit_small_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_frames": 4,
        "tubelet_size": 2}  # fmt: skip
CLASSES = ["clap", "run", "wave"]
NUM_TRAIN, NUM_TEST = 12, 5  # an odd test set: a padding sampler would duplicate a video on two processes


def write_lists(root: Path, test_lines: list[str] | None = None) -> Path:
    """A videolist dataset: 12 train and 5 test clips of 10 frames (24x32), classes.txt, relative paths."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        for i in range(count):
            write_video(root / "videos" / f"{split}{i}.mp4", num_frames=10, size=(24, 32))
            lines[split].append(f"videos/{split}{i}.mp4   {i % len(CLASSES)}")  # repeated spaces are fine
    if test_lines is not None:
        lines["test"] = test_lines
    for split, split_lines in lines.items():
        (root / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict | None, str]:
    """Exit code, the last JSON line printed (if any) and stderr of ``adaptformer ARGS``."""
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else None), captured.err


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Video lists, a stand-in pre-trained video backbone file, and one finished 2-epoch training run."""
    root = tmp_path_factory.mktemp("video_engine")
    data = write_lists(root / "data")
    backbone = root / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIDEO, len(CLASSES), **TINY).state_dict(), str(backbone))
    out = root / "run"
    args = [
        "train", "--model.backbone", VIDEO, "--model.kwargs", json.dumps(TINY), "--model.checkpoint", str(backbone),
        "--data.dataset", "videolist", "--data.data_dir", str(data), "--model.method.bottleneck", "8",
        "--model.method.dropout", "0", "--optim.epochs", "2", "--optim.warmup_epochs", "0", "--optim.batch_size", "3",
        "--data.val_split", "3", "--optim.blr", "1", "--optim.precision", "fp32", "--data.num_workers", "0",
        "--run.output_dir", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    return {"root": root, "data": data, "backbone": backbone, "out": out}


def test_train_reports_multi_and_single_view_test_accuracy(setup: dict[str, Path]) -> None:
    test = json.loads((setup["out"] / "test.json").read_text())
    assert test["n"] == NUM_TEST  # videos, not views
    assert test["views_per_video"] == 12 and test["skipped"] == 0  # default 4 clips x 3 crops
    assert {"acc1", "acc5", "single_view_acc1", "single_view_acc5"} <= set(test)
    records = [json.loads(x) for x in (setup["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("val_acc1" in r for r in records)
    task = json.loads((setup["out"] / "adapter" / "adapter_config.json").read_text())
    assert task["training"]["dataset"] == "videolist" and task["classes"] == CLASSES
    video = task["training"]["video"]
    assert video == {"sampling": "dense", "sampling_stride": 4, "flip": False, "test_clips": 4, "test_crops": 3}


def test_eval_from_the_adapter_folder_reproduces_the_test_numbers(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    adapter, data = str(setup["out"] / "adapter"), str(setup["data"])
    code, printed, _ = run_cli(["eval", "--adapter", adapter, "--data.data_dir", data], capsys)
    logged = json.loads((setup["out"] / "test.json").read_text())
    assert code == 0 and printed is not None
    for key in ("acc1", "acc5", "single_view_acc1", "single_view_acc5", "n", "views_per_video", "skipped"):
        assert printed[key] == logged[key], key
    assert printed["loss"] == pytest.approx(logged["loss"], rel=1e-5)


def test_multi_view_metrics_average_logits_per_video_and_count_each_once() -> None:
    # Video 0 (label 0): views 1 and 2 wrong but weak, view 0 right and strong; video 1 (label 1): all right.
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    predictions = Predictions(logits, torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1]))
    metrics = multi_view_metrics(predictions, views_per_video=3)
    assert metrics["n"] == 2 and metrics["acc1"] == 100.0  # the mean logits of video 0 favour class 0
    assert metrics["single_view_acc1"] == pytest.approx(100 * 4 / 6)
    duplicated = Predictions(logits[:4], predictions.labels[:4], torch.tensor([0, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="expected 3 predictions per video"):
        multi_view_metrics(duplicated, views_per_video=3)


def test_two_processes_aggregate_every_video_exactly_once(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    # 5 videos x 3 clips x 1 crop = 15 views: odd, so the two shards differ in size and no view may be padded.
    args = ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.data_dir", str(setup["data"]),
            "--data.video.test_clips", "3", "--data.video.test_crops", "1", "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "adaptformer.cli", *args]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # only rank 0 prints
    code, one, _ = run_cli(args, capsys)
    assert code == 0 and one is not None
    two = reports[0]
    assert two["n"] == one["n"] == NUM_TEST and two["views_per_video"] == one["views_per_video"] == 3
    for key in ("acc1", "acc5", "single_view_acc1", "single_view_acc5"):
        assert two[key] == one[key], key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_bad_videos_fail_naming_the_file_or_are_skipped_and_counted(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = setup["data"]
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 8)
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = [f"{data / 'videos' / f'test{i}.mp4'} {i % 3}" for i in range(NUM_TEST)]
    bad_root = tmp_path / "lists"
    bad_root.mkdir()
    (bad_root / "test.txt").write_text("\n".join([good[0], f"{tmp_path / 'corrupt.mp4'} 1", *good[1:],
                                                  f"{tmp_path / 'empty.mp4'} 2"]) + "\n")  # fmt: skip
    (bad_root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    args = ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.data_dir", str(bad_root),
            "--data.video.test_clips", "1", "--data.video.test_crops", "1"]  # fmt: skip
    for workers in ("0", "1"):  # a worker process's error reaches the user as itself, naming the file
        code, _, err = run_cli([*args, "--data.num_workers", workers], capsys)
        assert code == 2 and f"error: cannot decode video {tmp_path / 'corrupt.mp4'}: cannot open" in err, workers
    code, printed, _ = run_cli([*args, "--data.skip_bad_videos", "true"], capsys)
    assert code == 0 and printed is not None
    assert printed["n"] == NUM_TEST and printed["skipped"] == 2  # never predicted: neither right nor wrong


def test_a_label_outside_the_class_range_is_an_error(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "lists"
    root.mkdir()
    (root / "test.txt").write_text(f"{setup['data'] / 'videos' / 'test0.mp4'} 0\n{setup['data'] / 'videos'}/x.mp4 3\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    code, _, err = run_cli(["eval", "--adapter", str(setup["out"] / "adapter"), "--data.data_dir", str(root)], capsys)
    assert code == 2 and "test.txt, line 2: label 3 is outside [0, 3)" in err


def test_validation_is_carved_from_train_as_for_images(setup: dict[str, Path]) -> None:
    """Stratified, seeded; its items are the deterministic centre view, the training items random clips."""
    spec = DataSpec("videolist", str(setup["data"]), video=VideoSettings(sampling="segment"))  # random frame/segment
    split = load_split(spec, "train")
    model = create_model(VIDEO, len(CLASSES), **TINY)
    train, val = train_val_split(split.build(model, "train"), 3, seed=0, val_dataset=split.build(model, "eval"))
    assert sorted(val.dataset.targets[i] for i in val.indices) == [0, 1, 2]  # one video per class
    assert not set(train.indices) & set(val.indices) and len(train) + len(val) == NUM_TRAIN
    assert torch.equal(val[0][0], val[0][0])
    torch.manual_seed(1)
    first = train[0][0]
    assert any(not torch.equal(first, train[0][0]) for _ in range(5))  # frames are solid greys: the frame choice varies
    assert first.shape == (3, 4, 32, 32)  # (C, T, H, W): frames and input size from the backbone


def test_kinds_choose_their_sampling_and_image_and_video_do_not_mix() -> None:
    assert VideoSettings().resolved("ssv2") == VideoSettings(sampling="segment", sampling_stride=4)
    assert VideoSettings().resolved("hmdb51") == VideoSettings(sampling="dense", sampling_stride=4)
    assert VideoSettings(sampling_stride=2).resolved("videolist").sampling_stride == 2
    with pytest.raises(ValueError, match="data.video.num_frames apply to video datasets only"):
        DataConfig(dataset="cifar100", video=VideoConfig(num_frames=8))
    with pytest.raises(ValueError, match="test_crops must be 1"):
        parse_mapping({"data": {"dataset": "ssv2", "video": {"test_crops": 2}}})
    image_model = create_model("vit_tiny_patch16_224", 4, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    split = load_split(DataSpec("synthetic-video", options={"num_samples": 4}), "test")
    with pytest.raises(ValueError, match="backbone takes images"):
        split.build(image_model, "test")


def _one_bad_video_per_split(root: Path, kind: str) -> Path:
    """Every split of a ``kind`` dataset under ``root``: two good clips (classes 0 and 1) and one corrupt file (class
    1, which keeps a good clip when it is skipped); returns the latter."""
    good = [write_video(root / f"good{i}.mp4", num_frames=6, size=(24, 32)) for i in range(2)]
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 8)
    for split in ("train", "val", "test"):
        files = [(good[0], 0), (good[1], 1), (corrupt, 1)]
        if kind == "videofolder":
            for path, label in files:
                (root / split / CLASSES[label]).mkdir(parents=True, exist_ok=True)
                (root / split / CLASSES[label] / path.name).write_bytes(path.read_bytes())
        else:
            (root / f"{split}.txt").write_text("".join(f"{path} {label}\n" for path, label in files))
    return corrupt


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("kind", ["videolist", "ssv2", "videofolder"])
def test_skip_bad_videos_drops_and_counts_undecodable_files_in_every_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, split: str
) -> None:
    _one_bad_video_per_split(tmp_path, kind)
    model = create_model(VIDEO, len(CLASSES), **TINY)
    strict = load_split(DataSpec.from_config(TrainConfig(data=DataConfig(dataset=kind, data_dir=str(tmp_path)))), split)
    with pytest.raises(VideoDecodeError, match=r"corrupt\.mp4: cannot open"):
        [strict.build(model, "train")[i] for i in range(3)]
    config = TrainConfig(data=DataConfig(dataset=kind, data_dir=str(tmp_path), skip_bad_videos=True))
    with caplog.at_level(logging.WARNING):
        lenient = load_split(DataSpec.from_config(config), split)
    assert lenient.skipped == 1 and len(lenient.source) == 2 and "skipped 1 of 3 videos" in caplog.text
    assert [item[1] for item in lenient.build(model, "train")] == [0, 1]  # the good clips still train


def test_skip_flags_name_the_right_one_and_only_apply_where_files_can_be_skipped(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    for kind in VIDEO_DATASETS:  # the image flag is never silently ignored for video
        with pytest.raises(ValueError, match=f"{kind!r} is a video dataset: use data.skip_bad_videos"):
            DataConfig(dataset=kind, skip_bad_images=True)
    with pytest.raises(ValueError, match="data.skip_bad_videos apply to video datasets only"):
        DataConfig(dataset="imagefolder", skip_bad_videos=True)
    with pytest.raises(ValueError, match="'synthetic-video' has none to skip"):
        load_split(DataSpec("synthetic-video", skip_bad=True), "train")
    code, _, err = run_cli(
        ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.skip_bad_images", "true"], capsys
    )
    assert code == 2 and "'videolist' is a video dataset: use data.skip_bad_videos" in err


def test_videofolder_labels_follow_the_train_class_folders(tmp_path: Path) -> None:
    for split, names in (("train", CLASSES), ("test", ["wave"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            write_video(tmp_path / split / name / "a.mp4", num_frames=4, size=(16, 16))
    test = load_split(DataSpec("videofolder", str(tmp_path)), "test")
    assert test.classes == CLASSES and [e.label for e in test.source.entries] == [2]  # type: ignore[union-attr]


@pytest.mark.parametrize("release", ["ssv2", "hmdb51"])
def test_prepare_command_writes_lists_the_kind_reads(
    release: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "release"
    if release == "ssv2":
        (root / "videos").mkdir(parents=True)
        (root / "labels.json").write_text(json.dumps({"Pushing something": "0", "Pulling something": "1"}))
        for split, ids in (("train", ["1", "2"]), ("validation", ["3"])):
            records = [{"id": i, "template": "Pulling [something]" if i == "2" else "Pushing [something]"} for i in ids]
            (root / f"{split}.json").write_text(json.dumps(records))
            for i in ids:
                (root / "videos" / f"{i}.webm").touch()
        args = ["prepare", "ssv2", "--root", str(root), "--out", str(tmp_path / "out"), "--relative"]
    else:
        (root / "splits").mkdir(parents=True)
        for name, flags in (("jump", "a.avi 1\nb.avi 2\n"), ("sit", "c.avi 1\nd.avi 0\n")):
            (root / "splits" / f"{name}_test_split1.txt").write_text(flags)
            (root / "videos" / name).mkdir(parents=True)
            for line in flags.splitlines():
                (root / "videos" / name / line.split()[0]).touch()
        args = ["prepare", "hmdb51", "--root", str(root), "--out", str(tmp_path / "out"), "--split", "1"]
    code, printed, _ = run_cli(args, capsys)
    assert code == 0 and printed is not None and printed["videos"] == {"train": 2, "test": 1}
    train = load_split(DataSpec(release, str(tmp_path / "out")), "train")
    assert train.classes == (["Pushing something", "Pulling something"] if release == "ssv2" else ["jump", "sit"])
    assert all(e.path.is_file() for e in train.source.entries)  # type: ignore[union-attr]


VIDEO_ROWS = {  # recipe: (method, bottleneck, paper top-1)
    "full": ("full", None), "linear": ("linear", None), "vpt": ("vpt", None),
    "adaptformer1": ("adaptformer", 1), "adaptformer4": ("adaptformer", 4), "adaptformer64": ("adaptformer", 64),
}  # fmt: skip
VIDEO_RECIPES = [f"{d}_{m}" for d in ("ssv2", "hmdb51") for m in VIDEO_ROWS]


@pytest.mark.parametrize("name", VIDEO_RECIPES)
def test_video_recipes_follow_table5(name: str) -> None:
    assert name in recipe_names()
    cfg = parse_mapping(load_recipe(name))
    dataset, row = name.split("_")
    method, bottleneck = VIDEO_ROWS[row]
    m, o, v = cfg.model, cfg.optim, cfg.data.video
    assert (cfg.data.dataset, m.method_name, m.backbone) == (dataset, method, "video_vit_base_patch16_224")
    assert m.checkpoint_source == "videomae" and m.head == "paper" and v.num_frames == 8
    if bottleneck is not None:
        assert (m.method.bottleneck, m.method.scale, m.method.dropout) == (bottleneck, 0.1, 0.0)
    assert (o.optimizer, o.momentum, o.weight_decay, o.effective_batch) == ("sgd", 0.9, 0.0, 1024)
    assert (o.epochs, o.warmup_epochs) == (90, 10.0) and scaled_lr(o.blr, 1024) == pytest.approx(0.4)
    assert (v.test_clips, v.test_crops, cfg.data.flip) == (4, 3, False)
    sampling = DataSpec.from_config(cfg).video.resolved(dataset)
    assert (sampling.sampling, sampling.sampling_stride) == (("segment", 4) if dataset == "ssv2" else ("dense", 4))


@pytest.mark.parametrize(
    ("name", "classes", "trainable"),
    [("ssv2_adaptformer64", 174, 1_324_974), ("hmdb51_adaptformer64", 51, 1_230_387),
     ("ssv2_linear", 174, 769 * 174 + 1_536)],
)  # fmt: skip
def test_video_recipes_build_the_paper_parameter_counts(name: str, classes: int, trainable: int) -> None:
    with torch.device("meta"):  # shapes only: ViT-B without allocating its weights
        model = build_model(parse_mapping(load_recipe(name)), classes)
    assert count_trainable(model) == trainable


SYNTHETIC_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_frames": 4,
                    "tubelet_size": 4}  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_adaptformer_learns_the_synthetic_motion_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """4 directions (chance 25%); a frozen random tiny video ViT, AdaptFormer-64 + head trained for 600 steps.

    One tubelet spans the 4 frames, so every token sees the motion; with an untrained frozen backbone that is what
    makes the run learn reliably (measured: > 80% for each of 6 seeds; about 40-60 s on 2 CPU cores).
    """
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.safetensors"
    save_file(build_backbone(VIDEO, 4, **SYNTHETIC_KWARGS).state_dict(), str(backbone))
    out = tmp_path / "run"
    args = [
        "train", "--model.backbone", VIDEO, "--model.kwargs", json.dumps(SYNTHETIC_KWARGS), "--model.checkpoint",
        str(backbone), "--data.dataset", "synthetic-video", "--data.options", "{num_samples: 2048, num_classes: 4}",
        "--model.method.bottleneck", "64", "--model.method.dropout", "0", "--optim.optimizer", "adamw",
        "--optim.lr", "3e-3", "--optim.epochs", "10", "--optim.warmup_epochs", "1", "--optim.batch_size", "32",
        "--data.val_split", "128", "--run.eval_every", "5", "--optim.precision", "fp32", "--data.num_workers", "0",
        "--run.output_dir", str(out),
    ]  # fmt: skip
    code, summary, _ = run_cli(args, capsys)
    assert code == 0 and summary is not None
    assert summary["test"]["n"] == 2048 and summary["test"]["acc1"] > 60.0
    code, printed, _ = run_cli(["eval", "--adapter", str(out / "adapter")], capsys)
    assert code == 0 and printed is not None and printed["acc1"] == summary["test"]["acc1"]
