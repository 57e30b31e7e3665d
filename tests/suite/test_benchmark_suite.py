"""``adaptformer benchmark vtab|fgvc``: the protocol's two stages per task end to end on tiny VTAB-1k / FGVC trees,
resuming, atomic task claims for several workers, the table's means, and the errors that stop it before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.data.release_files import write_fgvc, write_vtab_task

from adaptformer.cli import main
from adaptformer.data.image.vtab import VTAB_GROUPS, VTAB_TASKS
from adaptformer.suite import BenchmarkError, BenchmarkSettings, parse_grid, read_report, run_benchmark, write_report
from adaptformer.suite.claims import CLAIM_FILE, try_claim
from adaptformer.suite.driver import RESULT_FILE, SETTINGS_FILE
from adaptformer.suite.report import format_markdown

TINY = ["--model.backbone", "vit_shapes_patch8_32", "--model.checkpoint", "timm", "--optim.epochs", "2",
        "--optim.warmup_epochs", "0", "--optim.batch_size", "4", "--optim.effective_batch", "4",
        "--optim.eval_batch_size", "8", "--optim.precision", "fp32", "--data.num_workers", "0"]  # fmt: skip


def _benchmark(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["benchmark", *argv])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}


def test_vtab_end_to_end_tunes_a_grid_then_tests_the_chosen_setting_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One task (the mean over tasks and groups: the report tests below), tuned over a 2-point grid."""
    data, out = tmp_path / "vtab-1k", tmp_path / "bench"
    write_vtab_task(data, "kitti")
    argv = ["vtab", "--method", "adaptformer8", "--data-dir", str(data), "--out", str(out), "--tasks", "kitti",
            "--grid", "{optim.lr: [0.001, 0.01]}", "--", *TINY]  # fmt: skip
    code, summary = _benchmark(capsys, *argv)
    assert code == 0 and summary["ran"] == ["kitti"] and not summary["failed"]

    result = json.loads((out / "kitti" / RESULT_FILE).read_text())
    tune = [json.loads((out / "kitti" / f"tune-{k}" / "test.json").read_text()) for k in (0, 1)]
    final = json.loads((out / "kitti" / "final" / "test.json").read_text())
    # the tuning runs report val200 (1 image per class) and never read test.txt; the final run tests once on test.txt
    # (2 per class)
    assert [t["n"] for t in tune] == [4, 4] and final["n"] == 8
    vals = [t["acc1"] for t in tune]
    chosen = 0 if vals[0] >= vals[1] else 1
    assert result["chosen"] == {"optim.lr": [0.001, 0.01][chosen]}
    assert [c["val_acc1"] for c in result["candidates"]] == vals
    assert all(c["best_val_acc1"] >= c["val_acc1"] and c["best_val_epoch"] in (1, 2) for c in result["candidates"])
    config = (out / "kitti" / "final" / "config.yaml").read_text()
    assert f"lr: {[0.001, 0.01][chosen]}" in config and "stage: final" in config
    assert result["test_acc1"] == final["acc1"] and result["final_epoch"] == 2
    assert result["trainable_parameters"] == final["trainable_parameters"] > 0
    assert result["peak_memory_mb"] > 0 and result["memory"] == "process max RSS"

    report = read_report(out)
    assert report.task_mean() == pytest.approx(result["test_acc1"])
    assert report.group_means() == {"structured": result["test_acc1"]}
    table = (out / "results.md").read_text()
    assert "| kitti | structured |" in table and "**mean of group means**" in table
    assert (out / "results.png").stat().st_size > 1000 and json.loads((out / "results.json").read_text())["mean"]

    # the same command again: everything is done, nothing is trained
    code, again = _benchmark(capsys, *argv)
    assert code == 0 and again["ran"] == [] and again["already_done"] == ["kitti"]

    # a final stage that stopped before testing resumes from its training state (no epoch trained again)
    metrics = (out / "kitti" / "final" / "metrics.jsonl").read_text()
    (out / "kitti" / RESULT_FILE).unlink()
    (out / "kitti" / "final" / "test.json").unlink()
    code, resumed = _benchmark(capsys, *argv)
    assert code == 0 and resumed["ran"] == ["kitti"]
    assert (out / "kitti" / "final" / "metrics.jsonl").read_text() == metrics
    assert "--run.resume true" in (out / "kitti" / "train.log").read_text()


