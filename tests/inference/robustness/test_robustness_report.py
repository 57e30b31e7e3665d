"""The report's numbers against hand computations: the unnormalised mean error, each corruption error normalised by
the reference (Hendrycks & Dietterich's CE and mCE), and retention; its files written atomically, and a folder that
holds something never clobbered without overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptformer.inference.robustness import (
    Scores,
    build_report,
    corruption_errors,
    mean_error,
    retention,
    write_report,
)
from adaptformer.inference.robustness.report import check_out_dir

ADAPTER = Scores(80.0, 10, {"synthetic": {"fog": {1: 70.0, 3: 50.0}, "contrast": {1: 60.0, 3: 20.0}}},
                 {"imagenet-r": 40.0}, {"imagenet-r": 5})  # fmt: skip
REFERENCE = Scores(60.0, 10, {"synthetic": {"fog": {1: 40.0, 3: 20.0}, "contrast": {1: 50.0, 3: 50.0}}})


def test_mean_error_ce_mce_and_retention_by_hand() -> None:
    table = ADAPTER.corruptions["synthetic"]
    assert mean_error(table) == pytest.approx((30 + 50 + 40 + 80) / 4)  # 50.0
    # fog: (30 + 50) / (60 + 80) = 80 / 140; contrast: (40 + 80) / (50 + 50) = 120 / 100
    errors = corruption_errors(table, REFERENCE.corruptions["synthetic"])
    assert errors == pytest.approx({"fog": 100 * 80 / 140, "contrast": 120.0})
    assert retention(40.0, 80.0) == 0.5 and retention(10.0, 0.0) is None

    report = build_report({"adapter": ADAPTER, "reference": REFERENCE}, "reference", dataset="digits")
    ours = report["models"]["adapter"]
    synthetic = ours["corruptions"]["synthetic"]
    assert synthetic["mce"] == pytest.approx((100 * 80 / 140 + 120.0) / 2)
    assert synthetic["mean_error"] == pytest.approx(50.0) and synthetic["mean_acc1"] == pytest.approx(50.0)
    assert synthetic["retention"] == pytest.approx(50.0 / 80.0)
    assert synthetic["retention_by"]["contrast"] == pytest.approx({"1": 0.75, "3": 0.25})
    assert ours["shifted"] == {"imagenet-r": {"acc1": 40.0, "n": 5, "retention": 0.5}}
    assert report["models"]["reference"]["corruptions"]["synthetic"]["mce"] == pytest.approx(100.0)
    assert report["dataset"] == "digits" and report["reference"] == "reference"
    assert "mce" not in build_report({"adapter": ADAPTER})["models"]["adapter"]["corruptions"]["synthetic"]


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"fog": {1: 40.0, 3: 20.0}}, "the reference was not evaluated on contrast at severities [1, 3]"),
        ({"fog": {1: 40.0}, "contrast": {1: 50.0, 3: 50.0}}, "not evaluated on fog at severities [1, 3]"),
        ({"fog": {1: 100.0, 3: 100.0}, "contrast": {1: 50.0, 3: 50.0}}, "the reference makes no error on fog"),
    ],
)
def test_a_reference_that_cannot_normalise_is_refused(reference: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        corruption_errors(ADAPTER.corruptions["synthetic"], reference)


def test_the_files_and_the_output_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "robustness"
    report = build_report({"adapter": ADAPTER, "reference": REFERENCE}, "reference")
    files = write_report(report, check_out_dir(out, overwrite=False))
    assert [f.name for f in files] == ["robustness.json", "robustness.png"]
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(report))
    assert files[1].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite to replace its robustness.json"):
        check_out_dir(out, overwrite=False)
    assert check_out_dir(out, overwrite=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file", overwrite=True)
