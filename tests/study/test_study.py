"""The miniature reproduction (``adaptformer study``) and the demo built on it, end to end in their quick setting, and
Ctrl-C of a study whose runs are on worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.paths import FIXTURES, ROOT

from adaptformer.backbones.shapes_vit import SHAPES_VIT_FILE
from adaptformer.cli import main
from adaptformer.engine.config.consistency import ConsistencyConfig
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.config.sections import DecodeConfig, SegmentationConfig
from adaptformer.engine.splits import DataSpec
from adaptformer.methods import get_method, method_names
from adaptformer.study import (
    METHODS,
    Method,
    StudySettings,
    build_cells,
    format_table,
    plot_accuracy_vs_params,
    ranking,
    summarise,
    write_markdown,
)
from adaptformer.study.run import PLOT_FILE, portable_path, task_records
from adaptformer.validation import to_plain

QUICK_METHODS = ("linear", "vpt-1", "adaptformer-4", "full")
# Effective configurations of a few cells as the flat 0.1 study code built them (see "about" in the file).
EXPECTED_CONFIGS = FIXTURES / "study_effective_configs.json"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", {"name": "linear"}),
        ("vpt-16", {"name": "vpt", "num_tokens": 16, "deep": True}),
        ("adaptformer-64", {"name": "adaptformer", "bottleneck": 64}),
        ("full", {"name": "full"}),
    ],
)
def test_method_points_are_method_configs_of_registered_families(name: str, expected: dict) -> None:
    method = METHODS[name]
    assert method.method_config() == expected
    assert method.overrides() == {"model": {"method": expected}}
    fields = {k: v for k, v in expected.items() if k != "name"}
    get_method(method.family).config(**fields)  # a valid config of its family


def test_study_methods_come_from_the_registry() -> None:
    assert {m.family for m in METHODS.values()} <= set(method_names())
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        Method("dora-8", "dora", 8, (("rank", 8),))
    with pytest.raises(ValueError, match="unknown .*fields.*num_tokens"):  # a field of another family
        Method("adaptformer-8", "adaptformer", 8, (("num_tokens", 8),))


def _effective(config: dict) -> dict:
    effective = parse_mapping(config).to_dict()
    if effective["model"]["checkpoint"]:
        effective["model"]["checkpoint"] = portable_path(effective["model"]["checkpoint"])
    return effective


def test_cells_keep_the_effective_configuration_of_the_reported_study() -> None:
    """Every field of these cells' configurations is what the study code that produced reports/study/ (adaptformer
    0.1, flat configurations) ran with."""
    expected = json.loads(EXPECTED_CONFIGS.read_text())["cells"]
    settings = {
        "default": StudySettings(),
        "quick": StudySettings(quick=True),
        "random": StudySettings(pretrained=False),
    }
    cells = {
        f"{label}/{c.task}/{c.method}/seed{c.seed}": c.config for label, s in settings.items() for c in build_cells(s)
    }
    assert {"default/digits/adaptformer-16/seed0", "default/motion/vpt-4/seed0"} <= set(expected)
    for key, config in expected.items():
        effective = _effective(cells[key])
        for section, field, default in ADDED_SINCE:  # fields added later, at the value that changes nothing
            assert field not in config[section] and effective[section].pop(field) == default, (key, field)
        assert effective == config, key


# fields the configuration gained after the study ran, with the default that keeps its behaviour
ADDED_SINCE = [
    ("data", "augment", True),
    ("data", "resize", "crop"),
    ("optim", "label_smoothing", 0.0),
    ("optim", "schedule", "cosine"),  # segmentation (0.3): the poly schedule, segmentation sections
    ("optim", "poly_power", 1.0),
    ("data", "segmentation", to_plain(SegmentationConfig())),
    ("model", "decode", to_plain(DecodeConfig())),
    ("optim", "consistency", to_plain(ConsistencyConfig())),  # 0.3: consistency regularisation (PACE), off
]


def test_cells_cover_every_task_method_seed_with_one_recipe() -> None:
    settings = StudySettings(seeds=(0, 1, 2), runs_dir="r")
    cells = build_cells(settings)
    assert len(cells) == 2 * 16 * 3
    assert len({c.config["run"]["output_dir"] for c in cells}) == len(cells)
    for task in settings.tasks:
        task_cells = [c for c in cells if c.task == task]
        shared = []
        for cell in task_cells:
            config = parse_mapping(cell.config).to_dict()
            del config["model"]["method"], config["run"]["seed"], config["run"]["output_dir"]
            del config["optim"]["lr"], config["optim"]["blr"]
            shared.append(config)
        assert all(s == shared[0] for s in shared)  # the same recipe for every method and seed
    digits = {c.method: c.config for c in cells if c.task == "digits" and c.seed == 0}
    assert digits["full"]["optim"]["blr"] == pytest.approx(0.1 * digits["linear"]["optim"]["blr"])  # paper's 0.1x
    # digits are neither mirror-symmetric nor big enough for the paper's 8% crops
    augment = DataSpec.from_config(parse_mapping(digits["adaptformer-16"])).image
    assert augment.flip is False and augment.crop_scale[0] >= 0.5
    motion = {c.method: c.config for c in cells if c.task == "motion" and c.seed == 0}
    assert motion["linear"]["model"]["checkpoint_source"] == "inflate-image"
    assert motion["linear"]["model"]["kwargs"]["embed_dim"] == 128
    # the task's method settings reach that family only: no adapter dropout on motion (the paper's video setting)
    methods = {name: parse_mapping(config).model.method for name, config in motion.items()}
    assert all(methods[f"adaptformer-{n}"].dropout == 0.0 for n in (1, 4, 16, 64))
    assert methods["adaptformer-16"].bottleneck == 16 and methods["vpt-4"].num_tokens == 4
    assert parse_mapping(digits["adaptformer-16"]).model.method.dropout == 0.1  # digits keeps the default


def test_full_lr_scale_applies_to_lr_or_blr() -> None:
    cells = build_cells(StudySettings(methods=("linear", "full"), seeds=(0,)))
    optim = {(c.task, c.method): c.config["optim"] for c in cells}
    assert optim["digits", "full"]["blr"] == pytest.approx(0.1) and optim["digits", "linear"]["blr"] == 1.0
    assert "lr" not in optim["digits", "full"]
    assert optim["motion", "full"]["lr"] == optim["motion", "linear"]["lr"] == 3e-4  # motion: scale 1


def test_per_family_lr_scales_apply_to_that_family_only() -> None:
    cells = build_cells(StudySettings(methods=("adaptformer-16", "lora-8", "adapter_plus-16"), seeds=(0,)))
    optim = {(c.task, c.method): c.config["optim"] for c in cells}
    assert optim["digits", "lora-8"]["blr"] == optim["digits", "adapter_plus-16"]["blr"] == pytest.approx(0.3)
    assert optim["digits", "adaptformer-16"]["blr"] == 1.0 and optim["motion", "lora-8"]["lr"] == 3e-4


def test_report_recipe_lines_carry_what_the_committed_report_shows(tmp_path: Path) -> None:
    """results.md rendered from today's task records and the committed study's runs is the committed results.md, but
    for the wording of the motion recipe (0.1's dataset_options is data.options; its adapter dropout is now shown)."""
    committed = ROOT / "reports" / "study"
    record = json.loads((committed / "results.json").read_text())
    settings = StudySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["settings"].items()})
    record["tasks"] = task_records(settings)
    write_markdown(tmp_path / "results.md", record, PLOT_FILE)

    def normalised(text: str) -> str:
        return text.replace("dataset_options", "data.options").replace("; adaptformer runs with dropout 0.0", "")

    assert normalised((tmp_path / "results.md").read_text()) == normalised((committed / "results.md").read_text())
    motion = record["tasks"]["motion"]
    assert motion["config"]["optim"]["lr"] == 3e-4 and motion["method_settings"] == {"adaptformer": {"dropout": 0.0}}
    assert "; adaptformer runs with dropout 0.0;" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ("lora",)}, "unknown methods"),
        ({"tasks": ("cifar",)}, "unknown tasks"),
        ({"seeds": ()}, "at least one"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_settings_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudySettings(**kwargs)


def test_summary_mean_std_and_ranking() -> None:
    runs = [
        {"task": "t", "method": m, "family": m, "size": None, "seed": s, "trainable_params": p, "test_score": a,
         "metric": "top-1", "seconds": 1.0}
        for m, p, accs in (("linear", 10, (50.0, 60.0)), ("full", 1000, (90.0, 94.0)))
        for s, a in enumerate(accs)
    ]  # fmt: skip
    rows = summarise(runs)
    assert [(r["method"], r["mean_score"]) for r in rows] == [("linear", 55.0), ("full", 92.0)]
    assert rows[1]["std_score"] == pytest.approx(2.8284, abs=1e-3)  # sample std over seeds
    assert ranking(rows, "t") == "full 92.0 > linear 55.0"
    assert "| full | 1,000 | 92.00 ± 2.83 |" in format_table(rows, ["t"])
    single = summarise([r for r in runs if r["seed"] == 0])  # one seed: no standard deviation to report
    assert single[1]["std_score"] is None and "| full | 1,000 | 90.00 |" in format_table(single, ["t"])


def _random_init_flag() -> list[str]:
    return [] if SHAPES_VIT_FILE.is_file() else ["--random-init"]


def test_quick_study_writes_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    argv = ["study", "--quick", "--seeds", "0,1", "--methods", ",".join(QUICK_METHODS), "--output-dir", str(out),
            "--runs-dir", str(tmp_path / "runs"), "--jobs", "1", *_random_init_flag()]  # fmt: skip
    assert main(argv) == 0

    record = json.loads((out / "results.json").read_text())
    assert len(record["runs"]) == 2 * len(QUICK_METHODS) * 2
    assert {(r["task"], r["method"]) for r in record["runs"]} == {
        (t, m) for t in ("digits", "motion") for m in QUICK_METHODS
    }
    assert all(0.0 <= r["test_score"] <= 100.0 and r["metric"] == "top-1" for r in record["runs"])
    params = {(r["task"], r["method"]): r["trainable_params"] for r in record["summary"]}
    assert params["digits", "linear"] == 128 * 10 + 10  # the paper's head: (d + 1) x classes
    assert params["digits", "linear"] < params["digits", "vpt-1"] < params["digits", "adaptformer-4"]
    assert params["digits", "adaptformer-4"] < params["digits", "full"]
    assert record["command"].startswith("adaptformer study") and record["seconds"] > 0

    markdown = (out / "results.md").read_text()
    main_table = markdown.split("Ranking")[0]  # the inspected adapters' table comes later
    table_rows = [line for line in main_table.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split(" | ")[0][2:] for line in table_rows] == list(QUICK_METHODS)
    assert "Wall time:" in markdown and "accuracy_vs_params.png" in markdown
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| adaptformer-4 |" in capsys.readouterr().out


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as under a terminal. A shell runs a background job (``cmd &``,
    as a CI script may run the suite) with SIGINT ignored, and a process started with it ignored never sees Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_study_on_worker_processes_at_once_with_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "adaptformer.cli", "study", "--tasks", "digits", "--methods", "linear", "--seeds",
               "0,1,2,3,4,5,6,7", "--jobs", "2", "--quick", "--output-dir", str(tmp_path / "report"), "--runs-dir",
               str(tmp_path / "runs")]  # fmt: skip
    study = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    seen = []
    for line in study.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if "[1/8]" in line:  # a worker finished a run; both are training the next ones
            break
    os.killpg(study.pid, signal.SIGINT)  # Ctrl-C: the study and its worker processes get SIGINT
    started = time.monotonic()
    err = "".join(seen) + study.communicate(timeout=60)[1]
    assert study.returncode == 130 and time.monotonic() - started < 20, err  # not after the remaining runs
    assert "Traceback" not in err and "[8/8]" not in err
    assert [line for line in err.splitlines() if not line.startswith("INFO ")] == [
        "interrupted: adaptformer study stopped; it does not resume: run the same command again to start it over"
    ]


