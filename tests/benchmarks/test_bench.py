"""The benchmark harness runs end to end in its quick mode (tiny models, few steps) and reports sane numbers."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.paths import ROOT

METHODS = {"full", "linear", "vpt-1", "vpt-64", "adaptformer-64"}
LATE = {
    "vit_tiny_patch16_224": "adaptformer-64, blocks 2-3",
    "video_vit_small_patch16_224": "adaptformer-64, blocks 2-2",
}
CASES = METHODS | {"forward", "forward+adapters"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json", str(out), "--markdown"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _in_process(script: str, argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``python benchmarks/SCRIPT ARGV`` run in this process (a second interpreter would spend ~4 s importing torch,
    torchvision and timm before a quick run of well under a second): exit code, stdout, stderr. What a script sets
    for its whole process is put back: torch's thread count, the root logger's handlers and level, and the library
    logger's level (bench.py quietens it to WARNING; a later test of this worker reads its INFO lines)."""
    path = ROOT / "benchmarks" / script
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    threads = torch.get_num_threads()
    root, library = logging.getLogger(), logging.getLogger("adaptformer")
    handlers, root_level, library_level = list(root.handlers), root.level, library.level
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        library.setLevel(library_level)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_has_every_method_and_precision(quick_run: tuple[dict, str]) -> None:
    report, _ = quick_run
    suites = report["suites"]
    assert {(s["backbone"], s["precision"]) for s in suites} >= {("vit_tiny_patch16_224", p) for p in ("fp32", "bf16")}
    assert "tv_swin3d_t" in {s["backbone"] for s in suites}  # Video Swin: its own method set (no VPT, Table 7's AF)
    for suite in suites:
        if suite["backbone"].startswith("tv_swin3d"):
            af = suite["adaptformer"]
            assert af == "adaptformer-1/12" and set(suite["results"]) == {"full", "linear", af, *CASES - METHODS}
            assert set(suite["ratios"]) == {f"{af}/full", f"{af}/forward", "forward+adapters/forward", "linear/full"}
            continue
        assert set(suite["results"]) == CASES | {LATE[suite["backbone"]]}
        for name, row in suite["results"].items():
            assert all(_positive(row[k]) for k in ("median_s", "min_s", "samples_per_s", "peak_memory_mib")), name
            assert row["min_s"] <= row["median_s"]
            if name in METHODS:
                assert row["kind"] == "train" and row["trainable_params"] > 0
        assert suite["results"]["full"]["trainable_params"] > suite["results"]["adaptformer-64"]["trainable_params"]
        for key in ("adaptformer-64/full", "adaptformer-64/forward", "forward+adapters/forward"):
            assert _positive(suite["ratios"][key]["time"]) and _positive(suite["ratios"][key]["memory"])


def test_report_describes_machine_command_and_targets(quick_run: tuple[dict, str]) -> None:
    report, markdown = quick_run
    assert report["command"].startswith("python benchmarks/bench.py --quick")
    assert {"cpu", "cores", "torch", "timm", "device"} <= set(report["machine"])
    assert [len(t["rows"]) for t in report["targets"]] and all(len(t["rows"]) == 4 for t in report["targets"])
    assert "| adaptformer-64 |" in markdown and "AdaptFormer step <= 0.5x full fine-tuning step" in markdown


def test_speed_option_groups_run(capsys, monkeypatch) -> None:
    """--options measures every speed option side by side (quick: tiny models), so the groups cannot rot either."""
    code, stdout, stderr = _in_process("bench.py", ["--quick", "--only", "image", "--options", "--markdown"], capsys,
                                       monkeypatch)  # fmt: skip
    assert code == 0, stderr[-3000:]
    groups = ("all options: plain vs auto", "frozen_dtype", "attention", "frozen_backward", "class_token_tail")
    for group in (*groups, "grad_checkpointing"):
        assert f"### Option: {group}" in stdout, group


