"""benchmarks/versions.py runs end to end in its quick mode (tiny ViT, 2 rounds of 1 step), here with this checkout as
both versions: each version in its own child process that imports the library from the tree it was given."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tests.paths import ROOT

SCRIPT = ROOT / "benchmarks" / "versions.py"
WORKLOADS = {"adaptformer-64", "forward+adapters", "full"}
PRECISIONS = {"fp32", "bf16"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("versions") / "versions.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--before", str(ROOT), "--after", str(ROOT)]
    command += ["--json", str(out), "--markdown"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_each_child_imported_the_library_from_its_tree(quick_run: tuple[dict, str]) -> None:
    report, _ = quick_run
    assert set(report["versions"]) == {"before", "after"}
    pids = set()
    for version in report["versions"].values():
        assert version["tree"] == str(ROOT)
        assert Path(version["adaptformer_file"]).is_relative_to(ROOT / "src")
        assert version["adaptformer_version"] and version["torch_threads"] == 1
        pids.add(version["pid"])
    assert len(pids) == 2  # one process per version


def test_every_workload_and_precision_has_times_for_both_versions(quick_run: tuple[dict, str]) -> None:
    report, markdown = quick_run
    assert report["command"].startswith("python benchmarks/versions.py --quick")
    assert {"cpu", "cores", "torch", "timm"} <= set(report["machine"])
    assert report["settings"]["model"] == "vit_tiny_patch16_224" and report["settings"]["rounds"] == 2
    assert {s["precision"] for s in report["suites"]} == PRECISIONS
    for suite in report["suites"]:
        assert set(suite["workloads"]) == WORKLOADS
        for name, row in suite["workloads"].items():
            for version in ("before", "after"):
                times = row[version]
                assert all(_positive(times[k]) for k in ("median_s", "min_s", "samples_per_s")), (name, version)
                assert times["min_s"] <= times["median_s"]
                assert len(times["round_medians_s"]) == 2 and all(map(_positive, times["round_medians_s"]))
                if row["kind"] == "train":
                    assert row["trainable_params"][version] > 0
            ratio = row["after/before"]
            assert len(ratio["per_round"]) == 2 and all(map(_positive, ratio["per_round"]))
            assert ratio["min"] <= ratio["median"] <= ratio["max"]
            assert ratio["first_per_round"] == ["before", "after"]  # the order alternates round by round
        params = suite["workloads"]["full"]["trainable_params"]["after"]
        assert params > suite["workloads"]["adaptformer-64"]["trainable_params"]["after"]
    assert report["notes"] == []  # the same tree twice: the same workloads
    assert "| adaptformer-64 |" in markdown and "| forward+adapters |" in markdown


def test_a_directory_without_the_library_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--before", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "not a source tree of the library" in done.stderr
