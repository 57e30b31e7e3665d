"""Adapter+ (methods/adapter_plus.py): exact trainable counts, the paper's Houlsby init and what it implies at init
(near-identity within a stated bound; bit-identity with a zero up-projection), the post-adapter position, drop-path,
one training step, the save -> load round trip, every backbone family, and the command line."""

from __future__ import annotations

import copy
import json
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

from adaptformer import (
    SpeedConfig,
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
from adaptformer.backbones.families import block_width, find_family
from adaptformer.cli import main
from adaptformer.methods import AdapterPlus, AdapterPlusConfig, adapter_plus_modules
from adaptformer.methods.adapter_plus import ADAPTER_PLUS_BLOCKS, attach

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
NO_DROP = AdapterPlusConfig(drop_path=0.0)

# id -> (timm name, kwargs, input shape); blocks of every timm family, as the factory builds them
TIMM_CASES: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "vit": (VIT, TINY_VIT, (3, 32, 32)),
    "swin": (SWIN, tiny_kwargs(SWIN), (3, 32, 32)),
    "eva": ("eva02_tiny_patch14_224", TINY_VIT, (3, 32, 32)),
    "beit": ("beit_base_patch16_224", TINY_VIT, (3, 32, 32)),
    "video-vit": ("video_vit_base_patch16_224", {**TINY_VIT, "num_frames": 4}, (3, 4, 32, 32)),
}


def _per_adapter(d: int, b: int) -> int:
    return 2 * d * b + b + d + d  # down (d b + b), up (b d + d), the channel scale (d)


@pytest.mark.slow
def test_trainable_count_vit_b16_by_hand() -> None:
    model = create_model("vit_base_patch16_224", 100, method="adapter_plus")
    groups = parameter_report(model).to_dict()["groups"]
    assert groups["adapters"]["trainable"] == 12 * (2 * 768 * 8 + 8 + 768 + 768) == 165_984  # the paper's 0.16 M
    assert count_trainable(model) == 165_984 + 769 * 100
    assert groups["backbone"] == {"trainable": 0, "total": 85_798_656}


@pytest.mark.parametrize(
    "name, kwargs, config, widths",
    [
        (VIT, TINY_VIT, AdapterPlusConfig(), [32, 32]),
        (VIT, TINY_VIT, AdapterPlusConfig(bottleneck=3, layers=(1,)), [32]),
        (SWIN, tiny_kwargs(SWIN), AdapterPlusConfig(bottleneck=4), [32, 32, 64, 64]),
    ],
)
def test_trainable_count_per_adapter(name: str, kwargs: dict, config: AdapterPlusConfig, widths: list) -> None:
    model = create_model(name, 5, method=config, **kwargs)
    expected = sum(_per_adapter(d, config.bottleneck) for d in widths)
    assert parameter_report(model).to_dict()["groups"]["adapters"] == {"trainable": expected, "total": expected}


def test_houlsby_initialisation() -> None:
    torch.manual_seed(0)
    adapter = AdapterPlus(768, 64)
    for linear in (adapter.down_proj, adapter.up_proj):
        w = linear.weight
        assert w.abs().max().item() <= 0.02 and torch.count_nonzero(linear.bias) == 0
        # N(0, 0.01^2) truncated at +-2 std has std 0.01 * 0.8796
        assert w.std().item() == pytest.approx(0.008796, rel=0.03) and abs(w.mean().item()) < 5e-4
    assert torch.equal(adapter.scale, torch.ones(768))


def test_near_identity_at_init_within_the_bound() -> None:
    """|A(y)_i| <= 0.02 * b * 0.02 * ||y||_1 per token: every weight is within +-0.02, |GELU(z)| <= |z|, scale 1."""
    model = create_model(VIT, 5, method=NO_DROP, **TINY_VIT).eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for block in model.blocks:
        block.adapter_plus.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert len(seen) == 2
    for y, out in seen:
        bound = 0.02 * 8 * 0.02 * y.abs().sum(-1, keepdim=True)  # (B, N, 1)
        deviation = (out - y).abs()
        assert (deviation <= bound).all() and deviation.max() > 0  # near, not exactly, the identity


