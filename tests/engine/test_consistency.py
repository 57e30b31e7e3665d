"""Consistency regularisation (PACE; :mod:`adaptformer.engine.consistency`, ``optim.consistency``): off is today's
training bit for bit; on, the loss is the hand-computed cross-entropy plus the weighted squared distance between two
noisy passes (pace) or to the previous epoch's logits (fast), the noise is reproducible per seed and only drawn in
training, a resumed run equals the uninterrupted one for both variants, and bad settings are refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.conftest import VIT, tiny_kwargs
from tests.engine.tiny_runs import tiny_backbone_file, tiny_config
from tests.training_step import move_trainable

from adaptformer import AdaptFormerConfig, LoRAConfig, create_model
from adaptformer.engine.checkpointing import load_training_state
from adaptformer.engine.config.consistency import ConsistencyConfig
from adaptformer.engine.config.layers import merge_config
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.engine.consistency import Consistency
from adaptformer.engine.distributed import init_distributed
from adaptformer.engine.loop import train_one_epoch
from adaptformer.engine.rng import derive_seed
from adaptformer.engine.schedule import WarmupCosine
from adaptformer.engine.train import train
from adaptformer.precision import Precision

FP32 = Precision("fp32", "cpu")


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory):
    return tiny_backbone_file(tmp_path_factory)


def _model(method: object = None) -> torch.nn.Module:
    torch.manual_seed(1)
    method = method or AdaptFormerConfig(bottleneck=8, dropout=0.0)
    return move_trainable(create_model(VIT, 5, method=method, init_seed=0, **tiny_kwargs(VIT)), 0.3).train()


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g), torch.arange(3, 3 + n)


def _consistency(model, variant: str = "pace", seed: int = 0, **fields) -> Consistency:
    config = ConsistencyConfig(variant=variant, **{"weight": 0.7, "sigma": 0.8, **fields})
    return Consistency(model, config, seed=seed, rank=0, num_samples=16, num_classes=5)


def _hand_forward(model, x: torch.Tensor, noises: list[torch.Tensor | None]) -> torch.Tensor:
    """The adapted ViT's forward written out, each block's adapter output times its noise (None: no noise)."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))  # (B, N, C)
    for block, z in zip(model.blocks, noises, strict=True):
        x = x + block.ls1(block.attn(block.norm1(x)))
        normed = block.norm2(x)
        a = block.adaptmlp
        out = a.up_proj(a.act(a.down_proj(x)))
        if z is not None:
            out = out * z
        x = x + block.ls2(block.mlp(normed)) + out * a.scale
    return model.forward_head(model.norm(x))


def test_the_pace_loss_is_cross_entropy_plus_the_distance_between_two_noisy_passes() -> None:
    model = _model()
    x, y, ids = _batch()
    consistency = _consistency(model)  # depth 3, first_block 1: sigmas 0, 0.8, 0.4
    assert consistency.sigmas == [0.0, 0.8, 0.4]
    loss = consistency.loss(model, x, y, ids, F.cross_entropy, FP32, epoch=2)
    g = torch.Generator().manual_seed(derive_seed(0, 2, 3, 0))
    noises = [None, *(torch.randn(8, 1, 32, generator=g) * s + 1 for s in (0.8, 0.4))]  # (2B, 1, C) per block
    consistency.remove()
    logits = _hand_forward(model, torch.cat([x, x]), noises)
    first, second = logits.chunk(2)
    expected = F.cross_entropy(first, y) + 0.7 * ((first - second) ** 2).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert ((first - second) ** 2).sum() > 1e-3  # the two passes differ: the term is there


def test_the_fast_loss_is_the_distance_to_the_previous_epochs_logits() -> None:
    model = _model()
    x, y, ids = _batch()
    consistency = _consistency(model, "fast", sigma=0.0)  # no noise: the logits are the model's
    with torch.no_grad():
        plain = model(x)
    first = consistency.loss(model, x, y, ids, F.cross_entropy, FP32, epoch=0)
    torch.testing.assert_close(first, F.cross_entropy(plain, y))  # no earlier prediction: no term
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
        moved = model(x)
    half = torch.tensor([True, True, False, False])  # only the first two samples were seen before
    consistency.seen[ids[2:]] = False  # type: ignore[index]
    second = consistency.loss(model, x, y, ids, F.cross_entropy, FP32, epoch=1)
    term = (((moved - plain) ** 2).sum(-1) * half).mean()
    torch.testing.assert_close(second, F.cross_entropy(moved, y) + 0.7 * term, rtol=1e-5, atol=1e-6)
    assert torch.equal(consistency.history[ids], moved) and bool(consistency.seen[ids].all())  # type: ignore[index]


