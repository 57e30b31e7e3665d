"""``adaptformer sweep``: a user YAML sweep end to end on the tiny backbone (table = the points' test.json, plot, a
re-run that trains nothing, other settings refused, a failed point beside finished ones), the errors that stop a
sweep before any run, the shipped sweeps, each point of which must build a valid configuration, and real sweep
processes: two sharing one folder (each point trained once), and Ctrl-C (one line, exit 130)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adaptformer.cli import main
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.recipes import recipe_paper_score
from adaptformer.suite.stages import SuiteError, failed_since, pin_settings
from adaptformer.suite.sweep import SweepSettings, check_sweep, load_sweep, shipped_sweeps

TINY = ["--model.backbone", "vit_shapes_patch8_32", "--data.dataset", "synthetic",
        "--data.options", "{num_samples: 24, image_size: 32}", "--optim.epochs", "1", "--optim.warmup_epochs", "0",
        "--optim.batch_size", "8", "--optim.precision", "fp32", "--data.num_workers", "0",
        "--run.device", "cpu"]  # fmt: skip


def _sweep(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["sweep", *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}, captured.err


def test_a_user_sweep_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "grid: {model.method: [adaptformer], model.method.bottleneck: [2, 8]}\n"
        "points:\n"
        f"  - {{name: broken, set: {{model.checkpoint: {tmp_path / 'no_such_file.pth'}}}}}\n"  # fails in train
        "series: model.method.name\n"
    )
    out = tmp_path / "out"
    code, summary, err = _sweep(capsys, str(spec), "--out", str(out), "--", *TINY)
    good = ["method=adaptformer,bottleneck=2", "method=adaptformer,bottleneck=8"]
    # the failed point is recorded and the others still run; exit 2
    assert code == 2 and summary["ran"] == good and summary["failed"] == ["broken"] and "broken" in err
    assert "the training run failed" in json.loads((out / "logs" / "broken.failed.json").read_text())["error"]

    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["points"]}
    assert rows["broken"]["status"] == "failed" and results["missing"] == ["broken"]
    for name, bottleneck in zip(good, (2, 8), strict=True):
        test = json.loads((out / name / "test.json").read_text())
        row = rows[name]
        assert row["overrides"] == {"model.method": "adaptformer", "model.method.bottleneck": bottleneck}
        assert (row["test"], row["val"], row["selected_epoch"]) == (test["acc1"], test["val_acc1"], test["epoch"])
        assert row["trainable_parameters"] == test["trainable_parameters"] > 0
        assert (row["metric"], row["x"], row["series"]) == ("acc1", test["trainable_parameters"], "adaptformer")
        line = f"| {name} |  | model.method=adaptformer, model.method.bottleneck={bottleneck} | "
        assert line + f"{test['trainable_parameters']:,} |" in (out / "results.md").read_text()
        assert f"| {test['acc1']:.2f} | 1 |" in (out / "results.md").read_text()
    assert rows[good[0]]["trainable_parameters"] < rows[good[1]]["trainable_parameters"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again: finished points are skipped (nothing trained), the failed one is retried
    spec.write_text(spec.read_text())  # unchanged
    stamps = {name: (out / name / "test.json").stat().st_mtime_ns for name in good}
    code, again, _ = _sweep(capsys, str(spec), "--out", str(out), "--", *TINY)
    assert code == 2 and again["already_done"] == good and again["ran"] == [] and again["failed"] == ["broken"]
    assert stamps == {name: (out / name / "test.json").stat().st_mtime_ns for name in good}

    # other settings for the same folder: refused before anything runs
    code, _, err = _sweep(capsys, str(spec), "--out", str(out), "--", *TINY[:-2])
    assert code == 2 and "sweep.json: this folder's sweep was started with other settings (train_flags" in err

    # the report alone
    (out / "results.md").unlink()
    code, files, _ = _sweep(capsys, "--out", str(out), "--report-only")
    assert code == 0 and Path(files["markdown"]).is_file()


BAD = [
    ("no_such_sweep", "", [], "unknown sweep 'no_such_sweep'; shipped sweeps: table2, table6"),
    ("file", "points: [{recipe: cifar10_lora}]", [], "unknown recipe 'cifar10_lora'"),
    ("file", "grid: {optim.no_such_key: [1, 2]}", [], "no_such_key"),
    ("file", "grid: {optim.lr: []}", [], "optim.lr must map to a non-empty list"),
    ("file", "grid: {}", [], "the sweep has no points"),
    ("file", "grid: {optim.lr: [0.1]}\nx: model.nothing", [], "x: model.nothing is not a key"),
    ("file", "grids: {optim.lr: [0.1]}", [], "unknown key(s) grids"),
    ("file", "points: [{name: a, set: {optim.lr: 0.1}}, {name: a, set: {optim.lr: 0.2}}]", [], "named a"),
    ("file", "grid: {optim.lr: [0.1]}", ["--run.output_dir", "x"], "train flag --run.output_dir: the sweep sets it"),
    ("file", "grid: {optim.lr: [0.1]}", ["--optim.lr", "0.2"], "train flag --optim.lr is also a setting"),
    ("file", "points: [{name: logs, set: {optim.lr: 0.1}}]", [], "point name 'logs' is a file or folder the sweep"),
]


@pytest.mark.parametrize(("sweep", "text", "flags", "match"), BAD)
def test_bad_input_is_named_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: str, text: str, flags: list[str], match: str
) -> None:
    if sweep == "file":
        sweep = str(tmp_path / "sweep.yaml")
        Path(sweep).write_text(text)
    code, _, err = _sweep(capsys, sweep, "--out", str(tmp_path / "out"), "--", "--data.dataset", "synthetic", *flags)
    assert code == 2 and match in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_list_names_the_shipped_sweeps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["table2", "table6", "ablation-layers", "ablation-form", "ablation-scale", "ablation-bottleneck",
                      "params-vs-accuracy"]  # fmt: skip


@pytest.mark.parametrize("name", list(shipped_sweeps()))
def test_every_shipped_sweep_expands_to_valid_configs(tmp_path: Path, name: str) -> None:
    sweep = load_sweep(name)
    check_sweep(SweepSettings(sweep, tmp_path))  # parses every point as train will
    for point in sweep.points:
        from adaptformer.recipes import load_recipe

        cfg = parse_mapping(load_recipe(point.recipe))
        assert cfg.run.recipe == point.recipe and not point.overrides
    scores = [recipe_paper_score(p.recipe) for p in sweep.points]
    if name == "table6":
        assert scores == [91.86, 97.29, 90.89, 60.18, 73.21]
    if name == "ablation-bottleneck":
        assert scores == [50.03, 54.70, 57.62, 58.27, 59.02, 58.95, 58.87, 58.98]
    if name == "params-vs-accuracy":
        assert {parse_mapping(load_recipe(p.recipe)).model.method_name for p in sweep.points} == {
            "vpt", "adaptformer"}  # fmt: skip


def test_a_damaged_run_folder_is_a_suite_error_naming_it(tmp_path: Path) -> None:
    from adaptformer.suite.stages import SuiteError, read_run

    (tmp_path / "test.json").write_text('{"acc1": 5')  # cut short
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(SuiteError, match=rf"{tmp_path}: its run files cannot be read .* remove the folder"):
        read_run(tmp_path)
    (tmp_path / "test.json").write_text('{"acc1": 5}')
    (tmp_path / "metrics.jsonl").unlink()
    with pytest.raises(SuiteError, match="metrics.jsonl"):
        read_run(tmp_path)


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as under a terminal. A shell runs a background job (``cmd &``,
    as a CI script may run the suite) with SIGINT ignored, and a process started with it ignored never sees Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sweep_process(spec: Path, out: Path, *flags: str, **options) -> subprocess.Popen:
    command = [sys.executable, "-m", "adaptformer.cli", "sweep", str(spec), "--out", str(out), "--", *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


# Two drivers on one sweep folder, each point trained once: tests/suite/executors/test_ray.py (a driver on Ray and a
# local one, the same claim files and dispatcher as two local drivers); two local workers on one benchmark:
# tests/suite/test_benchmark_suite.py.


def test_ctrl_c_stops_a_sweep_with_one_line_naming_the_run_and_the_resume_command(tmp_path: Path) -> None:
    spec, out = tmp_path / "sweep.yaml", tmp_path / "out"
    spec.write_text("grid: {optim.lr: [0.01, 0.02]}\n")
    long_run = [*TINY, "--data.options", "{num_samples: 4000, image_size: 32}", "--optim.epochs", "20"]
    worker = _sweep_process(spec, out, *long_run, start_new_session=True,  # its own process group, as a terminal's
                            preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    started = time.monotonic()
    while not (out / "lr=0.01" / "config.yaml").is_file() and worker.poll() is None:  # training has begun
        assert time.monotonic() - started < 120
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGINT)  # Ctrl-C: the sweep and its training run get SIGINT
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130 and "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    log = out / "logs" / "lr=0.01.log"
    assert lines == [
        f"interrupted: adaptformer sweep stopped while training {out / 'lr=0.01'} (its log: {log}); to resume, run "
        f"the same command again (what finished is kept): adaptformer sweep {spec} --out {out} -- "
        + shlex.join(long_run)
    ]
    assert "Traceback" not in log.read_text()  # the training run said it stopped, in one line
    assert log.read_text().splitlines()[-1].startswith("interrupted: adaptformer train stopped; to continue from its")
    assert not (out / "logs" / "lr=0.01.claim.json").exists() and not (out / "lr=0.02").exists()


def test_a_point_another_worker_saw_fail_is_not_tried_again_in_the_same_round(tmp_path: Path) -> None:
    failed = tmp_path / "p.failed.json"
    failed.write_text(json.dumps({"error": "the training run failed"}))
    assert failed_since(failed, time.time() + 60) is None  # failed in an earlier round: tried again
    assert failed_since(failed, time.time() - 60) == "the training run failed"  # failed in this one: not again
    assert failed_since(tmp_path / "missing.failed.json", 0.0) is None


def test_workers_starting_together_with_other_settings_cannot_both_pin_them(tmp_path: Path) -> None:
    for attempt in range(10):
        path, barrier, outcomes = tmp_path / f"{attempt}" / "sweep.json", threading.Barrier(2), []

        def pin(value: int, path: Path = path, barrier: threading.Barrier = barrier, outcomes: list = outcomes) -> None:
            barrier.wait()
            try:
                pin_settings(path, {"train_flags": [str(value)]}, "sweep")
                outcomes.append("pinned")
            except SuiteError:
                outcomes.append("refused")

        threads = [threading.Thread(target=pin, args=(value,)) for value in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["pinned", "refused"]
        assert [p.name for p in path.parent.iterdir()] == ["sweep.json"]  # no temporary file left
