"""`adaptformer prepare digits|synthetic|shapes|synthetic-video`: built-in datasets written as real files that the
file-based kinds read back."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from adaptformer.cli import main
from adaptformer.data import build_image_dataset
from adaptformer.data.builtin_files import BUILTIN_KINDS, write_builtin_dataset
from adaptformer.data.video import load_video_split
from adaptformer.data.video.synthetic import SyntheticMotionDataset


@pytest.mark.parametrize(
    "kind, options", [("digits", {}), ("synthetic", {"num_samples": 12}), ("shapes", {"num_samples": 64})]
)
def test_exported_images_read_back_pixel_exact(tmp_path: Path, kind: str, options: dict) -> None:
    out = tmp_path / kind
    result = write_builtin_dataset(kind, out, options)
    assert result["dataset"] == "imagefolder"
    for split in ("train", "test"):
        source = build_image_dataset(kind, None, split, None, **options)
        files = build_image_dataset("imagefolder", out, split, None)
        assert result["samples"][split] == len(source) == len(files)
        assert sorted(files.classes) == sorted(source.classes)
        # imagefolder orders by class then file name; the file name is the source index
        for path, label in files.samples[:: max(1, len(files) // 20)]:
            image, source_label = source[int(Path(path).stem)]
            assert files.classes[label] == source.classes[source_label]
            got = files[files.samples.index((path, label))][0]  # uint8 (3, H, W) from the PNG
            assert np.array_equal(got.numpy(), image.expand(3, -1, -1).numpy())


def test_exported_clips_decode_close_to_the_rendered_frames(tmp_path: Path) -> None:
    out = tmp_path / "motion"
    result = write_builtin_dataset("synthetic-video", out, {"num_samples": 8, "num_classes": 4}, num_frames=6)
    assert result == {"dataset": "videofolder", "data_dir": str(out), "samples": {"train": 8, "test": 8}}
    files = load_video_split("videofolder", out, "test")
    assert sorted(files.classes) == ["down", "left", "right", "up"] and len(files) == 8
    rendered = load_video_split("synthetic-video", None, "test", num_samples=8, num_classes=4)
    clips = SyntheticMotionDataset(8, 4, 6, size=(32, 32), noise_std=rendered.noise_std, seed=rendered.seed)
    for entry in files.entries:
        index = int(entry.path.stem)
        assert files.classes[entry.label] == clips.classes[index % 4]
        with av.open(str(entry.path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (T, H, W, C)
        assert frames.shape == (6, 32, 32, 3)
        # H.264 at qp 0 is lossless in yuv420p: only the halved chroma resolution differs
        assert np.abs(frames.astype(float) - clips.frames(index).numpy()).mean() < 12


def test_export_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full exists"):
        write_builtin_dataset("digits", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="only the built-in kinds"):
        write_builtin_dataset("cifar100", tmp_path / "c")
    with pytest.raises(ValueError, match="unknown options"):
        write_builtin_dataset("synthetic", tmp_path / "s", {"num_sample": 3})
    with pytest.raises(ValueError, match="even"):
        write_builtin_dataset("synthetic-video", tmp_path / "v", {"num_samples": 4, "size": [31, 32]})
    assert main(["prepare", "shapes", "--out", str(tmp_path / "x"), "--options", "[1]"]) == 2
    assert "--options must be a YAML mapping" in capsys.readouterr().err
    assert main(["prepare", "shapes", "--out", str(tmp_path / "x"), "--options", "{a: [}"]) == 2
    assert "error: --options '{a: [}' is not YAML" in capsys.readouterr().err
    assert main(["prepare", "shapes", "--out", str(tmp_path / "x"), "--options", "{num_samples:8}"]) == 2
    assert "YAML needs a space after ':' (write {num_samples: 8}" in capsys.readouterr().err


def test_prepare_command_writes_every_built_in_kind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for kind in BUILTIN_KINDS:
        special = {"digits": "{test_fraction: 0.5}", "digits-multilabel": "{num_samples: 40}"}  # every class present
        options = special.get(kind, "{num_samples: 8}")
        assert main(["prepare", kind, "--out", str(tmp_path / kind), "--options", options]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["data_dir"] == str(tmp_path / kind) and sum(printed["samples"].values()) >= 16
        test_files = (
            tmp_path / kind / ("images/test" if printed["dataset"] in ("multilabel-list", "segfolder") else "test")
        )
        assert len(list(test_files.rglob("*.*"))) == printed["samples"]["test"]
