"""The preparers that write list files from the official SSv2 and HMDB51 releases (tiny fake release trees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptformer.data.video import (
    prepare_hmdb51,
    prepare_ssv2,
    read_video_list,
)


@pytest.mark.parametrize("prefix", ["", "something-something-v2-"])
def test_prepare_ssv2(tmp_path, prefix):
    root = tmp_path / "ssv2"
    (root / "20bn-something-something-v2").mkdir(parents=True)
    labels = {"Holding something next to something": "0", "Pushing something from left to right": "1"}
    train = [
        {"id": "11", "template": "Pushing [something] from left to right", "label": "pushing a cup"},
        {"id": "12", "template": "Holding [something] next to [something]"},
    ]
    val = [{"id": "21", "template": "Holding [something] next to [something]"}]
    for name, data in (("labels", labels), ("train", train), ("validation", val)):
        (root / f"{prefix}{name}.json").write_text(json.dumps(data))
    for video_id in ("11", "12", "21"):
        (root / "20bn-something-something-v2" / f"{video_id}.webm").touch()
    prepared = prepare_ssv2(root, tmp_path / "lists")
    assert prepared.classes == list(labels) and prepared.counts == {"train": 2, "test": 1}
    got = read_video_list(prepared.lists["train"], num_classes=2)
    assert [(e.path.name, e.label) for e in got] == [("11.webm", 1), ("12.webm", 0)] and got[0].path.is_file()
    assert [(e.path.name, e.label) for e in read_video_list(tmp_path / "lists" / "test.txt")] == [("21.webm", 0)]
    assert (tmp_path / "lists" / "classes.txt").read_text().splitlines() == list(labels)


def test_prepare_ssv2_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected Something-Something v2 layout"):
        prepare_ssv2(tmp_path, tmp_path / "lists")


def _hmdb_tree(root: Path) -> None:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    lines = {"ride_bike": "r1.avi 1 \nr2.avi 2 \nr3.avi 0 \nr4.avi 1 \n", "brush_hair": "b1.avi 2\nb2.avi 1\n\n"}
    for name, text in lines.items():
        (splits / f"{name}_test_split1.txt").write_text(text)
        (splits / f"{name}_test_split2.txt").write_text("")
        (root / "videos" / name).mkdir(parents=True)
        for line in text.split("\n"):
            if line.strip():
                (root / "videos" / name / line.split()[0]).touch()


def test_prepare_hmdb51(tmp_path):
    _hmdb_tree(tmp_path / "hmdb")
    prepared = prepare_hmdb51(tmp_path / "hmdb", tmp_path / "lists", val_fraction=0.5)
    assert prepared.classes == ["brush_hair", "ride_bike"] and prepared.counts == {"train": 2, "test": 2, "val": 1}
    read = {name: [(e.path.name, e.label) for e in read_video_list(path)] for name, path in prepared.lists.items()}
    assert read["test"] == [("b1.avi", 0), ("r2.avi", 1)]  # flag 2; r3 (flag 0) is unused
    assert sorted(read["train"] + read["val"]) == [("b2.avi", 0), ("r1.avi", 1), ("r4.avi", 1)]
    assert read["val"][0][1] == 1  # held out from the class with two training videos


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("no_splits", FileNotFoundError, "expected HMDB51 layout"),
        ("bad_line", ValueError, r"ride_bike_test_split1.txt, line 2"),
        ("missing_video", FileNotFoundError, "1 videos are missing"),
    ],
)
def test_prepare_hmdb51_errors(tmp_path, damage, error, match):
    _hmdb_tree(tmp_path)
    if damage == "no_splits":
        for f in (tmp_path / "testTrainMulti_7030_splits").iterdir():
            f.unlink()
        (tmp_path / "testTrainMulti_7030_splits").rmdir()
    elif damage == "bad_line":
        (tmp_path / "testTrainMulti_7030_splits" / "ride_bike_test_split1.txt").write_text("r1.avi 1\nr2.avi train\n")
    else:
        (tmp_path / "videos" / "ride_bike" / "r4.avi").unlink()
    with pytest.raises(error, match=match):
        prepare_hmdb51(tmp_path, tmp_path / "lists")
