"""The reports the executors must reproduce: a two-point sweep and a two-task benchmark run by ``--executor local``
(once for the session: four training runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.suite.executors.runs import POINTS, TASKS, benchmark, stable_report, sweep, write_sweep, write_tasks


@pytest.fixture(scope="session")
def local_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("local")
    code, summary, err = sweep(write_sweep(root), root / "sweep")
    assert code == 0 and summary["ran"] == POINTS, err
    code, summary, err = benchmark(write_tasks(root / "vtab-1k"), root / "bench")
    assert code == 0 and summary["ran"] == TASKS, err
    return {"sweep": stable_report(root / "sweep"), "benchmark": stable_report(root / "bench")}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tasks(tmp_path / "vtab-1k")
