"""The hand-written backward of frozen ViT block halves (adaptformer.speed.frozen_backward) against plain autograd: same
logits and gradients, engaged exactly where it computes the module's function, never with stale packed weights."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import Step, assert_same_step, move_trainable, train_step

import adaptformer.speed.frozen_blocks as frozen_blocks
from adaptformer import AdaptFormerConfig, VPTConfig, create_model
from adaptformer.speed import SpeedConfig, apply_speed, resolve
from adaptformer.speed.frozen_blocks import FrozenBackwardAdaptedViTBlock

VIDEO = "video_vit_small_patch16_224"
VIDEO_KWARGS = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
FP32_TOL = {"atol": 1e-5, "rtol": 1e-4}
BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(
    name: str = VIT, precision: str = "fp32", manual: bool = True, method: object = "adaptformer", **kwargs: object
) -> torch.nn.Module:
    """A tiny model (adapted by default, with non-zero adapters) whose trainable tensors left their init, sped up for
    ``precision`` with the manual backward on or off."""
    torch.manual_seed(1)
    model_kwargs = VIDEO_KWARGS if name == VIDEO else tiny_kwargs(VIT)
    if method == "adaptformer":
        method = AdaptFormerConfig(dropout=0.0)
    model = move_trainable(create_model(name, 5, method=method, **model_kwargs, **kwargs))
    # the attention half runs manually where "auto" attention is not fused: force math for the comparison; every
    # block computes all tokens (the class-token tail has its own tests)
    config = SpeedConfig(frozen_backward="on" if manual else "off", attention="math", class_token_tail="off")
    return apply_speed(model.train(), config, "cpu", precision)


def _inputs(name: str = VIT) -> torch.Tensor:
    shape = (3, 3, 4, 32, 32) if name == VIDEO else (3, 3, 32, 32)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _same(a: Step, b: Step, tol: dict) -> None:
    assert_same_step(a, b, tol, every_gradient_nonzero=True)


class _Spy:
    """Counts calls of the manual attention and MLP halves."""

    def __init__(self) -> None:
        self.attention = self.mlp = 0

    def __enter__(self) -> _Spy:
        attention, mlp = frozen_blocks.frozen_attention, frozen_blocks.frozen_mlp

        def count_attention(*args: object) -> torch.Tensor:
            self.attention += 1
            return attention(*args)  # type: ignore[arg-type]

        def count_mlp(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
            self.mlp += 1
            return mlp(*args)  # type: ignore[arg-type]

        self._patches = [
            mock.patch.object(frozen_blocks, "frozen_attention", count_attention),
            mock.patch.object(frozen_blocks, "frozen_mlp", count_mlp),
        ]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._patches:
            p.stop()


@pytest.mark.parametrize("name", [VIT, VIDEO])
@pytest.mark.parametrize("precision, tol", [("fp32", FP32_TOL), ("bf16", BF16_TOL)])
def test_manual_backward_matches_autograd(name: str, precision: str, tol: dict) -> None:
    x = _inputs(name)
    plain = train_step(_model(name, precision, manual=False), x, precision)
    model = _model(name, precision, manual=True)
    with _Spy() as spy:
        manual = train_step(model, x, precision)
    depth = len(model.blocks)
    # block 0's attention input carries no gradient (frozen patch embedding), so it keeps its plain path
    assert (spy.attention, spy.mlp) == (depth - 1, depth - 1)
    _same(manual, plain, tol)


@pytest.mark.parametrize("precision, tol", [("fp32", FP32_TOL), ("bf16", BF16_TOL)])
def test_vpt_deep_blocks_use_it_too(precision: str, tol: dict) -> None:
    """VPT-deep trains prompts in every block: the frozen halves around them take the same fast path."""

    vpt = {"method": VPTConfig(num_tokens=2, deep=True, dropout=0.0)}
    x = _inputs()
    plain = train_step(_model(precision=precision, manual=False, **vpt), x, precision)
    model = _model(precision=precision, manual=True, **vpt)
    with _Spy() as spy:
        manual = train_step(model, x, precision)
    depth = len(model.blocks)
    assert (spy.attention, spy.mlp) == (depth, depth)  # block 0's input holds trainable prompts: it records too
    _same(manual, plain, tol)


def test_the_input_gradient_matches_too() -> None:
    """A trainable input (e.g. VPT-shallow prompts, or a user's own graph) gets the same gradient through block 0."""
    plain_model, manual_model = _model(manual=False), _model(manual=True)
    grads = []
    for model in (plain_model, manual_model):
        tokens = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
        model.blocks(tokens).square().sum().backward()
        grads.append(tokens.grad)
    torch.testing.assert_close(grads[0], grads[1], **FP32_TOL)


def test_drop_path_and_layer_scale_stay_outside_and_work() -> None:
    x = _inputs()
    plain = train_step(_model(manual=False, drop_path_rate=0.3), x, "fp32")
    with _Spy() as spy:
        manual = train_step(_model(manual=True, drop_path_rate=0.3), x, "fp32")
    assert spy.mlp > 0
    _same(manual, plain, FP32_TOL)


@pytest.mark.parametrize(
    "kwargs, engaged",
    [
        ({"attn_drop_rate": 0.1}, (0, 2)),  # dropout inside attention: plain attention, manual MLP
        ({"proj_drop_rate": 0.1}, (0, 0)),  # dropout after both projections
        ({"qk_norm": True}, (0, 2)),
    ],
)
def test_falls_back_where_it_would_change_the_function(kwargs: dict, engaged: tuple[int, int]) -> None:
    model = _model(**kwargs)
    with _Spy() as spy:
        train_step(model, _inputs(), "fp32")
    assert (spy.attention, spy.mlp) == engaged


def test_no_manual_path_without_autograd_or_with_mixed_precision() -> None:
    model = _model()
    with _Spy() as spy, torch.no_grad():
        model(_inputs())
    assert (spy.attention, spy.mlp) == (0, 0)
    fp32_stored = apply_speed(
        create_model(VIT, 5, method="adaptformer", **tiny_kwargs(VIT)),
        SpeedConfig(frozen_dtype="fp32", frozen_backward="on", attention="math"),
        "cpu",
        "bf16",
    )
    with _Spy() as spy:  # fp32 weights under bf16 autocast: the plain path does the casting
        train_step(fp32_stored, _inputs(), "bf16")
    assert (spy.attention, spy.mlp) == (0, 0)


def test_packed_weights_follow_in_place_changes() -> None:
    """bf16 weights are pre-packed for oneDNN once; changing a frozen weight in place must not leave a stale copy."""
    x = _inputs()
    manual, plain = _model(precision="bf16", manual=True), _model(precision="bf16", manual=False)
    train_step(manual, x, "bf16")  # packs
    with torch.no_grad():
        for model in (manual, plain):
            model.blocks[1].mlp.fc1.weight.mul_(-1.5)
            model.blocks[2].attn.qkv.weight.mul_(0.5)
    _same(train_step(manual, x, "bf16"), train_step(plain, x, "bf16"), BF16_TOL)
    for model in (manual, plain):  # a new storage whose version counter starts again at 0
        model.blocks[1].mlp.fc2.weight.data = model.blocks[1].mlp.fc2.weight.data * -1.0
    _same(train_step(manual, x, "bf16"), train_step(plain, x, "bf16"), BF16_TOL)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    state["blocks.1.mlp.fc2.weight"].mul_(2.0)
    manual.load_state_dict(state)
    plain.load_state_dict(state)
    _same(train_step(manual, x, "bf16"), train_step(plain, x, "bf16"), BF16_TOL)


@pytest.mark.parametrize(
    "device, precision, config, expected",
    [
        ("cpu", "bf16", SpeedConfig(), "on"),
        ("cpu", "fp32", SpeedConfig(), "off"),
        ("cuda", "bf16", SpeedConfig(), "off"),
        ("cpu", "bf16", SpeedConfig(frozen_dtype="fp32"), "off"),
        ("cpu", "fp32", SpeedConfig(frozen_backward="on"), "on"),
    ],
)
def test_auto_resolution(device: str, precision: str, config: SpeedConfig, expected: str) -> None:
    assert resolve(config, device, precision, 197).frozen_backward == expected


def test_apply_speed_sets_the_blocks() -> None:
    on = _model(precision="bf16")
    assert all(isinstance(b, FrozenBackwardAdaptedViTBlock) and b.frozen_attention for b in on.blocks)
    fused = apply_speed(
        create_model(VIT, 5, method="adaptformer", **tiny_kwargs(VIT)),
        SpeedConfig(frozen_backward="on", attention="fused"),
        "cpu",
        "bf16",
    )
    assert all(isinstance(b, FrozenBackwardAdaptedViTBlock) and not b.frozen_attention for b in fused.blocks)
    with pytest.raises(ValueError, match="frozen_backward"):
        SpeedConfig(frozen_backward="yes")
