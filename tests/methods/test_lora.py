"""LoRA (methods/lora.py): exact trainable counts, exact identity at init, backbone names kept, merge equality, the
save -> load round trip, what it refuses, and the registry path (command line, parameter report, speed options)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from tests.conftest import SWIN, VIT, tiny_kwargs
from tests.training_step import assert_same_step, move_trainable, train_step
from timm.layers.attention import Attention
from timm.models.swin_transformer import WindowAttention

from adaptformer import (
    SpeedConfig,
    UnsupportedModelError,
    adapt,
    apply_speed,
    build_backbone,
    count_trainable,
    create_model,
    load_adapter,
    parameter_report,
    read_adapter_config,
    save_adapter,
)
from adaptformer.cli import main
from adaptformer.methods import LoRA, LoRAConfig, LoRALinear, lora_modules, merge_lora, unmerge_lora
from adaptformer.methods.lora import attach

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit(config: LoRAConfig | str = "lora", seed: int = 1) -> nn.Module:
    return create_model(VIT, 5, method=config, init_seed=seed, **TINY_VIT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, lora_params",
    [
        (LoRAConfig(), 12 * 2 * (2 * 8 * 768)),  # q, v at rank 8 in 12 blocks: 294,912
        (LoRAConfig(rank=4, targets=("q", "k", "v", "proj"), layers=(10, 11)), 2 * 4 * (2 * 4 * 768)),  # 49,152
        (LoRAConfig(targets=("qkv",)), 12 * 8 * (768 + 3 * 768)),  # one A (8 x 768), one B (2304 x 8): 294,912
    ],
)
def test_trainable_count_vit_b16_by_hand(config: LoRAConfig, lora_params: int) -> None:
    model = create_model("vit_base_patch16_224", 100, method=config)
    groups = parameter_report(model).to_dict()["groups"]
    assert groups["lora"] == {"trainable": lora_params, "total": lora_params}
    assert count_trainable(model) == lora_params + 769 * 100  # + the paper head's Linear
    assert groups["backbone"] == {"trainable": 0, "total": 85_798_656}  # not one backbone tensor added or renamed


@pytest.mark.parametrize(
    "name, kwargs, config, widths",
    [  # widths: the block width d of every adapted block; q, k, v, o each add r (d + d), qkv adds r (d + 3d)
        (VIT, TINY_VIT, LoRAConfig(), [32, 32]),
        (VIT, TINY_VIT, LoRAConfig(rank=3, targets=("k", "o"), layers=(1,)), [32]),
        (SWIN, tiny_kwargs(SWIN), LoRAConfig(rank=2, targets=("q", "v", "o")), [32, 32, 64, 64]),
        (VIT, TINY_VIT, LoRAConfig(rank=3, targets=("qkv",)), [32, 32]),
        (SWIN, tiny_kwargs(SWIN), LoRAConfig(rank=2, targets=("qkv", "o"), layers=(0, 3)), [32, 64]),
    ],
)
def test_trainable_count_is_r_in_plus_out_per_update(name: str, kwargs: dict, config: LoRAConfig, widths: list) -> None:
    model = create_model(name, 5, method=config, **kwargs)
    outputs = {"q": 1, "k": 1, "v": 1, "o": 1, "qkv": 3}  # an update's output width, in block widths
    expected = sum(config.rank * d * (1 + outputs[t]) for d in widths for t in config.targets)
    assert parameter_report(model).to_dict()["groups"]["lora"]["trainable"] == expected
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n and "head" not in n)


@pytest.mark.parametrize("targets, qkv_updates", [(("q", "v", "o"), ("q", "v")), (("qkv", "o"), ("qkv",))])
def test_backbone_names_are_kept_and_updates_sit_under_lora(targets: tuple, qkv_updates: tuple) -> None:
    plain = _vit("linear")  # the backbone with the same task head
    model = _vit(LoRAConfig(targets=targets))
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(model.state_dict())  # blocks.0.attn.qkv.weight etc. unchanged
    assert extra == {f"blocks.{i}.attn.{lin}.lora.{t}.{ab}" for i in (0, 1) for lin, ts in
                     (("qkv", qkv_updates), ("proj", ("o",))) for t in ts for ab in "AB"}  # fmt: skip
    assert type(model.blocks[0].attn.qkv) is LoRALinear and model.blocks[0].attn.qkv.chunk_names == ("q", "k", "v")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == extra | {"head.1.weight", "head.1.bias"}


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "o"), ("proj",), ("qkv",), ("qkv", "o")])
def test_function_is_exactly_the_backbones_at_init(targets: tuple[str, ...]) -> None:
    plain = timm.create_model(VIT, num_classes=5, **TINY_VIT)
    torch.manual_seed(3)  # the same head init for both (LoRA draws its A after the head)
    reference = adapt(copy.deepcopy(plain), "linear").eval()
    torch.manual_seed(3)
    model = adapt(copy.deepcopy(plain), LoRAConfig(targets=targets)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert all(torch.count_nonzero(m.B) == 0 and torch.count_nonzero(m.A) > 0 for m in lora_modules(model))


def test_updates_reach_exactly_their_third_of_qkv() -> None:
    linear = nn.Linear(8, 24)
    frozen = copy.deepcopy(linear)
    adapted = LoRALinear.adapt(linear, ("q", "k", "v"), ("k",), LoRAConfig(rank=2, alpha=4.0))
    nn.init.normal_(adapted.lora["k"].B)
    x = torch.randn(3, 8)
    with torch.no_grad():
        out, ref = adapted(x), frozen(x)
        delta = 2.0 * x @ (adapted.lora["k"].B @ adapted.lora["k"].A).T  # alpha / rank = 2
    assert torch.equal(out[:, :8], ref[:, :8]) and torch.equal(out[:, 16:], ref[:, 16:])
    torch.testing.assert_close(out[:, 8:16], ref[:, 8:16] + delta)


def test_a_qkv_update_adds_one_shared_a_to_every_third() -> None:
    linear = nn.Linear(8, 24)
    frozen = copy.deepcopy(linear)
    adapted = LoRALinear.adapt(linear, ("q", "k", "v"), ("qkv",), LoRAConfig(rank=2, alpha=3.0, targets=("qkv",)))
    update = adapted.lora["qkv"]
    assert update.A.shape == (2, 8) and update.B.shape == (24, 2) and adapted.span("qkv") == (0, 24)
    nn.init.normal_(update.B)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = frozen(x) + 1.5 * (x @ update.A.T) @ update.B.T  # alpha / rank = 1.5
        torch.testing.assert_close(adapted(x), expected)
        assert (adapted(x) - frozen(x))[:, :8].abs().min() > 0 and (adapted(x) - frozen(x))[:, 16:].abs().min() > 0


@pytest.mark.parametrize(
    "attention",
    [lambda: Attention(32, num_heads=2, qkv_bias=True), lambda: WindowAttention(32, num_heads=2, window_size=1)],
    ids=["Attention", "WindowAttention"],
)
def test_q_k_v_are_the_thirds_the_attention_reads_as_q_k_v(attention: Any) -> None:
    """With one token, attention returns proj(v) whatever q and k are: updates of q and k change nothing there, an
    update of v does (so the chunks are q, k, v in the attention's own order)."""
    x = torch.randn(3, 1, 32)  # (B, N=1, C)
    for targets, changes in ((("q", "k"), False), (("v",), True)):
        attn = attention().eval()
        with torch.no_grad():
            expected = attn(x)
            LoRALinear.adapt(attn.qkv, ("q", "k", "v"), targets, LoRAConfig(rank=2))
            for update in attn.qkv.lora.values():
                nn.init.normal_(update.B)
            out = attn(x)
        assert (out - expected).abs().max().item() > 1e-3 if changes else torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("targets", [("q", "k", "v", "o"), ("qkv", "o")])
def test_merge_keeps_the_function_and_unmerge_restores_training(targets: tuple[str, ...]) -> None:
    model = move_trainable(_vit(LoRAConfig(targets=targets, alpha=16.0)), 0.3).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge_lora(model)
        merged = model(x)
    assert (merged - before).abs().max().item() < 1e-5
    moved = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, weights[n])]
    assert sorted(moved) == sorted(f"blocks.{i}.attn.{lin}.weight" for i in (0, 1) for lin in ("qkv", "proj"))
    with torch.no_grad():  # while merged, the factors are not added a second time
        b = model.blocks[0].attn.qkv.lora[targets[0]].B
        kept = b.clone()
        b.zero_()
        assert torch.equal(model(x), merged)
        b.copy_(kept)
    model.train()
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        model(x)
    unmerge_lora(model.eval())
    for name, value in weights.items():
        torch.testing.assert_close(dict(model.named_parameters())[name], value, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("targets", [("q", "v", "o"), ("qkv",)])
def test_adapter_saved_merged_or_not_reloads_to_the_same_logits(tmp_path: Path, targets: tuple[str, ...]) -> None:
    backbone = tmp_path / "backbone.safetensors"
    save_file(build_backbone(VIT, 5, init_seed=7, **TINY_VIT).state_dict(), str(backbone))
    config = LoRAConfig(rank=4, targets=targets)
    model = move_trainable(create_model(VIT, 5, method=config, checkpoint=str(backbone), **TINY_VIT)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    save_adapter(model, tmp_path / "unmerged")
    save_adapter(merge_lora(model), tmp_path / "merged")  # the fingerprint is the pre-trained backbone's still
    for folder in ("unmerged", "merged"):
        fresh = create_model(VIT, 5, method=config, checkpoint=str(backbone), **TINY_VIT)
        restored = load_adapter(fresh, tmp_path / folder).eval()
        with torch.no_grad():
            assert torch.equal(restored(x), expected), folder
    assert read_adapter_config(tmp_path / "merged").spec.method_config == config


def test_one_step_moves_only_lora_and_head() -> None:
    model = _vit(LoRAConfig(targets=("q", "k", "v", "o"), dropout=0.1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # A moves from the second step on (B = 0 gives it no gradient at first)
        loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert {k for k in changed if "running_" not in k and "num_batches" not in k} == trainable


def test_compile_deepcopy_and_pickle_compute_the_same() -> None:
    model = move_trainable(_vit(LoRAConfig(targets=("q", "v", "o")))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(copy.deepcopy(model), backend="eager", fullgraph=True)  # no graph break in LoRA
        assert torch.equal(compiled(x), expected)
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), expected)


def test_speed_options_leave_the_function_alone() -> None:
    model = move_trainable(_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(ValueError, match="qkv/proj are LoRALinear/Linear, not nn.Linear"):
        apply_speed(copy.deepcopy(model), SpeedConfig(class_token_tail="on"), "cpu", "fp32")
    fast = apply_speed(copy.deepcopy(model), SpeedConfig(), "cpu", "fp32")  # auto: the tail would skip the updates
    with torch.no_grad():
        assert torch.equal(fast(x), expected)


def test_videomae_q_v_bias_attention_gets_its_updates_exact_at_init_and_merged() -> None:
    """VideoMAE's attention adds its q/v biases outside the qkv Linear: LoRA's update must still reach q and v."""
    kwargs = {**TINY_VIT, "num_frames": 4, "qkv_bias": True}
    name, config = "video_vit_base_patch16_224", LoRAConfig(targets=("q", "k", "v"))
    torch.manual_seed(0)
    plain = create_model(name, 5, method="linear", **kwargs).eval()
    torch.manual_seed(0)  # the same backbone and head (LoRA draws its A after them)
    model = create_model(name, 5, method=config, **kwargs).eval()
    with torch.no_grad():
        for a, b in zip(plain.blocks, model.blocks, strict=True):
            for bias in ("q_bias", "v_bias"):
                getattr(b.attn, bias).copy_(getattr(a.attn, bias).normal_())
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # B = 0: the backbone exactly
    move_trainable(model, 0.3)
    with torch.no_grad():
        moved = model(x)
        assert (moved - plain(x)).abs().max() > 1e-3  # the updates reach the output
        merge_lora(model)
        assert (model(x) - moved).abs().max() < 1e-5


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("eva02_tiny_patch14_224", TINY_VIT, "timm.models.eva.EvaAttention"),
        ("beit_base_patch16_224", TINY_VIT, "timm.models.beit.Attention"),
    ],
)
def test_attention_that_bypasses_its_projections_is_refused(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=rf"block 0's attention is {message}"):
        create_model(name, 5, method="lora", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "rank must be a positive int"),
        ({"alpha": "big"}, "alpha must be a finite number > 0"),
        ({"alpha": 0}, "alpha must be a finite number > 0"),
        ({"targets": ("q", "x")}, r"targets must be some of .*\(\['x'\] unknown\)"),
        ({"targets": ("o", "proj")}, "names a projection twice"),
        ({"targets": ("q", "qkv")}, r"qkv \(one update of the whole fused projection, A shared\) and \['q'\]"),
        ({"targets": ()}, "non-empty list"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
        ({"layers": [1, 1]}, "duplicate block indices"),
    ],
)
def test_config_errors_name_the_knob(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**kwargs)


def test_config_normalises_and_scales() -> None:
    config = LoRAConfig(rank=4, alpha=8, targets=["v", "proj", "q"], layers=[3, 1])
    assert config.targets == ("q", "v", "o") and config.layers == (1, 3) and config.scaling == 2.0
    assert LoRAConfig(targets=["proj", "qkv"]).targets == ("qkv", "o")
    assert LoRAConfig(rank=16).scaling == 1.0 and LoRAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"layers \[5\] out of range"):
        _vit(LoRAConfig(layers=(5,)))
    assert isinstance(lora_modules(_vit())[0], LoRA)