@pytest.mark.parametrize("method", [AdaptFormerConfig(bottleneck=8, dropout=0.0), LoRAConfig(rank=2), "adapter_plus"])
def test_the_noise_is_reproducible_per_seed_and_only_drawn_in_training(method) -> None:
    x, y, ids = _batch()

    def loss(seed: int) -> torch.Tensor:
        model = _model(method)
        if method == "adapter_plus":
            model.blocks.apply(lambda m: m.eval() if type(m).__name__ == "DropPath" else None)
        with torch.no_grad():
            return _consistency(model, seed=seed).loss(model, x, y, ids, F.cross_entropy, FP32, epoch=0)

    assert torch.equal(loss(0), loss(0)) and not torch.equal(loss(0), loss(1))
    model = _model(method).eval()
    with torch.no_grad():
        plain = model(x)
        _consistency(model)
        assert torch.equal(model(x), plain)  # evaluation sees the adapters without noise


def test_off_is_todays_training_step_bit_for_bit() -> None:
    """train_one_epoch without consistency equals the plain loop written out: forward, cross-entropy, step."""
    x, y, ids = _batch(8)
    batches = [(x[i : i + 4], y[i : i + 4], ids[i : i + 4]) for i in (0, 4)]
    models = [_model(), _model()]
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in models]
    schedulers = [WarmupCosine(o, 0.1, 1, 2) for o in optimizers]
    train_one_epoch(models[0], batches, F.cross_entropy, optimizers[0], schedulers[0], FP32, FP32.grad_scaler(),
                    init_distributed("cpu"), epoch=0)  # fmt: skip
    for inputs, labels, _ in batches:
        models[1].train()
        loss = F.cross_entropy(models[1](inputs).float(), labels)
        loss.backward()
        schedulers[1].apply()
        optimizers[1].step()
        optimizers[1].zero_grad(set_to_none=True)
        schedulers[1].step()
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def _with(cfg, **consistency):
    return parse_mapping(merge_config(cfg.to_dict(), {"optim": {"consistency": consistency}}))


def test_off_trains_as_before_and_on_trains_otherwise(tmp_path, backbone_file) -> None:
    cfg = tiny_config(tmp_path / "plain", backbone_file, epochs=1, select="last")
    train(cfg)
    off = _with(cfg, variant="off", weight=3.0, sigma=2.0)
    train(parse_mapping(merge_config(off.to_dict(), {"run": {"output_dir": str(tmp_path / "off")}})))
    on = _with(cfg, variant="pace")
    train(parse_mapping(merge_config(on.to_dict(), {"run": {"output_dir": str(tmp_path / "on")}})))
    plain, same, other = (_adapter(tmp_path / d) for d in ("plain", "off", "on"))
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert not all(torch.equal(plain[k], other[k]) for k in plain)


@pytest.mark.parametrize("variant", ["pace", "fast"])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, backbone_file, variant: str) -> None:
    cfg = _with(tiny_config(tmp_path / "a", backbone_file, select="last", adapter_dropout=0.1), variant=variant)
    train(cfg)
    b = parse_mapping(merge_config(cfg.to_dict(), {"run": {"output_dir": str(tmp_path / "b")}}))
    assert train(parse_mapping(merge_config(b.to_dict(), {"run": {"stop_after_steps": 3}}))).stopped_early
    state = load_training_state(tmp_path / "b" / "checkpoint.pt")
    if variant == "fast":  # epoch 1 and a step of epoch 2 predicted: the history the resumed run needs
        assert state["consistency"]["seen"].sum() > 0 and state["consistency"]["history"].abs().sum() > 0
    train(parse_mapping(merge_config(b.to_dict(), {"run": {"resume": True}})))
    a, resumed = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == resumed.keys() and all(torch.equal(a[k], resumed[k]) for k in a)


@pytest.mark.parametrize(("consistency", "method", "message"), [
    ({"variant": "lazy"}, "adaptformer", "optim.consistency.variant"),
    ({"variant": "pace", "weight": -0.5}, "adaptformer", "optim.consistency.weight must be a finite number >= 0, "
                                                         "got -0.5"),
    ({"variant": "pace", "sigma": -1}, "adaptformer", "optim.consistency.sigma must be a finite number >= 0"),
    ({"variant": "pace"}, "vpt", "method 'vpt' has none (methods with adapter modules: adaptformer, lora, "
                                 "adapter_plus); set it to 'off'"),
    ({"variant": "fast"}, "linear", "method 'linear' has none"),
    ({"variant": "fast"}, "full", "method 'full' has none"),
])  # fmt: skip
def test_bad_settings_are_refused_by_name(tmp_path, backbone_file, consistency: dict, method: str, message) -> None:
    data = tiny_config(tmp_path, backbone_file).to_dict()
    data["model"]["method"] = {"name": method}
    data["optim"]["consistency"] = consistency
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_mapping(data)
    if consistency["variant"] == "lazy":
        assert "'off', 'pace', 'fast'" in str(e.value)


def test_grad_checkpointing_is_refused_with_consistency(tmp_path, backbone_file) -> None:
    data = tiny_config(tmp_path, backbone_file).to_dict()
    data["optim"]["consistency"] = {"variant": "pace"}
    data["speed"]["grad_checkpointing"] = True
    with pytest.raises(ValueError, match="speed.grad_checkpointing: recomputing a block"):
        parse_mapping(data)
