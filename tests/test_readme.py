"""Every code block of README.md, run as written.

Each shell block is a flow (prepare -> train -> eval -> predict) run in its own temporary folder that holds tiny real
files of the formats the commands name (a miniature CIFAR-100 pickle release, an MAE checkpoint of a 1-block ViT-B,
H.264 videos, ...). Flows that would take minutes get their size flags appended (later flags win), never replaced;
the offline digits flow runs exactly as written and must reach the accuracy the README states. Python blocks are
executed, the YAML block is the file its first comment names. A block that no entry of ``FLOWS`` covers fails
``test_every_readme_block_is_covered``, so a new README command cannot go untested.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.release_files import write_cifar100, write_food101, write_imagefolder, write_svhn, write_vtab_task
from tests.paths import ROOT
from tests.video_files import write_video

from adaptformer.cli import main
from adaptformer.factory import build_backbone
from adaptformer.methods import method_names, unregister_method

README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """The shell commands: continuation lines joined, comments and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [
            line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
        ]


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text().splitlines()
    start = lang = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, lang = number, line[3:].strip()
            else:
                blocks.append(Block(start, lang, "\n".join(lines[start : number - 1])))
                start = None
    return blocks


# ------------------------------------------------------------------------------------------- running commands


def run(command: str, work: Path, extra: dict[str, list[str]], paths: dict[str, str] | None = None) -> str:
    """Run one README command in ``work``; returns its stdout. ``extra`` appends flags per sub-command (or for
    ``torchrun``); ``paths`` replaces absolute path prefixes (``/data/``) by folders in ``work``."""
    for prefix, local in (paths or {}).items():
        command = command.replace(prefix, f"{work / local}/")
    argv = shlex.split(command)
    program, args = argv[0], argv[1:]
    if program.endswith("adaptformer"):  # size flags after the sub-command's own; `benchmark`'s train flags after --
        more = extra.get(args[0] if args else "", [])
        cut = args.index("--") if "--" in args else len(args)
        args = [*args[:cut], *more, *args[cut:], *(extra.get("--", []) if "--" in args else [])]
    expanded = [match for arg in args for match in (sorted(glob.glob(arg, root_dir=work)) if "*" in arg else [arg])]
    if program.endswith("adaptformer"):
        out, cwd = io.StringIO(), Path.cwd()
        os.chdir(work)
        try:
            with contextlib.redirect_stdout(out):
                code = main(expanded)
        finally:
            os.chdir(cwd)
        assert code == 0, f"README command failed ({code}): {command}"
        return out.getvalue()
    if program == "torchrun":  # two processes on CPU (gloo) instead of the README's 8 GPUs
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        rest = expanded[expanded.index("-m") :]
        rest += extra.get("torchrun", [])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(launcher + rest, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        return done.stdout
    raise AssertionError(f"no way to run README command {command!r}")


def run_script(text: str, work: Path) -> str:
    """Run a README block as one bash script in ``work`` (torchrun and the package as this checkout has them); the
    rendezvous port 29400 becomes a free one, so that test runs side by side never meet. Returns its stdout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = "set -e -o pipefail\n" + text.replace(":29400", f":{port}")
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{text}\n{done.stderr[-3000:]}"
    return done.stdout


# ------------------------------------------------------------------------------------ the files the commands name


def _mae_checkpoint(path: Path, **kwargs) -> None:
    """An MAE fine-tuning-style file ({"model": state}) of the recipes' backbone, without its head."""
    torch.manual_seed(0)
    state = build_backbone("vit_base_patch16_224.mae", 100, **kwargs).state_dict()
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("head.")}}, path)


