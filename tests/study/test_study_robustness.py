"""The study's robustness question (``adaptformer study --robustness``): PACE points, the summary's arithmetic (mCE
against the linear probe of the same seed, retention, curves along alpha), the flags, and a toy run end to end."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from adaptformer.cli import main
from adaptformer.cli.main import build_parser
from adaptformer.cli.study import _robustness_plan
from adaptformer.study import METHODS, StudySettings, build_cells
from adaptformer.study.robustness import EVALUATION_FILE, RobustnessPlan, robustness_lines, summarise_robustness


def test_pace_points_train_their_family_with_consistency_and_are_not_run_by_default() -> None:
    cells = {c.method: c for c in build_cells(StudySettings(tasks=("digits",), methods=(
        "adaptformer-16", "adaptformer-16-pace", "lora-8-pace"), seeds=(0,)))}  # fmt: skip
    plain, pace = cells["adaptformer-16"].config, cells["adaptformer-16-pace"].config
    assert pace["optim"]["consistency"] == {"variant": "pace"}
    assert "consistency" not in plain["optim"]
    assert pace["model"]["method"] == plain["model"]["method"] == {"name": "adaptformer", "bottleneck": 16}
    assert cells["lora-8-pace"].config["optim"]["blr"] == pytest.approx(0.3)  # LoRA's digits scale stays
    assert {m for m in METHODS if m.endswith("-pace")} == {
        "adaptformer-16-pace", "adaptformer-64-pace", "lora-8-pace", "adapter_plus-16-pace"}  # fmt: skip
    assert not any(m.endswith("-pace") for m in StudySettings().methods)


def _run(method: str, seed: int, table: dict, clean: float, curve: list | None = None) -> dict:
    accuracies = [a for row in table.values() for a in row.values()]
    robustness = {"clean_acc1": clean, "n": 100, "corrupted_acc1": sum(accuracies) / len(accuracies), "acc1": table}
    if curve is not None:
        robustness["interpolation"] = curve
    return {"task": "digits", "method": method, "family": method.split("-")[0], "seed": seed,
            "trainable_params": 10, "consistency": None, "robustness": robustness}  # fmt: skip


def test_summary_normalises_errors_by_the_linear_probe_of_the_same_seed() -> None:
    runs = [
        _run("linear", 0, {"fog": {1: 80.0, 3: 60.0}}, 90.0),  # errors 20 + 40 = 60
        _run("linear", 1, {"fog": {1: 70.0, 3: 50.0}}, 90.0),  # errors 30 + 50 = 80
        _run("full", 0, {"fog": {1: 90.0, 3: 80.0}}, 95.0, [{"alpha": 0, "clean_acc1": 90.0, "corrupted_acc1": 70.0}]),
        _run("full", 1, {"fog": {1: 85.0, 3: 85.0}}, 85.0, [{"alpha": 0, "clean_acc1": 80.0, "corrupted_acc1": 60.0}]),
    ]  # fmt: skip
    rows = {r["method"]: r for r in summarise_robustness(runs)}
    full = rows["full"]
    assert full["mce"]["mean"] == pytest.approx((100 * 30 / 60 + 100 * 30 / 80) / 2)  # each seed by its own probe
    assert rows["linear"]["mce"]["mean"] == pytest.approx(100.0)
    assert full["clean_acc1"]["mean"] == pytest.approx(90.0)
    assert full["corrupted_acc1"]["mean"] == pytest.approx((85.0 + 85.0) / 2)
    assert full["retention"]["mean"] == pytest.approx((85.0 / 95.0 + 85.0 / 85.0) / 2)
    assert full["by_corruption"] == {"fog": pytest.approx((85.0 + 85.0) / 2)}
    assert full["interpolation"][0]["clean_acc1"]["mean"] == pytest.approx(85.0)
    assert full["interpolation"][0]["corrupted_acc1"]["std"] == pytest.approx(7.0710678)
    no_probe = summarise_robustness([r for r in runs if r["method"] == "full"])
    assert "mce" not in no_probe[0]  # nothing to normalise by: no mCE, never a made-up one
    text = "\n".join(robustness_lines(list(rows.values()), {"corruptions": ["fog"], "severities": [1, 3], "seed": 0},
                                      "robustness.png"))  # fmt: skip
    assert "| full | 10 | 90.00 ± 7.07 | 85.00 ± 0.00 |" in text and "| 0 | 85.00 ± 7.07 | 65.00 ± 7.07 |" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--severities", "3"], "--severities only apply with --robustness"),
        (["--robustness", "--interpolate-methods", "vpt-16", "--alphas", "2"], "alphas"),
    ],
)
def test_robustness_flags_without_robustness_or_bad_are_refused(argv: list[str], message: str) -> None:
    parser = build_parser()
    with pytest.raises((ValueError, SystemExit)) as caught:
        _robustness_plan(parser.parse_args(["study", *argv]))
    if caught.type is ValueError:
        assert message in str(caught.value)


def test_the_recorded_command_repeats_the_plan() -> None:
    plan = RobustnessPlan(
        corruptions=("fog", "frost"), severities=(2,), interpolate=("full",), alphas=(0.0, 1.0), num_samples=9
    )
    command = StudySettings(tasks=("digits",), methods=("full",), robustness=plan).command()
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert _robustness_plan(args) == plan


def test_toy_study_evaluates_every_run_under_corruptions_and_along_alpha(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["study", "--quick", "--tasks", "digits", "--methods", "linear,full", "--seeds", "0", "--jobs", "1",
            "--output-dir", str(out), "--runs-dir", str(tmp_path / "runs"), "--robustness",
            "--corruptions", "gaussian_noise", "--severities", "5", "--interpolate-methods", "full",
            "--alphas", "0,1", "--robustness-samples", "48"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r["robustness"] for r in record["runs"]}
    for scores in runs.values():
        assert scores["n"] == 48 and set(scores["acc1"]) == {"gaussian_noise"}
        assert scores["corrupted_acc1"] == scores["acc1"]["gaussian_noise"]["5"]
    curve = runs["full"]["interpolation"]
    assert [p["alpha"] for p in curve] == [0.0, 1.0] and "interpolation" not in runs["linear"]
    assert curve[1]["clean_acc1"] == runs["full"]["clean_acc1"]  # alpha 1 is the trained model itself
    rows = {r["method"]: r for r in record["robustness"]}
    assert rows["linear"]["mce"]["mean"] == pytest.approx(100.0)
    markdown = (out / "results.md").read_text()
    assert "## Robustness" in markdown and "| alpha | clean top-1 | corrupted top-1 |" in markdown
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume: the finished runs are tested again, not retrained, and their saved evaluations are reused
    saved = {m: Path(r["output_dir"]) / EVALUATION_FILE for m, r in zip(runs, record["runs"], strict=True)}

    def stamps() -> dict[str, tuple[int, int]]:
        return {m: (p.stat().st_mtime_ns, (p.parent / "checkpoint.pt").stat().st_mtime_ns) for m, p in saved.items()}

    before = stamps()
    assert main([*argv, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["robustness"] for r in again["runs"]] == [r["robustness"] for r in record["runs"]]
    assert [r["test_score"] for r in again["runs"]] == [r["test_score"] for r in record["runs"]]
    assert stamps() == before


def test_retention_is_not_averaged_over_the_seeds_that_scored_something_only() -> None:
    runs = [_run("full", 0, {"fog": {1: 0.0}}, 0.0), _run("full", 1, {"fog": {1: 40.0}}, 80.0)]
    (row,) = summarise_robustness(runs)
    assert row["retention"] is None  # seed 0 had nothing to retain: no mean of seed 1 alone
    (row,) = summarise_robustness(runs[1:])
    assert row["retention"]["mean"] == pytest.approx(0.5)