def test_reports_show_shipped_files_portably(tmp_path: Path) -> None:
    # the motion task's checkpoint is the shipped shapes ViT: the report must not carry this checkout's absolute path
    assert portable_path(str(SHAPES_VIT_FILE)) == "<adaptformer>/assets/vit_shapes_patch8_32.safetensors"
    elsewhere = str(tmp_path / "weights.safetensors")
    assert portable_path(elsewhere) == elsewhere


@pytest.mark.parametrize("tasks", [["digits"], ["digits", "motion"]])
def test_plot_title_fits_in_the_figure(tmp_path: Path, tasks: list[str]) -> None:
    """The demo's plot has one panel: the title used to run past both edges of the figure."""
    points = (("linear", 650, 60.0), ("full", 500_000, 85.0))
    rows = [{"task": t, "method": m, "family": m, "size": None, "trainable_params": n, "mean_score": a,
             "std_score": None} for t in tasks for m, n, a in points]  # fmt: skip
    plot_accuracy_vs_params(tmp_path / "plot.png", rows, tasks, {t: 10.0 for t in tasks})
    with Image.open(tmp_path / "plot.png") as image:
        pixels = np.asarray(image.convert("L"))
    edges = [pixels[:, :2], pixels[:, -2:], pixels[:2, :], pixels[-2:, :]]
    assert all((edge == 255).all() for edge in edges)  # nothing reaches the figure's border: the title is wrapped