def _videomae_checkpoint(path: Path) -> None:
    """An official VideoMAE pre-training file: "encoder." names, VideoMAE's gamma names, a decoder that is dropped."""
    torch.manual_seed(0)
    model = build_backbone("video_vit_base_patch16_224", 10, **VIDEO_SIZE)
    state = {
        k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in model.state_dict().items()
    }
    pretrain = {f"encoder.{k}": v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    pretrain |= {"encoder.norm.weight": torch.ones(768), "encoder.norm.bias": torch.zeros(768)}
    pretrain |= {"encoder_to_decoder.weight": torch.randn(384, 768), "mask_token": torch.zeros(1, 1, 384)}
    torch.save({"model": pretrain}, path)


def image_data(work: Path) -> None:
    """DATA holding miniature CIFAR-100, SVHN, Food-101 and image-folder releases side by side, and the MAE file."""
    data = work / "DATA"
    for writer in (write_cifar100, write_svhn, write_food101, write_imagefolder):
        writer(data)
    _mae_checkpoint(work / "mae_pretrain_vit_base.pth", **IMAGE_SIZE)


def video_data(work: Path) -> None:
    """Official SSv2 and HMDB51 release layouts with real videos, VideoMAE files, and DATA/{train,test}.txt."""
    ssv2 = work / "release" / "ssv2"
    (ssv2 / "20bn-something-something-v2").mkdir(parents=True)
    labels = {"Holding something next to something": "0", "Pushing something from left to right": "1"}
    train = [{"id": str(i), "template": list(labels)[i % 2].replace("something", "[something]")} for i in range(4)]
    test = [{"id": str(10 + i), "template": list(labels)[i % 2].replace("something", "[something]")} for i in range(2)]
    for name, content in (("labels", labels), ("train", train), ("validation", test)):
        (ssv2 / f"{name}.json").write_text(json.dumps(content))
    for entry in train + test:
        write_video(ssv2 / "20bn-something-something-v2" / f"{entry['id']}.mp4", num_frames=20)
    hmdb = work / "release" / "hmdb51"
    (hmdb / "testTrainMulti_7030_splits").mkdir(parents=True)
    for name in ("brush_hair", "ride_bike"):
        (hmdb / "testTrainMulti_7030_splits" / f"{name}_test_split1.txt").write_text(
            "".join(f"{name}{i}.avi {1 if i < 3 else 2}\n" for i in range(5))
        )
        (hmdb / name).mkdir()
        for i in range(5):
            write_video(hmdb / name / f"{name}{i}.avi", num_frames=20)
    lists = work / "DATA"
    lists.mkdir()
    videos = sorted((hmdb / "brush_hair").glob("*.avi")) + sorted((hmdb / "ride_bike").glob("*.avi"))
    (lists / "train.txt").write_text("".join(f"{p} {i // 5}\n" for i, p in enumerate(videos) if i % 5 < 3))
    (lists / "test.txt").write_text("".join(f"{p} {i // 5}\n" for i, p in enumerate(videos) if i % 5 >= 3))
    _videomae_checkpoint(work / "videomae_vitb_k400_pretrain.pth")
    shutil.copy(work / "videomae_vitb_k400_pretrain.pth", work / "ckpt.pth")


def photos(work: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("photo1.jpg", "photo2.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(work / name)


IMAGE_SIZE = {"depth": 1, "img_size": 64}  # a 1-block ViT-B at 64 px: the recipes' model, small enough for a test
VIDEO_SIZE = {"depth": 1, "img_size": 32}
SMALL_RUN = ["--optim.epochs", "1", "--optim.warmup_epochs", "0", "--optim.batch_size", "2", "--optim.effective_batch",
             "2", "--data.num_workers", "0"]  # fmt: skip
IMAGE_RUN = [*SMALL_RUN, "--model.kwargs", json.dumps(IMAGE_SIZE), "--data.val_split", "1",
             "--data.verify_checksums", "false"]  # fmt: skip
VIDEO_RUN = [*SMALL_RUN, "--model.kwargs", json.dumps(VIDEO_SIZE), "--data.val_split", "1"]
IMAGE_EVAL = ["--data.verify_checksums", "false"]
BENCH_TASKS = ("patch_camelyon", "kitti")  # two of the 19 VTAB-1k tasks, the ones with the fewest classes


# ----------------------------------------------------------------------------------------------- the flows


@dataclass(frozen=True)
class Flow:
    """How one README block is exercised: ``key`` is a string only its text contains."""

    key: str
    setup: tuple[Callable[[Path], None], ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
    check: Callable[[list[str], Path], None] | None = None
    paths: dict[str, str] = field(default_factory=dict)  # absolute path prefix in the README -> folder in work
    run_commands: bool = True  # False: the commands are checked by ``check`` instead (they are what CI runs)
    whole: bool = False  # True: the block is one bash script (a loop, background jobs), run by :func:`run_script`


def _check_digits(outputs: list[str], work: Path) -> None:
    test = json.loads((work / "runs/digits/test.json").read_text())
    evaluated = json.loads(outputs[2].strip().splitlines()[-1])
    assert evaluated["n"] == test["n"] == 359 and abs(evaluated["acc1"] - test["acc1"]) < 1e-6
    assert evaluated["acc1"] >= 80.0, f"the README promises about 86% test top-1, got {evaluated['acc1']:.1f}"
    predicted = outputs[3].strip().splitlines()
    assert [line.split(":")[0] for line in predicted] == [
        "data/digits/test/3/00007.png",
        "data/digits/test/8/00010.png",
    ]


def _check_predicted_every_file(outputs: list[str], work: Path) -> None:
    lines = outputs[-1].strip().splitlines()
    assert lines and all(re.match(r"^\S+: \S+ \d\.\d{3}", line) for line in lines), lines


def _check_two_nodes(outputs: list[str], work: Path) -> None:
    """Two one-process "machines" trained one run: one summary (global rank 0's), every test image counted once."""
    (summary,) = [json.loads(line) for line in outputs[0].splitlines() if line.startswith("{")]
    test = json.loads((work / "runs/digits_2nodes/test.json").read_text())
    assert summary["test"] == test and test["n"] == 359, test
    assert test["epoch"] == 1 and not list((work / "runs/digits_2nodes").glob(".*.tmp"))


def _check_setup(outputs: list[str], work: Path) -> None:
    """`bash setup.sh test` is what CI runs (.ci/run), so this suite running means it works; `demo` ends with the
    demo, whose quick setting tests/study/test_study.py runs."""
    assert "bash setup.sh test" in (ROOT / ".ci" / "run").read_text()
    setup = (ROOT / "setup.sh").read_text()
    assert "demo) " in setup and "then_run=(.venv/bin/adaptformer demo)" in setup
    assert "test) " in setup and "then_run=(.venv/bin/python -m pytest" in setup
    assert "def test_demo_quick" in (ROOT / "tests" / "study" / "test_study.py").read_text()


def _check_params(outputs: list[str], work: Path) -> None:
    assert "1,266,532" in outputs[0]


def _vtab_files(work: Path) -> None:
    """Two tiny VTAB-1k task folders and a 1-block ViT-B/16 (32 px) file in timm's layout, without its head."""
    for task in BENCH_TASKS:
        write_vtab_task(work / "vtab-1k", task)
    state = build_backbone("vit_base_patch16_224.augreg_in21k", 10, **VIDEO_SIZE).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, work / "vit_base_patch16_224_in21k.pth")


def _check_benchmark(outputs: list[str], work: Path) -> None:
    table = (work / "runs/vtab_af8/results.md").read_text()
    assert f"| {BENCH_TASKS[0]} |" in table and "**mean of 1 task" in table
    assert (work / "runs/vtab_af8/results.png").is_file()


def _check_executors(outputs: list[str], work: Path) -> None:
    """The task ran as a submitit job, whose id and log files the report records."""
    report = json.loads((work / "runs/vtab_af8/results.json").read_text())
    job = report["jobs"][BENCH_TASKS[0]]
    assert report["missing"] == [] and job["executor"] == "slurm" and job["cluster"] == "local"
    assert Path(job["stdout"]).is_file() and job["job_id"] in job["stdout"]


def _mt_adapters(work: Path) -> None:
    """runs/mt_digits/adapter (AdaptFormer-16, 10 classes) and runs/mt_shapes/adapter (linear, 64 classes) on the
    shipped backbone, as the multi-task block's training would leave them (weights moved off their init)."""
    from tests.training_step import move_trainable

    from adaptformer import create_model, save_adapter

    for name, method, classes in (("mt_digits", "adaptformer", 10), ("mt_shapes", "linear", 64)):
        torch.manual_seed(classes)
        model = move_trainable(create_model("vit_shapes_patch8_32", classes, method=method, checkpoint="timm"), 0.2)
        save_adapter(model.eval(), work / "runs" / name / "adapter", [f"{name}{i}" for i in range(classes)])


def _check_multitask(outputs: list[str], work: Path) -> None:
    lines = outputs[4].strip().splitlines()
    files = ["data/digits/test/3/00007.png", "data/shapes/test/checker-0/00007.png"]
    assert [line.split(":")[0] for line in lines] == [f"{f} [{t}]" for f in files for t in ("mt_digits", "mt_shapes")]
    assert json.loads(outputs[5])["max_abs_diff"] <= 1e-4 and (work / "runs/mt_digits/model.onnx.json").is_file()
    tasks = json.loads((work / "runs/tasks.onnx.json").read_text())["tasks"]  # the multi-task graph
    assert json.loads(outputs[6])["max_abs_diff"] <= 1e-4 and [(t["name"], t["num_classes"]) for t in tasks] == [
        ("digits", 10),
        ("mt_shapes", 64),
    ]


def _check_serve(outputs: list[str], work: Path) -> None:
    """The block's serve command, started as written (on a free port), answers /tasks and /classify."""
    import httpx
    from tests.servers import running_server

    _mt_adapters(work)
    block = next(b for b in _shell_blocks() if "adaptformer serve --adapter runs/" in b.text)
    command = next(c for c in block.commands if c.startswith("adaptformer serve"))
    with running_server(shlex.split(command)[2:], cwd=work) as url:
        assert [t["name"] for t in httpx.get(f"{url}/tasks").json()["tasks"]] == ["mt_digits", "mt_shapes"]
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
        files = {"files": ("00007.png", buffer.getvalue(), "image/png")}
        answer = httpx.post(f"{url}/classify", files=files, data={"top_k": "2"}, timeout=60).json()
        assert {t: len(top) for t, top in answer["results"][0]["tasks"].items()} == {"mt_digits": 2, "mt_shapes": 2}


def _check_serve_root(outputs: list[str], work: Path) -> None:
    """The dynamic-adapter block as written (on a free port, with a token of its own): load one adapter with the token,
    classify with both (the other loads on this first request), list them, read the metrics."""
    import httpx
    from tests.servers import serving

    _mt_adapters(work)
    block = next(b for b in _shell_blocks() if "adaptformer serve --adapter-root" in b.text)
    command = next(c for c in block.commands if c.startswith("adaptformer serve"))
    token = "readme-token"
    env = {**os.environ, "ADAPTFORMER_ADMIN_TOKEN": token}
    with serving(shlex.split(command)[2:], cwd=work, env=env) as server:
        url, auth = server.url, {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/adapters/mt_shapes").status_code == 401
        assert httpx.post(f"{url}/adapters/mt_shapes", headers=auth).json()["state"] == "resident"
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
        files = {"files": ("00007.png", buffer.getvalue(), "image/png")}
        answer = httpx.post(f"{url}/classify", files=files, data={"tasks": "mt_digits,mt_shapes"}, timeout=60).json()
        assert list(answer["results"][0]["tasks"]) == ["mt_digits", "mt_shapes"]
        states = {a["name"]: a["state"] for a in httpx.get(f"{url}/adapters").json()["adapters"]}
        assert states == {"mt_digits": "resident", "mt_shapes": "resident"}
        assert "\nadaptformer_adapter_misses_total 2.0\n" in httpx.get(f"{url}/metrics").text


def _digits_files(work: Path) -> None:
    run("adaptformer prepare digits --out data/digits", work, {})


def _digits_adapter(work: Path) -> None:
    """data/digits and runs/digits/adapter as the quick start leaves them: AdaptFormer-16 on the shipped backbone,
    trained on the image folder (weights moved off their init instead of 16 epochs)."""
    from tests.training_step import move_trainable

    from adaptformer import AdaptFormerConfig, create_model, save_adapter
    from adaptformer.saving import TrainingRecord

    _digits_files(work)
    torch.manual_seed(0)
    model = create_model("vit_shapes_patch8_32", 10, method=AdaptFormerConfig(bottleneck=16), checkpoint="timm")
    record = TrainingRecord(dataset="imagefolder", precision="fp32")
    save_adapter(move_trainable(model, 0.2).eval(), work / "runs/digits/adapter", [str(i) for i in range(10)], record)


def _check_multilabel(outputs: list[str], work: Path) -> None:
    """The multi-label flow at test size: eval scores mAP and F1 on the 200 written test images, well above the ~20
    of guessing, and predict prints the classes above the threshold."""
    scores = json.loads(outputs[2].strip().splitlines()[-1])
    assert scores["n"] == 200 and scores["map_classes"] == 10 and {"of1", "cf1", "ap"} <= set(scores)
    assert scores["map"] > 30.0, scores["map"]
    line = outputs[3].strip()
    shown = r"((\d \d\.\d{3}(, )?)+|no class reaches the threshold 0\.5)"
    assert re.fullmatch(rf"data/ml_digits/images/test/00001\.png: {shown}", line), line


def _check_segmentation(outputs: list[str], work: Path) -> None:
    """The segmentation flow at test size: eval reproduces the run's test scores from the adapter alone, and predict
    writes a label PNG (the image's size, palette mode) and an overlay per image."""
    test = json.loads((work / "runs/digits_seg/test.json").read_text())
    scores = json.loads(outputs[2].strip().splitlines()[-1])
    assert test["task"] == "segmentation" and scores["n"] == test["n"] == 24 and len(scores["iou"]) == 11
    assert abs(scores["miou"] - test["miou"]) < 1e-9 and scores["pixels"] == 24 * 64 * 64
    lines = outputs[3].strip().splitlines()
    out = work / "runs/digits_seg/predictions"
    for line, stem in zip(lines, ("00000", "00001"), strict=True):
        assert line.startswith(f"data/digits_seg/images/test/{stem}.png: runs/digits_seg/predictions/{stem}.png, ")
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (64, 64)
        assert Image.open(out / f"{stem}_overlay.png").size == (64, 64)


def _check_inspect(outputs: list[str], work: Path) -> None:
    out = work / "runs/digits/inspect"
    assert json.loads(outputs[0])["files"] == ["inspect.json", "inspect.md", "inspect.png"]
    data = json.loads((out / "inspect.json").read_text())
    assert len(data["adapters"]) == len(data["drift"]) == 6 and data["pooled"]["relative_l2"] > 0
    assert (out / "inspect.png").read_bytes()[:4] == b"\x89PNG"
    assert "| block (from 0) |" in (out / "inspect.md").read_text()


def _peft_lora(work: Path) -> None:
    """peft_lora: a real PEFT LoRA folder (fused qkv, the head saved) of the shipped tiny ViT, every trained tensor
    random and non-zero; and the photos to predict."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"])
    model = peft.get_peft_model(build_backbone("vit_shapes_patch8_32", 10, "timm"), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(work / "peft_lora")
    photos(work)


def _check_peft(outputs: list[str], work: Path) -> None:
    """PEFT's own model from the first folder and from the exported one, and the imported adapter: the same logits."""
    from peft import PeftModel

    from adaptformer.saving import create_model_from_adapter

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = create_model_from_adapter(work / "runs/from_peft/adapter").eval()(x)
        for folder in ("peft_lora", "peft_lora_again"):
            base = build_backbone("vit_shapes_patch8_32", 10, "timm")
            theirs = PeftModel.from_pretrained(base, str(work / folder)).eval()(x)
            torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert json.loads(outputs[0])["method_config"]["targets"] == ["qkv"]
    assert "photo1.jpg" in outputs[1] and "photo2.png" in outputs[1]


def _check_robustness(outputs: list[str], work: Path) -> None:
    summary = json.loads(outputs[0])
    assert summary["files"] == ["robustness.json", "robustness.png"]
    report = json.loads((work / "runs/digits/robustness/robustness.json").read_text())
    table = report["models"]["adapter"]["corruptions"]["synthetic"]["acc1"]
    assert list(table) == ["gaussian_noise", "glass_blur", "fog"] and all(
        list(r) == ["1", "3", "5"] for r in table.values()
    )
    assert report["models"]["adapter"]["n"] == 16
    summary = json.loads(outputs[1])
    assert summary["files"] == ["robustness.json", "robustness.png", "interpolation.png"]
    curve = json.loads((work / "runs/digits/robustness_alpha/robustness.json").read_text())["interpolation"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0] and list(summary["interpolation"]) == [
        "alpha=0",
        "alpha=0.5",
        "alpha=1",
    ]


def _c100_run(work: Path) -> None:
    """The README's CIFAR-100 run, at test size, for the flows that continue it."""
    image_data(work)
    photos(work)
    wanted = "adaptformer train --recipe cifar100_adaptformer64 --data.data_dir DATA "
    command = next(c for b in readme_blocks() for c in b.commands if c.startswith(wanted))
    run(command, work, {"train": IMAGE_RUN})


SEG_VIT = {"img_size": 64, "depth": 1, "dynamic_img_size": True}  # the recipes' backbones, small enough for a test
SEG_SWIN = {
    "img_size": 64,
    "strict_img_size": False,
    "embed_dim": 32,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 1],
}
SEG_RUN = [*SMALL_RUN, "--data.segmentation.base_size", "64", "--model.decode.channels", "32"]


def _segmentation_files(work: Path) -> None:
    """ADE20K and VOC 2012 + SBD release trees of tiny images, and the block's three weight files at the size flags'
    shapes: MAE's, a ViT-B/16 ImageNet-21k file in timm's layout, and Microsoft's Swin-L release layout."""
    from tests.data.segmentation.seg_release_files import write_ade20k, write_voc

    write_ade20k(work / "DATA")
    write_voc(work / "VOC", augmented=True)
    _mae_checkpoint(work / "mae_pretrain_vit_base.pth", **SEG_VIT)
    state = build_backbone("vit_base_patch16_224.augreg_in21k", 10, **SEG_VIT).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, work / "vit_base_patch16_224_in21k.pth")
    swin = build_backbone("swin_large_patch4_window7_224.ms_in22k", 10, **SEG_SWIN).state_dict()
    release = {  # Microsoft's layout: downsampling at the end of a stage, the classifier named head
        re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k).replace(
            "head.fc.", "head."
        ): v
        for k, v in swin.items()
    }
    torch.save({"model": release}, work / "swin_large_patch4_window7_224_22k.pth")


def _check_segmentation_recipes(outputs: list[str], work: Path) -> None:
    """The block's commands as written, each with the size flags of its backbone: the recipes train, `eval` scores
    the val split as the run's test did."""
    block = next(b for b in _shell_blocks() if "--recipe ade20k_vitb_mae_adaptformer64" in b.text)
    for command in block.commands:
        size = SEG_SWIN if "_swinl_" in command else SEG_VIT
        outputs.append(run(command, work, {"train": [*SEG_RUN, "--model.kwargs", json.dumps(size)]}))
    scores = json.loads(outputs[1].strip().splitlines()[-1])
    test = json.loads((work / "runs/ade20k_af64/test.json").read_text())
    assert scores["n"] == test["n"] == 2 and abs(scores["miou"] - test["miou"]) < 1e-6 and len(scores["iou"]) == 150
    for run_dir, recipe, classes in (
        ("ade20k_swinl_full", "ade20k_swinl_full", 150),
        ("voc_lora64", "voc_vitb_in21k_lora64", 21),
    ):
        report = json.loads((work / "runs" / run_dir / "test.json").read_text())
        assert report["task"] == "segmentation" and len(report["iou"]) == classes, run_dir
        assert f"recipe: {recipe}" in (work / "runs" / run_dir / "config.yaml").read_text()


def _hf_files(work: Path) -> None:
    """The digits image folder and a tiny random DINOv2 written by transformers' save_pretrained to the folder the
    block names (32 px inputs, width 32, two layers)."""
    from tests.hf_folders import write_hf_model

    _digits_files(work)
    write_hf_model("dinov2", work / "models/dinov2-small")


def _check_hf(outputs: list[str], work: Path) -> None:
    """params counts LoRA on the folder's layers (rank 8 on q and v of 2 layers of width 32), train writes an adapter
    that records the folder, and eval reproduces the run's test score from it."""
    assert "lora" in outputs[0] and "2,048" in outputs[0]
    config = json.loads((work / "runs/digits_dinov2/adapter/adapter_config.json").read_text())
    assert config["backbone"] == f"hf:{(work / 'models/dinov2-small').resolve()}"
    test = json.loads((work / "runs/digits_dinov2/test.json").read_text())
    scores = json.loads(outputs[2].strip().splitlines()[-1])
    assert scores["n"] == test["n"] == 359 and abs(scores["acc1"] - test["acc1"]) < 1e-9


FLOWS = [
    Flow("bash setup.sh demo", check=_check_setup, run_commands=False),
    Flow("# scikit-learn's real 8x8 digits as an image folder", check=_check_digits),
    Flow(
        "--model.method vpt --model.method.num_tokens 16",
        setup=(_digits_files,),
        extra={"train": ["--optim.epochs", "1"]},
        check=_check_predicted_every_file,
    ),
    Flow(
        "adaptformer prepare synthetic-video",
        extra={
            "prepare": ["--options", "{num_samples: 16}"],
            "train": ["--optim.epochs", "1", "--optim.batch_size", "8"],
        },
        check=_check_predicted_every_file,
    ),
    Flow("params --model.backbone vit_base_patch16_224 --num-classes 100", check=_check_params),
    Flow("adaptformer train --config digits_af16.yaml", extra={"train": ["--optim.epochs", "1"]}),
    Flow("# CIFAR-100 (python pickle release", setup=(image_data,), extra={"train": IMAGE_RUN}),
    Flow("# Something-Something v2", setup=(video_data,), extra={"train": VIDEO_RUN}, paths={"/data/": "release"}),
    Flow(
        "torchrun --nproc_per_node 8 -m adaptformer.cli train --recipe cifar100",
        setup=(image_data,),
        extra={"torchrun": [*IMAGE_RUN, "--optim.effective_batch", "4"]},  # 2 processes x 2
    ),
    Flow("--run.resume true", setup=(_c100_run,)),
    Flow("--rdzv_id digits_2nodes", whole=True, check=_check_two_nodes),
    Flow(
        "adaptformer prepare shapes --out data/shapes",
        extra={"train": ["--optim.epochs", "1"]},
        check=_check_multitask,
    ),
    Flow("adaptformer serve --adapter runs/mt_digits/adapter", check=_check_serve, run_commands=False),
    Flow("adaptformer serve --adapter-root runs", check=_check_serve_root, run_commands=False),
    Flow(
        "adaptformer benchmark vtab --out runs/vtab_af8 --report-only",
        setup=(_vtab_files,),
        extra={
            "benchmark": ["--tasks", BENCH_TASKS[0]],  # one task, tuned then tested (two: tests/suite)
            "--": [*SMALL_RUN, "--model.kwargs", json.dumps(VIDEO_SIZE)],
        },
        check=_check_benchmark,
    ),
    Flow(
        "--executor slurm --slurm.cluster local",
        setup=(_vtab_files,),
        extra={
            "benchmark": ["--tasks", BENCH_TASKS[0], "--no-tune"],  # one task, final stage only: one submitit job
            "--": [*SMALL_RUN, "--model.kwargs", json.dumps(VIDEO_SIZE)],
        },
        check=_check_executors,
    ),
    Flow(
        "adaptformer eval --adapter runs/c100_af64/adapter",
        setup=(_c100_run,),
        extra={"eval": IMAGE_EVAL},
        check=_check_predicted_every_file,
    ),
    Flow(
        "adaptformer prepare digits-multilabel --out data/ml_digits",
        extra={"prepare": ["--options", "{num_samples: 200}"], "train": ["--optim.epochs", "3"]},
        check=_check_multilabel,
    ),
    Flow(
        "adaptformer prepare digits-seg --out data/digits_seg",
        extra={
            "prepare": ["--options", "{num_samples: 24}"],
            "train": ["--optim.epochs", "1", "--optim.batch_size", "8"],
        },
        check=_check_segmentation,
    ),
    Flow(
        "--recipe ade20k_vitb_mae_adaptformer64",
        setup=(_segmentation_files,),
        check=_check_segmentation_recipes,
        run_commands=False,
    ),
    Flow(
        "adaptformer params --model.backbone hf:models/dinov2-small",
        setup=(_hf_files,),
        extra={"train": ["--optim.epochs", "1", "--optim.warmup_epochs", "0"]},
        check=_check_hf,
    ),
    Flow(
        "adaptformer inspect --adapter runs/digits/adapter",
        setup=(_digits_adapter,),
        extra={"inspect": ["--num-samples", "16"]},
        check=_check_inspect,
    ),
    Flow("adaptformer import-peft peft_lora", setup=(_peft_lora,), check=_check_peft),
    Flow(
        "adaptformer robustness --adapter runs/digits/adapter",
        setup=(_digits_adapter,),
        extra={"robustness": ["--num-samples", "16"]},
        check=_check_robustness,
    ),
]


def _flow_of(block: Block) -> Flow | None:
    matches = [flow for flow in FLOWS if flow.key in block.text + "\n"]
    assert len(matches) <= 1, f"README block at line {block.line} matches several flows: {[f.key for f in matches]}"
    return matches[0] if matches else None


def _shell_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.lang in ("bash", "sh", "shell")]


