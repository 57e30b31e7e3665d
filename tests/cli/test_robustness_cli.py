"""``adaptformer robustness`` end to end on a digits adapter of the shipped tiny backbone (trained one epoch through
the CLI): the report's files and numbers, the same numbers for the same seed, mCE against a linear-probe reference
(its own mCE 100), two processes under torchrun equal to one, and each bad input refused with a message that names
it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.paths import ROOT
from tests.training_step import move_trainable

from adaptformer import create_model, read_adapter_config, save_adapter
from adaptformer.cli import main

DIGITS = "{test_fraction: 0.9}"  # 180 training images
QUICK = ["--corruptions", "gaussian_noise,glass_blur,contrast", "--severities", "1,5", "--num-samples", "24",
         "--run.device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An AdaptFormer adapter trained one epoch on digits, and a linear probe of the same backbone and data."""
    root = tmp_path_factory.mktemp("robust")
    code = main([
        "train", "--model.backbone", "vit_shapes_patch8_32", "--model.checkpoint", "timm", "--model.method",
        "adaptformer", "--data.dataset", "digits", "--data.options", DIGITS, "--data.num_workers", "0",
        "--optim.epochs", "1", "--optim.warmup_epochs", "0", "--optim.batch_size", "60", "--optim.precision", "fp32",
        "--run.output_dir", str(root / "af"),
    ])  # fmt: skip
    assert code == 0
    trained = read_adapter_config(root / "af" / "adapter")
    torch.manual_seed(0)
    probe = move_trainable(create_model("vit_shapes_patch8_32", 10, method="linear", checkpoint="timm"), 0.5)
    reference = save_adapter(probe.eval(), root / "linear" / "adapter", trained.classes, trained.training)
    return root / "af" / "adapter", reference


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["robustness", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else {}, captured.err


def test_the_report_with_a_reference(adapters: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    adapter, reference = adapters
    code, summary, _ = _run(capsys, "--adapter", str(adapter), "--reference", str(reference), "--out",
                            str(tmp_path / "a"), *QUICK)  # fmt: skip
    assert code == 0 and summary["files"] == ["robustness.json", "robustness.png"]
    report = json.loads((tmp_path / "a" / "robustness.json").read_text())
    ours, theirs = report["models"]["adapter"], report["models"]["reference"]
    table = ours["corruptions"]["synthetic"]
    assert ours["n"] == 24 and list(table["acc1"]) == ["gaussian_noise", "glass_blur", "contrast"]
    assert all(list(row) == ["1", "5"] for row in table["acc1"].values())
    cells = [acc for row in table["acc1"].values() for acc in row.values()]
    assert table["mean_error"] == pytest.approx(100 - sum(cells) / 6)
    assert table["retention"] == pytest.approx(sum(cells) / 6 / ours["clean_acc1"])
    assert theirs["corruptions"]["synthetic"]["mce"] == pytest.approx(100.0)
    ref = theirs["corruptions"]["synthetic"]["acc1"]
    ce = {c: 100 * sum(100 - a for a in row.values()) / sum(100 - a for a in ref[c].values())
          for c, row in table["acc1"].items()}  # fmt: skip
    assert table["ce"] == pytest.approx(ce) and table["mce"] == pytest.approx(sum(ce.values()) / 3)
    assert summary["synthetic"]["mce"] == pytest.approx(table["mce"])
    assert (tmp_path / "a" / "robustness.png").read_bytes()[:4] == b"\x89PNG"

    # the same seed gives the same numbers; --overwrite is needed to write into the folder again
    code, _, err = _run(capsys, "--adapter", str(adapter), "--reference", str(reference), "--out",
                        str(tmp_path / "a"), *QUICK)  # fmt: skip
    assert code == 2 and "is not empty; pass --overwrite" in err
    code, _, _ = _run(capsys, "--adapter", str(adapter), "--reference", str(reference), "--out", str(tmp_path / "a"),
                      "--overwrite", *QUICK)  # fmt: skip
    assert code == 0 and json.loads((tmp_path / "a" / "robustness.json").read_text()) == report


def test_two_processes_equal_one(adapters: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    adapter, _ = adapters
    # 15 images: the two processes get unequal shards
    flags = ["--adapter", str(adapter), *QUICK, "--num-samples", "15", "--corruptions", "shot_noise,fog"]
    assert _run(capsys, *flags, "--out", str(tmp_path / "one"))[0] == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "adaptformer.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([*launcher, "robustness", *flags, "--out", str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "robustness.json").read_text()) for name in ("one", "two"))
    assert one["models"] == two["models"] and one["models"]["adapter"]["n"] == 15


def _imagefolder(root: Path, bad_test: bool) -> Path:
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            path = root / split / label / "x.png"
            if split == "test" and bad_test:
                path.write_bytes(b"not a png")
            else:
                Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return root


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--corruptions", "fog,rain"], "--corruptions: unknown corruption(s) ['rain']; valid: gaussian_noise"),
        (["--severities", "1,6"], "argument --severities: expected distinct severities among 1,2,3,4,5"),
        (["--shifted", "imagenet-x=/tmp"], "expected KIND=DIR with KIND one of imagenet-v2, imagenet-sketch"),
    ],
)
def test_bad_flags_are_refused_listing_the_valid_values(adapters, capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        main(["robustness", "--adapter", str(adapters[0]), *flags])
    assert message in capsys.readouterr().err


def test_a_reference_of_another_dataset_is_refused(adapters: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    adapter, reference = adapters
    info = read_adapter_config(reference)
    other = save_adapter(
        create_model("vit_shapes_patch8_32", 10, method="linear", checkpoint="timm").eval(), tmp_path / "other",
        info.classes, type(info.training)(dataset="synthetic"),
    )  # fmt: skip
    code, _, err = _run(capsys, "--adapter", str(adapter), "--reference", str(other), *QUICK)
    assert code == 2 and f"error: --reference {other} was not trained on the same backbone and dataset" in err
    assert "dataset: 'digits' vs 'synthetic'" in err


def test_a_split_empty_after_skipping_bad_images_is_an_error(adapters, tmp_path: Path, capsys) -> None:
    data = _imagefolder(tmp_path / "data", bad_test=True)
    code, _, err = _run(capsys, "--adapter", str(adapters[0]), "--data.dataset", "imagefolder", "--data.data_dir",
                        str(data), "--data.skip_bad_images", "true", "--out", str(tmp_path / "o"), *QUICK)  # fmt: skip
    assert code == 2
    assert "the test split of imagefolder" in err and "has no samples: all 2 were unreadable and left out" in err


def test_interpolation_along_alpha(adapters: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    adapter, _ = adapters
    flags = [*QUICK, "--corruptions", "gaussian_noise,contrast", "--severities", "5"]
    code, summary, _ = _run(capsys, "--adapter", str(adapter), "--interpolate", "0,0.5,1", "--out", str(tmp_path),
                            *flags)  # fmt: skip
    assert code == 0 and summary["files"] == ["robustness.json", "robustness.png", "interpolation.png"]
    report = json.loads((tmp_path / "robustness.json").read_text())
    curve = report["interpolation"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0] and curve[0]["label"] == "alpha=0"
    assert report["models"]["alpha=1"] == report["models"]["adapter"]
    models = report["models"]
    for point in curve:
        entry = models[point["label"]]
        assert point["clean_acc1"] == entry["clean_acc1"]
        assert point["shifted_acc1"] == {"synthetic": entry["corruptions"]["synthetic"]["mean_acc1"]}
    assert summary["interpolation"]["alpha=0.5"]["clean_acc1"] == curve[1]["clean_acc1"]
    # alpha = 0 is the frozen backbone with the trained head: the same scores as that model evaluated directly
    from adaptformer.inference.evaluate import load_trained_model
    from adaptformer.inference.robustness.interpolation import interpolated

    model, _ = load_trained_model(adapter)
    frozen = create_model("vit_shapes_patch8_32", 10, method="linear", checkpoint="timm").eval()
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    frozen.load_state_dict({**frozen.state_dict(), **head})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(interpolated(model, 0.0)(x), frozen(x))
    assert (tmp_path / "interpolation.png").read_bytes()[:4] == b"\x89PNG"


def test_interpolation_refuses_vpt_and_alphas_outside_zero_one(adapters, tmp_path: Path, capsys) -> None:
    info = read_adapter_config(adapters[0])
    torch.manual_seed(0)
    vpt = move_trainable(create_model("vit_shapes_patch8_32", 10, method="vpt", checkpoint="timm"), 0.1)
    folder = save_adapter(vpt.eval(), tmp_path / "vpt", info.classes, info.training)
    code, _, err = _run(capsys, "--adapter", str(folder), "--interpolate", "0,1", *QUICK)
    assert code == 2 and "--interpolate: VPT cannot be interpolated: its prompt tokens join the attention" in err
    with pytest.raises(SystemExit):
        main(["robustness", "--adapter", str(adapters[0]), "--interpolate", "0,1.5"])
    err = capsys.readouterr().err
    assert "argument --interpolate: alpha must be in [0, 1]" in err and "got [1.5]: extrapolation is refused" in err


def test_full_fine_tuning_interpolates_towards_its_rebuilt_pre_trained_weights(
    adapters, tmp_path: Path, capsys
) -> None:
    info = read_adapter_config(adapters[0])
    torch.manual_seed(0)
    full = move_trainable(create_model("vit_shapes_patch8_32", 10, method="full", checkpoint="timm"), 0.02).eval()
    folder = save_adapter(full, tmp_path / "full", info.classes, info.training)
    probe = create_model("vit_shapes_patch8_32", 10, method="linear", checkpoint="timm").eval()
    probe.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith("head.")}, strict=False)
    frozen = save_adapter(probe, tmp_path / "frozen", info.classes, info.training)
    flags = [*QUICK, "--corruptions", "contrast", "--severities", "5", "--num-samples", "30"]
    code, summary, err = _run(capsys, "--adapter", str(folder), "--interpolate", "0,1", "--out", str(tmp_path / "a"),
                              *flags)  # fmt: skip
    assert code == 0, err
    code, reference, _ = _run(capsys, "--adapter", str(frozen), "--out", str(tmp_path / "b"), *flags)
    # alpha = 0: the pre-trained weights (rebuilt as the adapter records them) with the fine-tuned head
    assert summary["interpolation"]["alpha=0"] == {"clean_acc1": reference["clean_acc1"],
                                                   "synthetic": reference["synthetic"]["mean_acc1"]}  # fmt: skip
    assert summary["interpolation"]["alpha=1"]["clean_acc1"] == summary["clean_acc1"]
