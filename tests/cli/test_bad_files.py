"""Every reader of a file format, given a damaged file, raises the library's error naming the file and what was
expected (never a raw KeyError / UnpicklingError / RuntimeError / SafetensorError), and the command line shows it as
one ``error:`` line. Readers: backbone checkpoints (.pth, .safetensors, a Hugging Face VideoMAE directory), adapter
folders (adapter_config.json, adapter_model.safetensors, 0.1's task.json) and the training state read on resume."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import VIT, tiny_kwargs
from tests.paths import FIXTURES

from adaptformer import build_backbone, create_model, save_adapter
from adaptformer.backbones import SHAPES_VIT_FILE
from adaptformer.cli import main
from adaptformer.engine.checkpointing import (
    TrainingStateError,
    load_task_tensors,
    load_training_state,
    save_training_state,
)
from adaptformer.errors import CheckpointError
from adaptformer.inference.evaluate import load_trained_model
from adaptformer.methods.state import task_state_dict
from adaptformer.saving import AdapterFileError

V01 = FIXTURES / "v0_1" / "adaptformer_digits"
VIDEO = "video_vit_base_patch16_224"
VIDEO_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
LIBRARY_ERRORS = (CheckpointError, AdapterFileError, TrainingStateError, FileNotFoundError)


def _vit_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(VIT, num_classes=3, **tiny_kwargs(VIT)).state_dict()


def _hf_state() -> dict[str, torch.Tensor]:
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)  # fmt: skip
    return VideoMAEModel(config).state_dict()


def _saved_adapter(directory: Path) -> Path:
    torch.manual_seed(1)
    save_adapter(create_model(VIT, 3, init_seed=1, **tiny_kwargs(VIT)), directory)
    return directory


def _training_state(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = create_model(VIT, 3, **tiny_kwargs(VIT))
    tensors = {k: v.detach().clone() for k, v in task_state_dict(model).items()}
    save_training_state(path, {"config": {}, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "model": tensors,
                               "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": [], "best_val": None,
                               "best_epoch": None, "epoch_stats": {}})  # fmt: skip
    return tensors


def _resume(path: Path) -> None:
    state = load_training_state(path)
    torch.manual_seed(1)
    load_task_tensors(create_model(VIT, 3, **tiny_kwargs(VIT)), state["model"], path)


# Each reader: (write a good file under a tmp dir -> the file to damage, read it the way the library does).
Reader = tuple[Callable[[Path], Path], Callable[[Path], object]]


def _checkpoint(suffix: str) -> Reader:
    def write(tmp: Path) -> Path:
        path = tmp / f"weights{suffix}"
        if suffix == ".safetensors":
            save_file(_vit_state(), path)
        else:
            torch.save({"model": _vit_state()}, path)
        return path

    return write, lambda path: build_backbone(VIT, 3, checkpoint=path, **tiny_kwargs(VIT))


def _hf_dir() -> Reader:
    def write(tmp: Path) -> Path:
        (tmp / "hf").mkdir()
        (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "videomae"}))
        save_file(_hf_state(), tmp / "hf" / "model.safetensors")
        return tmp / "hf" / "model.safetensors"

    def read(path: Path) -> object:
        return build_backbone(VIDEO, 3, checkpoint=path.parent, checkpoint_source="hf-videomae", **VIDEO_TINY)

    return write, read


def _adapter_file(name: str) -> Reader:
    return lambda tmp: _saved_adapter(tmp / "adapter") / name, lambda path: load_trained_model(path.parent)


def _v01_task() -> Reader:
    def write(tmp: Path) -> Path:
        shutil.copytree(V01, tmp / "v01")
        return tmp / "v01" / "task.json"

    return write, lambda path: load_trained_model(path.parent, checkpoint=str(SHAPES_VIT_FILE))


def _state_file() -> Reader:
    def write(tmp: Path) -> Path:
        _training_state(tmp / "checkpoint.pt")
        return tmp / "checkpoint.pt"

    return write, _resume


READERS: dict[str, Reader] = {
    "checkpoint.pth": _checkpoint(".pth"),
    "checkpoint.bin": _checkpoint(".bin"),
    "checkpoint.safetensors": _checkpoint(".safetensors"),
    "hf-videomae dir": _hf_dir(),
    "adapter_config.json": _adapter_file("adapter_config.json"),
    "adapter_model.safetensors": _adapter_file("adapter_model.safetensors"),
    "task.json (0.1)": _v01_task(),
    "checkpoint.pt (resume)": _state_file(),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _text(path: Path) -> None:
    path.write_bytes(b"random bytes here" * 30)  # torch.load raises an IndexError on these


def _missing(path: Path) -> None:
    path.unlink()


def _rewrite_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _rewrite_tensors(path: Path, edit: Callable[[dict], dict]) -> None:
    tensors = edit(load_file(path))
    save_file(tensors, path)
    config = path.parent / "adapter_config.json"
    if config.is_file():  # keep the recorded SHA-256 valid, so that the content itself is what is wrong
        _rewrite_json(config, lambda d: {**d, "weights_sha256": None})


def _renamed(tensors: dict) -> dict:
    first = sorted(tensors)[-1]
    return {("renamed." + k if k == first else k): v for k, v in tensors.items()}


def _reshaped(tensors: dict) -> dict:
    first = sorted(k for k, v in tensors.items() if v.ndim >= 1 and v.numel() > 1)[-1]
    return {**tensors, first: tensors[first].flatten()[:-1].contiguous()}


def _wrong_keys(reader: str) -> Callable[[Path], None]:
    """A valid container (loads as its format) whose keys are not the expected ones."""
    if reader in ("checkpoint.pth", "checkpoint.bin"):
        return lambda p: torch.save({"model": _renamed(torch.load(p)["model"])}, p)
    if reader in ("checkpoint.safetensors", "hf-videomae dir", "adapter_model.safetensors"):
        return lambda p: _rewrite_tensors(p, _renamed)
    if reader == "adapter_config.json":
        return lambda p: _rewrite_json(p, lambda d: {k: v for k, v in d.items() if k != "backbone"})
    if reader == "task.json (0.1)":
        return lambda p: _rewrite_json(p, lambda d: {**d, "colour": "red"})
    return lambda p: torch.save({"format": "adaptformer-training-state", "format_version": 1, "epoch": 0}, p)


def _wrong_types(reader: str) -> Callable[[Path], None]:
    """A valid container whose values have the wrong type or shape."""
    if reader in ("checkpoint.pth", "checkpoint.bin"):
        return lambda p: torch.save({"model": _reshaped(torch.load(p)["model"])}, p)
    if reader in ("checkpoint.safetensors", "hf-videomae dir", "adapter_model.safetensors"):
        return lambda p: _rewrite_tensors(p, _reshaped)
    if reader == "adapter_config.json":
        return lambda p: _rewrite_json(p, lambda d: {**d, "num_classes": "three", "source": [1]})
    if reader == "task.json (0.1)":
        return lambda p: _rewrite_json(p, lambda d: {**d, "model_kwargs": "img_size=32", "classes": 7})

    def state(path: Path) -> None:
        saved = torch.load(path, weights_only=True)
        torch.save({**saved, "model": _reshaped(saved["model"]), "epoch": "one"}, path)

    return state


DAMAGE: dict[str, Callable[[str], Callable[[Path], None]]] = {
    "truncated": lambda reader: _truncate,
    "random bytes": lambda reader: _random_bytes,
    "text": lambda reader: _text,
    "wrong keys": _wrong_keys,
    "wrong types": _wrong_types,
    "missing": lambda reader: _missing,
}


# What a message says about the expectation the file failed.
EXPECTATION = re.compile(r"expected|must be|missing|mismatch|differs|unknown|not found|does not exist")
CASES = [
    (reader, damage)
    for reader in READERS
    for damage in DAMAGE
    if (reader, damage) != ("task.json (0.1)", "missing")  # optional: 0.1 wrote it only for folders training saved
]


@pytest.mark.parametrize("reader, damage", CASES)
def test_a_damaged_file_is_named_in_a_library_error(tmp_path: Path, reader: str, damage: str) -> None:
    write, read = READERS[reader]
    path = write(tmp_path)
    read(path)  # the undamaged file reads
    DAMAGE[damage](reader)(path)
    with pytest.raises(LIBRARY_ERRORS) as raised:
        read(path)
    message = str(raised.value)
    given = path.parent if reader == "hf-videomae dir" else path  # the path the user gave
    assert str(given) in message or (damage == "missing" and str(path.parent) in message), message
    assert EXPECTATION.search(message), message


def test_a_v01_folder_without_task_json_still_reads(tmp_path: Path) -> None:
    write, read = READERS["task.json (0.1)"]
    _missing(write(tmp_path))
    model, info = read(tmp_path / "v01" / "task.json")
    assert info.classes is None and info.training is None and model.num_classes == 10


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "wrong keys", "wrong types"])
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_the_command_line_shows_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, damage: str
) -> None:
    path = _saved_adapter(tmp_path / "adapter") / name
    DAMAGE[damage](name)(path)
    assert main(["predict", "--adapter", str(path.parent), str(tmp_path / "any.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "wrong keys", "wrong types"])
def test_a_damaged_backbone_checkpoint_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    adapter = _saved_adapter(tmp_path / "adapter")
    write, _ = READERS["checkpoint.pth"]
    path = write(tmp_path)
    DAMAGE[damage]("checkpoint.pth")(path)
    assert main(["predict", "--adapter", str(adapter), "--model.checkpoint", str(path), str(tmp_path / "any.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}"), err
