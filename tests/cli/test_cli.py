"""The ``adaptformer`` command line end to end, on a miniature CIFAR-100 release written in a temp dir."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from tests.conftest import VIT

import adaptformer.cli.evaluate
import adaptformer.engine.train
from adaptformer.cli import build_parser, main
from adaptformer.engine.loaders import resolve_num_workers
from adaptformer.factory import build_backbone

TINY_JSON = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'
CLASSES = [f"fruit_{i}" for i in range(100)]
USED = 4  # the miniature release only has images of the first 4 classes
COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 40, 220], [230, 220, 40]])


def _images(labels: list[int], seed: int) -> np.ndarray:
    """Class-coloured 32x32 images with noise: (N, 32, 32, 3) uint8."""
    noise = np.random.default_rng(seed).normal(0, 25, size=(len(labels), 32, 32, 3))
    return np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_cifar100(root: Path) -> Path:
    """A miniature CIFAR-100 python release (64 train, 21 test images); checksums will not match the official."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n, seed in (("train", 64, 1), ("test", 21, 2)):
        labels = [i % USED for i in range(n)]
        rows = _images(labels, seed).transpose(0, 3, 1, 2).reshape(n, -1)  # (N, H, W, C) -> (N, 3072) C-major
        with (folder / split).open("wb") as f:
            pickle.dump({"data": rows, "fine_labels": labels, "coarse_labels": [0] * n}, f)
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": CLASSES, "coarse_label_names": ["x"]}, f)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data, a stand-in pre-trained backbone file, and one finished 1-epoch training run."""
    root = tmp_path_factory.mktemp("cli")
    data = write_cifar100(root / "data")
    backbone = root / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIT, 10, **json.loads(TINY_JSON)).state_dict(), str(backbone))
    out = root / "run"
    args = train_args(data, backbone, out)
    assert main(args) == 0
    return {"data": data, "backbone": backbone, "out": out, "root": root}


def train_args(data: Path, backbone: Path, out: Path) -> list[str]:
    return [
        "train", "--model.backbone", VIT, "--model.kwargs", TINY_JSON, "--model.method", "adaptformer",
        "--model.method.bottleneck", "8", "--data.dataset", "cifar100", "--data.data_dir", str(data),
        "--data.verify_checksums", "false", "--optim.epochs", "1", "--optim.warmup_epochs", "0",
        "--optim.batch_size", "8", "--optim.effective_batch", "16", "--optim.blr", "4", "--data.val_split", "8",
        "--model.checkpoint", str(backbone), "--model.checkpoint_source", "timm", "--run.output_dir", str(out),
        "--data.num_workers", "0", "--optim.precision", "fp32", "--run.seed", "1",
    ]  # fmt: skip


