"""Pre-train the tiny shapes ViT (``vit_shapes_patch8_32``) with adaptformer's own training command, then ship it.

    .venv/bin/python scripts/pretrain_shapes.py [--output-dir runs/pretrain_shapes]

1. ``adaptformer train --model.method full`` on the procedural ``shapes`` dataset (64 shape/palette classes, seeded),
   from random initialisation, fp32, AdamW, one torch thread (plus one data worker: two busy cores in all). Crops keep
   40-100% of the area: the paper's 8% often cuts the shape, and with it the label, out of the image; flips are on
   (every shape is mirror-symmetric up to its random rotation, so a flip never changes the class);
2. the selected full weights (backbone + its 64-class head) are cast to fp16 and written to
   ``src/adaptformer/assets/vit_shapes_patch8_32.safetensors``; the script prints the file's SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adaptformer.backbones.shapes_vit import SHAPES_VIT_FILE
from adaptformer.cli.main import main as cli

TRAIN_ARGS = [
    "train", "--model.backbone", "vit_shapes_patch8_32", "--model.method", "full", "--model.head", "linear",
    "--model.checkpoint", "null", "--data.dataset", "shapes", "--data.options", "{num_samples: 40000, num_classes: 64}",
    "--data.val_split", "0.05", "--data.crop_scale", "[0.4, 1.0]", "--data.flip", "true", "--optim.epochs", "5",
    "--optim.warmup_epochs", "1", "--optim.batch_size", "128", "--optim.optimizer", "adamw", "--optim.lr", "0.001",
    "--optim.weight_decay", "0.05", "--optim.precision", "fp32", "--data.num_workers", "1", "--run.seed", "0",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/pretrain_shapes", help="training run folder")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 1.2M-parameter model gains little from more; the data worker takes the other core
    if cli([*TRAIN_ARGS, "--run.output_dir", args.output_dir, "--run.overwrite", "true"]) != 0:  # pre-train again
        raise SystemExit("pre-training failed")
    weights = load_file(str(Path(args.output_dir) / "adapter" / "adapter_model.safetensors"))
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()}
    SHAPES_VIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, str(SHAPES_VIT_FILE), metadata={"source": "scripts/pretrain_shapes.py"})
    digest = hashlib.sha256(SHAPES_VIT_FILE.read_bytes()).hexdigest()
    test = json.loads((Path(args.output_dir) / "test.json").read_text())
    print(
        json.dumps(
            {
                "file": str(SHAPES_VIT_FILE),
                "bytes": SHAPES_VIT_FILE.stat().st_size,
                "sha256": digest,
                "shapes_test": test,
            }
        )
    )


if __name__ == "__main__":
    main()
