"""``benchmarks/consistency.py`` at toy size: every method's plain, pace and fast steps timed side by side, the
ratios to plain reported, the command recorded."""

from __future__ import annotations

import importlib.util

import pytest
from tests.paths import ROOT

SCRIPT = ROOT / "benchmarks" / "consistency.py"


def test_the_quick_benchmark_times_the_three_variants_per_method(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("consistency_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--quick", "--steps", "2", "--warmup", "1", "--batch", "4", "--precision", "fp32",
                         "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert [r["method"] for r in report["rows"]] == ["adaptformer8", "adapter_plus8", "lora8"]
    for row in report["rows"]:
        assert all(row[f"{v}_ms"] > 0 for v in ("plain", "pace", "fast"))
        assert row["pace_ratio"] == pytest.approx(row["pace_ms"] / row["plain_ms"])
    assert report["command"].startswith("python benchmarks/consistency.py --quick") and (tmp_path / "r.json").is_file()
    assert "| adaptformer8 |" in bench.markdown(report)
