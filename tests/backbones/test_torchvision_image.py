"""torchvision's image ViT and Swin registered with timm (tv_vit_*, tv_swin_*): exactly torchvision's computation and
parameter names, pretrained configs that reproduce torchvision's inference transforms, torchvision weight files
loading strictly (tiny real files in tmp dirs), AdaptFormer's per-stage bottlenecks and exact trainable counts, and
the command line end to end."""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm.models._builder
import torch
import torch.nn as nn
import torchvision.models as tvm
from PIL import Image
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlock, SwinTransformerBlockV2
from torchvision.models.vision_transformer import EncoderBlock

from adaptformer import (
    AdaptFormerConfig,
    CheckpointError,
    Preprocessing,
    UnsupportedModelError,
    build_backbone,
    create_model,
)
from adaptformer.cli import main
from adaptformer.data.transforms import build_image_transform, eval_resize_size
from adaptformer.methods import adapter_modules
from adaptformer.methods.adaptformer import attach
from adaptformer.model import parameter_report

# ViT: 32x32 input, 8x8 patches (16 tokens + class token), width 32, 2 blocks. Swin: 4x4 patches, windows of 4x4
# tokens, two stages of two blocks (widths 16 and 32; the second block of a stage is shifted).
TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
TINY_SWIN = {"patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4, "img_size": 32}
TV_SWIN = {"patch_size": [4, 4], "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": [4, 4]}

# name -> (tiny kwargs, the torchvision model of the same shape, with its classifier's path)
CASES: dict[str, tuple[dict[str, Any], Callable[..., nn.Module], str]] = {
    "tv_vit_b_16": (TINY_VIT, lambda **kw: tvm.VisionTransformer(**TINY_VIT, **kw), "heads.head"),
    "tv_swin_b": (
        {**TINY_SWIN, "drop_path_rate": 0.0},
        lambda **kw: tvm.SwinTransformer(**TV_SWIN, stochastic_depth_prob=0.0, **kw),
        "head",
    ),
}


def _torchvision(name: str, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised torchvision model of the case's shape, with non-zero biases and head (torchvision
    zero-inits some of them), eval mode."""
    torch.manual_seed(seed)
    model = CASES[name][1](num_classes=num_classes)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1 or param.abs().sum() == 0:
                param.normal_(0, 0.1)
    return model.eval()


def _images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _pooled(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """A torchvision model's pooled feature: its forward with the classifier replaced by Identity."""
    parent, _, attr = path.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    head = getattr(holder, attr)
    setattr(holder, attr, nn.Identity())
    try:
        return model(x)
    finally:
        setattr(holder, attr, head)


@pytest.mark.parametrize("name", CASES)
def test_registered_model_computes_exactly_torchvisions(name: str) -> None:
    kwargs, _, classifier = CASES[name]
    theirs = _torchvision(name, num_classes=5)
    ours = build_backbone(name, 5, init_seed=1, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same names, same shapes
    x = _images()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        features = ours.forward_head(ours.forward_features(x), pre_logits=True)
        assert torch.equal(features, _pooled(theirs, classifier, x))  # (B, D): class token / mean over H, W
    assert ours.get_classifier() is ours.get_submodule(classifier)
    assert (ours.num_classes, ours.num_features) == (5, 32)
    ours.reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(ours(x), features)  # no head: forward returns the pooled features


@pytest.mark.parametrize(("name", "builder", "weights"), [
    ("tv_vit_b_16", tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1),
    ("tv_vit_b_16.swag_e2e_v1", lambda: tvm.vit_b_16(image_size=384), tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1),
    ("tv_vit_b_32", tvm.vit_b_32, tvm.ViT_B_32_Weights.IMAGENET1K_V1),
    ("tv_vit_l_16", tvm.vit_l_16, tvm.ViT_L_16_Weights.IMAGENET1K_V1),
    ("tv_vit_l_32", tvm.vit_l_32, tvm.ViT_L_32_Weights.IMAGENET1K_V1),
    ("tv_vit_h_14", lambda: tvm.vit_h_14(image_size=518), tvm.ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1),
    ("tv_vit_h_14.swag_linear_v1", tvm.vit_h_14, tvm.ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1),
    ("tv_swin_t", tvm.swin_t, tvm.Swin_T_Weights.IMAGENET1K_V1),
    ("tv_swin_s", tvm.swin_s, tvm.Swin_S_Weights.IMAGENET1K_V1),
    ("tv_swin_b", tvm.swin_b, tvm.Swin_B_Weights.IMAGENET1K_V1),
])  # fmt: skip
def test_variants_have_torchvisions_names_shapes_and_sizes(name: str, builder: Callable, weights: Any) -> None:
    """Full size (meta tensors): the same tensors as torchvision's model for those weights, whose parameter count
    torchvision's model card gives, so its weight file loads without renaming; the config names the file's url."""
    with torch.device("meta"):
        ours, theirs = build_backbone(name, 1000), builder()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == weights.meta["num_params"]
    assert ours.pretrained_cfg["url"] == weights.url
    assert ours.pretrained_cfg["architecture"] == name.split(".")[0]


# name -> (input size, eval resize of the short side, interpolation): torchvision's model cards
@pytest.mark.parametrize(("name", "size", "resize", "interpolation", "weights"), [
    ("tv_vit_b_16", 224, 256, "bilinear", tvm.ViT_B_16_Weights.IMAGENET1K_V1),
    ("tv_vit_b_16.swag_e2e_v1", 384, 384, "bicubic", tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1),
    ("tv_vit_b_16.swag_linear_v1", 224, 224, "bicubic", tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1),
    ("tv_vit_l_16", 224, 242, "bilinear", tvm.ViT_L_16_Weights.IMAGENET1K_V1),
    ("tv_vit_h_14", 518, 518, "bicubic", tvm.ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1),
    ("tv_swin_t", 224, 232, "bicubic", tvm.Swin_T_Weights.IMAGENET1K_V1),
    ("tv_swin_s", 224, 246, "bicubic", tvm.Swin_S_Weights.IMAGENET1K_V1),
    ("tv_swin_b", 224, 238, "bicubic", tvm.Swin_B_Weights.IMAGENET1K_V1),
])  # fmt: skip
def test_preprocessing_reproduces_torchvisions_inference_transforms(
    name: str, size: int, resize: int, interpolation: str, weights: Any
) -> None:
    with torch.device("meta"):
        model = build_backbone(name, 10)
    pre = Preprocessing.from_model(model)
    assert (pre.input_size, eval_resize_size(pre), pre.interpolation) == ((3, size, size), resize, interpolation)
    assert (pre.mean, pre.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ours, theirs = build_image_transform(pre, train=False)(image), weights.transforms()(image)
    assert ours.shape == theirs.shape == (3, size, size)
    # the library resizes a tensor, torchvision the PIL image: pixels may differ by rounding (2 levels at most)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2.5 / 255 / 0.224)


@pytest.mark.parametrize("name", CASES)
def test_the_config_records_the_size_the_model_was_built_for(name: str) -> None:
    model = build_backbone(name, 5, **CASES[name][0])
    assert Preprocessing.from_model(model).input_size == (3, 32, 32)
    assert model.pretrained_cfg["crop_pct"] == (0.875 if name.startswith("tv_vit") else 224 / 238)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("tv_vit_b_16", {"drop_path_rate": 0.1}, r"drop_path_rate 0\.1 \(model\.drop_path\): torchvision's "
     "VisionTransformer has no stochastic depth"),
    ("tv_vit_b_16", {"image_size": 30}, "image_size 30 must be a positive multiple of patch_size 8"),
    ("tv_vit_b_16", {"in_chans": 1}, "in_chans must be 3"),
    ("tv_vit_b_16", {"img_size": 32}, r"model kwargs \['img_size'\] do not fit 'tv_vit_b_16'"),
    ("tv_vit_b_16", {"representation_size": 16}, r"model kwargs \['representation_size'\] do not fit"),
    ("tv_swin_t", {"global_pool": "token"}, "global_pool must be 'avg'"),
    ("tv_swin_t", {"window_size": [4, 4, 4]}, r"window_size must be a positive size or \(H, W\), got \[4, 4, 4\]"),
    ("tv_swin_t", {"num_heads": [1]}, "must name the same stages"),
    ("tv_swin_t", {"depths": [1], "num_heads": [1]}, r"depths \[1\]: every stage needs a block"),
    ("tv_swin_t", {"stochastic_depth_prob": 0.1}, r"model kwargs \['stochastic_depth_prob'\] do not fit"),
])  # fmt: skip
def test_bad_constructor_arguments_are_named(name: str, kwargs: dict, message: str) -> None:
    tiny = TINY_VIT if name.startswith("tv_vit") else TINY_SWIN
    with pytest.raises(ValueError, match=message):
        create_model(name, 5, **{**tiny, **kwargs})


@pytest.mark.parametrize("name", CASES)
def test_torchvision_weight_file_loads_and_the_adapted_model_starts_as_torchvision_with_a_paper_head(
    name: str, tmp_path: Path
) -> None:
    """A file written like torchvision's own (``torch.save(model.state_dict())``, 1000-class head) loads strictly
    (only the head is left out); at init the adapted model computes torchvision's pooled features and the paper head
    on them, bit for bit."""
    kwargs, _, classifier = CASES[name]
    theirs = _torchvision(name)
    path = tmp_path / f"{name}-0123abcd.pth"
    torch.save(theirs.state_dict(), path)
    model = create_model(name, 5, checkpoint=path, checkpoint_source="torchvision", **kwargs).eval()
    blocks = [m for m in theirs.modules() if isinstance(m, EncoderBlock | SwinTransformerBlock)]
    assert len(adapter_modules(model)) == len(blocks) == (2 if name.startswith("tv_vit") else 4)
    x = _images()
    with torch.no_grad():
        pooled = _pooled(theirs, classifier, x)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
        assert torch.equal(model(x), model.get_classifier()(pooled))  # BatchNorm1d(affine=False) + Linear
    backbone = {k: v for k, v in theirs.state_dict().items() if not k.startswith(classifier)}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("edit", ["rename", "extra"])
def test_torchvision_weight_file_with_other_keys_is_refused_naming_them(name: str, edit: str, tmp_path: Path) -> None:
    state_dict = _torchvision(name).state_dict()
    key = next(k for k in state_dict if k.endswith("mlp.0.bias"))  # the first block's fc1 bias
    if edit == "rename":
        renamed = key.replace("mlp.0", "mlp.fc1")
        state_dict[renamed] = state_dict.pop(key)
        missing, unexpected = [key], [renamed]
    else:
        state_dict["encoder.extra.weight"] = torch.zeros(2)
        missing, unexpected = [], ["encoder.extra.weight"]
    message = re.escape(f"missing keys {missing} ({len(missing)}), unexpected keys {unexpected}")
    path = tmp_path / "edited.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError, match=message):
        create_model(name, 5, checkpoint=path, checkpoint_source="torchvision", **CASES[name][0])


def test_timms_mechanism_reads_a_local_torchvision_file_and_names_a_missing_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``checkpoint="timm"`` fetches torchvision's url (offline: a FileNotFoundError naming the model and the way to
    give a local file), or reads the local file given as ``pretrained_cfg_overlay={"file": ...}``."""
    theirs = _torchvision("tv_vit_b_16")
    path = tmp_path / "vit_b_16-c867db91.pth"
    torch.save(theirs.state_dict(), path)
    overlay = {"file": str(path)}
    model = create_model("tv_vit_b_16", 5, checkpoint="timm", pretrained_cfg_overlay=overlay, **TINY_VIT).eval()
    x = _images()
    with torch.no_grad():
        pooled = _pooled(theirs, "heads.head", x)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
    fetched = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        fetched.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"timm could not fetch pretrained weights for 'tv_swin_b'.*local file"):
        create_model("tv_swin_b", 5, checkpoint="timm", **TINY_SWIN)
    assert fetched == [tvm.Swin_B_Weights.IMAGENET1K_V1.url]


def test_swin_gets_a_bottleneck_of_dim_over_12_per_stage() -> None:
    """Per-stage widths 16/32 -> bottlenecks 1/2; full-size Swin-B (meta): 128/256/512/1024 -> 10/21/42/85."""
    model = create_model("tv_swin_b", 5, method=AdaptFormerConfig(bottleneck=1 / 12), **TINY_SWIN)
    assert [m.down_proj.out_features for m in adapter_modules(model)] == [1, 1, 2, 2]
    with torch.device("meta"):
        full = create_model("tv_swin_b", 100, method=AdaptFormerConfig(bottleneck=1 / 12))
    assert [m.down_proj.out_features for m in adapter_modules(full)] == [10] * 2 + [21] * 2 + [42] * 18 + [85] * 2
    listed = create_model("tv_swin_b", 5, method=AdaptFormerConfig(bottleneck=[3, 5]), **TINY_SWIN)  # one per stage
    assert [m.down_proj.out_features for m in adapter_modules(listed)] == [3, 3, 5, 5]


@pytest.mark.parametrize(("name", "kwargs", "classes", "bottleneck", "rows"), [
    # 2 blocks x (down 32x8 + 8, up 8x32 + 32); head (32 + 1) x 5; the torchvision ViT: 34,208 - 165 of its head
    ("tv_vit_b_16", TINY_VIT, 5, 8, {"adapters": 2 * (2 * 32 * 8 + 8 + 32), "head": 33 * 5, "backbone": 0}),
    # stage widths 16 and 32, bottleneck d // 12 = 1 and 2, two blocks each
    ("tv_swin_b", TINY_SWIN, 5, 1 / 12, {"adapters": 2 * (2 * 16 + 1 + 16) + 2 * (2 * 32 * 2 + 2 + 32),
                                          "head": 33 * 5, "backbone": 0}),
    # the paper's AdaptFormer-64 on CIFAR-100 (ViT-B/16): 12 x 99,136 + 76,900 = 1,266,532
    ("tv_vit_b_16", {}, 100, 64, {"adapters": 1_189_632, "head": 76_900, "backbone": 0}),
    # Table 7's Swin-B with dim // 12 per stage: 1,161,948 + 102,500
    ("tv_swin_b", {}, 100, 1 / 12, {"adapters": 1_161_948, "head": 102_500, "backbone": 0}),
])  # fmt: skip
def test_trainable_parameter_counts_are_exact(
    name: str, kwargs: dict, classes: int, bottleneck: float, rows: dict
) -> None:
    with torch.device("meta"):
        model = create_model(name, classes, method=AdaptFormerConfig(bottleneck=bottleneck), **kwargs)
    report = {group: trainable for group, trainable, _ in parameter_report(model).rows}
    assert report == rows
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(rows.values())


def test_backbone_sizes_match_the_paper_for_vit_b() -> None:
    with torch.device("meta"):
        model = create_model("tv_vit_b_16", 100)
    totals = {group: total for group, _, total in parameter_report(model).rows}
    assert totals["backbone"] == 85_798_656  # the paper's ViT-B/16 backbone (torchvision's 86,567,656 less its head)


def test_swin_v2_is_not_registered_and_its_blocks_are_refused() -> None:
    """torchvision's Swin V2 block subclasses V1's but is post-norm: no tv_swin_v2_* model, and attaching to a raw
    torchvision Swin V2 raises, listing the supported families."""
    with pytest.raises(ValueError, match="unknown model 'tv_swin_v2_t'"):
        build_backbone("tv_swin_v2_t", 5)
    v2 = tvm.SwinTransformer(**TV_SWIN, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    with pytest.raises(UnsupportedModelError, match=r"SwinTransformerBlockV2.*supported: vit .*tv_vit .*tv_swin "):
        attach(v2, AdaptFormerConfig())


@pytest.mark.parametrize(("flags", "trainable", "total"), [
    (["--model.backbone", "tv_vit_b_16"], "1,266,532", "87,065,188"),
    (["--model.backbone", "tv_swin_b", "--model.method.bottleneck", "1/12"], "1,264,448", "88,007,672"),
])  # fmt: skip
def test_cli_params_reports_the_full_size_counts(
    flags: list[str], trainable: str, total: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["params", *flags, "--num-classes", "100"]) == 0
    assert re.search(rf"^all +{trainable} +{total} ", capsys.readouterr().out, re.MULTILINE)


def test_cli_refuses_drop_path_on_the_torchvision_vit(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", "--model.backbone", "tv_vit_b_16", "--model.drop_path", "0.1"]) == 2
    assert (
        "error: drop_path_rate 0.1 (model.drop_path): torchvision's VisionTransformer has no" in capsys.readouterr().err
    )


def test_cli_trains_and_evaluates_a_tiny_torchvision_vit_from_a_torchvision_file_on_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``adaptformer train`` from a torchvision weight file (``--model.checkpoint_source torchvision``), then
    ``eval`` from the saved adapter, which rebuilds the backbone from the recorded file."""
    weights, out = tmp_path / "vit_tiny-0123abcd.pth", tmp_path / "run"
    torch.save(_torchvision("tv_vit_b_16").state_dict(), weights)
    args = ["train", "--model.backbone", "tv_vit_b_16", "--model.kwargs", json.dumps(TINY_VIT),
            "--model.checkpoint", str(weights), "--model.checkpoint_source", "torchvision",
            "--model.method.bottleneck", "8", "--data.dataset", "digits", "--optim.epochs", "1",
            "--optim.batch_size", "32", "--optim.effective_batch", "32", "--data.num_workers", "0",
            "--optim.precision", "fp32", "--run.output_dir", str(out), "--run.seed", "1"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["backbone"] == "tv_vit_b_16" and config["method"] == "adaptformer"
    source = config["source"]
    assert (source["checkpoint"], source["checkpoint_source"]) == (str(weights), "torchvision")
    assert source["kwargs"] == {**TINY_VIT, "drop_path_rate": 0.0}  # the engine always passes model.drop_path
    tested = json.loads((out / "test.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter"), "--data.dataset", "digits", "--split", "test"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == tested["n"] > 0 and printed["acc1"] == tested["acc1"]
    weights.unlink()  # the adapter needs its backbone's weights: eval names the missing file
    assert main(["eval", "--adapter", str(out / "adapter"), "--data.dataset", "digits", "--split", "test"]) == 2
    assert str(weights) in capsys.readouterr().err
