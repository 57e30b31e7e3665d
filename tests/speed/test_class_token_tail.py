"""The class-token tail (adaptformer.speed.class_token_tail): the last block computed for the class token only gives the
same logits and gradients as the full block, only inside ``model.forward``, and only where the head reads nothing but
the class token."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import VIDEO_KWARGS, VIT, tiny_kwargs
from tests.training_step import BF16_TOL, FP32_TOL, assert_same_step, train_step, trainable_model

from adaptformer import VPTConfig, create_model
from adaptformer.speed import FastBlocks, SpeedConfig, apply_speed, resolve, speed_config

pytestmark = pytest.mark.usefixtures("one_thread")

ON, OFF = SpeedConfig(class_token_tail="on"), SpeedConfig(class_token_tail="off")


def _last_mlp_rows(model: torch.nn.Module) -> list[int]:
    """Records how many tokens per sample the last block's MLP sees on each call."""
    seen: list[int] = []
    model.blocks[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    return seen


METHODS = {
    "adaptformer": "adaptformer",
    "full": "full",
    "linear": "linear",
    "vpt-deep": VPTConfig(num_tokens=2, deep=True, dropout=0.1),  # prompt dropout: the same draws either way
    "vpt-shallow": VPTConfig(num_tokens=3, deep=False),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("attention", ["math", "fused"])
def test_same_logits_and_gradients_as_the_full_last_block(method: str, attention: str, images: torch.Tensor) -> None:
    plain = trainable_model(METHODS[method])
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(class_token_tail="on", attention=attention), "cpu", "fp32")
    reference = apply_speed(plain, SpeedConfig(class_token_tail="off", attention=attention), "cpu", "fp32")
    rows = _last_mlp_rows(fast)
    assert_same_step(train_step(fast, images), train_step(reference, images), FP32_TOL, every_gradient_nonzero=True)
    assert rows == [1]
    fast.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), reference(images), **FP32_TOL)
    assert rows == [1, 1]


def test_bf16_frozen_backbone_with_the_hand_written_backward(images: torch.Tensor) -> None:
    plain = trainable_model()
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(class_token_tail="on", frozen_backward="on"), "cpu", "bf16")
    reference = apply_speed(plain, SpeedConfig(class_token_tail="off", frozen_backward="on"), "cpu", "bf16")
    assert_same_step(train_step(fast, images, "bf16"), train_step(reference, images, "bf16"), BF16_TOL)


def test_only_the_models_own_forward_gets_the_tail(images: torch.Tensor) -> None:
    model = apply_speed(trainable_model(), ON, "cpu", "fp32")
    rows = _last_mlp_rows(model)
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    assert model.forward_features(images).shape == (images.shape[0], tokens, model.embed_dim)
    assert model.forward_head(model.forward_features(images)).shape == (images.shape[0], 5)
    assert rows == [tokens, tokens]
    model(images)
    assert rows[-1] == 1 and not model.blocks.tail_armed


def test_a_failing_forward_leaves_the_tail_disarmed(images: torch.Tensor) -> None:
    model = apply_speed(trainable_model(), ON, "cpu", "fp32")
    with pytest.raises(RuntimeError):
        model(images[:, :2])  # two channels: the patch embedding refuses them
    assert not model.blocks.tail_armed
    assert model.forward_features(images).shape[1] > 1


@pytest.mark.parametrize(
    "name, kwargs, reason",
    [
        (VIT, {"global_pool": "avg"}, "pools 'avg'"),
        (VIT, {"global_pool": "max"}, "pools 'max'"),
        ("video_vit_small_patch16_224", VIDEO_KWARGS, "not a timm VisionTransformer"),
    ],
)
def test_auto_stays_off_where_the_head_reads_more_and_on_is_refused(name: str, kwargs: dict, reason: str) -> None:
    kwargs = {"method": "adaptformer", **(kwargs if name != VIT else {**tiny_kwargs(VIT), **kwargs})}
    model = create_model(name, 5, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=reason):
        apply_speed(model, ON, "cpu", "bf16")
    assert speed_config(model) is None and not isinstance(getattr(model, "blocks", None), FastBlocks)
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    assert speed_config(apply_speed(model, SpeedConfig(), "cpu", "bf16")).class_token_tail == "off"


def test_auto_is_on_for_a_class_token_head_and_off_when_compiled_or_checkpointed() -> None:
    assert speed_config(apply_speed(trainable_model(), SpeedConfig(), "cpu", "fp32")).class_token_tail == "on"
    off = apply_speed(trainable_model(), OFF, "cpu", "fp32")
    assert speed_config(off).class_token_tail == "off" and not getattr(off.blocks, "class_token_tail", False)
    assert resolve(SpeedConfig(compile=True), "cpu", "fp32").class_token_tail == "off"
    assert resolve(SpeedConfig(grad_checkpointing=True), "cpu", "fp32").class_token_tail == "off"
    with pytest.raises(ValueError, match="grad_checkpointing"):
        resolve(SpeedConfig(class_token_tail="on", grad_checkpointing=True), "cpu", "fp32")