def test_train_writes_the_documented_outputs(setup: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = setup["out"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) >= {"epoch", "lr", "train_loss", "val_acc1", "val_acc5", "seconds", "images/s"}
    assert record["epoch"] == 1 and record["lr"] > 0
    assert {p.name for p in (out / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["classes"] == CLASSES
    test = json.loads((out / "test.json").read_text())
    assert test["n"] == 21 and test["split"] == "test"


def test_eval_reproduces_the_logged_test_accuracy(
    setup: dict[str, Path], capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    capsys.readouterr()
    caplog.set_level(logging.INFO, logger="adaptformer.engine.progress")
    args = ["eval", "--model.backbone", VIT, "--adapter", str(setup["out"] / "adapter"), "--data.dataset", "cifar100",
            "--data.data_dir", str(setup["data"]), "--split", "test", "--data.verify_checksums", "false"]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = json.loads((setup["out"] / "test.json").read_text())
    assert set(printed) == {"acc1", "acc5", "loss", "n", "skipped"}
    assert printed["n"] == 21 and printed["skipped"] == 0
    assert printed["acc1"] == logged["acc1"] and printed["acc5"] == logged["acc5"]
    assert printed["loss"] == pytest.approx(logged["loss"], rel=1e-6)
    shown = [r.getMessage() for r in caplog.records if r.name == "adaptformer.engine.progress"]
    assert shown and shown[-1].startswith("cifar100 test [") and "samples 21 " in shown[-1]  # eval shows progress


def test_config_file_repeats_the_run_exactly(setup: dict[str, Path]) -> None:
    again = setup["root"] / "again"
    assert main(["train", "--config", str(setup["out"] / "config.yaml"), "--run.output_dir", str(again)]) == 0
    a = load_file(str(setup["out"] / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(again / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        json.loads((again / "test.json").read_text())["acc1"]
        == json.loads((setup["out"] / "test.json").read_text())["acc1"]
    )


def test_stopped_run_resumes_from_its_config_to_the_same_adapter(setup: dict[str, Path]) -> None:
    out = setup["root"] / "stopped"
    args = train_args(setup["data"], setup["backbone"], out)
    assert main([*args, "--run.stop_after_steps", "2"]) == 0
    assert not (out / "test.json").exists() and (out / "checkpoint.pt").is_file()
    assert main(["train", "--config", str(out / "config.yaml"), "--run.resume", "true"]) == 0
    a = load_file(str(setup["out"] / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_prints_class_names(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = []
    for label in range(USED):
        path = tmp_path / f"img{label}.png"
        Image.fromarray(_images([label], seed=10 + label)[0]).save(path)
        paths.append(str(path))
    capsys.readouterr()
    assert main(["predict", "--adapter", str(setup["out"] / "adapter"), "--top-k", "3", "--json", *paths]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["image"] for r in rows] == paths
    for row in rows:
        assert len(row["top"]) == 3 and all(t["class"] == CLASSES[t["index"]] for t in row["top"])
        assert sum(t["prob"] for t in row["top"]) <= 1.0 + 1e-6
    assert main(["predict", "--adapter", str(setup["out"] / "adapter"), "--top-k", "1", paths[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{paths[0]}: fruit_")


def test_eval_rejects_a_dataset_with_another_class_count(setup: dict[str, Path], capsys) -> None:
    args = ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.dataset", "synthetic",
            "--data.options", "{num_samples: 8, image_size: 32}"]  # fmt: skip
    assert main(args) == 2
    assert "head has 100 classes but synthetic test has 10" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "match"),
    [
        ("--data.skip_bad_videos", "--data.skip_bad_videos apply to video datasets only; 'cifar100' is an image"),
        (
            "--data.skip_bad_images",
            "skip_bad_images applies to kinds with one file per image (food101, imagefolder, vtab1k, fgvc, cub200, "
            "multilabel-list, multilabel-csv, nuswide, coco, imagenet-v2, imagenet-sketch, imagenet-c, imagenet-r, "
            "imagenet-a); 'cifar100' has no image files that could be skipped",
        ),
    ],
)
def test_eval_skip_flags_never_pass_silently(setup: dict[str, Path], capsys, flag: str, match: str) -> None:
    args = ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.dataset", "cifar100",
            "--data.data_dir", str(setup["data"]), "--data.verify_checksums", "false", flag, "true"]  # fmt: skip
    assert main(args) == 2
    assert match in capsys.readouterr().err


def test_missing_dataset_is_an_error_showing_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--data.dataset", "cifar100", "--data.data_dir", str(tmp_path / "nowhere"),
            "--run.output_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "root folder" in err and "cifar-100-python/" in err


def test_train_help_shows_every_config_field_and_subcommands_are_wired(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    flags = ("--recipe NAME|FILE", "--config FILE", "--optim.effective_batch", "--data.val_split", "--run.resume",
             "--run.stop_after_steps", "--data.verify_checksums", "--model.kwargs", "--model.method NAME",
             "--optim.precision {auto,fp32,bf16,fp16}", "--speed.frozen_backward")  # fmt: skip
    for flag in flags:
        assert flag in text
    with pytest.raises(SystemExit):
        main(["train", "--model.method.help", "vpt"])
    assert "--model.method.num_tokens" in capsys.readouterr().out  # every knob of a method, with its help
    parser = build_parser()
    for command in ("demo", "eval", "predict", "recipes"):
        assert parser.parse_args(_minimal(command)).func.__name__ == f"_cmd_{command}"


def _minimal(command: str) -> list[str]:
    return {"eval": ["eval", "--adapter", "x"], "predict": ["predict", "--adapter", "x", "a.png"]}.get(
        command, [command]
    )


def test_params_and_recipes_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model.backbone", VIT, "--num-classes", "10", "--model.method", "linear"]) == 0
    assert "trainable" in capsys.readouterr().out
    assert main(["params", "--recipe", "cifar100_adaptformer64", "--num-classes", "100"]) == 0
    assert "1,266,532" in capsys.readouterr().out  # paper: AdaptFormer-64 on CIFAR-100
    assert main(["recipes"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert len(names) == 35 + 4 + 5 + 14 + 120 + 48 + 40 and "svhn_full" in names and "hmdb51_swin_adaptformer" in names
    # Table 1: 30, Table 7: 5, Table 2: 4, Table 6: 5, ablations: 14; VTAB-1k / FGVC: (19 tasks + 5 datasets) x 5 rows;
    # segmentation: (ADE20K, VOC) x 4 backbones x 5 rows
    assert "nuswide_adaptformer64" in names and "ade20k_swinl_adaptformer64" in names
    assert "vtab_cifar_lora8" in names and "ssv2_in21k_adaptformer64" in names and "ssv2_vpt64" in names


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (
            "adaptformer",
            "error: cannot attach adapters to ResNet with blocks: timm.models.resnet.BasicBlock; supported: vit",
        ),
        (
            "vpt",
            "error: VPT supports timm ViT blocks (timm.models.vision_transformer.Block); ResNet has "
            "['timm.models.resnet.BasicBlock']",
        ),
    ],
)
def test_unsupported_backbone_is_a_user_error(method: str, message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model.backbone", "resnet18", "--num-classes", "10", "--model.method", method]) == 2
    assert message in capsys.readouterr().err


def test_model_kwargs_the_model_does_not_take_are_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kwargs = TINY_JSON.replace("}", ', "colour": "red"}')
    args = ["train", "--data.dataset", "synthetic", "--model.backbone", VIT, "--model.kwargs", kwargs,
            "--run.output_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: model kwargs ['colour'] do not fit '{VIT}'" in err  # only the user's bad key, none of ours
    assert "unexpected keyword argument 'colour'" in err


def test_a_type_error_from_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug, not the user's mistake")

    monkeypatch.setattr(adaptformer.engine.train, "create_model", broken)  # what `params` calls, through build_model
    with pytest.raises(TypeError, match="a bug, not the user's mistake"):
        main(["params", "--model.backbone", VIT, "--num-classes", "10"])


def _exit_code(args: list[str]) -> int:
    """main's return code, or the code argparse exits with for a flag it refuses itself."""
    try:
        return main(args)
    except SystemExit as done:
        return int(done.code or 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
        (["--split", "nonsense"], "error: --split 'nonsense': 'cifar100' has the splits ['train', 'test']"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["--run.device", "gpu0"], "argument --run.device: device 'gpu0' is not auto or a torch device"),
        (["--model.init_seed", "-1"], "argument --model.init_seed: expected an integer >= 0, got -1"),
        (["--model.checkpoint_source", "caffe"], "argument --model.checkpoint_source: invalid choice: 'caffe'"),
        (["--model.kwargs", "{img_size:32}"], "--model.kwargs: '{img_size:32}': the mapping: key 'img_size:32'"),
        (["--data.num_workers", "-1"], "error: --data.num_workers must be >= 0, got -1"),
        (["--data.options", "{colour: 1}"], "error: --data.options ['colour'] are not options of 'cifar100'"),
    ],
)  # fmt: skip
def test_eval_flags_with_impossible_values_are_errors_naming_them(
    setup: dict[str, Path], capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    args = ["eval", "--adapter", str(setup["out"] / "adapter"), "--data.dataset", "cifar100",
            "--data.data_dir", str(setup["data"]), "--data.verify_checksums", "false", *flags]  # fmt: skip
    assert _exit_code(args) == 2
    assert message in capsys.readouterr().err


def test_params_takes_model_kwargs_and_checks_the_checkpoint_file(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    common = ["params", "--model.backbone", VIT, "--model.kwargs", TINY_JSON, "--num-classes", "100",
              "--model.method.bottleneck", "8"]  # fmt: skip
    assert main([*common, "--model.checkpoint", str(setup["backbone"])]) == 0
    with_file = capsys.readouterr().out
    assert main(common) == 0
    assert capsys.readouterr().out == with_file  # shapes only: the same report, the file is not read
    assert "adapters" in with_file
    missing = setup["root"] / "no_such_backbone.safetensors"
    assert main([*common, "--model.checkpoint", str(missing)]) == 2
    assert f"error: --model.checkpoint {missing}: no such file or folder" in capsys.readouterr().err
    hf_folder = setup["root"] / "hf_videomae"  # a folder source (hf-videomae) is a checkpoint too, as for train
    hf_folder.mkdir(exist_ok=True)
    assert main([*common, "--model.checkpoint", str(hf_folder)]) == 0
    assert capsys.readouterr().out == with_file
    assert main(["params", "--model.backbone", VIT, "--model.kwargs", "{imgsize: 32}"]) == 2
    assert f"error: model kwargs ['imgsize'] do not fit '{VIT}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["ssv2", "--video-ext", "mp4"], "argument --video-ext: expected a file extension with its dot, e.g. .mp4"),
        (["ssv2", "--video-dir", "NOWHERE"], "argument --video-dir: no such folder"),
        (["hmdb51", "--split-dir", "NOWHERE"], "argument --split-dir: no such folder"),
        (["hmdb51", "--split", "4"], "argument --split: invalid choice: 4"),
    ],
)
def test_prepare_flags_with_impossible_values_are_errors_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    flags = [str(tmp_path / "nowhere") if f == "NOWHERE" else f for f in flags]
    assert _exit_code(["prepare", *flags, "--root", str(tmp_path), "--out", str(tmp_path / "lists")]) == 2
    assert message in capsys.readouterr().err


def test_a_short_run_with_the_defaults_trains_without_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder, capsys: pytest.CaptureFixture
) -> None:
    """0.1: --epochs below 20 needed --warmup-epochs, and 4 loader workers warned on a 2-core machine."""
    args = ["train", "--model.backbone", "vit_shapes_patch8_32", "--data.dataset", "synthetic",
            "--data.options", "{num_samples: 24, image_size: 32}", "--optim.epochs", "1", "--optim.batch_size", "8",
            "--optim.precision", "fp32", "--run.output_dir", str(tmp_path)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    workers = resolve_num_workers(None, 1)
    assert "optim.warmup_epochs null: 0.2 warmup epochs (20% of 1" in caplog.text
    assert f"data.num_workers null: {workers} loader workers per process" in caplog.text
    assert not [w for w in recwarn if "worker" in str(w.message)]  # DataLoader's "suggested max number of worker"
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert recorded["optim"]["warmup_epochs"] is None and recorded["data"]["num_workers"] is None


def _stopped(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt  # Ctrl-C, wherever it lands


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["train", "--data.dataset", "synthetic", "--run.output_dir", "out", "--run.overwrite", "true"],
         "interrupted: adaptformer train stopped; to continue from its last saved state: adaptformer train "
         "--data.dataset synthetic --run.output_dir out --run.resume true"),
        (["eval", "--adapter", "out/adapter"], "interrupted: adaptformer eval stopped"),
    ],
)  # fmt: skip
def test_ctrl_c_leaves_one_line_naming_what_stopped_and_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    monkeypatch.setattr(adaptformer.engine.train, "train", _stopped)
    monkeypatch.setattr(adaptformer.cli.evaluate, "trained_model", _stopped)
    assert main(argv) == 130  # the shell's code for a process stopped by SIGINT
    assert capsys.readouterr().err.splitlines() == [line]
