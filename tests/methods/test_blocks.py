"""What an adapted block computes, read against timm: AdaptFormer's ViT and Swin blocks and VPT's prompted block equal
timm's own block forward plus the method written out from its paper, exactly, with every speed option off; and the
"auto" speed options under bf16 autocast keep the whole model's function to bf16 rounding.

AdaptFormer (Chen et al., 2022), parallel:  x = x' + MLP(LN(x')) + s * up(relu(down(x')))   (LN(x') for "normed")
                                sequential: h = MLP(LN(x'));  x = x' + (h + s * up(relu(down(h))))
VPT (Jia et al., 2022): prompts prepended before a block, stripped after it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.conftest import SWIN, VIT, tiny_kwargs
from tests.training_step import move_trainable, train_step
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block

from adaptformer import AdaptFormerConfig, VPTConfig, create_model
from adaptformer.methods.adaptformer import AdaptedSwinBlock, AdaptedViTBlock, AdaptMLP
from adaptformer.methods.vpt import PromptedViTBlock
from adaptformer.speed import AUTO, FAST_BLOCKS, FastBlocks, SpeedConfig, apply_speed, speed_config

# Every speed option off (fp32 storage, timm's fused attention, every on/off option "off"), and the same with the
# math attention kernel; the same module runs both sides of a comparison.
OFF = replace(
    SpeedConfig(frozen_dtype="fp32", attention="fused"),
    **{f.name: "off" for f in fields(SpeedConfig) if f.default == AUTO and f.name not in ("frozen_dtype", "attention")},
)
SPEEDS = {"no apply_speed": None, "all off, fused": OFF, "all off, math": replace(OFF, attention="math")}
EXACT = {"atol": 0.0, "rtol": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str, method: object, speed: SpeedConfig | None, train: bool) -> nn.Module:
    """A tiny model whose trainable tensors left their init (the adapters' zero up-projections too), without dropout
    or drop path when ``train``, with ``speed`` applied for fp32 (None: no apply_speed at all)."""
    torch.manual_seed(1)
    model = move_trainable(create_model(name, 5, method=method, **tiny_kwargs(name, drop_path_rate=0.0)))
    if speed is not None:
        apply_speed(model, speed, "cpu", "fp32")
    return model.train(train)


def _block_inputs(
    model: nn.Module, kind: type[nn.Module], images: torch.Tensor
) -> list[tuple[nn.Module, torch.Tensor]]:
    """Every ``kind`` block of ``model`` with the input it gets in a forward of ``images`` (detached)."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    blocks = [m for m in model.modules() if isinstance(m, kind)]
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].detach()))) for b in blocks]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert [b for b, _ in seen] == blocks, "every block runs once, in order"
    return seen


