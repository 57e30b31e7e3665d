"""A run's folder and what the user reads of a run: starting in a folder that holds files or that another process
trains in, resuming a copied run, leftovers of interrupted saves, file permissions, epochs numbered from 1, progress
lines and the training curves."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import changed
from tests.engine.tiny_runs import TINY, cli_args, tiny_backbone_file, tiny_config

import adaptformer.engine.curves
import adaptformer.engine.train
from adaptformer.cli import main
from adaptformer.engine import TrainConfig, load_training_state
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.records import MetricsLog
from adaptformer.engine.run_folder import CONFIG_HEADER, RunFolderError, check_run_folder, run_folder_lock
from adaptformer.engine.train import TrainResult, train
from adaptformer.files import atomic_write_bytes


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone_file(tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    yield


def earlier_run(out: Path) -> dict[str, bytes]:
    """Files as a finished earlier run leaves them (contents are stand-ins), and a file of the user's; returns every
    file's bytes, to compare after."""
    files = {
        "config.yaml": b"# adaptformer training configuration: earlier\n", "metrics.jsonl": b'{"epoch": 1}\n',
        "checkpoint.pt": b"earlier state", "test.json": b'{"acc1": 99.0}\n', "curves.png": b"earlier plot",
        "adapter/adapter_model.safetensors": b"earlier weights", "adapter/adapter_config.json": b"{}",
        "tensorboard/events.out.tfevents.1.host": b"earlier scalars", "notes.txt": b"the user's own file",
    }  # fmt: skip
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return files


def overwriting(cfg: TrainConfig) -> TrainConfig:
    return replace(cfg, run=replace(cfg.run, overwrite=True))


def contents(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# -- a new run and a folder that holds files (issue 12, item 12) ----------------------------------------------------


@pytest.mark.parametrize(
    ("files", "resume", "overwrite", "expected"),
    [
        ([], False, False, []),
        (["notes.txt"], False, False, "is not empty .*notes.txt.*none of these files is a run's: nothing is removed"),
        (["metrics.jsonl", "adapter/x"], False, False, r"--run.resume true, .*--run.overwrite true \(removes metrics"),
        ([".checkpoint.pt.1a2b.tmp"], False, False, []),  # only an interrupted save's leftover: removed, not refused
        (["checkpoint.pt", "metrics.jsonl"], True, False, []),
        (["config.yaml"], True, False, []),  # stopped before its first save: resume starts it from the beginning
        (["config.yaml", "adapter/x"], True, False, r"--run.resume true: .* to continue from, but holds adapter/"),
        (["notes.txt"], True, False, r"no checkpoint.pt to continue from, but holds notes.txt"),
        (
            ["metrics.jsonl", "adapter/adapter_model.safetensors", "notes.txt"],
            False,
            True,
            ["adapter", "metrics.jsonl"],
        ),
        # overwrite removes only what a run wrote: the user's own files under a run's file names are refused, kept
        (["metrics.jsonl", "adapter/mine.bin"], False, True, r"--run.overwrite true: .* holds adapter/, named like"),
        (["my/config.yaml"], False, True, r"--run.overwrite true: .* holds config.yaml, named like"),
        (["tensorboard/notes.txt"], False, True, r"holds tensorboard/, named like"),
    ],
)
def test_check_run_folder(tmp_path: Path, files: list[str], resume: bool, overwrite: bool, expected) -> None:
    for name in files:
        path = tmp_path / name.removeprefix("my/")  # my/config.yaml: a config.yaml that no run wrote
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONFIG_HEADER + "\n" if name == "config.yaml" else "my: settings\n")
    if isinstance(expected, str):
        with pytest.raises(RunFolderError, match=expected):
            check_run_folder(tmp_path, resume, overwrite)
    else:
        assert sorted(p.name for p in check_run_folder(tmp_path, resume, overwrite)) == expected
    assert check_run_folder(tmp_path / "new", resume, overwrite) == []


