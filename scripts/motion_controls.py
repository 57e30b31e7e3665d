"""Why only full fine-tuning learns the study's motion task: controls on more data, and on what full fine-tuning uses.

    .venv/bin/python scripts/motion_controls.py [--output reports/study/motion_controls.md] [--quick]

In ``adaptformer study`` the frozen-backbone methods stay at chance on ``motion`` (the class is a direction of
motion; the backbone is the shapes ViT inflated to video). Each control below is one seed of the study's own motion
recipe (AdamW, lr 3e-4 for full fine-tuning, single torch thread); controls 1-3 use 8x as many distinct clips, seen
twice (4,096 clips x 2 epochs, 232 steps), so that no method can lean on memorising a few hundred clips:

1. linear, AdaptFormer-64 (at lr 1e-3: 3.3x the study's, for the zero-initialised adapters) and full fine-tuning, as in
   the study (tubelets of 2 frames);
2. full fine-tuning with the tubelet embedding frozen: the inflated embedding averages the two frames of a tubelet,
   so a frozen one shows no motion inside a tubelet; full fine-tuning can learn a temporal-difference filter there;
3. tubelets of 1 frame (every token one frame; no tubelet can carry motion): AdaptFormer-64 and full fine-tuning;
4. capacity: AdaptFormer-64 on the study's own 512 clips for 30 epochs at lr 3e-3: can the adapters fit the
   training clips at all (its last-epoch training loss against ln 4 = 1.386), and does that generalise?

The table goes to ``--output`` (markdown) with each run's test and validation top-1 and last-epoch training loss.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import adaptformer.engine.train as train_module
from adaptformer.engine.config.layers import merge_config
from adaptformer.study.run import StudySettings, build_cells, machine, run_cell
from adaptformer.study.tasks import VIDEO_KWARGS

# Overrides of the study's motion configuration (nested TrainConfig data, merged with merge_config).
# --quick (CI: the script runs): a few clips, one epoch each
QUICK = {
    "data": {"options": {"num_samples": 32, "num_classes": 4}},
    "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8},
}
MORE = {"data": {"options": {"num_samples": 4096, "num_classes": 4}}, "optim": {"epochs": 2, "warmup_epochs": 0}}
MORE_LR = merge_config(MORE, {"optim": {"lr": 1e-3}})
ONE_FRAME = {"model": {"kwargs": {**VIDEO_KWARGS, "tubelet_size": 1}}}  # tubelets of 1 frame
LONG = {"optim": {"epochs": 30, "warmup_epochs": 0, "lr": 3e-3}}  # the study's 512 clips, 30 epochs
CONTROLS: tuple[tuple[str, str, dict[str, Any], bool], ...] = (  # (label, study method, overrides, freeze embedding)
    ("linear", "linear", MORE_LR, False),
    ("adaptformer-64", "adaptformer-64", MORE_LR, False),
    ("full", "full", MORE, False),
    ("full, tubelet embedding frozen", "full", MORE, True),
    ("adaptformer-64, tubelets of 1 frame", "adaptformer-64", merge_config(MORE_LR, ONE_FRAME), False),
    ("full, tubelets of 1 frame", "full", merge_config(MORE, ONE_FRAME), False),
    ("adaptformer-64, 512 clips x 30 epochs", "adaptformer-64", LONG, False),
)


def _freezing_patch_embed(build: Any) -> Any:
    """``train.build_model`` with the tubelet embedding frozen (the one control that is not a library method)."""

    def build_model(cfg: Any, num_classes: int) -> torch.nn.Module:
        model = build(cfg, num_classes)
        model.patch_embed.requires_grad_(False)
        return model

    return build_model


def run_control(
    label: str, method: str, overrides: dict[str, Any], freeze: bool, runs_dir: Path, quick: bool = False
) -> dict[str, Any]:
    cell = build_cells(StudySettings(tasks=("motion",), methods=(method,), seeds=(0,), runs_dir=str(runs_dir)))[0]
    out = runs_dir / label.replace(", ", "_").replace(" ", "-")
    config = merge_config(cell.config, merge_config(overrides, QUICK if quick else {}))
    config = merge_config(config, {"run": {"output_dir": str(out)}})
    build = train_module.build_model
    if freeze:
        train_module.build_model = _freezing_patch_embed(build)
    try:
        result = run_cell(replace(cell, config=config))
    finally:
        train_module.build_model = build
    epochs = [json.loads(line) for line in (Path(result["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in epochs if "train_loss" in e][-1]
    clips = config["data"]["options"]["num_samples"]
    return {"label": label, "lr": config["optim"]["lr"], "clips": clips, "train_loss": last["train_loss"], **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("reports/study/motion_controls.md"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/motion_controls"))
    parser.add_argument(
        "--quick", action="store_true", help="32 clips, 1 epoch, batch 8 per control (checks the script runs)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    for label, method, overrides, freeze in CONTROLS:
        row = run_control(label, method, overrides, freeze, args.runs_dir, args.quick)
        print(f"{label}: test top-1 {row['test_score']:.2f}% (val {row['val_score']:.2f}%, {row['seconds']:.0f} s)")
        rows.append(row)
    env = machine()
    lines = [
        "# Motion task controls",
        "",
        f"Command: `.venv/bin/python scripts/motion_controls.py{' --quick' if args.quick else ''}`",
        "",
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min, one torch thread, on {env['cpu']}; torch "
        f"{env['torch']}. Seed 0, 4 directions (chance 25%), the study's motion recipe except for the clips (as many "
        "for training, 10% of them carved out for validation, as for testing), epochs and learning rate in the "
        "table. See the script's docstring for what each control tests.",
        "",
        "| run | clips | epochs | lr | trainable params | last train loss | test top-1 (%) | val top-1 (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['clips']:,} | {r['epochs']} | {r['lr']:g} | {r['trainable_params']:,} | "
        f"{r['train_loss']:.3f} | {r['test_score']:.2f} | {r['val_score']:.2f} |"
        for r in rows
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