def test_every_readme_block_is_covered() -> None:
    langs = {b.lang for b in readme_blocks()}
    assert langs <= {"bash", "python", "yaml", "text", ""}, langs
    uncovered = [b.line for b in _shell_blocks() if _flow_of(b) is None]
    assert not uncovered, f"README shell blocks at lines {uncovered} are run by no test: add them to FLOWS"
    unused = [f.key for f in FLOWS if not any(f.key in b.text + "\n" for b in readme_blocks())]
    assert not unused, f"FLOWS entries that match no README block: {unused}"


@pytest.mark.parametrize("block", _shell_blocks(), ids=lambda b: f"line{b.line}")
def test_readme_shell_block(block: Block, tmp_path: Path) -> None:
    flow = _flow_of(block)
    assert flow is not None
    if "digits_af16.yaml" in block.text:  # the YAML block is the file its first line names
        (tmp_path / "digits_af16.yaml").write_text(next(b.text for b in readme_blocks() if b.lang == "yaml"))
    for setup in flow.setup:
        setup(tmp_path)
    if flow.whole:
        outputs = [run_script(block.text, tmp_path)]
    else:
        commands = block.commands if flow.run_commands else []
        outputs = [run(command, tmp_path, flow.extra, flow.paths) for command in commands]
    if flow.check is not None:
        flow.check(outputs, tmp_path)


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.lang == "python"], ids=lambda b: f"line{b.line}")
def test_readme_python_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if "runs/mt_digits/" in block.text:  # the multi-task section's adapters (and its ONNX file)
        _mt_adapters(tmp_path)
        if "model.onnx" in block.text:
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["export", "--adapter", "runs/mt_digits/adapter", "--format", "onnx"]) == 0
    if "mae_pretrain_vit_base.pth" in block.text:
        _mae_checkpoint(tmp_path / "mae_pretrain_vit_base.pth")  # the full-size ViT-B: the block prints its count
    known = set(method_names())
    out, module = io.StringIO(), types.ModuleType(f"readme_line{block.line}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block.text, f"README.md:{block.line}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
        for name in set(method_names()) - known:
            unregister_method(name)
    printed = out.getvalue()
    for number in re.findall(r"# .*?(\d{1,3}(?:,\d{3})+) trainable parameters", block.text):
        assert number in printed
    if "normtune" in block.text:
        assert "1,536" in printed and "1,930" in printed
    if "scaleshift" in block.text:
        assert "4,608" in printed and "1,930" in printed
