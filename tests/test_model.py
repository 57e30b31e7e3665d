"""``adapt()`` on modules the library did not build: plain torchvision models (their head found by torchvision's
conventions), and the errors for a module whose head or blocks cannot be found, which name its type and what can be
passed, and leave it as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.vision_transformer import EncoderBlock

from adaptformer import AdaptFormerConfig, UnsupportedModelError, adapt, parameter_report
from adaptformer.methods import adapter_modules
from adaptformer.model import trainable_groups

TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
TINY_SWIN = {"patch_size": [4, 4], "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": [4, 4]}
# name -> (plain torchvision model, its classifier's path, its blocks)
TORCHVISION: dict[str, tuple[Any, str, int]] = {
    "vit": (lambda: tvm.VisionTransformer(**TINY_VIT, num_classes=7), "heads.head", 2),
    "swin": (lambda: tvm.SwinTransformer(**TINY_SWIN, stochastic_depth_prob=0.0, num_classes=7), "head", 4),
}


def _without_head(model: nn.Module, path: str) -> nn.Module:
    """A copy of ``model`` whose classifier is an Identity: it returns the pooled feature the head reads."""
    copied = copy.deepcopy(model)
    parent, _, attr = path.rpartition(".")
    setattr(copied.get_submodule(parent) if parent else copied, attr, nn.Identity())
    return copied


@pytest.mark.parametrize("name", TORCHVISION)
def test_adapt_takes_a_plain_torchvision_model(name: str, images: torch.Tensor) -> None:
    build, path, blocks = TORCHVISION[name]
    model = build().eval()
    with torch.no_grad():
        before = _without_head(model, path)(images)
    assert adapt(model, AdaptFormerConfig(bottleneck=4), num_classes=5) is model
    head = model.get_submodule(path)
    assert isinstance(head, nn.Sequential) and isinstance(head[0], nn.BatchNorm1d) and head[1].out_features == 5
    assert len(adapter_modules(model)) == blocks
    assert [n for n, _ in trainable_groups(model)["head"]] == [path]
    adapters = {id(p) for m in adapter_modules(model) for p in m.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == adapters | {id(p) for p in head.parameters()}
    report = parameter_report(model).to_dict()["groups"]
    assert report["backbone"]["trainable"] == 0 and report["head"]["trainable"] == 32 * 5 + 5
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, 5)
        # AdaptFormer's up-projection starts at zero: the adapted backbone computes torchvision's feature exactly
        assert torch.equal(_without_head(model, path)(images), before)


def test_adapt_defaults_to_the_class_count_of_the_torchvision_head() -> None:
    model = adapt(tvm.SwinTransformer(**TINY_SWIN, num_classes=7), "linear", head="linear")
    assert model.head.out_features == 7 and model.adaptformer_spec.num_classes == 7
    assert model.adaptformer_spec.backbone == "SwinTransformer"  # no timm architecture: the class name


def test_a_method_config_the_model_cannot_take_leaves_the_model_as_passed() -> None:
    model = tvm.VisionTransformer(**TINY_VIT, num_classes=7)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="layers"):
        adapt(model, AdaptFormerConfig(layers=(5,)), num_classes=3)  # 2 blocks: index 5 does not exist
    assert model.heads.head.out_features == 7 and model.num_classes == 7
    assert model.state_dict().keys() == before.keys() and not hasattr(model, "adaptformer_spec")


class HeadlessViT(nn.Module):
    """torchvision ViT blocks (a known family) and nothing that tells where a classifier is."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(EncoderBlock(2, 32, 64, 0.0, 0.0) for _ in range(2)))
        self.classify = nn.Linear(32, 3)


class SmallConvNet(nn.Module):
    """A head where torchvision keeps a CNN's (``fc``), but no transformer block of any known family."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (HeadlessViT, r"cannot find the classifier of HeadlessViT: it has no get_classifier\(\) \(timm's "
                            r"API\) and none of torchvision's attributes \['heads', 'head', 'fc'\]; pass a timm model, "
                            r"a torchvision ViT or Swin"),
        (lambda: nn.Sequential(nn.Linear(4, 4)), r"cannot find the classifier of Sequential: .*get_classifier\(\)"),
        (SmallConvNet, r"cannot attach adapters to SmallConvNet with blocks: no transformer blocks "
                                r"in SmallConvNet; supported: vit .*tv_vit .*tv_swin"),
    ],
)  # fmt: skip
def test_a_module_without_a_head_or_known_blocks_is_refused_naming_its_type(build: Any, message: str) -> None:
    model = build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    with pytest.raises(UnsupportedModelError, match=message):
        adapt(model, AdaptFormerConfig(bottleneck=4), num_classes=3)
    assert dict(model.named_modules()) == modules  # left as it was passed in: its own head, no adapters
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(v, after[k]) for k, v in state.items())
    assert all(p.requires_grad for p in model.parameters())