def test_zero_up_projection_is_exactly_the_backbone() -> None:
    plain = timm.create_model(VIT, num_classes=5, **TINY_VIT)
    torch.manual_seed(3)
    reference = adapt(copy.deepcopy(plain), "linear").eval()
    torch.manual_seed(3)
    model = adapt(copy.deepcopy(plain), AdapterPlusConfig()).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x), reference(x))  # Houlsby init: not the identity
        for adapter in adapter_plus_modules(model):
            adapter.up_proj.weight.zero_()
        assert torch.equal(model(x), reference(x))


def test_adapter_reads_the_blocks_output() -> None:
    """The post-adapter position: out = y + s * A(y) where y is the plain block's output (its residuals included)."""
    model = move_trainable(create_model(VIT, 5, method=NO_DROP, **TINY_VIT)).eval()
    block = model.blocks[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        y = timm.models.vision_transformer.Block.forward(block, x)  # the backbone's own block computation
        a = block.adapter_plus
        expected = y + a.up_proj(F.gelu(a.down_proj(y))) * a.scale
        assert torch.equal(block(x), expected)


def test_drop_path_drops_the_adapter_branch_per_sample() -> None:
    adapter = move_trainable(AdapterPlus(16, 4, drop_path=0.5), 1.0)
    y = torch.randn(64, 5, 16)
    with torch.no_grad():
        dropped = [torch.equal(o, i) for o, i in zip(adapter.train()(y), y, strict=True)]
        assert 0 < sum(dropped) < 64  # some samples keep only the residual, the others the (rescaled) branch
        assert not any(torch.equal(o, i) for o, i in zip(adapter.eval()(y), y, strict=True))


def test_one_step_moves_only_adapters_and_head() -> None:
    model = create_model(VIT, 5, method=AdapterPlusConfig(), **TINY_VIT).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert {k for k in changed if "running_" not in k and "num_batches" not in k} == trainable  # Houlsby: all move
    assert all(".adapter_plus." in n or n.startswith("head.") for n in trainable)


def test_save_load_round_trip_reproduces_logits(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.safetensors"
    save_file(build_backbone(VIT, 5, init_seed=7, **TINY_VIT).state_dict(), str(backbone))
    config = AdapterPlusConfig(bottleneck=4, layers=(0,))
    model = move_trainable(create_model(VIT, 5, method=config, checkpoint=str(backbone), **TINY_VIT)).eval()
    x = torch.randn(4, 3, 32, 32)
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(
        create_model(VIT, 5, method=config, checkpoint=str(backbone), **TINY_VIT), tmp_path / "adapter"
    )
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model(x))
    assert read_adapter_config(tmp_path / "adapter").spec.method_config == config


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_every_timm_family(case: str) -> None:
    name, kwargs, shape = TIMM_CASES[case]
    model = move_trainable(create_model(name, 5, method=NO_DROP, **kwargs)).eval()
    family = find_family(model)
    blocks = [m for m in model.modules() if isinstance(m, ADAPTER_PLUS_BLOCKS[family.name])]
    expected = sum(_per_adapter(block_width(b), 8) for b in blocks)
    assert blocks and parameter_report(model).to_dict()["groups"]["adapters"]["trainable"] == expected
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = model(x)
        for adapter in adapter_plus_modules(model):  # a zero branch leaves exactly the backbone (+ head)
            adapter.up_proj.weight.zero_()
            adapter.up_proj.bias.zero_()
        plain = model(x)
        for block in blocks:
            block.__class__ = ADAPTER_PLUS_BLOCKS[family.name].__mro__[1]  # back to the family's own block
        assert torch.equal(model(x), plain) and not torch.equal(out, plain)


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=5), (3, 32, 32)),
        (
            lambda: torchvision.models.swin_transformer.SwinTransformer(
                [4, 4], 16, [1, 1], [2, 2], [4, 4], num_classes=5
            ),
            (3, 32, 32),
        ),
    ],
    ids=["tv_vit", "tv_swin"],
)
def test_torchvision_models(build: Any, shape: tuple[int, ...]) -> None:
    model = build().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x)
        attach(model, NO_DROP)
        adapters = adapter_plus_modules(model)
        assert len(adapters) == 2
        for adapter in adapters:
            adapter.up_proj.weight.zero_()
        assert torch.equal(model(x), expected)


