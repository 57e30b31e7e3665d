"""Every method in one mixed-task batch: per sample, a multi-task model's logits equal the task's own single-task model
(fp32, 1e-5) for AdaptFormer (parallel, sequential), Adapter+, LoRA (ranks, targets, layers), VPT (prompt counts,
deep and shallow), linear probes and full fine-tuning, alone and all together, in shuffled interleaved orders; methods
meeting on one block; what each task holds; removing and re-adding tasks in another order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.inference.routing import ModuleRouter, Router
from adaptformer.methods import AdapterPlusConfig, AdaptFormerConfig, LoRAConfig, VPTConfig
from adaptformer.saving import create_model_from_adapter

NAME = "vit_shapes_patch8_32"  # the shipped tiny backbone (6 blocks, width 128), weights from the package
ATOL = 1e-5  # fp32: only the batched products' rounding (and the masked attention's) differs

# task -> (method, classes); AdaptFormer and Adapter+ make a block their own class, so they adapt different blocks;
# LoRA and VPT change no block's class and adapt the same blocks as everything else
METHODS = {
    "af_par": (AdaptFormerConfig(bottleneck=8, layers=(0, 1, 2)), 10),
    "af_seq": (AdaptFormerConfig(bottleneck=4, form="sequential", layers=(0, 2)), 3),
    # parallel adapters share one batched pass per block (another bottleneck, a learnable scale, LN(x') read)
    "af_par4": (AdaptFormerConfig(bottleneck=4, scale="learnable", layers=(0, 1)), 4),
    "af_normed": (AdaptFormerConfig(bottleneck=6, input="normed", layers=(1, 2)), 5),
    "aplus": (AdapterPlusConfig(bottleneck=4, layers=(3, 4, 5)), 6),
    "lora_qv2": (LoRAConfig(rank=2), 4),
    "lora_qkvo4": (LoRAConfig(rank=4, alpha=6, targets=("q", "k", "v", "o"), layers=(1, 3)), 5),
    "lora_fused3": (LoRAConfig(rank=3, targets=("qkv", "o"), layers=(1, 2)), 6),  # one A shared by q, k and v
    "vpt_deep2": (VPTConfig(num_tokens=2), 7),
    "vpt_deep1": (VPTConfig(num_tokens=1), 2),
    "vpt_shallow5": (VPTConfig(num_tokens=5, deep=False), 8),
    "linear": ("linear", 9),
    "full": ("full", 3),
}
GROUPS = {
    "adaptformer": ("af_par", "af_seq", "af_par4", "af_normed"),
    "adapter_plus": ("aplus", "linear"),
    "lora": ("lora_qv2", "lora_qkvo4", "lora_fused3"),
    "vpt": ("vpt_deep2", "vpt_deep1", "vpt_shallow5"),
    "linear": ("linear",),
    "full": ("full", "linear"),
    "all": tuple(METHODS),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, (name, (method, classes)) in enumerate(METHODS.items()):
        torch.manual_seed(seed)  # every trained tensor moved off its init, as training would
        model = move_trainable(create_model(NAME, classes, method=method, checkpoint="timm"), 0.2)
        dirs[name] = save_adapter(model.eval(), root / name / "adapter", classes=[f"{name}{i}" for i in range(classes)])
    return dirs


@pytest.fixture(scope="module")
def singles(adapters: dict[str, Path]) -> dict[str, torch.nn.Module]:
    return {name: create_model_from_adapter(d).eval() for name, d in adapters.items()}


def _interleaved(count: int, seed: int, extra: int = 5) -> torch.Tensor:
    """Task ids with every task present twice or more, shuffled (tasks interleaved)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.arange(count).repeat(2), torch.randint(0, count, (extra,), generator=generator)])
    return ids[torch.randperm(len(ids), generator=generator)]


