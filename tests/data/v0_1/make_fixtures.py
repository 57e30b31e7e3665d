"""Regenerate the adaptformer 0.1.0 compatibility fixtures in this folder, written BY THE 0.1.0 CODE.

This script must import the released 0.1.0 package, not the code of the checkout it lives in. 0.1.0 is commit
7446f877b1cf37cbee83008c598f96592007e602 (``__version__ == "0.1.0"``). From the repository root:

    git worktree add --detach /tmp/adaptformer-0.1.0 7446f877b1cf37cbee83008c598f96592007e602
    PYTHONPATH=/tmp/adaptformer-0.1.0/src .venv/bin/python tests/data/v0_1/make_fixtures.py
    git worktree remove /tmp/adaptformer-0.1.0

(any interpreter with torch, timm, safetensors, PyYAML and scikit-learn installed works; ``.venv`` is what setup.sh
creates). Check first that ``PYTHONPATH=/tmp/adaptformer-0.1.0/src .venv/bin/python -c 'import adaptformer;
print(adaptformer.__file__)'`` prints the worktree's path. The script refuses to run when ``adaptformer`` is imported
from this repository's own ``src/`` or is not version 0.1.0.

What it writes (see README.md in this folder for what each file means for the tests):

    adaptformer_digits/, vpt_digits/, linear_random_init/   the ``adapter/`` folder of a real 0.1.0 ``train()`` run,
                                                            byte for byte (adapter_config.json,
                                                            adapter_model.safetensors, task.json)
    configs/<name>.yaml                                     the ``config.yaml`` those runs wrote, byte for byte
    expected/<name>.safetensors                             {"input": (4, 3, 32, 32) float32, "logits": (4, 10)}: the
                                                            rebuilt 0.1.0 model's eval-mode fp32 logits on that input
    recipes_v0_1.json                                       the effective TrainConfig of each shipped 0.1.0 recipe
    manifest.json                                           how each fixture was made: settings, seeds, fingerprints,
                                                            test scores of the runs, library versions

Determinism: the runs are CPU, fp32, one thread, ``num_workers=0``, fixed seeds, and they run inside a fixed work folder
(``--work``, default /tmp/adaptformer-v0_1-fixtures, deleted and recreated) with the checkpoint and output folders
given as paths relative to it, so what is written depends only on the 0.1.0 code, the library versions and the
CPU's floating-point kernels. ``task.json``'s "checkpoint" holds the absolute path of the work folder's copy of the
shipped checkpoint (0.1.0 training resolves an existing checkpoint file to an absolute path); a different ``--work``
changes that string (and manifest.json's "work_dir"), and nothing else.

Running the script twice on the same machine gives byte-identical files, with one inherent exception in 0.1.0 itself:
``save_adapter`` passes two metadata entries ({"format", "method"}) to safetensors, whose header writes them in a
random (Rust hash map) order, so each ``adapter_model.safetensors`` has one of two headers, and the
``weights_sha256`` of ``adapter_config.json`` (the SHA-256 of that file) changes with it. The tensors, every other
field and every other file are byte-identical (the expected-logits files carry no metadata, so they are stable). To
compare a regeneration, compare adapter_model.safetensors by tensors + metadata dict, not by bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
V0_1_COMMIT = "7446f877b1cf37cbee83008c598f96592007e602"
# SHA-256 of src/adaptformer/assets/vit_shapes_patch8_32.safetensors as shipped in 0.1.0.
ASSET_SHA256 = "8b1afa1a5ac7c2c651a86035a4939bf787387b53122a8e522137898ddd151096"
ASSET_NAME = "vit_shapes_patch8_32.safetensors"
WORK_MARKER = ".adaptformer-v0_1-fixtures"
DEFAULT_WORK = "/tmp/adaptformer-v0_1-fixtures"

INPUT_SEED = 123  # torch.Generator().manual_seed(INPUT_SEED) draws the expected-logits input
INPUT_SHAPE = (4, 3, 32, 32)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "task.json")

# TrainConfig fields shared by the three runs: tiny and fast (a few seconds each on one CPU thread).
COMMON: dict[str, Any] = {
    "dataset": "digits",
    "model": "vit_shapes_patch8_32",
    "epochs": 1,
    "warmup_epochs": 0,
    "batch_size": 32,
    "num_workers": 0,
    "val_split": 0.1,
    "device": "cpu",
    "precision": "fp32",
}
# The shipped checkpoint, as study.py's motion task passes it: a file path (relative to the work folder here) +
# its key layout.
PRETRAINED: dict[str, Any] = {"checkpoint": ASSET_NAME, "checkpoint_source": "timm"}
RUNS: dict[str, dict[str, Any]] = {
    "adaptformer_digits": {**COMMON, **PRETRAINED, "method": "adaptformer", "bottleneck": 4, "seed": 0},
    "vpt_digits": {**COMMON, **PRETRAINED, "method": "vpt", "vpt_tokens": 2, "seed": 0},
    # No checkpoint: a randomly initialised backbone, rebuilt from the seed (7, not the default 0, so that a reader
    # who ignores the seed cannot pass by accident).
    "linear_random_init": {**COMMON, "method": "linear", "seed": 7},
}
GENERATED = (*RUNS, "configs", "expected", "recipes_v0_1.json", "manifest.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where the fixtures go (default: this folder)")
    parser.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="scratch folder for the runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show 0.1.0's training log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    adaptformer = check_release()
    import torch

    torch.set_num_threads(1)  # results independent of the machine's core count
    out, work = args.out.resolve(), args.work.resolve()
    asset = prepare_work(work, adaptformer)
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:  # no stale files of an earlier generation
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    manifest: dict[str, Any] = {
        "generated_by": "tests/data/v0_1/make_fixtures.py",
        "adaptformer_version": adaptformer.__version__,
        "adaptformer_commit": git_commit(Path(adaptformer.__file__).parent),
        "versions": versions(),
        "torch_threads": 1,
        "work_dir": str(work),
        "expected_input": f"torch.randn{INPUT_SHAPE}, generator=torch.Generator().manual_seed({INPUT_SEED}), float32",
        "fixtures": {},
    }
    old_cwd = Path.cwd()
    os.chdir(work)  # output_dir and checkpoint are relative to it: config.yaml records them as given
    try:
        for name, fields_ in RUNS.items():
            manifest["fixtures"][name] = make_run(name, fields_, out, work)
    finally:
        os.chdir(old_cwd)
    (out / "recipes_v0_1.json").write_text(json.dumps(recipe_configs(), indent=2, sort_keys=True) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {', '.join(GENERATED)} to {out} (folder total {total:,} bytes); checkpoint used: {asset}")


def check_release() -> Any:
    """The imported adaptformer, after checking that it is 0.1.0 and not this checkout's own code."""
    import adaptformer

    where = Path(adaptformer.__file__).resolve()
    if adaptformer.__version__ != "0.1.0":
        sys.exit(
            f"adaptformer {adaptformer.__version__} imported from {where}: these fixtures must be written by 0.1.0"
        )
    if (REPO_ROOT / "src") in where.parents:
        sys.exit(
            f"adaptformer is imported from this checkout ({where}), whose code may no longer be 0.1.0; put a 0.1.0 "
            f"checkout first on PYTHONPATH (commit {V0_1_COMMIT}, see this script's docstring)"
        )
    return adaptformer


