"""Two CPU processes under torchrun (gloo) against one process with the same effective batch.

Tolerance: with dropout off and fp32, the two runs see the same micro-batches (see engine/loaders.py) and differ only in
the order gradients are summed (DDP's all-reduce vs. accumulation in one process), so every saved tensor agrees to
within 1e-5 absolute after a few SGD steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import VIT

from adaptformer.cli import main
from adaptformer.factory import build_backbone

TINY_JSON = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'
TEST_SIZE = 51  # odd: a padding sampler would have to duplicate a sample for two processes


def _args(backbone: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "train", "--model.backbone", VIT, "--model.kwargs", TINY_JSON, "--model.checkpoint", str(backbone),
        "--data.dataset", "synthetic", "--data.options", f"{{num_samples: {TEST_SIZE}, image_size: 32}}",
        "--data.val_split", "11", "--optim.epochs", "2", "--optim.warmup_epochs", "1", "--optim.batch_size",
        str(batch_size), "--optim.effective_batch", "8", "--optim.blr", "8", "--model.method.dropout", "0",
        "--model.head", "linear", "--optim.precision", "fp32", "--data.num_workers", "0", "--run.select", "last",
        "--run.output_dir", str(out),
    ]  # fmt: skip


def test_two_processes_match_one_process_and_count_each_sample_once(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIT, 10, **json.loads(TINY_JSON)).state_dict(), str(backbone))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "adaptformer.cli", *_args(backbone, tmp_path / "two", batch_size=4)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports

    assert main(_args(backbone, tmp_path / "one", batch_size=4)) == 0  # 2 micro-batches of 4 accumulated

    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    assert any(not torch.equal(one[k], torch.zeros_like(one[k])) for k in one)  # it did train

    tests = {d: json.loads((tmp_path / d / "test.json").read_text()) for d in ("one", "two")}
    assert tests["one"]["n"] == tests["two"]["n"] == TEST_SIZE
    assert tests["two"]["acc1"] == pytest.approx(tests["one"]["acc1"], abs=100 / TEST_SIZE)
    metrics = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in tests}
    assert [m["train_loss"] for m in metrics["two"]] == pytest.approx(
        [m["train_loss"] for m in metrics["one"]], abs=1e-5
    )