def test_command_line_trains_saves_and_reports_lora(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--model.method.help", "lora"])
    help_text = capsys.readouterr().out
    for flag in ("--model.method.rank", "--model.method.alpha", "--model.method.targets", "--model.method.layers"):
        assert flag in help_text
    assert main(["params", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY_VIT), "--num-classes", "10",
                 "--model.method", "lora", "--model.method.rank", "4"]) == 0  # fmt: skip
    report = capsys.readouterr().out
    assert "lora" in report and f"{2 * 2 * (2 * 4 * 32):,}" in report  # 2 blocks x (q, v) x 2 r d
    out = tmp_path / "run"
    args = ["train", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY_VIT), "--model.method", "lora",
            "--model.method.rank", "4", "--model.method.targets", "[q, v, o]", "--data.dataset", "synthetic",
            "--data.options", "{num_samples: 16, image_size: 32}", "--optim.epochs", "1", "--optim.warmup_epochs",
            "0", "--optim.batch_size", "8", "--optim.precision", "fp32", "--data.num_workers", "0",
            "--run.output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    info = read_adapter_config(out / "adapter")
    assert info.spec.method == "lora" and info.spec.method_config == LoRAConfig(rank=4, targets=("q", "v", "o"))
    card = (out / "adapter" / "README.md").read_text()  # the model card, rewritten once test.json was measured
    test_acc1 = json.loads((out / "test.json").read_text())["acc1"]
    assert "library_name: adaptformer" in card and "- lora" in card and f"| acc1 | {test_acc1:.6g} |" in card
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["acc1"] == json.loads((out / "test.json").read_text())["acc1"]


