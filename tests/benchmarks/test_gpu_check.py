"""``benchmarks/gpu_check.sh``, the script a GPU machine runs at once: its steps and its one report, checked here with
``--quick`` (tiny models on the CPU; the CUDA tests skip), and a failed or timed-out step reported as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.paths import ROOT


def test_quick_run_writes_one_json_and_one_table(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick", str(out)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {s: v["state"] for s, v in report["steps"].items()} == dict.fromkeys(
        ("cuda_tests", "train_step", "segmentation_step", "multitask", "serve_load"), "ok"
    )
    assert report["cuda_tests"]["tests"] == report["cuda_tests"]["skipped"] > 0  # no GPU here
    train = report["train_step"]
    assert {"full", train["adaptformer"]} <= set(train["methods"]) and train["adaptformer_vs_full"]["time"] > 0
    seg = report["segmentation_step"]
    assert set(seg["methods"]) == {"full", "linear", "adaptformer-64"} and seg["adaptformer_vs_full"]["memory"] > 0
    assert seg["gemm_floor"] > 0 and seg["sliding_eval_images_per_s"] > 0
    _check_multitask(report["multitask"])
    _check_serve_load(report["serve_load"])
    table = (out / "gpu_check.md").read_text()
    assert table == done.stdout and "| serve_load | ok |" in table and "adaptformer-64 / full: time" in table
    assert "| segmentation_step | ok |" in table and "Segmentation training step" in table


def _check_multitask(report: dict) -> None:
    """benchmarks/multitask.py --quick: every case timed for 1 and 2 tasks; memory counted, not timed."""
    assert [r["tasks"] for r in report["results"]] == [1, 2]
    for result in report["results"]:
        assert set(result["median_s"]) == {"mixed", "separate", "switching", "single"}
        assert all(result[k] > 0 for k in ("mixed/single", "separate/single", "switching/single"))
    one, two = report["results"]
    # a second task adds only its adapters and head; a second model a whole backbone
    assert one["multitask/one_single_memory"] == pytest.approx(1.0)
    assert 1.0 < two["multitask/one_single_memory"] < 1.5
    assert two["memory_mb"]["n_singles"] == pytest.approx(2 * two["memory_mb"]["one_single"])


def _check_serve_load(report: dict) -> None:
    """benchmarks/serve_load.py --quick: 8 requests over 2 tasks at each concurrency, latencies ordered."""
    results = report["results"]
    assert [r["clients"] for r in results] == [1, 4, 16]
    assert all(r["tasks"] == 2 and r["requests"] == 8 and r["requests_per_s"] > 0 for r in results)
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in results)
    assert all(1 <= r["batches"] <= 8 for r in results)


def test_a_failed_and_a_timed_out_step_are_reported_and_fail_the_check(tmp_path: Path) -> None:
    (tmp_path / "train_step.status.json").write_text('{"exit": 124, "seconds": 150}')
    (tmp_path / "train_step.log").write_text("... building vit_base_patch16_224\n")
    (tmp_path / "multitask.status.json").write_text('{"exit": 1, "seconds": 3}')
    (tmp_path / "multitask.log").write_text("RuntimeError: CUDA out of memory\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert [steps[s]["state"] for s in ("cuda_tests", "train_step", "multitask")] == ["not run", "timed out", "failed"]
    assert "CUDA out of memory" in steps["multitask"]["log_tail"]
    assert "| train_step | timed out | 150 |" in done.stdout


def test_on_a_gpu_machine_skipped_cuda_tests_fail_the_check(tmp_path: Path) -> None:
    for step in ("cuda_tests", "train_step", "segmentation_step", "multitask", "serve_load"):
        (tmp_path / f"{step}.status.json").write_text('{"exit": 0, "seconds": 1}')
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite tests="8" failures="0" errors="0" skipped="8"></testsuite></testsuites>'
    )
    script = str(ROOT / "benchmarks" / "gpu_report.py")
    assert subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, timeout=60).returncode == 0
    done = subprocess.run([sys.executable, script, "--expect-cuda", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 1 and "| cuda_tests | no CUDA test ran |" in done.stdout
