"""``benchmarks/segmentation.py`` at toy size: the UperNet training-step cases, their ratios and the targets, the GEMM
floor and the sliding-window throughput are all reported; the floor enumerates exactly the head's convolutions."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch.nn as nn
from tests.paths import ROOT

from adaptformer.segmentation import UperNetHead

SCRIPT = ROOT / "benchmarks" / "segmentation.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("segbench") / "report.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--markdown"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_reports_every_case_ratio_floor_and_target(quick_run: tuple[dict, str]) -> None:
    report, markdown = quick_run
    results = report["results"]
    assert list(results) == ["full", "linear", "adaptformer-64"]
    for name, row in results.items():
        assert all(_positive(row[k]) for k in ("median_s", "min_s", "samples_per_s", "peak_memory_mib")), name
        assert row["kind"] == "train" and row["min_s"] <= row["median_s"]
    heads = {row["head_params"] for row in results.values()}
    assert len(heads) == 1 and results["linear"]["trainable_params"] == heads.pop()  # the same UperNet trains
    assert results["full"]["trainable_params"] > results["adaptformer-64"]["trainable_params"]
    assert results["adaptformer-64"]["trainable_params"] > results["linear"]["trainable_params"]
    assert set(report["ratios"]) == {"adaptformer-64/full", "linear/full"}
    assert all(_positive(v) for r in report["ratios"].values() for v in r.values())
    floor = report["gemm_floor"]
    assert _positive(floor["floor"]) and _positive(floor["backbone_floor"]) and 0 < floor["head_share_of_full"] < 1
    assert set(floor["median_s"]) == {"AdaptFormer step products", "full step products", "block, AdaptFormer",
                                      "block, full"}  # fmt: skip
    assert _positive(report["sliding_eval"]["images_per_s"]) and report["sliding_eval"]["image"] == [64, 85]
    assert [t["limit"] for t in report["targets"]] == [0.65, 0.6]
    assert report["command"].startswith("python benchmarks/segmentation.py --quick")
    assert report["shape"]["batch"] == 2 and report["shape"]["precision"] == "bf16"
    assert "| adaptformer-64 |" in markdown and "GEMM floor" in markdown and "Sliding-window evaluation" in markdown


def test_floor_enumerates_every_convolution_of_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("segmentation_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    head = UperNetHead([32] * 4, num_classes=10, channels=16, simple_pyramid=True)
    built = Counter(
        ("t" if isinstance(m, nn.ConvTranspose2d) else "c", m.in_channels, m.out_channels, m.kernel_size[0])
        for m in head.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    )
    listed = Counter((kind, cin, cout, k) for kind, cin, cout, k, _ in bench.head_convolutions(32, 16, 8, 10))
    assert listed == built
    sides = {(kind, cin, cout, k): side for kind, cin, cout, k, side in bench.head_convolutions(32, 16, 8, 10)}
    assert sides[("c", 64, 16, 3)] == 32  # the fusion reads stride 4 of a 32-px grid of 8 patches: 4 x 8
