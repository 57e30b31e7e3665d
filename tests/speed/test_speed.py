"""Speed options keep the model's function: each one against the plain path, on tiny models built by the factory."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import SWIN, VIDEO_KWARGS, VIT, tiny_kwargs
from tests.training_step import BF16_TOL, FP32_TOL, assert_same_step, train_step, trainable_model

import adaptformer.speed as speed
from adaptformer import AdaptFormerConfig, VPTConfig, build_backbone, create_model, load_adapter, save_adapter
from adaptformer.precision import Precision
from adaptformer.speed import SpeedConfig, apply_speed, resolve, speed_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"frozen_dtype": "float16"}, "frozen_dtype"),
        ({"attention": "flash"}, "attention"),
        ({"class_token_tail": True}, "class_token_tail"),
        ({"grad_checkpointing": "yes"}, "grad_checkpointing"),
        ({"compile": 1}, "compile"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SpeedConfig(**kwargs)


def test_config_round_trips_and_documents_every_field() -> None:
    config = SpeedConfig(frozen_dtype="bf16", attention="math", grad_checkpointing=True)
    assert SpeedConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SpeedConfig fields"):
        SpeedConfig.from_dict({"turbo": True})
    documented = {line.strip().split(":")[0] for line in (SpeedConfig.__doc__ or "").splitlines() if ": " in line}
    assert set(config.to_dict()) <= documented  # the Args section is the command line's help text


@pytest.mark.parametrize(
    "precision, device, tokens, attention",
    [
        ("bf16", "cpu", 197, "split"),  # ViT-B/16 at 224 on CPU: math faster to train, fused to infer
        ("bf16", "cpu", 784, "fused"),  # the video ViT-B: fused measured faster
        ("bf16", "cpu", None, "fused"),
        ("fp32", "cpu", 197, "fused"),
        ("fp16", "cuda", 197, "fused"),
    ],
)
def test_auto_resolves_per_device_precision_and_length(
    precision: str, device: str, tokens: int | None, attention: str
) -> None:
    resolved = resolve(SpeedConfig(), device, precision, tokens)
    assert resolved.resolved
    assert (resolved.frozen_dtype, resolved.attention) == (precision, attention)


@pytest.mark.parametrize(
    "name, method, kwargs, tokens",
    [
        (VIT, "adaptformer", tiny_kwargs(VIT), 16 + 1),
        (VIT, VPTConfig(num_tokens=2), {**tiny_kwargs(VIT)}, 16 + 1 + 2),
        (SWIN, "adaptformer", tiny_kwargs(SWIN), 4 * 4),
        ("video_vit_small_patch16_224", "adaptformer", VIDEO_KWARGS, 2 * 4 * 4),
    ],
)
def test_attention_tokens(name: str, method: str, kwargs: dict, tokens: int) -> None:
    assert speed.attention_tokens(create_model(name, 5, method=method, **kwargs)) == tokens


def test_low_precision_storage_needs_matching_autocast() -> None:
    with pytest.raises(ValueError, match="need autocast in bf16"):
        resolve(SpeedConfig(frozen_dtype="bf16"), "cpu", "fp32")
    with pytest.raises(ValueError, match="need autocast in bf16"):
        resolve(SpeedConfig(frozen_dtype="bf16"), "cpu", "fp16")
    assert resolve(SpeedConfig(frozen_dtype="fp32"), "cpu", "bf16").frozen_dtype == "fp32"


@pytest.mark.parametrize(
    "name, method, kwargs",
    [
        (VIT, "adaptformer", {}),
        (VIT, "linear", {}),
        (VIT, VPTConfig(num_tokens=2), {}),
        (SWIN, AdaptFormerConfig(dropout=0.0, bottleneck=(2, 4)), {}),
    ],
)
def test_bf16_storage_matches_the_autocast_path(name: str, method: str, kwargs: dict, images: torch.Tensor) -> None:
    plain = trainable_model(method, name, **kwargs)
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(frozen_dtype="bf16", attention="math"), "cpu", "bf16")
    for p in fast.parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16)
    assert all(b.dtype == torch.float32 for b in fast.buffers() if b.is_floating_point())  # BatchNorm statistics
    assert_same_step(train_step(fast, images, "bf16"), train_step(plain, images, "bf16"), BF16_TOL)
    head = fast.get_classifier()[0]
    torch.testing.assert_close(head.running_mean, plain.get_classifier()[0].running_mean, **BF16_TOL)
    torch.testing.assert_close(head.running_var, plain.get_classifier()[0].running_var, **BF16_TOL)
    assert head.num_batches_tracked.item() == 1


def test_training_with_a_bf16_backbone_reduces_the_loss(images: torch.Tensor) -> None:
    model = apply_speed(trainable_model(), SpeedConfig(), "cpu", "bf16")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    labels = torch.arange(images.shape[0]) % 5
    losses = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with Precision("bf16", "cpu").autocast():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad
    )


def test_adapter_saved_from_a_bf16_backbone_loads_on_the_fp32_one(tmp_path: Path, images: torch.Tensor) -> None:
    model = apply_speed(trainable_model(), SpeedConfig(), "cpu", "bf16").eval()
    save_adapter(model, tmp_path)
    torch.manual_seed(1)  # _model's backbone weights
    restored = load_adapter(build_backbone(VIT, 5, **tiny_kwargs(VIT)), tmp_path).eval()
    with torch.no_grad(), Precision("bf16", "cpu").autocast():
        torch.testing.assert_close(model(images).float(), restored(images).float(), **BF16_TOL)


@pytest.mark.parametrize("method", ["adaptformer", "full", "vpt"])
def test_math_and_fused_attention_agree(method: str, images: torch.Tensor) -> None:
    plain = trainable_model(method)
    fused = apply_speed(copy.deepcopy(plain), SpeedConfig(attention="fused"), "cpu", "fp32")
    math = apply_speed(copy.deepcopy(plain), SpeedConfig(attention="math"), "cpu", "fp32")
    flags = [m.fused_attn for m in math.modules() if hasattr(m, "fused_attn")]
    assert len(flags) == 3 and not any(flags)
    assert all(m.fused_attn for m in fused.modules() if hasattr(m, "fused_attn"))
    assert_same_step(train_step(math, images), train_step(fused, images), FP32_TOL)


def test_split_attention_trains_with_math_and_infers_fused(images: torch.Tensor) -> None:
    plain = trainable_model()
    # every attention module runs through its own forward (the class-token tail decides its kernel by itself)
    split = apply_speed(copy.deepcopy(plain), SpeedConfig(attention="split", class_token_tail="off"), "cpu", "fp32")
    math = apply_speed(copy.deepcopy(plain), SpeedConfig(attention="math", class_token_tail="off"), "cpu", "fp32")
    math.blocks[0].attn.fused_attn = True  # block 0: frozen input and weights, nothing recorded, so split fuses it
    attention = [m for m in split.modules() if hasattr(m, "fused_attn")]
    assert_same_step(train_step(split, images), train_step(math, images), {"atol": 0.0, "rtol": 0.0})
    assert [m.fused_attn for m in attention] == [True] + [False] * (len(attention) - 1)
    with torch.no_grad():
        out = split.eval()(images)
    assert all(m.fused_attn for m in attention)
    speed.set_attention(math, "fused")  # the same weights and BatchNorm statistics, on the fused path
    with torch.no_grad():
        torch.testing.assert_close(out, math.eval()(images), atol=0.0, rtol=0.0)
    speed.set_attention(split, "math")  # switching again removes the hook
    with torch.no_grad():
        split(images)
    assert not any(m.fused_attn for m in attention)


def test_video_attention_honours_the_switch() -> None:
    kwargs = VIDEO_KWARGS
    clips = torch.randn(2, 3, 4, 32, 32)
    models = {}
    for kind in ("fused", "math"):
        torch.manual_seed(1)
        model = create_model("video_vit_small_patch16_224", 5, method=AdaptFormerConfig(dropout=0.0), **kwargs)
        models[kind] = apply_speed(model.train(), SpeedConfig(attention=kind), "cpu", "fp32")
        assert [m.fused_attn for m in model.blocks.modules() if hasattr(m, "fused_attn")] == [kind == "fused"] * 2
    assert_same_step(train_step(models["math"], clips), train_step(models["fused"], clips), FP32_TOL)


def test_blocks_keep_their_names_under_the_speed_options(images: torch.Tensor) -> None:
    plain = trainable_model(AdaptFormerConfig(dropout=0.0, layers=(2,)))
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(attention="fused", class_token_tail="on"), "cpu", "fp32")
    assert isinstance(fast.blocks, speed.FastBlocks)
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize(
    "name, method, kwargs",
    [
        (VIT, "adaptformer", {}),
        (VIT, VPTConfig(num_tokens=2), {}),
        (VIT, AdaptFormerConfig(dropout=0.0, layers=(2,)), {}),
        (SWIN, AdaptFormerConfig(dropout=0.0, bottleneck=(2, 4)), {}),
    ],
)
@pytest.mark.parametrize("attention", ["fused", "split"])
def test_grad_checkpointing_gives_equal_gradients(name: str, method: str, kwargs: dict, attention: str) -> None:
    x = torch.randn(4, 3, 32, 32)
    plain = trainable_model(method, name, **kwargs)
    speed.set_attention(plain, "math" if attention == "split" else "fused")  # what the training step runs
    fast = apply_speed(copy.deepcopy(plain), SpeedConfig(attention=attention, grad_checkpointing=True), "cpu", "fp32")
    result = train_step(fast, x)
    assert_same_step(result, train_step(plain, x), FP32_TOL)
    first = next(n for n in result[1] if "adaptmlp.down_proj.weight" in n or "vpt.tokens" in n)
    assert result[1][first].abs().sum() > 0  # the first adapted block still gets a gradient


def test_grad_checkpointing_refuses_reentrant_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.layers

    monkeypatch.setattr(timm.layers, "use_reentrant_ckpt", lambda: True)
    with pytest.raises(ValueError, match="re-entrant"):
        apply_speed(trainable_model(), SpeedConfig(grad_checkpointing=True), "cpu", "fp32")


@pytest.mark.parametrize("attention", ["fused", "split"])
def test_compile_keeps_outputs_and_names(attention: str, images: torch.Tensor) -> None:
    plain = trainable_model()
    config = SpeedConfig(attention=attention, compile=True)
    fast = apply_speed(copy.deepcopy(plain), config, "cpu", "fp32", compile_kwargs={"backend": "aot_eager"})
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert_same_step(train_step(fast, images), train_step(plain, images), FP32_TOL)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(images), plain.eval()(images), **FP32_TOL)


def test_compiled_model_with_frozen_backward_on_takes_the_plain_path(images: torch.Tensor) -> None:
    """The hand-written backward is eager-only: compiled blocks fall back to their plain path (bf16, packed weights)."""
    plain = apply_speed(trainable_model(), SpeedConfig(frozen_backward="off"), "cpu", "bf16")
    config = SpeedConfig(frozen_backward="on", compile=True)
    fast = apply_speed(trainable_model(), config, "cpu", "bf16", compile_kwargs={"backend": "aot_eager"})
    assert resolve(SpeedConfig(compile=True), "cpu", "bf16").frozen_backward == "off"
    assert_same_step(train_step(fast, images, "bf16"), train_step(plain, images, "bf16"), BF16_TOL)


def test_apply_speed_records_the_resolved_config_once() -> None:
    model = apply_speed(trainable_model(), None, "cpu", "bf16")
    assert speed_config(model) == resolve(SpeedConfig(), "cpu", "bf16", tokens=17)
    with pytest.raises(ValueError, match="already applied"):
        apply_speed(model, None, "cpu", "bf16")