def test_fgvc_without_tuning_runs_only_the_final_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "fgvc", tmp_path / "bench"
    write_fgvc(data, "OxfordFlower")
    code, summary = _benchmark(capsys, "fgvc", "--method", "lora8", "--data-dir", str(data), "--out", str(out),
                               "--tasks", "OxfordFlower", "--no-tune", "--", *TINY)  # fmt: skip
    assert code == 0 and summary["ran"] == ["OxfordFlower"]
    assert sorted(p.name for p in (out / "OxfordFlower").iterdir() if p.is_dir()) == ["final"]
    result = json.loads((out / "OxfordFlower" / RESULT_FILE).read_text())
    assert result["candidates"] == [] and result["test_split"] == "test"
    assert "mean of 1 tasks" in (out / "results.md").read_text()


def test_a_failed_task_is_reported_and_the_others_still_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, out = tmp_path / "vtab-1k", tmp_path / "bench"
    write_vtab_task(data, "kitti")
    (write_vtab_task(data, "patch_camelyon") / "test.txt").unlink()  # its final stage cannot start
    code = main(["benchmark", "vtab", "--method", "lora8", "--data-dir", str(data), "--out", str(out), "--tasks",
                 "patch_camelyon,kitti", "--no-tune", "--", *TINY])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and "1 task(s) failed: patch_camelyon" in captured.err
    failed = json.loads((out / "patch_camelyon" / "failed.json").read_text())
    assert "test.txt not found" in failed["error"] and "train.log" in failed["error"]
    assert (out / "kitti" / RESULT_FILE).is_file() and not (out / "patch_camelyon" / CLAIM_FILE).exists()
    assert "patch_camelyon | specialized | not finished" in (out / "results.md").read_text()


def test_two_workers_share_a_suite_each_task_runs_once(tmp_path: Path) -> None:
    data, out = tmp_path / "vtab-1k", tmp_path / "bench"
    tasks = ("patch_camelyon", "kitti")
    for task in tasks:
        write_vtab_task(data, task)
    command = [sys.executable, "-m", "adaptformer.cli", "benchmark", "vtab", "--method", "lora8", "--data-dir",
               str(data), "--out", str(out), "--tasks", ",".join(tasks), "--no-tune"]  # fmt: skip
    workers = [subprocess.Popen([*command, "--worker", name, "--", *TINY], stdout=subprocess.PIPE, text=True)
               for name in ("w1", "w2")]  # fmt: skip
    summaries = [json.loads(w.communicate(timeout=300)[0].strip().splitlines()[-1]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    ran = [task for s in summaries for task in s["ran"]]
    assert sorted(ran) == sorted(tasks)  # every task exactly once, by one of the two
    for name, summary in zip(("w1", "w2"), summaries, strict=True):
        assert all(json.loads((out / t / RESULT_FILE).read_text())["worker"] == name for t in summary["ran"])
    # whichever worker finished last wrote the complete table
    assert read_report(out).missing == [] and "**mean of 2 tasks**" in (out / "results.md").read_text()
    assert not any((out / t / CLAIM_FILE).exists() for t in tasks)


def test_a_task_claimed_by_a_live_worker_is_left_to_it(tmp_path: Path) -> None:
    data, out = tmp_path / "vtab-1k", tmp_path / "bench"
    write_vtab_task(data, "kitti")
    (out / "kitti").mkdir(parents=True)
    (out / "kitti" / CLAIM_FILE).write_text(json.dumps({"worker": "gpu-node-7:123"}))
    settings = BenchmarkSettings("vtab", "lora8", data, out, tasks=("kitti",), train_flags=tuple(TINY))
    summary = run_benchmark(settings)
    assert summary.held_elsewhere == ["kitti"] and summary.ran == [] and not (out / "kitti" / "final").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "adaptformer99"}, r"unknown method 'adaptformer99'.*adaptformer8"),
        ({"tasks": ("cifar", "imagenet")}, r"unknown task\(s\) \['imagenet'\]"),
        ({"tasks": ("cifar", "cifar")}, r"names a task twice"),
        ({"grid": {"optim.lr": []}}, r"optim\.lr must map to a non-empty list"),
        ({"grid": {"optim.lr": [0.1]}, "tune": False}, r"--grid needs the tuning stage"),
        ({"train_flags": ("--run.output_dir", "x")}, r"--run\.output_dir: the benchmark sets it"),
        ({"train_flags": ("--optim.lr", "0.1"), "grid": {"optim.lr": [0.1]}}, r"also a --grid key"),
        ({"train_flags": ("--optim.epochs", "zero")}, r"optim\.epochs"),
        ({"grid": {"optim.warmup_epochs": [-1]}}, r"warmup_epochs"),
        ({"data_dir": Path("/nonexistent/vtab")}, r"--data-dir /nonexistent/vtab is not a folder"),
    ],
)
def test_bad_settings_stop_before_any_task_starts(tmp_path: Path, change: dict, match: str) -> None:
    fields = {"suite": "vtab", "method": "adaptformer8", "data_dir": tmp_path, "output_dir": tmp_path / "bench",
              "tasks": ("cifar",)} | change  # fmt: skip
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_benchmark(BenchmarkSettings(**fields))
    assert not (tmp_path / "bench").exists()


