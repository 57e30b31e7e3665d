"""The reports the executors must reproduce: a two-point sweep and a two-task benchmark run by ``--executor local``
(four training runs, once per test session: the xdist workers share them through a file under the session's
temporary folder, computed by whichever worker needs them first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from tests.suite.executors.runs import POINTS, TASKS, benchmark, stable_report, sweep, write_sweep, write_tasks


@pytest.fixture(scope="session")
def local_reports(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # this session's folder, above each worker's own
    cache = shared / "executor_local_reports.json"
    with FileLock(f"{cache}.lock"):
        if cache.is_file():
            return json.loads(cache.read_text())
        root = tmp_path_factory.mktemp("local")
        code, summary, err = sweep(write_sweep(root), root / "sweep")
        assert code == 0 and summary["ran"] == POINTS, err
        code, summary, err = benchmark(write_tasks(root / "vtab-1k"), root / "bench")
        assert code == 0 and summary["ran"] == TASKS, err
        reports = {"sweep": stable_report(root / "sweep"), "benchmark": stable_report(root / "bench")}
        cache.write_text(json.dumps(reports))
        return reports


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tasks(tmp_path / "vtab-1k")