def test_bf16_frozen_backbone_trains_the_updates_in_fp32() -> None:
    model = move_trainable(_vit(LoRAConfig(targets=("q", "v", "o")))).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = train_step(copy.deepcopy(model), x)
    fast = apply_speed(model, SpeedConfig(), "cpu", "bf16")  # frozen weights stored in bf16, autocast
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for m in lora_modules(model) for p in m.parameters())
    assert_same_step(train_step(fast, x, "bf16"), reference, {"atol": 5e-2, "rtol": 5e-2}, every_gradient_nonzero=True)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64),
            "torch.nn.modules.activation.MultiheadAttention",
        ),
        (
            lambda: torchvision.models.swin_transformer.SwinTransformer([4, 4], 16, [1, 1], [2, 2], [4, 4]),
            "torchvision.models.swin_transformer.ShiftedWindowAttention",
        ),
    ],
    ids=["tv_vit", "tv_swin"],
)
def test_torchvision_attention_is_refused_by_name(build: Any, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=rf"block 0's attention is {message}"):
        attach(build(), LoRAConfig())


def test_the_mixed_batch_route_adds_each_tasks_update_to_its_rows_only() -> None:
    from adaptformer.methods.lora import adapted_projections
    from adaptformer.methods.lora_layer import route

    frozen = nn.Linear(8, 12)  # a fused qkv of width 4, shared by both tasks
    tasks = []
    for rank, targets in ((2, ("q", "v")), (3, ("k",)), (2, ("qkv",))):
        linear = copy.deepcopy(frozen)
        linear.weight, linear.bias = frozen.weight, frozen.bias  # the shared frozen tensors, as in a multi-task model
        tasks.append(move_trainable(LoRALinear.adapt(linear, ("q", "k", "v"), targets, LoRAConfig(rank=rank)), 0.5))
    x = torch.randn(7, 5, 8)  # (B, N, in)
    rows = [torch.tensor([4, 0]), torch.tensor([2, 5]), torch.tensor([6])]  # rows 1 and 3: no LoRA task
    with torch.no_grad():
        out = route(frozen, list(zip(tasks, rows, strict=True)), (x,))
        assert torch.equal(out[[1, 3]], frozen(x)[[1, 3]])  # rows of no task: exact zeros added
        for linear, r in zip(tasks, rows, strict=True):  # ranks 2 and 3, targets q+v and k, in one batched product
            torch.testing.assert_close(out[r], linear(x[r]), atol=1e-5, rtol=0)  # batched products round apart
        assert not torch.equal(tasks[0](x[rows[0]]), frozen(x[rows[0]]))  # the updates are not zero
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations, fp32 updates: as the server runs
            low = route(frozen, list(zip(tasks, rows, strict=True)), (x,))
            assert low.dtype == torch.bfloat16
            torch.testing.assert_close(low[rows[1]].float(), tasks[1](x[rows[1]]).float(), atol=0.1, rtol=0.02)
        tasks[1].lora["k"].dropout.p = 0.5  # in training mode: the batched route runs no dropout, so it refuses
        with pytest.raises(RuntimeError, match="runs no dropout: eval"):
            route(frozen, list(zip(tasks, rows, strict=True)), (x,))
        merge_lora(nn.Sequential(tasks[0]))
        with pytest.raises(RuntimeError, match="merged into the shared weight; unmerge_lora"):
            route(frozen, [(tasks[0], rows[0])], (x,))
    for targets in (("q", "o"), ("qkv", "o")):
        model = _vit(LoRAConfig(targets=targets, layers=(1,)))
        assert adapted_projections(model) == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]