def test_a_folder_started_with_other_settings_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    recorded = {"suite": "vtab", "method": "lora8", "tasks": ["cifar"], "grid": {}, "tune": True, "train_flags": []}
    (tmp_path / "bench" / SETTINGS_FILE).write_text(json.dumps(recorded))
    settings = BenchmarkSettings("vtab", "adaptformer8", tmp_path, tmp_path / "bench", tasks=("cifar",))
    with pytest.raises(BenchmarkError, match=r"other settings \(method: recorded 'lora8', given 'adaptformer8'\)"):
        run_benchmark(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, {}), ("{optim.lr: [0.001, 0.005]}", {"optim.lr": [0.001, 0.005]}),
     ('{"model.method.scale": [0.1, 1.0]}', {"model.method.scale": [0.1, 1.0]})],
)  # fmt: skip
def test_grid_parses_yaml_and_json(text: str | None, expected: dict) -> None:
    assert parse_grid(text) == expected


@pytest.mark.parametrize(("text", "match"), [("[1, 2]", "expected a mapping"), ("{a: [1}", "is not YAML"),
                                             ("{optim.lr: 0.1}", "non-empty list")])  # fmt: skip
def test_bad_grid_is_named(text: str, match: str) -> None:
    with pytest.raises(BenchmarkError, match=match):
        parse_grid(text)


def _fake_results(out: Path, accs: dict[str, float]) -> None:
    out.mkdir(parents=True)
    recorded = {"suite": "vtab", "method": "m", "tasks": list(VTAB_TASKS), "grid": {}, "tune": False}
    (out / SETTINGS_FILE).write_text(json.dumps(recorded))
    for task, acc in accs.items():
        (out / task).mkdir()
        result = {"task": task, "group": VTAB_TASKS[task].group, "chosen": {}, "candidates": [], "test_acc1": acc,
                  "trainable_parameters": 10, "train_seconds": 60.0, "peak_memory_mb": 1.0, "memory": "x"}  # fmt: skip
        (out / task / RESULT_FILE).write_text(json.dumps(result))


def test_the_two_published_means_by_hand(tmp_path: Path) -> None:
    # natural tasks score 70, specialized 80, structured 50: 19-task mean (7*70 + 4*80 + 8*50) / 19 = 63.68...,
    # mean of the group means (70 + 80 + 50) / 3 = 66.67: the two conventions published VTAB-1k tables mix
    score = {"natural": 70.0, "specialized": 80.0, "structured": 50.0}
    _fake_results(tmp_path / "b", {t: score[info.group] for t, info in VTAB_TASKS.items()})
    report = read_report(tmp_path / "b")
    assert [sum(1 for i in VTAB_TASKS.values() if i.group == g) for g in VTAB_GROUPS] == [7, 4, 8]
    assert report.task_mean() == pytest.approx((7 * 70 + 4 * 80 + 8 * 50) / 19)
    assert report.mean_of_group_means() == pytest.approx((70 + 80 + 50) / 3)
    table = format_markdown(report)
    assert "| **mean of 19 tasks** |" in table and "63.68 |" in table and "66.67 |" in table


def test_an_unfinished_suite_gives_no_means(tmp_path: Path) -> None:
    _fake_results(tmp_path / "b", {"cifar": 50.0, "dtd": 60.0})
    report = read_report(tmp_path / "b")
    assert report.task_mean() is None and report.mean_of_group_means() is None and len(report.missing) == 17
    files = write_report(tmp_path / "b")
    assert "not finished: caltech101" in files["markdown"].read_text()
    assert json.loads(files["json"].read_text())["mean"] is None