def test_speed_options_leave_the_function_alone() -> None:
    model = move_trainable(create_model(VIT, 5, method=NO_DROP, **TINY_VIT)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(ValueError, match="AdapterPlusViTBlock, which has no class-token tail"):
        apply_speed(copy.deepcopy(model), SpeedConfig(class_token_tail="on"), "cpu", "fp32")
    fast = apply_speed(copy.deepcopy(model), SpeedConfig(), "cpu", "fp32")  # auto: the tail would skip the adapter
    with torch.no_grad():
        assert torch.equal(fast(x), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bottleneck": 0}, "bottleneck must be a positive int"),
        ({"bottleneck": 0.5}, "bottleneck must be a positive int"),
        ({"drop_path": 1.0}, r"drop_path must be a probability in \[0, 1\)"),
        ({"layers": []}, "non-empty list of block indices"),
        ({"layers": 3}, "non-empty list of block indices"),
    ],
)
def test_config_errors_name_the_knob(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdapterPlusConfig(**kwargs)


def test_attach_errors() -> None:
    with pytest.raises(ValueError, match=r"layers \[2\] out of range"):
        create_model(VIT, 5, method=AdapterPlusConfig(layers=(2,)), **TINY_VIT)
    model = create_model(VIT, 5, method="adapter_plus", **TINY_VIT)
    with pytest.raises(ValueError, match="already has Adapter\\+ modules"):
        attach(model, AdapterPlusConfig())
    with pytest.raises(TypeError, match="cannot attach Adapter\\+ to ResNet"):
        attach(timm.create_model("resnet18"), AdapterPlusConfig())


def test_command_line_trains_saves_and_reports_adapter_plus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--model.method.help", "adapter_plus"])
    help_text = capsys.readouterr().out
    for flag in ("--model.method.bottleneck", "--model.method.drop_path", "--model.method.layers"):
        assert flag in help_text
    assert main(["params", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY_VIT), "--num-classes", "10",
                 "--model.method", "adapter_plus"]) == 0  # fmt: skip
    report = capsys.readouterr().out
    assert f"{2 * _per_adapter(32, 8):,}" in report and "adapters" in report
    out = tmp_path / "run"
    args = ["train", "--model.backbone", VIT, "--model.kwargs", json.dumps(TINY_VIT), "--model.method",
            "adapter_plus", "--model.method.bottleneck", "4", "--data.dataset", "synthetic", "--data.options",
            "{num_samples: 16, image_size: 32}", "--optim.epochs", "1", "--optim.warmup_epochs", "0",
            "--optim.batch_size", "8", "--optim.precision", "fp32", "--data.num_workers", "0", "--run.output_dir",
            str(out)]  # fmt: skip
    assert main(args) == 0
    info = read_adapter_config(out / "adapter")
    assert info.spec.method == "adapter_plus" and info.spec.method_config == AdapterPlusConfig(bottleneck=4)
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["acc1"] == json.loads((out / "test.json").read_text())["acc1"]


def test_blocks_of_every_family_are_listed() -> None:
    import transformers  # noqa: F401  (the transformers families join once it is imported)

    from adaptformer.backbones.families import families

    assert set(ADAPTER_PLUS_BLOCKS) == {f.name for f in families()}
    for family in families():
        assert ADAPTER_PLUS_BLOCKS[family.name].__mro__[1] is family.block_type
    assert isinstance(AdapterPlus(4, 2).drop_path, nn.Identity)


def test_bf16_frozen_backbone_trains_the_adapters_in_fp32() -> None:
    model = move_trainable(create_model(VIT, 5, method=NO_DROP, **TINY_VIT)).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = train_step(copy.deepcopy(model), x)
    fast = apply_speed(model, SpeedConfig(), "cpu", "bf16")  # frozen weights stored in bf16, autocast
    assert model.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for m in adapter_plus_modules(model) for p in m.parameters())
    assert_same_step(train_step(fast, x, "bf16"), reference, {"atol": 5e-2, "rtol": 5e-2}, every_gradient_nonzero=True)
