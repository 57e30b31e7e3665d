"""``--executor slurm`` through submitit's local executor (``--slurm.cluster local``: the same jobs, pickles and
requeueing as on Slurm, as local processes): a two-point sweep and a two-task benchmark give the report
``--executor local`` gives; a preempted job (SIGUSR2, as Slurm sends it) is requeued and resumes its run in the same
invocation; a task that failed and one whose training was killed run again at the next invocation, the killed one
resuming its run folder; and a machine without Slurm is refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.suite.executors.runs import (
    KILL,
    POINTS,
    PREEMPT,
    TASKS,
    benchmark,
    signal_when_training,
    stable_report,
    sweep,  # fmt: skip
    write_sweep,
)

SUBMITIT_LOCAL = ("--executor", "slurm", "--slurm.cluster", "local", "--slurm.cpus_per_task", "1")

pytestmark = pytest.mark.slow  # each training run is a process: about 20 s each on a loaded 2-core machine


def test_a_sweep_on_submitit_gives_the_local_report_and_a_preempted_job_resumes(
    tmp_path: Path, local_reports: dict[str, Any]
) -> None:
    spec, out = write_sweep(tmp_path), tmp_path / "sweep"
    preempt = signal_when_training(out / POINTS[1], "job", PREEMPT)  # Slurm's warning to the job, mid-training
    code, summary, err = sweep(spec, out, *SUBMITIT_LOCAL)
    preempt.join(timeout=5)
    assert preempt.sent and code == 0 and summary["ran"] == POINTS, err
    assert stable_report(out) == local_reports["sweep"]
    # the preempted job checkpointed, was requeued and resumed the run folder: two training commands, the second
    # resuming; the job's own log says it was requeued
    log = (out / "logs" / f"{POINTS[1]}.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--run.resume true" in commands[1] and "--run.resume" not in commands[0]
    job = json.loads((out / "logs" / f"{POINTS[1]}.job.json").read_text())
    assert job["executor"] == "slurm" and job["cluster"] == "local"
    assert "Requeued job" in Path(job["stderr"]).read_text() + Path(job["stdout"]).read_text()
    rows = json.loads((out / "results.json").read_text())["points"]
    assert [r["job"]["job_id"] for r in rows] == [
        json.loads((out / "logs" / f"{p}.job.json").read_text())["job_id"] for p in POINTS
    ]  # the report names each point's job and its log files
    assert not list((out / "logs").glob("*.claim.json"))


def test_a_failed_and_a_killed_task_run_again_at_the_next_invocation(
    tmp_path: Path, data: Path, local_reports: dict[str, Any]
) -> None:
    out = tmp_path / "bench"
    test_list = (data / TASKS[0] / "test.txt").read_text()
    (data / TASKS[0] / "test.txt").unlink()  # its final stage fails
    kill = signal_when_training(out / TASKS[1] / "final", "run", KILL)  # the training process dies mid-run
    code, summary, err = benchmark(data, out, *SUBMITIT_LOCAL)
    kill.join(timeout=5)
    assert kill.sent and code == 2 and sorted(summary["failed"]) == sorted(TASKS), err
    failed = json.loads((out / TASKS[0] / "failed.json").read_text())
    assert "test.txt not found" in failed["error"] and failed["job"]["executor"] == "slurm"
    assert "exit -9" in json.loads((out / TASKS[1] / "failed.json").read_text())["error"]

    (data / TASKS[0] / "test.txt").write_text(test_list)
    code, summary, err = benchmark(data, out, *SUBMITIT_LOCAL)
    assert code == 0 and sorted(summary["ran"]) == sorted(TASKS), err
    assert "--run.resume true" in (out / TASKS[1] / "train.log").read_text()  # the killed run resumed its folder
    assert stable_report(out) == local_reports["benchmark"]
    assert not (out / TASKS[0] / "failed.json").exists()
    jobs = json.loads((out / "results.json").read_text())["jobs"]
    assert sorted(jobs) == sorted(TASKS) and all(Path(j["stdout"]).is_file() for j in jobs.values())