def test_report_only_needs_a_benchmark_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "vtab", "--out", str(tmp_path), "--report-only"]) == 2
    assert f"{tmp_path}: no benchmark.json" in capsys.readouterr().err


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    first = try_claim(tmp_path / "t", "a", stale_after_s=60, heartbeat_s=1)
    assert first is not None and try_claim(tmp_path / "t", "b", stale_after_s=60, heartbeat_s=1) is None
    first.release()
    assert not (tmp_path / "t" / CLAIM_FILE).exists()
    second = try_claim(tmp_path / "t", "b", stale_after_s=60, heartbeat_s=1)
    assert second is not None and second.still_held()
    second.release()


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path: Path) -> None:
    claim = try_claim(tmp_path / "t", "a", stale_after_s=0.5, heartbeat_s=0.05)
    assert claim is not None
    os.utime(claim.path, (time.time() - 100, time.time() - 100))
    deadline = time.time() + 5
    while time.time() - claim.path.stat().st_mtime > 1 and time.time() < deadline:
        time.sleep(0.02)
    assert time.time() - claim.path.stat().st_mtime <= 1  # touched again
    claim.release()


def test_a_stale_claim_is_taken_over_by_exactly_one_of_racing_workers(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / CLAIM_FILE).write_text(json.dumps({"worker": "dead"}))
    os.utime(folder / CLAIM_FILE, (time.time() - 3600, time.time() - 3600))
    won: list[str] = []
    start = threading.Barrier(8)

    def worker(name: str) -> None:
        start.wait()
        claim = try_claim(folder, name, stale_after_s=60, heartbeat_s=10)
        if claim is not None:
            won.append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(won) == 1
    assert json.loads((folder / CLAIM_FILE).read_text())["worker"] == won[0]
    assert [p.name for p in folder.iterdir()] == [CLAIM_FILE]  # the stale file is gone


def test_racing_workers_on_a_fresh_task_get_one_claim(tmp_path: Path) -> None:
    won: list[str] = []
    start = threading.Barrier(8)

    def worker(name: str) -> None:
        start.wait()
        if try_claim(tmp_path / "t", name, stale_after_s=60, heartbeat_s=10) is not None:
            won.append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(won) == 1


class _TrainingRun:
    """A stand-in for a stage's ``adaptformer train`` process that Ctrl-C reaches while it trains: the driver's first
    wait is interrupted, the run then stops by itself or (``stubborn``) has to be terminated."""

    def __init__(self, command: list[str], stubborn: bool, **options: object) -> None:
        self.stubborn, self.waits, self.terminated = stubborn, 0, False
        _TrainingRun.last = self

    def wait(self, timeout: float | None = None) -> int:
        self.waits += 1
        if self.waits == 1:
            raise KeyboardInterrupt
        if self.stubborn and not self.terminated:
            raise subprocess.TimeoutExpired("train", timeout or 0)
        return -15 if self.terminated else 130

    def terminate(self) -> None:
        self.terminated = True


@pytest.mark.parametrize("stubborn", [False, True])
def test_ctrl_c_stops_a_benchmark_with_one_line_and_frees_its_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stubborn: bool
) -> None:
    data, out = tmp_path / "vtab-1k", tmp_path / "bench"
    write_vtab_task(data, "kitti")
    monkeypatch.setattr(subprocess, "Popen", lambda command, **options: _TrainingRun(command, stubborn, **options))
    argv = ["benchmark", "vtab", "--method", "lora8", "--data-dir", str(data), "--out", str(out), "--tasks", "kitti",
            "--no-tune", "--", *TINY]  # fmt: skip
    assert main(argv) == 130
    folder = out / "kitti" / "final"
    assert capsys.readouterr().err.splitlines() == [
        f"interrupted: adaptformer benchmark stopped while training {folder} (its log: {out / 'kitti' / 'train.log'}); "
        f"to resume, run the same command again (what finished is kept): adaptformer {' '.join(argv)}"
    ]
    assert _TrainingRun.last.terminated == stubborn  # a run that does not stop by itself is terminated
    assert not (out / "kitti" / CLAIM_FILE).exists()  # another worker, or the next run, takes the task at once
    assert not (out / "kitti" / RESULT_FILE).exists() and not (out / "kitti" / "failed.json").exists()
