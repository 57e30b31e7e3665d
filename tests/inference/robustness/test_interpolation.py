"""Adapter-scale interpolation (:mod:`adaptformer.inference.robustness.interpolation`) per method, on tiny ViTs built
through the public factory: alpha = 1 is the trained model bit for bit, alpha = 0 the frozen backbone with the trained
head bit for bit, an intermediate alpha equals a model built by hand with that scale; VPT, alphas outside [0, 1] and a
full fine-tuning whose pre-trained weights cannot be rebuilt are refused with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import move_trainable

from adaptformer import AdapterPlusConfig, AdaptFormerConfig, LoRAConfig, create_model
from adaptformer.factory import BackboneSource
from adaptformer.heads import classifier_paths
from adaptformer.inference.robustness.interpolation import check_alphas, interpolated, pretrained_state
from adaptformer.methods import merge_lora
from adaptformer.saving import AdapterInfo

METHODS = {
    "adaptformer": AdaptFormerConfig(bottleneck=8),
    "adaptformer_out_norm": AdaptFormerConfig(bottleneck=8, layernorm="out", scale="learnable"),
    "adapter_plus": AdapterPlusConfig(bottleneck=4),
    "lora": LoRAConfig(rank=4, targets=("q", "v", "o")),
    "lora_fused_qkv": LoRAConfig(rank=4, targets=("qkv",)),
    "full": "full",
    "linear": "linear",
}


def _model(method: object) -> nn.Module:
    return create_model(VIT, 5, method=method, init_seed=0, **tiny_kwargs(VIT)).eval()  # type: ignore[arg-type]


def _trained(method: object) -> nn.Module:
    torch.manual_seed(1)
    return move_trainable(_model(method), 0.3).eval()


def _frozen_with_head(trained: nn.Module) -> nn.Module:
    """The frozen backbone (the same init) with ``trained``'s head."""
    frozen = _model("linear")
    heads = tuple(f"{p}." for p in classifier_paths(trained))
    head_state = {k: v for k, v in trained.state_dict().items() if k.startswith(heads)}
    missing, unexpected = frozen.load_state_dict(head_state, strict=False)
    assert not unexpected and all(not k.startswith(heads) for k in missing)
    return frozen


def _pretrained() -> dict[str, torch.Tensor]:
    return _model("full").state_dict()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_alpha_one_is_the_trained_model_and_zero_the_frozen_backbone_exactly(name: str, x: torch.Tensor) -> None:
    trained = _trained(METHODS[name])
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    pretrained = _pretrained() if name == "full" else None
    assert torch.equal(interpolated(trained, 1.0, pretrained)(x), trained(x))
    assert torch.equal(interpolated(trained, 0.0, pretrained)(x), _frozen_with_head(trained)(x))
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())  # the trained model untouched
    if name != "linear":  # the method does something: an intermediate alpha is neither end
        half = interpolated(trained, 0.5, pretrained)(x)
        assert not torch.allclose(half, trained(x)) and not torch.allclose(half, _frozen_with_head(trained)(x))


@torch.no_grad()
def test_adaptformer_at_alpha_is_the_adapter_with_scale_times_alpha(x: torch.Tensor) -> None:
    trained = _trained(METHODS["adaptformer"])
    by_hand = _model(AdaptFormerConfig(bottleneck=8, scale=0.1 * 0.25))
    by_hand.load_state_dict(trained.state_dict())
    torch.testing.assert_close(interpolated(trained, 0.25)(x), by_hand(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_adapter_plus_at_alpha_is_the_adapter_with_its_scale_times_alpha(x: torch.Tensor) -> None:
    trained = _trained(METHODS["adapter_plus"])
    state = {k: v * 0.75 if k.endswith("adapter_plus.scale") else v for k, v in trained.state_dict().items()}
    by_hand = _model(METHODS["adapter_plus"])
    by_hand.load_state_dict(state)
    torch.testing.assert_close(interpolated(trained, 0.75)(x), by_hand(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_lora_at_alpha_is_lora_with_alpha_over_rank_and_a_merged_model_a_weight_interpolation(x: torch.Tensor) -> None:
    trained = _trained(METHODS["lora"])
    by_hand = _model(LoRAConfig(rank=4, alpha=4 * 0.5, targets=("q", "v", "o")))  # scaling 0.5
    by_hand.load_state_dict(trained.state_dict())
    expected = by_hand(x)
    torch.testing.assert_close(interpolated(trained, 0.5)(x), expected, rtol=1e-5, atol=1e-6)
    merged = merge_lora(_trained(METHODS["lora"]))
    half = interpolated(merged, 0.5)
    frozen, merged_state = _model("linear").state_dict(), merged.state_dict()
    key = "blocks.1.attn.proj.weight"
    torch.testing.assert_close(half.state_dict()[key], 0.5 * frozen[key] + 0.5 * merged_state[key])
    torch.testing.assert_close(half(x), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_full_fine_tuning_at_alpha_is_the_weight_interpolation_with_the_trained_head(x: torch.Tensor) -> None:
    trained, pretrained = _trained("full"), _pretrained()
    heads = tuple(f"{p}." for p in classifier_paths(trained))
    state = {k: v if k.startswith(heads) or not v.is_floating_point() else 0.7 * pretrained[k] + 0.3 * v
             for k, v in trained.state_dict().items()}  # fmt: skip
    by_hand = _model("full")
    by_hand.load_state_dict(state)
    torch.testing.assert_close(interpolated(trained, 0.3, pretrained)(x), by_hand(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Full|full.*pre-trained"):
        interpolated(trained, 0.3)
    other = _model("full")
    other_state = {k: v[..., :1] if k == "blocks.0.mlp.fc1.weight" else v for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"no tensor blocks.0.mlp.fc1.weight of shape \(128, 32\)"):
        interpolated(trained, 0.3, other_state)


def test_vpt_is_refused_by_name_with_the_methods_that_can() -> None:
    with pytest.raises(ValueError, match="--interpolate: VPT cannot be interpolated: its prompt tokens") as e:
        interpolated(_model("vpt"), 0.5)
    assert "methods that can: adaptformer, linear, full, lora, adapter_plus" in str(e.value)


@pytest.mark.parametrize(("alphas", "message"), [
    ([0.0, 1.5], r"alpha must be in \[0, 1\].*got \[1.5\]: extrapolation is refused"),
    ([-0.25], r"got \[-0.25\]"),
    ([float("nan")], r"got \[nan\]"),
    ([0.5, 0.5], "names an alpha twice"),
    ([], "at least one alpha"),
])  # fmt: skip
def test_bad_alphas_are_refused(alphas: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_alphas(alphas)


def test_pretrained_weights_that_cannot_be_rebuilt_are_refused(tmp_path) -> None:
    info = AdapterInfo(spec=_model("full").adaptformer_spec)
    with pytest.raises(ValueError, match="records no pre-trained checkpoint and no initial seed.*--model.checkpoint"):
        pretrained_state("run/adapter", info, BackboneSource())
    with pytest.raises(FileNotFoundError, match="checkpoint .*gone.pth that run/adapter records does not exist"):
        pretrained_state("run/adapter", info, BackboneSource(checkpoint=str(tmp_path / "gone.pth")))
    rebuilt = pretrained_state("run/adapter", info, BackboneSource(kwargs=tiny_kwargs(VIT), init_seed=0))
    assert all(torch.equal(v, _pretrained()[k]) for k, v in rebuilt.items() if not k.startswith("head"))
