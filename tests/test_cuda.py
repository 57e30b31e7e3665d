"""What only a GPU can show: the adapted model, its speed options and a training run on CUDA compute what they compute
on the CPU. Marked ``cuda`` and skipped without a GPU (CI has none); ``benchmarks/gpu_check.sh`` runs them on a GPU
machine (``pytest -m cuda``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import BF16_TOL, assert_same_step, move_trainable, train_step

from adaptformer import AdaptFormerConfig, LoRAConfig, SpeedConfig, VPTConfig, apply_speed, create_model
from adaptformer.cli import main
from adaptformer.inference.multitask import MultiTaskModel

pytestmark = pytest.mark.cuda

FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}  # CPU and CUDA kernels sum in different orders: looser than fp32 on one
METHODS = {
    "adaptformer": AdaptFormerConfig(dropout=0.0),
    "vpt": VPTConfig(num_tokens=4),
    "lora": LoRAConfig(rank=4),
    "linear": "linear",
}


@pytest.fixture(autouse=True)
def _exact_fp32() -> Iterator[None]:
    """TF32 would round fp32 matrix products and convolutions to 10 bits of mantissa on Ampere and newer."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


def _model(method: object) -> torch.nn.Module:
    torch.manual_seed(1)
    return move_trainable(create_model(VIT, 5, method=method, **tiny_kwargs(VIT))).train()


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_a_training_step_on_cuda_equals_the_cpu_one(method: str, images: torch.Tensor) -> None:
    cpu = _model(METHODS[method])
    gpu = _model(METHODS[method]).cuda()
    assert_same_step(train_step(gpu, images.cuda()), train_step(cpu, images), FP32_TOL, every_gradient_nonzero=True)


@pytest.mark.parametrize("method", ["adaptformer", "vpt"])
def test_the_cuda_speed_options_keep_the_bf16_step(method: str, images: torch.Tensor) -> None:
    """``apply_speed``'s automatic choices on CUDA (bf16 frozen weights, fused attention, the hand-written frozen
    backward, the class-token tail) against every option off, both under bf16 autocast."""
    plain = apply_speed(_model(METHODS[method]).cuda(), SpeedConfig(frozen_dtype="fp32", attention="math",
                        frozen_backward="off", class_token_tail="off"), "cuda", "bf16")  # fmt: skip
    fast = apply_speed(_model(METHODS[method]).cuda(), SpeedConfig(), "cuda", "bf16")
    x = images.cuda()
    assert_same_step(train_step(fast, x, "bf16"), train_step(plain, x, "bf16"), BF16_TOL)


def test_a_mixed_task_batch_on_cuda_equals_each_single_task_model(tmp_path: Path, images: torch.Tensor) -> None:
    from adaptformer import save_adapter

    dirs = []
    for i, bottleneck in enumerate((4, 8)):
        torch.manual_seed(0)
        model = create_model(VIT, 5, method=AdaptFormerConfig(bottleneck=bottleneck), init_seed=3, **tiny_kwargs(VIT))
        torch.manual_seed(10 + i)
        save_adapter(move_trainable(model), tmp_path / f"task{i}")
        dirs.append(tmp_path / f"task{i}")
    multi = MultiTaskModel.from_adapters(dirs).cuda().eval()
    task_ids = torch.tensor([0, 1, 1, 0], device="cuda")
    with torch.no_grad():
        mixed = multi(images.cuda(), task_ids)
        for name, index in (("task0", 0), ("task1", 1)):
            rows = (task_ids == index).nonzero().flatten()
            single = multi.task_model(name)(images.cuda().index_select(0, rows))
            torch.testing.assert_close(mixed[name].cpu(), single.cpu(), **FP32_TOL)


def test_train_runs_on_cuda_and_records_the_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    flags = ["train", "--data.dataset", "synthetic", "--data.options", "{num_samples: 64}",
             "--model.backbone", VIT, "--model.kwargs", json.dumps(tiny_kwargs(VIT)), "--optim.epochs", "1",
             "--optim.warmup_epochs", "0", "--optim.batch_size", "16", "--optim.precision", "bf16",
             "--run.device", "cuda", "--run.output_dir", str(out)]  # fmt: skip
    assert main(flags) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test"]["n"] > 0 and 0.0 <= summary["test"]["acc1"] <= 100.0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
