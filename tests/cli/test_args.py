"""The backbone argument group of every command that rebuilds an adapter's backbone (:mod:`adaptformer.cli.args`):
train's names (``--model.checkpoint``, ``--run.device``, ...), the 0.2 spellings accepted with one warning line naming
the new flag, two spellings with different values refused naming both, and every command reading the group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from adaptformer import AdaptFormerConfig, create_model, save_adapter
from adaptformer.cli import build_parser, main
from adaptformer.cli.args import BACKBONE_FLAGS, DEVICE_FLAG, BackboneFlag, adapter_names
from adaptformer.saving import TrainingRecord

NAME = "vit_shapes_patch8_32"
# command -> what it needs besides the flags under test (values are never read: only parsed)
COMMANDS: dict[str, list[str]] = {
    "eval": ["--adapter", "A"],
    "predict": ["--adapter", "A", "photo.png"],
    "inspect": ["--adapter", "A"],
    "export": ["--adapter", "A"],
    "serve": ["--adapter", "A"],
    "robustness": ["--adapter", "A"],
}
RUNS_THE_MODEL = ("eval", "predict", "inspect", "serve", "robustness")  # export checks on the CPU: no device flag
# new flag -> (text, parsed value, another text)
VALUES: dict[str, tuple[str, Any, str]] = {
    "--model.backbone": ("vit_small_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"),
    "--model.checkpoint": ("weights.pth", "weights.pth", "other.pth"),
    "--model.checkpoint_source": ("mae", "mae", "timm"),
    "--model.kwargs": ("{img_size: 32}", {"img_size": 32}, "{img_size: 64}"),
    "--model.init_seed": ("3", 3, "4"),
    "--run.device": ("cpu", "cpu", "cuda:1"),
}
CASES = [
    pytest.param(command, flag, id=f"{command}{flag.name}")
    for command in COMMANDS
    for flag in (*BACKBONE_FLAGS, *((DEVICE_FLAG,) if command in RUNS_THE_MODEL else ()))
]


def _parse(command: str, *flags: str) -> Any:
    args, unknown = build_parser().parse_known_args([command, *flags, *COMMANDS[command]])
    assert unknown == []
    return args


def test_the_table_covers_every_renamed_flag() -> None:
    assert set(VALUES) == {f.name for f in (*BACKBONE_FLAGS, DEVICE_FLAG)}
    assert {f.old for f in BACKBONE_FLAGS} == {"--model", "--checkpoint", "--checkpoint-source", "--model-kwargs",
                                               "--init-seed"}  # fmt: skip
    assert DEVICE_FLAG.old == "--device"


@pytest.mark.parametrize(("command", "flag"), CASES)
def test_every_command_takes_trains_names_without_a_warning(
    command: str, flag: BackboneFlag, capsys: pytest.CaptureFixture[str]
) -> None:
    text, value, _ = VALUES[flag.name]
    assert getattr(_parse(command, flag.name, text), flag.dest) == value
    assert getattr(_parse(command, f"{flag.name}={text}"), flag.dest) == value
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("command", "flag"), CASES)
def test_a_0_2_spelling_still_works_with_one_warning_naming_the_new_flag(
    command: str, flag: BackboneFlag, capsys: pytest.CaptureFixture[str]
) -> None:
    text, value, _ = VALUES[flag.name]
    assert getattr(_parse(command, flag.old, text, flag.old, text), flag.dest) == value
    warning = f"warning: {flag.old} is deprecated since 0.3; use {flag.name}"
    assert capsys.readouterr().err.splitlines() == [warning]  # once, though given twice


@pytest.mark.parametrize(("command", "flag"), CASES)
def test_both_spellings_with_different_values_are_an_error_naming_both(
    command: str, flag: BackboneFlag, capsys: pytest.CaptureFixture[str]
) -> None:
    text, value, other = VALUES[flag.name]
    for flags in ([flag.old, text, flag.name, other], [flag.name, other, flag.old, text]):
        with pytest.raises(SystemExit) as done:
            _parse(command, *flags)
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {flags[0]} " in err and f" and {flags[2]} " in err and f"give only {flag.name}" in err
    assert getattr(_parse(command, flag.old, text, flag.name, text), flag.dest) == value  # the same value: fine


def test_values_are_checked_under_either_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--run.device", "--device"):
        with pytest.raises(SystemExit):
            _parse("predict", flag, "gpu0")
        assert f"argument {flag}: device 'gpu0' is not auto or a torch device" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_new_names_and_hides_the_old_ones(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    flags = (*BACKBONE_FLAGS, *((DEVICE_FLAG,) if command in RUNS_THE_MODEL else ()))
    for flag in flags:
        assert f"{flag.name} " in text and f"[{flag.old} " not in text and f"  {flag.old} " not in text
    assert ("--run.device" in text) == (command in RUNS_THE_MODEL)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model(NAME, 10, method=AdaptFormerConfig(bottleneck=8), checkpoint="timm")
    root = tmp_path_factory.mktemp("args")
    return save_adapter(model, root / "run" / "adapter", training=TrainingRecord(dataset="digits"))


COMMAND_LINES = {  # each command on the adapter, up to the point where it rebuilds the backbone
    "eval": ["eval", "--adapter", "{a}"],
    "predict": ["predict", "--adapter", "{a}", "{image}"],
    "predict several": ["predict", "--adapter", "{a}", "--adapter", "{a}", "{image}"],
    "inspect": ["inspect", "--adapter", "{a}", "--num-samples", "2"],
    "export": ["export", "--adapter", "{a}"],
    "serve": ["serve", "--adapter", "{a}"],
    "robustness": ["robustness", "--adapter", "{a}", "--num-samples", "2"],
}


@pytest.mark.parametrize("command", COMMAND_LINES)
@pytest.mark.parametrize("flag", ["--model.backbone", "--model"])
def test_every_command_checks_the_backbone_it_is_given(
    command: str, flag: str, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    argv = [a.format(a=adapter, image=image) for a in COMMAND_LINES[command]]
    assert main([*argv, flag, "vit_small_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert f"error: {adapter} holds an adapter for '{NAME}', not for 'vit_small_patch16_224'" in err
    assert ("warning: --model is deprecated since 0.3; use --model.backbone" in err) == (flag == "--model")


def test_predict_is_the_same_under_either_spelling(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(image)
    base = ["predict", "--adapter", str(adapter), "--json", "--precision", "fp32", str(image)]
    assert main(base) == 0
    plain = capsys.readouterr()
    new = ["--model.backbone", NAME, "--model.checkpoint", "timm", "--model.checkpoint_source", "timm",
           "--run.device", "cpu"]  # fmt: skip
    assert main([*base, *new]) == 0
    spelled = capsys.readouterr()
    assert spelled.out == plain.out and spelled.err == plain.err
    assert json.loads(spelled.out)["top"]
    old = ["--model", NAME, "--checkpoint", "timm", "--checkpoint-source", "timm", "--device", "cpu"]
    assert main([*base, *old]) == 0
    deprecated = capsys.readouterr()
    assert deprecated.out == plain.out
    assert [line for line in deprecated.err.splitlines() if line.startswith("warning: ")] == [
        f"warning: {o} is deprecated since 0.3; use {n}" for o, n in zip(old[::2], new[::2], strict=True)
    ]


def test_adapter_takes_dir_or_name_equals_dir(tmp_path: Path) -> None:
    odd = tmp_path / "a=b"  # an existing folder whose name holds '=' stays a folder
    odd.mkdir()
    argv = ["serve", "--adapter", "cars=/x/seed0/adapter", "--adapter", str(odd), "--adapter", "/y/run7/adapter"]
    args = build_parser().parse_args(argv)
    assert args.adapter == ["/x/seed0/adapter", str(odd), "/y/run7/adapter"]
    assert adapter_names(args) == ["cars", "a=b", "run7"]
    plain = build_parser().parse_args(["serve", "--adapter", "/y/run7/adapter"])
    assert plain.adapter == ["/y/run7/adapter"] and adapter_names(plain) is None


def test_two_runs_that_both_end_in_seed0_adapter_are_served_by_name(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (20, 90, 200)).save(image)
    copies = []
    for study in ("cifar", "pets"):  # as the study writes them: STUDY/seed0/adapter
        copies.append(tmp_path / study / "seed0" / "adapter")
        shutil.copytree(adapter, copies[-1])
    assert main(["predict", "--adapter", str(copies[0]), "--adapter", str(copies[1]), str(image)]) == 2
    assert "two adapters would be task 'seed0'" in capsys.readouterr().err
    named = ["predict", "--adapter", f"cifar={copies[0]}", "--adapter", f"pets={copies[1]}", "--json", str(image)]
    assert main(named) == 0
    assert list(json.loads(capsys.readouterr().out)["tasks"]) == ["cifar", "pets"]
    with pytest.raises(SystemExit):  # NAME= without a folder
        main(["eval", "--adapter", "x=", "--data.dataset", "digits"])
    assert "expected DIR or NAME=DIR, got NAME= without a folder" in capsys.readouterr().err


def test_serve_needs_adapters_or_a_root_with_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "serve needs --adapter DIR (one or several) or --adapter-root DIR, or both" in capsys.readouterr().err
    assert main(["serve", "--adapter-root", str(tmp_path)]) == 2
    assert f"--adapter-root {tmp_path}: no adapter folder in it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--adapter-root", str(tmp_path / "nothing")])
    assert "no such folder" in capsys.readouterr().err