def _assert_each_task_equals_its_model(
    multi: MultiTaskModel, singles: dict[str, torch.nn.Module], x: torch.Tensor, ids: torch.Tensor, one_by_one: bool
) -> None:
    with torch.no_grad():
        out = multi(x, ids)
        assert list(out) == [n for k, n in enumerate(multi.tasks) if (ids == k).any()]
        for k, name in enumerate(multi.tasks):
            rows = (ids == k).nonzero().squeeze(1)
            if not len(rows):
                continue
            torch.testing.assert_close(out[name], singles[name](x[rows]), atol=ATOL, rtol=0)
            if one_by_one:
                for j, row in enumerate(rows.tolist()):
                    torch.testing.assert_close(out[name][j], singles[name](x[row : row + 1])[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("order_seed", [0, 1, 2])
def test_a_mixed_batch_of_every_method_equals_each_sample_through_its_own_model(
    adapters: dict[str, Path], singles: dict[str, torch.nn.Module], group: str, order_seed: int
) -> None:
    names = GROUPS[group]
    multi = MultiTaskModel.from_adapters([adapters[n] for n in names], list(names)).eval()
    ids = _interleaved(len(names), order_seed)
    x = torch.randn(len(ids), 3, 32, 32, generator=torch.Generator().manual_seed(10 + order_seed))
    _assert_each_task_equals_its_model(multi, {n: singles[n] for n in names}, x, ids, one_by_one=order_seed == 0)


@pytest.mark.parametrize(
    "present",
    [("vpt_deep2",), ("vpt_deep1", "linear"), ("lora_qkvo4", "af_par"), ("full",), ("af_seq", "aplus")],
    ids=[
        "one-vpt-task-fills-every-slot",
        "vpt-beside-a-probe",
        "lora-on-blocks-adaptformer-adapts",
        "only-full",
        "no-lora-no-vpt",
    ],
)
def test_batches_holding_some_tasks_only_equal_their_models(
    adapters: dict[str, Path], singles: dict[str, torch.nn.Module], present: tuple[str, ...]
) -> None:
    multi = MultiTaskModel.from_adapters(list(adapters.values()), list(adapters)).eval()
    index = {n: i for i, n in enumerate(multi.tasks)}
    ids = torch.tensor([index[n] for n in present])[_interleaved(len(present), 3, extra=2)]
    x = torch.randn(len(ids), 3, 32, 32, generator=torch.Generator().manual_seed(4))
    _assert_each_task_equals_its_model(multi, singles, x, ids, one_by_one=False)


def test_methods_meeting_on_one_block_route_each_their_own_rows(adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters([adapters[n] for n in ("af_par", "lora_qkvo4", "vpt_deep2", "aplus")])
    blocks = multi.trunk.blocks
    assert isinstance(blocks, ModuleRouter) and list(blocks.tasks) == ["vpt_deep2"]  # VPT's site: the block sequence
    block1 = blocks.frozen[1]  # AdaptFormer's block class, its adaptmlp routed, LoRA's projections routed inside
    assert isinstance(block1.adaptmlp, Router) and list(block1.adaptmlp.tasks) == ["af_par"]
    assert isinstance(block1.attn.qkv, ModuleRouter) and isinstance(block1.attn.proj, ModuleRouter)
    assert list(block1.attn.qkv.tasks) == ["lora_qkvo4"] and type(block1.attn.qkv.frozen) is torch.nn.Linear
    assert not isinstance(blocks.frozen[0].attn.qkv, ModuleRouter)  # lora_qkvo4 adapts blocks 1 and 3 only
    assert type(blocks.frozen[4]).__name__ == "AdapterPlusViTBlock"


def test_each_task_holds_its_adapter_and_head_and_a_full_task_its_own_backbone(adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters(list(adapters.values()), list(adapters))
    backbone = sum(p.numel() for p in multi._plain[0].parameters())
    trunk = {id(p) for p in multi._plain[0].parameters()}
    for name in multi.tasks:
        model = multi.task_model(name)
        own = sum(p.numel() for p in model.parameters() if id(p) not in trunk)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert multi.task(name).num_parameters == own == trained > 0
    full = multi.task_model("full")
    head = sum(p.numel() for p in full.get_classifier().parameters())
    assert multi.task("full").num_parameters == backbone - 128 * 10 - 10 + head  # its backbone, with its own head
    held = {id(p): p.numel() for p in multi.parameters()}  # the model's memory counts the full task's backbone
    assert sum(held.values()) == backbone + sum(multi.task(n).num_parameters for n in multi.tasks) - 128 * 10 - 10
    assert not any(id(p) in trunk for p in full.parameters())  # its own weights, nothing shared


def test_removing_tasks_and_adding_them_in_another_order_changes_no_output(
    adapters: dict[str, Path], singles: dict[str, torch.nn.Module]
) -> None:
    names = ("af_par", "lora_qv2", "vpt_shallow5", "full", "linear")
    first = MultiTaskModel.from_adapters([adapters[n] for n in names], list(names)).eval()
    ids = _interleaved(len(names), 5)
    x = torch.randn(len(ids), 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = first(x, ids)
        for name in ("vpt_shallow5", "lora_qv2", "full"):
            first.remove_task(name)
        assert first.tasks == ("af_par", "linear") and all(
            "vpt_shallow5" not in r.tasks and "lora_qv2" not in r.tasks for r in first.routers.values()
        )
        kept = torch.tensor([first.tasks.index(names[int(i)]) for i in ids if names[int(i)] in first.tasks])
        rows = torch.tensor([names[int(i)] in first.tasks for i in ids])
        after = first(x[rows], kept)
        for name in first.tasks:
            torch.testing.assert_close(after[name], before[name], atol=ATOL, rtol=0)  # fewer rows: other roundings
        # the same tasks added VPT and LoRA first: the later block-class methods reach their blocks through the routers
        reverse = MultiTaskModel.from_adapters([adapters[n] for n in reversed(names)], list(reversed(names))).eval()
        again = reverse(x, torch.tensor([reverse.tasks.index(names[int(i)]) for i in ids]))
    for name in names:
        torch.testing.assert_close(again[name], before[name], atol=ATOL, rtol=0)
