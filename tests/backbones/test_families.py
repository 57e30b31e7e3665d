"""Every backbone family, one table: AdaptFormer attaches beside each block's feed-forward branch and nothing else
changes. Per family (tiny models built through the public factory): bit-identical outputs at init, only adapter and
head parameters move in training, a save -> load round trip reproduces logits exactly, ``torch.compile`` gives the
same output, and the parameter report counts exactly the adapters (2 d b + b + d each) and the head."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers  # noqa: F401  (the transformers families join once it is imported)
from tests.training_step import move_trainable

from adaptformer import (
    AdaptFormerConfig,
    UnsupportedModelError,
    build_backbone,
    create_model,
    load_adapter,
    parameter_report,
    save_adapter,
)
from adaptformer.backbones.families import block_width, families, find_family
from adaptformer.methods import adapter_modules
from adaptformer.methods.adaptformer import ADAPTED_BLOCKS, attach

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_TV_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
TINY_TV_SWIN = {"patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
TINY_SWIN3D = {"embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": [2, 4, 4], "num_frames": 4}

# id -> (family, timm name, kwargs, input shape (C, ...), per-stage block widths)
CASES: dict[str, tuple[str, str, dict[str, Any], tuple[int, ...], list[int]]] = {
    "vit": ("vit", "vit_tiny_patch16_224", TINY_VIT, (3, 32, 32), [32]),
    "vit-layerscale": ("vit", "vit_tiny_patch16_224", {**TINY_VIT, "init_values": 1e-2}, (3, 32, 32), [32]),
    "swin": (
        "swin",
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)},
        (3, 32, 32),
        [16, 32],
    ),
    # EVA-02: rotary position embedding, SwiGLU MLP with its inner LayerNorm, no layer scale
    "eva02": ("eva", "eva02_tiny_patch14_224", TINY_VIT, (3, 32, 32), [32]),
    # the EVA block with gamma layer scale (init_values) and a plain GELU MLP
    "eva-gamma": (
        "eva",
        "eva02_tiny_patch14_224",
        {**TINY_VIT, "init_values": 0.1, "swiglu_mlp": False},
        (3, 32, 32),
        [32],
    ),
    # a RoPE ViT of timm (built on the EVA block): mixed (learned-frequency) rotary embedding, layer scale (0.1: at
    # timm's 1e-5 a random tiny model's pooled features differ by less than bf16 resolves)
    "rope-vit": ("eva", "vit_small_patch16_rope_mixed_224", {**TINY_VIT, "init_values": 0.1}, (3, 32, 32), [32]),
    "beit": ("beit", "beit_base_patch16_224", TINY_VIT, (3, 32, 32), [32]),  # relative position bias, gamma
    "beitv2": ("beit", "beitv2_base_patch16_224", {**TINY_VIT, "init_values": None}, (3, 32, 32), [32]),
    # torchvision's image ViT (EncoderBlock, nn.MultiheadAttention) and Swin V1, with torchvision's own arguments
    "tv-vit": ("tv_vit", "tv_vit_b_16", TINY_TV_VIT, (3, 32, 32), [32]),
    "tv-swin": ("tv_swin", "tv_swin_b", TINY_TV_SWIN, (3, 32, 32), [16, 32]),
    # Video Swin: torchvision's Swin3D, clips (C, T, H, W), 3D shifted windows
    "tv-swin3d": (
        "tv_swin",
        "tv_swin3d_t",
        TINY_SWIN3D,
        (3, 4, 32, 32),
        [16, 32],
    ),
}
VARIANTS = [
    {},
    {"input": "normed"},
    {"form": "sequential"},
    {"layernorm": "in", "scale": "learnable"},
]


def _backbone(case: str, seed: int = 1) -> torch.nn.Module:
    _, name, kwargs, _, _ = CASES[case]
    return build_backbone(name, 5, init_seed=seed, **kwargs)


def _model(case: str, method: Any = None, seed: int = 1) -> torch.nn.Module:
    _, name, kwargs, _, _ = CASES[case]
    return create_model(name, 5, method=method or AdaptFormerConfig(dropout=0.0), init_seed=seed, **kwargs)


def _inputs(case: str, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *CASES[case][3], generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("case", CASES)
def test_identity_at_init_is_bit_exact(case: str, variant: dict) -> None:
    plain = _backbone(case).eval()
    adapted = attach(copy.deepcopy(plain), AdaptFormerConfig(**variant)).eval()
    family = CASES[case][0]
    blocks = [m for m in adapted.modules() if hasattr(m, "adaptmlp")]
    assert blocks and all(type(b) is ADAPTED_BLOCKS[family] for b in blocks)
    assert set(plain.state_dict()) <= set(adapted.state_dict())  # backbone names unchanged
    x = _inputs(case)
    with torch.no_grad():
        assert torch.equal(adapted(x), plain(x))


@pytest.mark.parametrize("case", CASES)
def test_adapters_change_the_output_once_trained(case: str) -> None:
    plain = _backbone(case).eval()
    adapted = move_trainable(attach(copy.deepcopy(plain), AdaptFormerConfig(dropout=0.0)), scale=0.5).eval()
    x = _inputs(case)
    with torch.no_grad():
        assert not torch.allclose(adapted(x), plain(x))  # the adapter is in the forward path


@pytest.mark.parametrize("case", CASES)
def test_one_step_changes_only_adapters_and_head(case: str) -> None:
    model = move_trainable(_model(case))  # off the zero init, so every trainable tensor has a gradient at once
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adaptmlp." in n or n.startswith(("head", "fc_norm")) for n in trainable), trainable
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    x = _inputs(case)
    for _ in range(2):
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k not in trainable and "running_" not in k and "num_batches" not in k} == set()
    assert trainable <= changed


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_reproduces_logits_exactly(case: str, tmp_path: Path) -> None:
    model = move_trainable(_model(case, AdaptFormerConfig(bottleneck=1 / 12)))
    model.train()
    model(_inputs(case, 8))  # the paper head's BatchNorm statistics
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(_backbone(case), tmp_path / "adapter").eval()
    x = _inputs(case)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))


# Inductor (the default backend: graph capture + generated C++ kernels) on the main families; dynamo's graph capture
# replayed through AOTAutograd ("aot_eager", no code generation) on the rest. What an adapted block could break is the
# capture of its forward (graph breaks, guards, wrong replay); kernel generation for a captured graph is the same
# whichever block it came from, and costs 10-40 s per model here.
INDUCTOR_CASES = ("vit", "tv-vit")


@pytest.mark.parametrize("case", CASES)
def test_compiled_model_gives_the_same_output(case: str) -> None:
    model = move_trainable(_model(case)).eval()
    x = _inputs(case)
    compiled = torch.compile(model, backend="inductor" if case in INDUCTOR_CASES else "aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_parameter_report_counts_adapters_and_head_exactly(case: str) -> None:
    widths = CASES[case][4]
    bottleneck = 1 / 12 if len(widths) > 1 else 8
    model = _model(case, AdaptFormerConfig(bottleneck=bottleneck))
    blocks = [b for _, b in find_family(model).blocks(model)]
    stage_widths = sorted({block_width(b) for b in blocks})
    assert stage_widths == widths
    expected_adapters = 0
    for block in blocks:
        d = block_width(block)
        b = max(1, d // 12) if isinstance(bottleneck, float) else bottleneck
        expected_adapters += 2 * d * b + b + d  # down (d x b + b), up (b x d + d)
    features = int(model.num_features)
    rows = {name: (trainable, total) for name, trainable, total in parameter_report(model).rows}
    assert rows["adapters"] == (expected_adapters, expected_adapters)
    assert rows["head"] == ((features + 1) * 5, (features + 1) * 5)  # BatchNorm1d(affine=False) + Linear
    plain = _backbone(case)
    head_params = sum(p.numel() for p in plain.get_classifier().parameters())
    assert rows["backbone"] == (0, sum(p.numel() for p in plain.parameters()) - head_params)


def test_a_block_subclass_from_elsewhere_is_not_a_family_block() -> None:
    """torchvision's Swin V2 block subclasses V1's but computes post-norm: it is refused, not silently adapted."""
    import torchvision

    v2 = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[1], window_size=[4, 4],
        block=torchvision.models.swin_transformer.SwinTransformerBlockV2,
    )  # fmt: skip
    families = r"supported: vit .*swin .*eva .*beit .*tv_vit .*tv_swin "
    with pytest.raises(UnsupportedModelError, match=r"SwinTransformerBlockV2.*" + families):
        attach(v2, AdaptFormerConfig())


def test_vpt_refuses_other_families_naming_the_block() -> None:
    with pytest.raises(UnsupportedModelError, match=r"VPT supports timm ViT blocks.*EvaBlock"):
        _model("eva02", "vpt")


def test_every_family_has_an_adapted_block_of_its_own_class() -> None:
    for family in families():
        assert issubclass(ADAPTED_BLOCKS[family.name], family.block_type)
        assert ADAPTED_BLOCKS[family.name].__module__.startswith("adaptformer.")
    assert len(adapter_modules(_model("eva02"))) == 2


def test_cli_trains_evaluates_and_predicts_with_a_tiny_eva02_on_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The command line end to end on an EVA-02 (rotary embedding, SwiGLU): train 1 epoch on scikit-learn's digits,
    then eval and predict from the saved adapter (the backbone is rebuilt from its recorded init seed)."""
    import json

    from PIL import Image

    from adaptformer.cli import main

    out = tmp_path / "run"
    kwargs = json.dumps(TINY_VIT)
    args = ["train", "--model.backbone", "eva02_tiny_patch14_224", "--model.kwargs", kwargs,
            "--model.method.bottleneck", "8", "--data.dataset", "digits", "--optim.epochs", "1",
            "--optim.batch_size", "32", "--optim.effective_batch", "32", "--data.num_workers", "0",
            "--optim.precision", "fp32", "--run.output_dir", str(out), "--run.seed", "1"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["backbone"] == "eva02_tiny_patch14_224" and config["method"] == "adaptformer"
    tested = json.loads((out / "test.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter"), "--data.dataset", "digits", "--split", "test"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == tested["n"] > 0 and printed["acc1"] == tested["acc1"]
    image = tmp_path / "seven.png"
    Image.new("RGB", (8, 8), (255, 255, 255)).save(image)
    assert main(["predict", "--adapter", str(out / "adapter"), "--top-k", "2", "--json", str(image)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["image"] == str(image) and [t["class"] for t in row["top"]] == [str(t["index"]) for t in row["top"]]
    assert len(row["top"]) == 2


@pytest.mark.parametrize("case", ["swin", "eva02", "rope-vit", "beit", "tv-vit", "tv-swin", "tv-swin3d"])
def test_speed_auto_in_bf16_applies_what_fits_and_records_it(case: str) -> None:
    """The block-level speed options (hand-written frozen backward, class-token tail) are for timm ViT blocks; on the
    other families "auto" leaves them off and says so, while bf16 frozen storage applies and the model trains."""
    from adaptformer.precision import Precision
    from adaptformer.speed import SpeedConfig, apply_speed, speed_config

    model = apply_speed(move_trainable(_model(case)), SpeedConfig(), "cpu", "bf16")
    resolved = speed_config(model)
    assert (resolved.frozen_dtype, resolved.frozen_backward, resolved.class_token_tail) == ("bf16", "off", "off")
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    with Precision("bf16", "cpu").autocast():
        logits = model.train()(_inputs(case))
    F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("variant", [{"scale": "learnable"}, {"layernorm": "out"}, {"layernorm": "in"}])
def test_adapter_output_keeps_the_streams_dtype_under_bf16_storage(variant: dict) -> None:
    """A learnable fp32 scale or an fp32 adapter LayerNorm must not promote the residual stream: the next block's
    bf16-stored LayerNorm would refuse it ("mixed dtype")."""
    from adaptformer.precision import Precision
    from adaptformer.speed import SpeedConfig, apply_speed

    model = apply_speed(move_trainable(_model("vit", AdaptFormerConfig(**variant))), SpeedConfig(), "cpu", "bf16")
    with Precision("bf16", "cpu").autocast():
        logits = model.train()(_inputs("vit"))
    F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("form", [{"input": "normed"}, {"input": "residual"}, {"form": "sequential"}])
def test_the_adapter_adds_in_the_streams_dtype_whatever_it_reads(form: dict) -> None:
    """CUDA autocast computes LayerNorm in fp32: an adapter reading LN(x') (input="normed") gets fp32, yet the block
    output must stay in the bf16 stream's dtype (on CPU autocast's LayerNorm is bf16, so the fp32 input is given
    here directly)."""
    from adaptformer.methods import AdaptMLP

    adapter = AdaptMLP(8, 4, AdaptFormerConfig(scale="learnable", **form))
    x, h = torch.randn(2, 3, 8, dtype=torch.bfloat16), torch.randn(2, 3, 8, dtype=torch.bfloat16)
    normed = torch.randn(2, 3, 8)  # fp32, as CUDA autocast's layer_norm returns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert adapter(x, normed, h).dtype == torch.bfloat16