def test_gemm_floor_script_runs(capsys, monkeypatch) -> None:
    code, stdout, stderr = _in_process("floor.py", ["--quick"], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    # the ratios are measurements (BENCHMARKS.md), not properties: a test only checks that they were measured (a bound
    # on them failed at 1.81 on a machine busy with other work)
    assert _positive(report["adaptformer/full"]) and _positive(report["adaptformer/forward"])
    assert set(report["median_s"]) == {"adaptformer GEMMs", "full GEMMs", "forward GEMMs"}


def test_repeat_reports_the_median_over_groups(tmp_path: Path, capsys, monkeypatch) -> None:
    """--repeat N measures each suite N times and reports, per ratio and target, the median over the N groups."""
    out = tmp_path / "repeat.json"
    argv = ["--quick", "--only", "image", "--precisions", "bf16", "--repeat", "3", "--json", str(out), "--markdown"]
    code, stdout, stderr = _in_process("bench.py", argv, capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    (suite,) = json.loads(out.read_text())["suites"]
    assert suite["repeats"] == 3
    for key, ratio in suite["ratios"].items():
        values = ratio["time_per_repeat"]
        assert len(values) == 3 and all(map(_positive, values)), key
        assert ratio["time"] == sorted(values)[1], key
    (targets,) = json.loads(out.read_text())["targets"]
    first = targets["rows"][0]
    assert first["value"] == sorted(first["per_repeat"])[1]
    assert first["met"] == (first["value"] <= first["limit"])
    assert "over 3 groups" in stdout and "3 groups of 2 interleaved rounds" in stdout


@pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="oneDNN bf16 is not available on this CPU",
)
def test_profile_step_script_runs(capsys, monkeypatch) -> None:
    code, stdout, stderr = _in_process(
        "profile_step.py", ["--quick", "--steps", "1", "--top", "5"], capsys, monkeypatch
    )
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["case"].startswith("adaptformer-64 training step") and _positive(report["ms_per_step"])
    shares = [op["share"] for op in report["operators"].values()]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0


def test_groups_measure_only_the_named_option_groups(tmp_path: Path, capsys, monkeypatch) -> None:
    """--groups restricts --options to the named groups, in the harness's order; --skip-suites leaves out the
    per-method suites, so only those groups run (each with its rounds, load average and every round's ratio)."""
    out = tmp_path / "groups.json"
    argv = ["--quick", "--only", "image", "--skip-suites", "--groups", "class_token_tail,frozen_dtype", "--json",
            str(out), "--markdown"]  # fmt: skip
    code, stdout, stderr = _in_process("bench.py", argv, capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["suites"] == [] and report["targets"] == []
    assert [g["name"] for g in report["options"]] == ["frozen_dtype", "class_token_tail"]
    for group in report["options"]:
        assert group["rounds"] == 2 and len(group["load_average"]["before"]) == 3
        for key, ratio in group["ratios"].items():
            assert len(ratio["time_per_round"]) == 2 and all(map(_positive, ratio["time_per_round"])), key
    assert "### Option: frozen_dtype" in stdout and "### Option: frozen_backward" not in stdout


@pytest.mark.parametrize(
    "arguments, error",
    [
        (
            ["--groups", "class_token_tail,turbo"],
            "unknown option groups \\['turbo'\\]; known: 'all options: plain vs auto'",
        ),
        (["--groups", "compile"], "needs --compile"),
        (["--skip-suites"], "would measure nothing"),
    ],
)
def test_bad_group_arguments_are_refused(arguments: list[str], error: str, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # in this process: argparse's refusal needs no second interpreter
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--quick", *arguments])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(error, stderr), stderr[-2000:]


# benchmarks/multitask.py --quick and benchmarks/serve_load.py --quick: checked on the reports gpu_check.sh --quick
# writes (tests/benchmarks/test_gpu_check.py), which runs both scripts as they are


def test_vpt_slots_benchmark_measures_masked_and_grouped_side_by_side(capsys, monkeypatch) -> None:
    code, stdout, stderr = _in_process("vpt_slots.py", ["--quick"], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert [(r["model"], r["prompt_counts"]) for r in report["results"]] == [
        ("tiny", [8, 10, 12]),
        ("tiny", [1, 10, 50]),
    ]
    for result in report["results"]:
        assert set(result["median_s"]) == {"masked", "grouped", "single"}
        assert all(_positive(result[k]) for k in ("masked/single", "grouped/single", "masked/grouped"))


def test_multitask_scale_benchmark_measures_every_strategy(capsys, monkeypatch) -> None:
    code, stdout, stderr = _in_process("multitask_scale.py", ["--quick"], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert [(r["tasks"], r["popularity"]) for r in report["results"]] == [
        (n, kind) for n in (1, 2) for kind in ("uniform", "zipf")
    ]
    for result in report["results"]:
        assert set(result["median_s"]) == {"mixed", "subbatch", "swap", "single"}
        assert all(_positive(result[k]) for k in ("mixed/single", "subbatch/single", "swap/single"))
        assert 1 <= result["tasks_in_batch"] <= result["tasks"]
    # held bytes are counted: one task is one model; a second adds its adapters and head only
    assert report["results"][0]["held/one_model"] == pytest.approx(1.0)
    assert 1.0 < report["results"][2]["held/one_model"] < 1.5


def test_multitask_scale_times_only_the_cases_asked_for(capsys, monkeypatch) -> None:
    argv = ["--quick", "--tasks", "2", "--popularity", "zipf", "--cases", "mixed", "--markdown"]
    code, stdout, stderr = _in_process("multitask_scale.py", argv, capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    row = stdout.strip().splitlines()[-1].split(" | ")
    assert row[:2] == ["| 2", "zipf"] and _positive(float(row[3])) and row[4:6] == ["-", "-"]  # subbatch, swap
    code, _, stderr = _in_process("multitask_scale.py", ["--quick", "--cases", "mixed,merged"], capsys, monkeypatch)
    assert code == 2 and "--cases: ['merged'] unknown; expected some of ['mixed', 'subbatch', 'swap']" in stderr


def test_residency_benchmark_drives_the_adapter_store(capsys, monkeypatch) -> None:
    code, stdout, stderr = _in_process("residency.py", ["--quick"], capsys, monkeypatch)
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert [(r["tasks"], r["max_resident"], r["popularity"]) for r in report["results"]] == [
        (4, 2, "uniform"),
        (4, 2, "zipf"),
    ]
    for result in report["results"]:
        assert set(result["requests_per_s"]) == {"resident-2", "all"}
        assert all(_positive(v) for v in result["requests_per_s"].values())
        counters = result["store_counters"]
        # every timed request's task was looked up: a hit on the device, or brought back (host) or read (miss)
        assert counters["device_hits"] + counters["host_hits"] + counters["misses"] >= 1
        assert counters["host_evictions"] == 0 or result["max_cached"] < result["tasks"]
        # two of four adapters attached: the model holds less than with all four, the host cache holds the rest
        assert result["held/one_model"] > 1.0 and result["held_mb"] < result["all_resident_held_mb"]
        assert result["host_cache_mb"] > 0


def test_serve_load_benchmark_measures_dynamic_adapters() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--tasks", "3",
               "--clients", "1,2", "--max-resident", "3"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    assert [(r["tasks"], r["clients"]) for r in results] == [(3, 1), (3, 2)]
    assert all(r["answered"] == 8 and r["refused"] == {"429": 0, "503": 0} for r in results)
    assert all(r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in results)
