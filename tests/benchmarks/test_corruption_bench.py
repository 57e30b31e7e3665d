"""``benchmarks/corruptions.py`` at toy size: every corruption timed at 32 px, and the evaluation throughput rows
(clean and corrupted) counting every image predicted."""

from __future__ import annotations

import importlib.util

from tests.paths import ROOT

from adaptformer.data.shift import CORRUPTIONS

SCRIPT = ROOT / "benchmarks" / "corruptions.py"


def test_the_quick_benchmark_reports_every_corruption_and_both_evaluations(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("corruption_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--quick", "--workers", "0", "--repeats", "1", "--json", str(tmp_path / "r.json")])
    assert list(report["corruptions"]) == list(CORRUPTIONS)
    assert all(entry["32"]["ms"] > 0 for entry in report["corruptions"].values())
    rows = report["throughput"]
    assert [(r["corrupted"], r["images"]) for r in rows] == [(False, 8), (True, 8 * 3)]  # clean + 2 corruptions
    assert all(r["images_per_s"] > 0 for r in rows) and (tmp_path / "r.json").is_file()
    assert report["command"].startswith("python benchmarks/corruptions.py --quick")
    assert "| glass_blur |" in bench.markdown(report)