def test_a_new_run_refuses_a_folder_with_an_earlier_run_and_changes_nothing(tmp_path: Path, backbone: Path) -> None:
    before = earlier_run(tmp_path)
    with pytest.raises(RunFolderError) as error:
        train(tiny_config(tmp_path, backbone, epochs=1))
    message = str(error.value)
    assert f"--run.output_dir {tmp_path} is not empty" in message
    assert "--run.resume true" in message and "--run.overwrite true (removes config.yaml, metrics.jsonl" in message
    assert contents(tmp_path) == before


def test_a_folder_another_process_trains_in_is_refused(tmp_path: Path, backbone: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    other = os.open(out, os.O_RDONLY)  # another run's hold on the folder (a process of its own holds it the same way)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match=rf"--run.output_dir {out}: another process is training in it now"):
            train(tiny_config(out, backbone, epochs=1))
    finally:
        os.close(other)
    assert list(out.iterdir()) == []  # nothing written beside the other run
    assert train(tiny_config(out, backbone, epochs=1)).test is not None  # released: the folder is free again


def test_a_folder_written_between_the_check_and_the_hold_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    earlier = check_run_folder(out, resume=False, overwrite=False)  # empty: a new run may start
    earlier_run(out)  # ... but another run finished there meanwhile
    with pytest.raises(RunFolderError, match="is not empty"), run_folder_lock(out, False, False, earlier):
        pass


def test_resume_and_overwrite_exclude_each_other() -> None:
    with pytest.raises(ValueError, match=r"run.resume \(continue the run\) and run.overwrite"):
        parse_mapping({"data": {"dataset": "synthetic"}, "run": {"resume": True, "overwrite": True}})


CIFAR = {"dataset": "cifar100", "dataset_options": {}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_dir": "nowhere", **CIFAR}, "root folder"),  # the dataset scan fails
        (
            {"checkpoint": "missing.safetensors", "data_dir": "nowhere", **CIFAR},  # the weights are checked before it
            "--model.checkpoint .*missing.safetensors: no such file",
        ),
        ({"model_kwargs": {**TINY, "colour": "red"}}, r"model kwargs \['colour'"),  # the model does not build
    ],
)
def test_bad_input_leaves_the_folder_as_it_was(tmp_path: Path, backbone: Path, change: dict, message: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    before = earlier_run(out)
    change = {k: str(tmp_path / v) if k in ("data_dir", "checkpoint") else v for k, v in change.items()}
    cfg = overwriting(changed(tiny_config(out, backbone, epochs=1), **change))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(cfg)
    assert contents(out) == before


def test_overwrite_removes_the_earlier_runs_files_before_writing(tmp_path: Path, backbone: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    earlier_run(tmp_path)
    (tmp_path / ".checkpoint.pt.0123ab.tmp").write_bytes(b"\0" * 1000)
    cfg = overwriting(tiny_config(tmp_path, backbone, epochs=1, stop_after_steps=1))  # stops before any adapter
    train(cfg)
    left = contents(tmp_path)
    assert sorted(left) == ["checkpoint.pt", "config.yaml", "notes.txt"]  # no earlier adapter beside the new run
    assert left["notes.txt"] == b"the user's own file"
    assert load_training_state(tmp_path / "checkpoint.pt")["global_step"] == 1
    assert "run.overwrite: removing the earlier run's config.yaml, metrics.jsonl, checkpoint.pt" in caplog.text
    assert "overwrite: false" in left["config.yaml"].decode()  # config.yaml repeats the run, it does not overwrite


# -- resuming a copied run folder (item 13) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_name", "flags", "expected"),
    [
        ("copy/config.yaml", ["--run.resume", "true"], "copy"),
        ("copy/config.yaml", ["--run.resume", "true", "--run.output_dir", "elsewhere"], "elsewhere"),
        ("copy/config.yaml", ["--run", "{output_dir: elsewhere}", "--run.resume", "true"], "elsewhere"),
        ("copy/config.yaml", [], "original"),  # a new run from a run's configuration: where it says
        ("copy/recipe.yaml", ["--run.resume", "true"], "original"),  # not a run's config.yaml
    ],
)
def test_resume_from_a_config_yaml_continues_the_run_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, config_name: str, flags: list[str], expected: str
) -> None:
    config = tmp_path / config_name
    config.parent.mkdir()
    cfg = parse_mapping({"data": {"dataset": "synthetic"}, "run": {"output_dir": str(tmp_path / "original")}})
    config.write_text(cfg.to_yaml())
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig) -> TrainResult:
        seen.append(cfg)
        return TrainResult(Path(cfg.run.output_dir), None, None, None)

    monkeypatch.setattr(adaptformer.engine.train, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="adaptformer.cli")
    assert main(["train", "--config", str(config), *flags]) == 0
    assert Path(seen[0].run.output_dir).resolve() == (tmp_path / expected).resolve()
    logged = f"resuming the run in {config.parent}, the folder of --config {config}, which records" in caplog.text
    assert logged == (expected == "copy")