def _timm_forward(
    parent: type[nn.Module], block: nn.Module, x: torch.Tensor, on_mlp_branch: Callable | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's own forward of ``block`` (``parent.forward``), with the residual stream x' and LN(x') it computed on the
    way (norm2's input and output); ``on_mlp_branch(h)`` replaces the MLP branch's output h if given."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [block.norm2.register_forward_hook(lambda m, args, out: seen.update(x1=args[0], normed=out))]
    if on_mlp_branch is not None:
        hooks.append(block.drop_path2.register_forward_hook(lambda m, args, out: on_mlp_branch(out)))
    try:
        out = parent.forward(block, x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen["x1"], seen["normed"]


def _adapter_term(adapter: AdaptMLP, config: AdaptFormerConfig, x: torch.Tensor) -> torch.Tensor:
    """s * up(relu(down(x))), with the adapter's own LayerNorm before or after if the config asks for one."""
    norm = adapter.norm
    if config.layernorm == "in":
        x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    scale = adapter.scale if config.scale == "learnable" else config.scale
    down, up = adapter.down_proj, adapter.up_proj
    out = scale * F.linear(F.relu(F.linear(x, down.weight, down.bias)), up.weight, up.bias)
    if config.layernorm == "out":
        out = F.layer_norm(out, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return out


def _adaptformer_reference(
    parent: type[nn.Module], config: AdaptFormerConfig, block: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapted block's output from timm's forward of the same module plus the adapter, and the adapter term."""
    terms: list[torch.Tensor] = []
    if config.form == "sequential":  # the adapter rides on the MLP branch: x' + (h + s * A(h))

        def with_adapter(h: torch.Tensor) -> torch.Tensor:
            terms.append(_adapter_term(block.adaptmlp, config, h))
            return h + terms[-1]

        out, _, _ = _timm_forward(parent, block, x, with_adapter)
        return out, terms[0]
    out, x1, normed = _timm_forward(parent, block, x)
    term = _adapter_term(block.adaptmlp, config, normed if config.input == "normed" else x1)
    return out + term.reshape(out.shape), term  # Swin: x' is (B, H*W, C), the block's output (B, H, W, C)


def _trainable_grads(block: nn.Module, out: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in block.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad((out * weights).sum(), list(params.values())), strict=True))


ADAPTFORMER = {
    "parallel, residual": AdaptFormerConfig(),
    "parallel, normed": AdaptFormerConfig(input="normed"),
    "sequential": AdaptFormerConfig(form="sequential"),
    "layernorm in, learnable scale": AdaptFormerConfig(layernorm="in", scale="learnable"),
    "layernorm out": AdaptFormerConfig(layernorm="out", scale=0.5),
}
FAMILIES = {VIT: (Block, AdaptedViTBlock), SWIN: (SwinTransformerBlock, AdaptedSwinBlock)}


@pytest.mark.parametrize("speed", SPEEDS.values(), ids=SPEEDS.keys())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("config", ADAPTFORMER.values(), ids=ADAPTFORMER.keys())
@pytest.mark.parametrize("name", [VIT, SWIN])
def test_adapted_block_is_timm_block_plus_adapter(
    name: str, config: AdaptFormerConfig, train: bool, speed: SpeedConfig | None, images: torch.Tensor
) -> None:
    """Eval with the default dropout (inactive), train with dropout 0: the adapted forward is timm's plus the adapter,
    bit for bit, and so are the trainable parameters' gradients."""
    parent, adapted = FAMILIES[name]
    config = replace(config, dropout=0.1 if not train else 0.0)
    if name == SWIN:
        config = replace(config, bottleneck=(6, 10))
    model = _model(name, config, speed, train)
    pairs = _block_inputs(model, adapted, images)
    assert len(pairs) == (3 if name == VIT else 4)
    for block, x in pairs:
        assert type(block) is adapted
        out = block(x)
        expected, term = _adaptformer_reference(parent, config, block, x)
        assert term.abs().max() > 1e-3, "the adapter term must not vanish, or the test proves nothing"
        assert torch.equal(out, expected)
        if train:
            weights = torch.randn_like(out)
            got, want = _trainable_grads(block, out, weights), _trainable_grads(block, expected, weights)
            assert got.keys() == want.keys() and all(k.startswith("adaptmlp.") for k in got)
            for key in got:
                torch.testing.assert_close(got[key], want[key], **EXACT, msg=lambda m, k=key: f"{k}: {m}")


def _vpt_reference(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Prompts prepended before timm's forward of the same module and stripped after it, by hand."""
    prompts = block.vpt.num_tokens
    if block.vpt.prepend:
        x = torch.cat([block.vpt.tokens.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P + N, D)
    out = Block.forward(block, x)
    return out[:, prompts:] if block.vpt.strip else out


@pytest.mark.parametrize("speed", SPEEDS.values(), ids=SPEEDS.keys())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("deep", [True, False], ids=["deep", "shallow"])
def test_prompted_block_is_timm_block_around_prompts(
    deep: bool, train: bool, speed: SpeedConfig | None, images: torch.Tensor
) -> None:
    model = _model(VIT, VPTConfig(num_tokens=3, deep=deep), speed, train)
    pairs = _block_inputs(model, PromptedViTBlock, images)
    # deep: every block prepends and strips; shallow: the first prepends, the last strips, the middle one is timm's
    expected_roles = [(True, True)] * 3 if deep else [(True, False), (False, True)]
    assert [(b.vpt.prepend, b.vpt.strip) for b, _ in pairs] == expected_roles
    for block, x in pairs:
        out = block(x)
        expected = _vpt_reference(block, x)
        assert torch.equal(out, expected)
        if block.vpt.prepend and block.vpt.strip:  # the prompts change what the image tokens see
            assert not torch.equal(out, Block.forward(block, x))
        if train and block.vpt.prepend:
            weights = torch.randn_like(out)
            got, want = _trainable_grads(block, out, weights), _trainable_grads(block, expected, weights)
            assert list(got) == ["vpt.tokens"] and got["vpt.tokens"].abs().sum() > 0
            torch.testing.assert_close(got["vpt.tokens"], want["vpt.tokens"], **EXACT)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# "To bf16 rounding", per tensor (logits, each trainable gradient): the relative error against the fp32 model is at
# most 3%, or twice what plain bf16 autocast of the same model (every option off) makes, if that is more. The second
# term covers gradients that are sums with cancellation: Swin's adapter down-projections lose 8% in plain bf16
# already. Measured: at most half of this bound. A missing or wrong adapter/prompt term is far outside it (checked).
BF16_FLOOR = 0.03
AUTO_CASES = {
    "vit adaptformer": (VIT, AdaptFormerConfig(dropout=0.0, scale=1.0)),
    "vit adaptformer, blocks 2-3": (VIT, AdaptFormerConfig(dropout=0.0, scale=1.0, layers=(1, 2))),
    "vit adaptformer sequential": (VIT, AdaptFormerConfig(dropout=0.0, scale=1.0, form="sequential")),
    "vit vpt-deep": (VIT, VPTConfig(num_tokens=3)),
    "swin adaptformer": (SWIN, AdaptFormerConfig(dropout=0.0, scale=1.0, bottleneck=(6, 10))),
}


@pytest.mark.parametrize("name, method", AUTO_CASES.values(), ids=AUTO_CASES.keys())
def test_auto_options_in_bf16_keep_the_function(name: str, method: object, images: torch.Tensor) -> None:
    """Every "auto" option on CPU in bf16 (bf16 frozen weights, split attention, hand-written frozen backward,
    class-token tail, ...) against the all-off fp32 model: logits and every trainable gradient of one
    training step agree to bf16 rounding.

    The models are in eval mode: the BatchNorm head would otherwise normalise by the statistics of a batch of 4,
    which turns bf16's rounding into errors of up to 100% (plain autocast as much as auto). Every option still runs:
    they depend on autograd recording, not on the module's mode, and dropout is 0 anyway.
    """
    plain = _model(name, method, None, train=False)
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(), "cpu", "bf16")
    plain_bf16 = apply_speed(copy.deepcopy(plain), OFF, "cpu", "bf16")
    apply_speed(plain, OFF, "cpu", "fp32")
    resolved = speed_config(fast)
    assert resolved is not None
    assert (resolved.frozen_dtype, resolved.attention) == ("bf16", "split")
    assert resolved.class_token_tail == ("on" if name == VIT else "off")  # Swin pools every token
    assert resolved.frozen_backward == ("on" if name == VIT else "off")  # Swin blocks have no hand-written backward
    if name == VIT:  # the options are installed, not just named
        assert isinstance(fast.blocks, FastBlocks) and fast.blocks.class_token_tail
        assert all(type(b) in FAST_BLOCKS.values() for b in fast.blocks if type(b) is not Block)

    got, rounded = train_step(fast, images, "bf16"), train_step(plain_bf16, images, "bf16")
    want = train_step(plain, images, "fp32")
    assert got[1].keys() == want[1].keys() and got[1]
    pairs = [("logits", got[0], rounded[0], want[0])]
    pairs += [(key, got[1][key], rounded[1][key], want[1][key]) for key in want[1]]
    for key, auto, bf16, fp32 in pairs:
        assert fp32.abs().sum() > 0, f"{key} got no gradient"
        bound = max(BF16_FLOOR, 2 * _relative_error(bf16, fp32))
        assert _relative_error(auto, fp32) <= bound, key

    # The bound is meaningful: with the method's term removed (adapters' up-projections zeroed) or changed (other
    # prompts), the logits move by much more than it.
    with torch.no_grad():
        for key, p in plain.named_parameters():
            if ".adaptmlp.up_proj." in key:
                p.zero_()
            elif key.endswith(".vpt.tokens"):
                p.copy_(torch.randn_like(p))
    without, _ = train_step(plain, images, "fp32")
    assert _relative_error(without, want[0]) > 5 * BF16_FLOOR
