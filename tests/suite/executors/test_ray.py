"""``--executor ray`` on a local Ray cluster this module starts (two CPUs, shared by its tests: starting one takes
about 10 s): a two-point sweep and a two-task benchmark give the report ``--executor local`` gives; a point whose
training was killed and a task that failed run again at the next invocation, the killed one resuming its run
folder; a driver on Ray and a local worker share one sweep, each point trained once; a request no node can meet is
refused before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from tests.suite.executors.runs import (
    KILL,
    POINTS,
    SWEEP_FLAGS,
    TASKS,
    benchmark,
    signal_when_training,
    stable_report,  # fmt: skip
    sweep,
    write_sweep,
)

RAY = ("--executor", "ray")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the executor uses this connection
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_sweep_on_ray_gives_the_local_report_and_a_killed_point_resumes_at_the_next_run(
    tmp_path: Path, local_reports: dict[str, Any]
) -> None:
    spec, out = write_sweep(tmp_path), tmp_path / "sweep"
    kill = signal_when_training(out / POINTS[1], "run", KILL)
    code, summary, err = sweep(spec, out, *RAY)
    kill.join(timeout=5)
    assert kill.sent and code == 2 and summary["ran"] == POINTS[:1] and summary["failed"] == POINTS[1:], err
    failed = json.loads((out / "logs" / f"{POINTS[1]}.failed.json").read_text())
    assert "exit -9" in failed["error"] and failed["job"]["executor"] == "ray"

    code, summary, err = sweep(spec, out, *RAY)
    assert code == 0 and summary["ran"] == POINTS[1:] and summary["already_done"] == POINTS[:1], err
    commands = [c for c in (out / "logs" / f"{POINTS[1]}.log").read_text().splitlines() if c.startswith("$ ")]
    assert len(commands) == 2 and "--run.resume true" in commands[1]
    assert stable_report(out) == local_reports["sweep"]
    rows = json.loads((out / "results.json").read_text())["points"]
    assert all(r["job"]["executor"] == "ray" and r["job"]["task_id"] for r in rows)


@pytest.mark.slow
def test_a_benchmark_on_ray_gives_the_local_report_after_a_failed_task_runs_again(
    tmp_path: Path, data: Path, local_reports: dict[str, Any]
) -> None:
    out = tmp_path / "bench"
    test_list = (data / TASKS[0] / "test.txt").read_text()
    (data / TASKS[0] / "test.txt").unlink()
    code, summary, err = benchmark(data, out, *RAY)
    assert code == 2 and summary["failed"] == TASKS[:1] and summary["ran"] == TASKS[1:], err
    assert "test.txt not found" in json.loads((out / TASKS[0] / "failed.json").read_text())["error"]
    (data / TASKS[0] / "test.txt").write_text(test_list)
    code, summary, err = benchmark(data, out, *RAY)
    assert code == 0 and summary["ran"] == TASKS[:1] and summary["already_done"] == TASKS[1:], err
    assert stable_report(out) == local_reports["benchmark"]


@pytest.mark.slow
def test_a_ray_driver_and_a_local_worker_share_a_sweep_each_point_once(tmp_path: Path) -> None:
    spec, out = write_sweep(tmp_path), tmp_path / "sweep"
    command = [sys.executable, "-m", "adaptformer.cli", "sweep", str(spec), "--out", str(out), "--", *SWEEP_FLAGS]
    local = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while not (out / "logs" / f"{POINTS[0]}.claim.json").is_file():  # the local worker holds its first point
        assert local.poll() is None and time.monotonic() - started < 120, local.communicate()
        time.sleep(0.05)
    code, on_ray, err = sweep(spec, out, *RAY)
    stdout, stderr = local.communicate(timeout=300)
    assert code == 0 and local.returncode == 0, err + stderr
    by_local = json.loads(stdout.strip().splitlines()[-1])
    assert on_ray["ran"] == POINTS[1:] and on_ray["held_by_other_workers"] == POINTS[:1]
    assert by_local["ran"] == POINTS[:1] and by_local["held_by_other_workers"] == POINTS[1:]
    for point in POINTS:  # one training command each
        assert (out / "logs" / f"{point}.log").read_text().count("$ ") == 1
    assert (out / "logs" / f"{POINTS[1]}.job.json").is_file() and not (out / "logs" / f"{POINTS[0]}.job.json").exists()
    assert not list((out / "logs").glob("*.claim.json"))  # every claim released
    # the driver that ended last wrote the table with both points
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["points"]] == ["done", "done"]


def test_a_request_no_node_meets_is_refused_before_anything_starts(tmp_path: Path) -> None:
    spec, out = write_sweep(tmp_path), tmp_path / "sweep"
    code, _, err = sweep(spec, out, *RAY, "--ray.num_gpus", "1")
    assert code == 2 and "--ray.num_gpus 1: no node of the Ray cluster at" in err and "the largest has 0" in err
    assert not out.exists()