def test_a_copied_stopped_run_resumes_in_the_copy(tmp_path: Path, backbone: Path) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    assert main([*cli_args(original, backbone), "--run.stop_after_steps", "1"]) == 0
    shutil.copytree(original, copy)
    kept = contents(original)
    (copy / ".checkpoint.pt.5f5f5f.tmp").write_bytes(b"\0" * 843_000)  # a save killed midway (item 14)
    (copy / "adapter").mkdir()
    (copy / "adapter" / ".adapter_model.safetensors.77aa.tmp").write_bytes(b"\0" * 100)
    assert main(["train", "--config", str(copy / "config.yaml"), "--run.resume", "true"]) == 0
    assert contents(original) == kept  # the original is left alone
    assert json.loads((copy / "test.json").read_text())["epoch"] == 1
    assert not list(copy.rglob("*.tmp"))
    # files are written with the permissions open() gives (umask), as config.yaml always was (item 15)
    modes = {p.relative_to(copy).as_posix(): p.stat().st_mode & 0o777 for p in copy.rglob("*") if p.is_file()}
    assert {"checkpoint.pt", "test.json", "adapter/adapter_model.safetensors", "curves.png"} <= set(modes)
    assert set(modes.values()) == {modes["config.yaml"]}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "file.bin", b"data")
        (tmp_path / "plain.bin").write_bytes(b"data")
    finally:
        os.umask(old)
    mode = (tmp_path / "file.bin").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain.bin").stat().st_mode & 0o777


# -- what the user reads: epochs from 1, progress, curves (items 18 and 5) -------------------------------------------


def test_resumed_run_numbers_epochs_from_1_reports_progress_and_plots_every_epoch(
    tmp_path: Path, backbone: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    cfg = tiny_config(tmp_path, backbone, epochs=2, stop_after_steps=3, log_every=1, eval_batch_size=8)  # 2 steps/ep
    assert train(cfg).stopped_early  # mid epoch 2: epoch 1's record is in metrics.jsonl
    plotted: list[list[dict]] = []
    plot = adaptformer.engine.curves.plot_curves

    def spy(records: list[dict], *args: object) -> Path:
        plotted.append(records)
        return plot(records, *args)

    monkeypatch.setattr(adaptformer.engine.curves, "plot_curves", spy)
    caplog.set_level(logging.INFO)
    result = train(changed(cfg, resume=True, stop_after_steps=None))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["epoch"] for r in plotted[-1]] == [1, 2]
    best = max(records, key=lambda r: (r["val_acc1"], -r["epoch"]))
    test = json.loads((tmp_path / "test.json").read_text())
    assert result.best_epoch == test["epoch"] == best["epoch"] and test["val_acc1"] == best["val_acc1"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("resumed from ") and "at epoch 2/2, step 1" in m for m in messages)
    assert any(m.startswith("epoch 2/2 [2/2] loss") and "eta 0:00:00 (run 0:00:00)" in m for m in messages)
    assert any(m.startswith("epoch 2/2: {'lr'") for m in messages)  # the summary line says the same epoch
    assert any(m.startswith("validation after epoch 2/2 [2/2] samples 12 samples/s") for m in messages)
    assert any(m.startswith("test [6/6] samples 48 samples/s") for m in messages)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1200, 360)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # drawn lines, text and markers, not a blank image


def test_metrics_numbered_from_0_are_renumbered_on_resume(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "lr": 0.1}) + "\n" for e in range(3)))
    log = MetricsLog(tmp_path)
    log.keep_finished(2)
    assert [r["epoch"] for r in log.read()] == [1, 2]
