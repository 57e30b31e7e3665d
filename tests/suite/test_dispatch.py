"""The dispatcher on the local executor, with units whose work is a plain function (no training): what is done, held
by another driver or failed in this round by another is not run; a failure is recorded with its error; a success
drops an earlier failure and an earlier scheduler's job record; the claims are gone at the end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from adaptformer.suite.claims import try_claim
from adaptformer.suite.dispatch import Unit, dispatch
from adaptformer.suite.executors import UnitRun
from adaptformer.suite.executors.local import LocalExecutor


def _unit(root: Path, name: str) -> Unit:
    return Unit(name, root / name / "done", root / name / "claim.json", root / name / "failed.json",
                root / name / "job.json")  # fmt: skip


def test_each_unit_is_run_skipped_or_recorded_as_it_stands(tmp_path: Path) -> None:
    units = [_unit(tmp_path, n) for n in ("done", "held", "retried", "failed_now", "broken")]
    for unit in units:
        unit.done.parent.mkdir()
    units[0].done.write_text("")
    other = try_claim(units[1].claim.parent, "other-driver", stale_after_s=600, heartbeat_s=60)
    units[2].failed.write_text(json.dumps({"error": "failed yesterday"}))
    os.utime(units[2].failed, (time.time() - 86400, time.time() - 86400))
    units[2].job.write_text(json.dumps({"executor": "slurm", "job_id": "17"}))  # a job of an earlier run
    ran: list[str] = []

    def work(name: str) -> str | None:
        ran.append(name)
        # meanwhile another driver of this round tries failed_now, and it fails there
        units[3].failed.write_text(json.dumps({"error": "failed on another driver a moment ago"}))
        if name == "broken":
            return "the training run failed"
        (tmp_path / name / "done").write_text("")
        return None

    summary = dispatch(units, work, LocalExecutor(), "me", stale_after_s=600)
    assert ran == ["retried", "broken"]
    assert (summary.ran, summary.already_done, summary.held_elsewhere) == (["retried"], ["done"], ["held"])
    assert summary.failed == {"failed_now": "failed on another driver a moment ago",
                              "broken": "the training run failed"}  # fmt: skip
    assert json.loads(units[4].failed.read_text()) == {"worker": "me", "error": "the training run failed"}
    assert not units[2].failed.exists() and not units[2].job.exists()  # run here now: the old job is not its record
    assert [u.name for u in units if u.claim.exists()] == ["held"]  # only the other driver's claim is left
    other.release()


def test_a_job_keeps_its_drivers_claim_fresh_and_leaves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"worker": "driver"}))
    os.utime(claim, (time.time() - 3600, time.time() - 3600))  # its driver died an hour ago
    monkeypatch.chdir(tmp_path)
    seen: list[float] = []

    def work(name: str) -> str | None:
        time.sleep(0.5)
        seen.append(time.time() - claim.stat().st_mtime)
        return None

    assert UnitRun("p", work, claim, "driver", tmp_path, heartbeat_s=0.05)() is None
    assert seen[0] < 1.0  # touched while the job ran: no other driver takes the unit over
    assert json.loads(claim.read_text()) == {"worker": "driver"}  # still the driver's, for it to release
