"""transformers backbones (``hf:<folder>``) against transformers itself, on tiny random-weight models of every
supported architecture written to real folders with ``save_pretrained``.

- At init every method that fits leaves the function bit for bit transformers' (``torch.equal``): the logits of the
  adapted model with a linear head equal those of transformers' own classification model of the architecture
  (``ViTForImageClassification``, ..., ``VideoMAEForVideoClassification``) given the same head weights. AdaptFormer's
  and LoRA's updates are exactly zero at init; Adapter+ (Houlsby init, not zero) is checked with its up-projection
  zeroed. The adapted layers recompute the layer's own operations in the same order, so no tolerance is needed.
- The same random weights in timm's layout (checkpoint source ``hf``) and transformers' give the same features for
  ViT and DINOv2 (with and without registers), here also bit for bit: the fused qkv matmul gives the same rows.
- VPT prompts every architecture whose attention takes extra tokens, and refuses Swin (windows) and a BEiT with
  relative position bias by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.hf_folders import TINY, VIDEO, inputs, write_hf_model
from transformers import (
    BeitForImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    DeiTForImageClassification,
    Dinov2ForImageClassification,
    Dinov2WithRegistersForImageClassification,
    PreTrainedModel,
    SiglipConfig,
    SiglipForImageClassification,
    SwinForImageClassification,
    VideoMAEForVideoClassification,
    ViTForImageClassification,
)

from adaptformer import UnsupportedModelError, build_backbone, create_model
from adaptformer.backbones.families import find_family
from adaptformer.methods.adapter_plus import adapter_plus_modules
from adaptformer.methods.vpt import prompt_modules

CLASSIFIERS: dict[str, type[PreTrainedModel]] = {
    "vit": ViTForImageClassification,
    "deit": DeiTForImageClassification,
    "dinov2": Dinov2ForImageClassification,
    "dinov2-swiglu": Dinov2ForImageClassification,
    "dinov2-registers": Dinov2WithRegistersForImageClassification,
    "clip": CLIPForImageClassification,
    "siglip": SiglipForImageClassification,
    "beit": BeitForImageClassification,
    "beit-abs": BeitForImageClassification,
    "videomae": VideoMAEForVideoClassification,
    "swin": SwinForImageClassification,
}
FAMILY = {"dinov2-swiglu": "hf_dinov2", "dinov2-registers": "hf_dinov2_registers", "beit-abs": "hf_beit"}
IDENTITY_METHODS = ("linear", "full", "adaptformer", "lora", "adapter_plus")
NO_PROMPTS = {"swin": "its attention runs inside windows", "beit": "its relative position bias is sized for"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PreTrainedModel]]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: (root / kind, write_hf_model(kind, root / kind)) for kind in TINY}


def _transformers_classifier(kind: str, folder: Path, reference: PreTrainedModel) -> PreTrainedModel:
    """transformers' classification model of ``kind`` with the folder's weights and a random 5-class head."""
    cls = CLASSIFIERS[kind]
    if kind in ("clip", "siglip"):  # their classifiers take the two-tower config: the vision tower is loaded here
        two_towers = CLIPConfig if kind == "clip" else SiglipConfig
        model = cls(two_towers(vision_config=reference.config.to_dict(), num_labels=5))
        model.vision_model.load_state_dict(reference.state_dict())
        return model.eval()
    model, info = cls.from_pretrained(folder, num_labels=5, output_loading_info=True)
    assert {k.split(".")[0] for k in info["missing_keys"]} <= {"classifier", "fc_norm"}, info["missing_keys"]
    return model.eval()


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method", IDENTITY_METHODS)
@pytest.mark.parametrize("kind", list(TINY))
def test_adapted_model_at_init_is_transformers_classifier_bit_for_bit(
    folders: dict[str, tuple[Path, PreTrainedModel]], kind: str, method: str
) -> None:
    folder, reference = folders[kind]
    theirs = _transformers_classifier(kind, folder, reference)
    ours = create_model(f"hf:{folder}", 5, method=method, head="linear").eval()
    assert find_family(ours).name == FAMILY.get(kind, f"hf_{kind.split('-')[0]}")
    ours.classifier.load_state_dict(theirs.classifier.state_dict())
    if ours.fc_norm is not None:  # VideoMAE's mean pooling normalises in the classifier's own LayerNorm
        ours.fc_norm.load_state_dict(theirs.fc_norm.state_dict())
    for adapter in adapter_plus_modules(ours):  # Houlsby init is not zero: a zero up-projection makes it exact
        torch.nn.init.zeros_(adapter.up_proj.weight)
    x = inputs(kind)
    with torch.no_grad():
        want = theirs(pixel_values=x.transpose(1, 2) if kind in VIDEO else x).logits
    got = _logits(ours, x)
    assert torch.equal(got, want), (got - want).abs().max()
    ours.train()  # dropout 0 and no drop path in these configs: training mode computes the same function
    assert torch.equal(_logits(ours, x), want)


@pytest.mark.parametrize("kind", list(TINY))
def test_parameter_names_stay_transformers_and_adapters_have_their_own_prefix(
    folders: dict[str, tuple[Path, PreTrainedModel]], kind: str
) -> None:
    folder, reference = folders[kind]
    model = create_model(f"hf:{folder}", 5, method="adaptformer")
    attribute = model.attribute
    own = [k for k in model.state_dict() if ".adaptmlp." not in k and k.startswith(f"{attribute}.")]
    backbone = {k[len(attribute) + 1 :] for k in own}
    pooler = {"pooler.dense.weight", "pooler.dense.bias"}  # ViTModel's tanh pooler, which its classifier does not use
    assert backbone == set(reference.state_dict()) - pooler  # transformers' own names, every one of them
    adapters = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("classifier", "fc_"))]
    assert adapters and all(".adaptmlp." in n for n in adapters)


@pytest.mark.parametrize("kind", [k for k in TINY if k not in NO_PROMPTS])
def test_vpt_prompts_architectures_that_take_extra_tokens(
    folders: dict[str, tuple[Path, PreTrainedModel]], kind: str
) -> None:
    folder, _ = folders[kind]
    model = create_model(f"hf:{folder}", 5, method="vpt", head="linear").eval()
    x = inputs(kind)
    tokens = model.forward_features(x)
    assert tokens.shape == create_model(f"hf:{folder}", 5, method="linear").forward_features(x).shape  # stripped
    prompts = prompt_modules(model)
    assert len(prompts) == 2 and all(p.tokens.requires_grad for p in prompts)
    model.train()
    model(x).sum().backward()
    assert all(p.tokens.grad is not None and p.tokens.grad.abs().sum() > 0 for p in prompts)


@pytest.mark.parametrize(("kind", "reason"), list(NO_PROMPTS.items()))
def test_vpt_refuses_layers_whose_attention_cannot_take_prompts(
    folders: dict[str, tuple[Path, PreTrainedModel]], kind: str, reason: str
) -> None:
    folder, _ = folders[kind]
    with pytest.raises(UnsupportedModelError, match=f"VPT cannot prompt transformers.models.*: {reason}"):
        create_model(f"hf:{folder}", 5, method="vpt")


TIMM_TWINS: dict[str, tuple[str, dict[str, Any]]] = {  # transformers kind -> the timm model of the same shapes
    "vit": ("vit_tiny_patch16_224", {}),
    "dinov2": ("vit_small_patch14_dinov2", {"init_values": 1.0}),
    "dinov2-registers": ("vit_small_patch14_reg4_dinov2", {"init_values": 1.0, "reg_tokens": 2}),
}


@pytest.mark.parametrize("kind", list(TIMM_TWINS))
def test_timm_and_transformers_layouts_of_the_same_weights_give_the_same_features(
    folders: dict[str, tuple[Path, PreTrainedModel]], tmp_path: Path, kind: str
) -> None:
    folder, reference = folders[kind]
    if kind == "vit":  # timm's ViT normalises with eps 1e-6, transformers' ViT config defaults to 1e-12
        folder = tmp_path / "vit"
        reference.config.layer_norm_eps = 1e-6
        reference.save_pretrained(folder)
        reference = type(reference).from_pretrained(folder).eval()
    name, extra = TIMM_TWINS[kind]
    shape = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    timm_model = build_backbone(name, 0, folder, "hf", **shape, **extra).eval()
    x = inputs(kind)
    with torch.no_grad():
        want = reference(pixel_values=x).last_hidden_state
        got = timm_model.forward_features(x)
    assert torch.equal(got, want), (got - want).abs().max()