def test_the_library_never_imports_the_study_or_matplotlib() -> None:
    """The study sits apart from the library: importing the package, the training entry point and the command line
    leaves it (and matplotlib, imported only when a plot is drawn) unloaded; building the parser, which shows the
    study's defaults in its help, still leaves matplotlib out."""
    code = (
        "import sys; import adaptformer, adaptformer.engine.train, adaptformer.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('adaptformer.study', 'matplotlib')))); "
        "adaptformer.cli.build_parser(); print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[]", "[]"]


@pytest.mark.skipif(not SHAPES_VIT_FILE.is_file(), reason="the shipped shapes ViT weights are not built yet")
def test_demo_quick_prints_table_params_plot_and_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--jobs", "1", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for method in ("linear", "adaptformer-16", "full"):
        assert f"| {method} |" in printed
        assert f"trainable parameters, {method:>15}:" in printed
    assert f"plot:    {tmp_path / 'accuracy_vs_params.png'}" in printed
    adapter = tmp_path / "digits" / "adaptformer-16" / "seed0" / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file() and f"adapter: {adapter}" in printed


@pytest.mark.skipif(not SHAPES_VIT_FILE.is_file(), reason="the shipped shapes ViT weights are not built yet")
def test_motion_controls_script_runs(tmp_path: Path) -> None:
    """scripts/motion_controls.py (quick: 32 clips, 1 epoch) writes its table, and its one non-library control really
    freezes the tubelet embedding (trainable parameters drop by exactly the embedding's)."""
    out = tmp_path / "controls.md"
    command = [sys.executable, str(ROOT / "scripts" / "motion_controls.py"), "--quick", "--output", str(out)]
    done = subprocess.run([*command, "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")][1:]  # no header
    rows = {cells[0][2:]: cells for cells in table}
    assert len(rows) == 7
    params = {label: int(cells[4].replace(",", "")) for label, cells in rows.items()}
    width, patch, tubelet = 128, 8, 2  # the study's video ViT (VIDEO_KWARGS)
    embedding = width * 3 * tubelet * patch * patch + width
    assert params["full"] - params["full, tubelet embedding frozen"] == embedding


