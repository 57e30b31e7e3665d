"""Every command that writes, given a real fault (a read-only folder, an output path below a file, a folder where
``export --out`` wants a file, a full disk during ``train`` or ``export``), prints one ``error:`` line naming the path
and the cause, exits 2, and leaves the data safe: no temporary file, the last good training state unchanged, and the
run resumes, to the same adapter, once space is freed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import VIT, tiny_kwargs
from tests.disks import PAGE, ReadOnlyFolder, fill
from tests.engine.tiny_runs import cli_args, tiny_backbone_file

from adaptformer import create_model, save_adapter
from adaptformer.cli import main
from adaptformer.engine.checkpointing import STATE_FILE


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone_file(tmp_path_factory)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model = create_model(VIT, 3, init_seed=1, **tiny_kwargs(VIT))
    return save_adapter(model, tmp_path_factory.mktemp("run") / "adapter", classes=["a", "b", "c"])


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    return None


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_train_into_a_read_only_folder(
    read_only_folder: ReadOnlyFolder, backbone: Path, capsys: pytest.CaptureFixture
) -> None:
    out = read_only_folder.path / "run"
    assert main(cli_args(out, backbone)) == 2
    assert _error_line(capsys) == f"error: cannot write {out}: {read_only_folder.cause}"


def test_train_below_a_file(tmp_path: Path, backbone: Path, capsys: pytest.CaptureFixture) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's file")
    assert main(cli_args(notes / "run", backbone)) == 2
    assert _error_line(capsys) == f"error: cannot write {notes / 'run'}: a parent of the path is a file: {notes}"
    assert notes.read_text() == "the user's file"


@pytest.mark.parametrize(
    ("out", "cause"),
    [
        ("exports", "it is a folder; a file path is expected"),  # an existing folder
        ("notes.txt/model.onnx", "a parent of the path is a file: {tmp}/notes.txt"),
        ("read_only/model.onnx", None),  # the read-only folder's cause
    ],
)
def test_export_to_a_path_it_cannot_write(
    tmp_path: Path,
    adapter: Path,
    read_only_folder: ReadOnlyFolder,
    capsys: pytest.CaptureFixture,
    out: str,
    cause: str | None,
) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "notes.txt").write_text("the user's file")
    path = tmp_path / out
    assert main(["export", "--adapter", str(adapter), "--out", str(path)]) == 2
    cause = read_only_folder.cause if cause is None else cause.format(tmp=tmp_path)
    assert _error_line(capsys) == f"error: cannot write {path}: {cause}"
    assert list((tmp_path / "exports").iterdir()) == [] and (tmp_path / "notes.txt").read_text() == "the user's file"


def test_export_onto_a_full_disk(small_disk: Path, adapter: Path, capsys: pytest.CaptureFixture) -> None:
    filler = fill(small_disk, leave=16 * PAGE)  # the tiny network's file is about 450 kB
    path = small_disk / "model.onnx"
    assert main(["export", "--adapter", str(adapter), "--out", str(path)]) == 2
    assert _error_line(capsys) == f"error: cannot write {path}: no space left on the device"
    assert list(small_disk.iterdir()) == [filler]  # no temporary file, no sidecar
    filler.unlink()
    assert main(["export", "--adapter", str(adapter), "--out", str(path)]) == 0
    assert sorted(p.name for p in small_disk.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_prepare_onto_a_full_disk(small_disk: Path, capsys: pytest.CaptureFixture) -> None:
    fill(small_disk, leave=8 * PAGE)  # a few dozen of the dataset's PNG files
    out = small_disk / "digits"
    assert main(["prepare", "digits", "--out", str(out)]) == 2
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/\S+\.png: no space left on the device",
                        _error_line(capsys))  # fmt: skip
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(p.suffix == ".png" and p.stat().st_size > 0 for p in written)  # no temporary, no half


def test_a_full_disk_stops_train_with_one_line_and_the_run_resumes_after_freeing_space(
    small_disk: Path, tmp_path: Path, backbone: Path
) -> None:
    run, reference = small_disk / "run", tmp_path / "reference"
    every_step = ["--run.save_every_steps", "1"]
    assert main([*cli_args(run, backbone), *every_step, "--run.stop_after_steps", "1"]) == 0
    state = (run / STATE_FILE).read_bytes()  # ~100 kB: the next save cannot fit in what fill leaves
    filler = fill(small_disk, leave=4 * PAGE)  # room for config.yaml, which the resumed run writes first

    resume = ["train", "--config", str(run / "config.yaml"), "--run.resume", "true"]
    command = [sys.executable, "-m", "adaptformer.cli", *resume]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        done.stderr.strip().splitlines()[-1] == f"error: cannot write {run / STATE_FILE}: no space left on the device"
    )
    assert (run / STATE_FILE).read_bytes() == state and not list(run.rglob("*.tmp"))  # the last good state, whole

    filler.unlink()
    assert main(resume) == 0
    assert main([*cli_args(reference, backbone), *every_step]) == 0  # the same run, never interrupted
    weights = "adapter/adapter_model.safetensors"
    resumed, uninterrupted = load_file(run / weights), load_file(reference / weights)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # bit-exact