def prepare_work(work: Path, adaptformer: Any) -> Path:
    """A fresh work folder holding a copy of 0.1.0's shipped checkpoint (checked against its SHA-256)."""
    from adaptformer.models.shapes_vit import SHAPES_VIT_FILE

    if work.exists():
        if not (work / WORK_MARKER).is_file():
            sys.exit(f"{work} exists and was not made by this script; pass another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("scratch folder of tests/data/v0_1/make_fixtures.py; deleted on each run\n")
    digest = hashlib.sha256(SHAPES_VIT_FILE.read_bytes()).hexdigest()
    if digest != ASSET_SHA256:
        sys.exit(f"{SHAPES_VIT_FILE}: SHA-256 {digest}, not 0.1.0's {ASSET_SHA256}")
    shutil.copyfile(SHAPES_VIT_FILE, work / ASSET_NAME)
    return SHAPES_VIT_FILE


def make_run(name: str, fields_: dict[str, Any], out: Path, work: Path) -> dict[str, Any]:
    """Train with 0.1.0, copy the adapter folder and config.yaml, write the expected logits; the manifest entry."""
    import torch
    from safetensors.torch import save

    from adaptformer.engine.config import TrainConfig
    from adaptformer.engine.inference import load_trained_model
    from adaptformer.engine.rng import seed_everything
    from adaptformer.models.shapes_vit import SHAPES_VIT_FILE
    from adaptformer.saving import backbone_fingerprint, create_model_from_adapter, load_adapter, read_adapter_config
    from adaptformer.train import build_model, train

    run_dir = Path("runs") / name
    cfg = TrainConfig.from_dict({**fields_, "output_dir": str(run_dir)})
    result = train(cfg)
    adapter_src = work / run_dir / "adapter"
    found = sorted(p.name for p in adapter_src.iterdir())
    if found != sorted(ADAPTER_FILES):
        raise RuntimeError(f"{adapter_src}: expected {sorted(ADAPTER_FILES)}, 0.1.0 wrote {found}")
    adapter_dir = out / name
    adapter_dir.mkdir()
    for file in ADAPTER_FILES:
        shutil.copyfile(adapter_src / file, adapter_dir / file)
    (out / "configs").mkdir(exist_ok=True)
    shutil.copyfile(work / run_dir / "config.yaml", out / "configs" / f"{name}.yaml")

    spec, extras = read_adapter_config(adapter_dir)
    if cfg.checkpoint is not None:
        # The documented way: the backbone named in adapter_config.json + the shipped checkpoint, then the adapter
        # (its backbone fingerprint is checked by load_adapter).
        model = create_model_from_adapter(
            adapter_dir, checkpoint=SHAPES_VIT_FILE, checkpoint_source=cfg.checkpoint_source
        )
        how = (
            f"create_model_from_adapter('{name}', checkpoint=<0.1.0 package>/assets/{ASSET_NAME}, "
            f"checkpoint_source='{cfg.checkpoint_source}')"
        )
        # Cross-check: 0.1.0's eval path (the checkpoint recorded in task.json, which exists while the work folder
        # does) builds the same model.
        same, _ = load_trained_model(adapter_dir)
    else:
        # The backbone is random: rebuilt exactly as train() built it (seed_everything(cfg.seed), then build_model;
        # loading the digits splits in between draws from no global generator). The fingerprint proves it is the
        # same backbone, so load_adapter accepts it with allow_backbone_mismatch=False.
        seed_everything(cfg.seed)
        model = build_model(cfg, spec.num_classes)
        if backbone_fingerprint(model) != extras["backbone_fingerprint"]:
            raise RuntimeError(f"{name}: the seeded rebuild is not the backbone training used")
        load_adapter(model, adapter_dir)
        how = (
            f"adaptformer.engine.rng.seed_everything({cfg.seed}); adaptformer.train.build_model(cfg, "
            f"{spec.num_classes}); load_adapter (equivalently: torch.manual_seed({cfg.seed}); "
            f"timm.create_model('{cfg.model}', num_classes={spec.num_classes}) for the frozen backbone)"
        )
        same = None
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(INPUT_SEED), dtype=torch.float32)
    with torch.no_grad():
        logits = model.float().eval()(x).float().contiguous()
        if same is not None and not torch.equal(same.float().eval()(x), logits):
            raise RuntimeError(f"{name}: load_trained_model and create_model_from_adapter disagree")
    (out / "expected").mkdir(exist_ok=True)
    (out / "expected" / f"{name}.safetensors").write_bytes(save({"input": x, "logits": logits}))

    test = result.test or {}
    return {
        "train_config_given": fields_,
        "output_dir": str(run_dir),
        "seed": cfg.seed,
        "checkpoint_given": cfg.checkpoint,
        "checkpoint_source": cfg.checkpoint_source,
        "backbone_fingerprint": extras["backbone_fingerprint"],
        "expected_logits": f"expected/{name}.safetensors",
        "expected_logits_model": how,
        "test_of_run": {k: test.get(k) for k in ("acc1", "acc5", "loss", "n", "epoch", "val_acc1")},
    }


def recipe_configs() -> dict[str, dict[str, Any]]:
    """Every shipped recipe's effective configuration: its fields over the TrainConfig defaults (validated)."""
    from adaptformer.engine.config import TrainConfig
    from adaptformer.recipes import load_recipe, recipe_names

    return {name: TrainConfig.from_dict({**load_recipe(name), "recipe": name}).to_dict() for name in recipe_names()}


def git_commit(package_dir: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn
    import timm
    import torch
    import yaml

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "scikit-learn": sklearn.__version__,
        "pyyaml": yaml.__version__,
    }


if __name__ == "__main__":
    main()