def test_ablation_points_reach_the_method_config() -> None:
    names = ("adaptformer-64-blocks4-6", "adaptformer-64-sequential", "adaptformer-64-s0.01")
    cells = build_cells(StudySettings(tasks=("digits",), methods=names, seeds=(0,)))
    methods = {c.method: parse_mapping(c.config).model.method for c in cells}
    assert methods["adaptformer-64-blocks4-6"].layers == (3, 4, 5) and methods["adaptformer-64-s0.01"].scale == 0.01
    assert methods["adaptformer-64-sequential"].form == "sequential"
    assert all(m.bottleneck == 64 for m in methods.values())
    assert not any(METHODS[m].ablation for m in StudySettings().methods)  # the default study runs no ablation


def test_quick_study_scores_multilabel_by_map_shows_ablations_and_looks_inside(tmp_path: Path) -> None:
    out = tmp_path / "report"
    methods = ("linear", "adaptformer-64", "adaptformer-64-blocks1-3")
    argv = ["study", "--quick", "--tasks", "digits,digits-multilabel", "--seeds", "0", "--methods", ",".join(methods),
            "--output-dir", str(out), "--runs-dir", str(tmp_path / "runs"), "--jobs", "1",
            *_random_init_flag()]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    metrics = {(r["task"], r["metric"]) for r in record["runs"]}
    assert metrics == {("digits", "top-1"), ("digits-multilabel", "mAP")}
    for r in record["runs"]:  # the score is the run's own test.json entry
        test = json.loads((Path(r["output_dir"]) / "test.json").read_text())
        assert r["test_score"] == test["acc1" if r["metric"] == "top-1" else "map"]
    markdown = (out / "results.md").read_text()
    assert "digits-multilabel mAP (%)" in markdown and "| blocks | blocks1-3 |" in markdown
    inside = {(r["task"], r["method"]): r for r in record["inside"]}
    assert set(inside) == {(t, m) for t in ("digits", "digits-multilabel") for m in methods[1:]}
    assert [a["block"] for a in inside["digits", "adaptformer-64-blocks1-3"]["adapters"]] == [0, 1, 2]
    assert len(inside["digits", "adaptformer-64"]["drift"]) == 6
    assert "## What the adapters do inside" in markdown
    assert (out / "adapters_inside.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_segmentation_study_scores_miou_and_inspects_patch_tokens(tmp_path: Path) -> None:
    """digits-seg end to end at a toy size: mIoU from each run's test.json, the report's table and chance line, and the
    first seed's AdaptFormer adapter inspected per patch token on the windows its backbone takes."""
    out = tmp_path / "report"
    argv = ["study", "--quick", "--tasks", "digits-seg", "--seeds", "0", "--methods", "linear,adaptformer-16",
            "--output-dir", str(out), "--runs-dir", str(tmp_path / "runs"), "--jobs", "1",
            *_random_init_flag()]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["metric"]) for r in record["runs"]} == {("linear", "mIoU"), ("adaptformer-16", "mIoU")}
    for r in record["runs"]:
        test = json.loads((Path(r["output_dir"]) / "test.json").read_text())
        assert r["test_score"] == test["miou"] and test["task"] == "segmentation"
    params = {r["method"]: r["trainable_params"] for r in record["summary"]}
    assert params["linear"] == 2 * 128 + 128 * 11 + 11  # the decode head: BatchNorm (weight, bias) + 1x1 conv
    markdown = (out / "results.md").read_text()
    assert "digits-seg mIoU (%)" in markdown and "or mIoU (mean over classes of intersection over union" in markdown
    (inside,) = record["inside"]
    assert inside["feature"] == "patch tokens" and inside["method"] == "adaptformer-16"
    assert [d["block"] for d in inside["drift"]] == list(range(6)) and len(inside["adapters"]) == 6
    assert "a segmentation task: of each patch token the decode head reads" in markdown
    assert (out / "adapters_inside.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segmentation_chance_is_the_most_common_class_everywhere() -> None:
    from adaptformer.data.segmentation import build_segmentation_dataset
    from adaptformer.study.run import chance_score
    from adaptformer.study.tasks import default_tasks

    settings = StudySettings(tasks=("digits-seg",), quick=True)
    task = default_tasks()["digits-seg"]
    masks = build_segmentation_dataset("digits-seg", None, "test", None, **task.quick["data"]["options"]).masks
    background = (masks == 0).mean()
    assert chance_score(task, settings) == pytest.approx(100 * background / len(np.unique(masks)))
    assert 0 < chance_score(task, settings) < 100 / 11  # the background share, over the 11 classes present
