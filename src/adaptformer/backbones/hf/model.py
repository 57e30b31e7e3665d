"""A Hugging Face ``transformers`` vision model with timm's model interface: :class:`HFBackbone`.

The transformers model is held unchanged under the attribute its own classification model gives it
(``ViTForImageClassification.vit``, ``Dinov2ForImageClassification.dinov2``, ``CLIPForImageClassification``'s
``vision_model``, ...) beside a ``classifier``, so every parameter keeps transformers' name (``vit.layers.0.mlp.fc1
.weight``) and the layout is that of transformers' classification models. ``forward_features`` calls the model's own
forward (its embeddings, masks and final norm, as transformers computes them) and returns its ``last_hidden_state``;
``forward_head`` pools as the architecture's transformers classification model does (``*ForImageClassification``,
``VideoMAEForVideoClassification``; :data:`ARCHITECTURES`) and applies the task head, so that with the same head
weights the logits are transformers' own. What the library reads from a timm model is here too:
``get_classifier`` / ``reset_classifier``, ``num_classes`` / ``num_features``, grad checkpointing, and a
``pretrained_cfg`` (input size, normalisation, frames).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import (
    BeitModel,
    CLIPVisionModel,
    DeiTModel,
    Dinov2Model,
    Dinov2WithRegistersModel,
    PreTrainedModel,
    SiglipVisionModel,
    SwinModel,
    VideoMAEModel,
    ViTModel,
)

from ..torchvision_common import linear_head

__all__ = ["ARCHITECTURES", "HFArchitecture", "HFBackbone"]

Pool = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (transformers model, last_hidden_state) -> (B, F)


def _class_token(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return tokens[:, 0]  # (B, N, D) -> (B, D)


def _class_and_patch_mean(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """DINOv2's linear-probe feature: the class token beside the mean of the patch tokens (registers left out)."""
    first_patch = 1 + getattr(model.config, "num_register_tokens", 0)
    return torch.cat([tokens[:, 0], tokens[:, first_patch:].mean(dim=1)], dim=1)  # (B, 2D)


def _patch_mean(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return tokens[:, 1:].mean(dim=1)  # CLIP's classifier: the patch tokens' mean (no class token, no final norm)


def _token_mean(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return tokens.mean(dim=1)  # SigLIP's classifier: the mean of all tokens (its attention-pooling head unused)


def _model_pooler(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """BEiT's pooler (patch-token mean + LayerNorm, or the class token)."""
    return model.pooler(tokens)


def _swin_pool(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model.pooler(tokens.transpose(1, 2)).flatten(1)  # (B, L, C) -> (B, C, 1) -> (B, C)


def _video_pool(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """VideoMAE's classifier: the mean over all tokens (fc_norm, a task module, follows), or the first token."""
    return tokens.mean(dim=1) if model.config.use_mean_pooling else tokens[:, 0]


@dataclass(frozen=True)
class HFArchitecture:
    """One supported transformers vision architecture.

    Args:
        model_class: the transformers base model class that is built.
        attribute: the name the model has inside :class:`HFBackbone` (that of transformers' classification model).
        pool: the pooled feature of the classification head, as transformers' classifier of the architecture pools.
        width: the pooled feature's width from the config (hidden size, twice it for DINOv2, Swin's last stage).
        model_kwargs: constructor arguments of ``model_class`` (no pooler where the classifier does not use it).
        video: the model takes clips (B, T, C, H, W) rather than images.
        any_size: the model takes any multiple of its patch size (DINOv2 interpolates its position table, Swin pads
            to whole windows); the others take the config's ``image_size`` only (transformers refuses other sizes
            unless asked to interpolate, which tracing for export would not reproduce exactly).
    """

    model_class: type[PreTrainedModel]
    attribute: str
    pool: Pool
    width: Callable[[Any], int]
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    video: bool = False
    any_size: bool = False


def _hidden(config: Any) -> int:
    return int(config.hidden_size)


# config.json's model_type -> how it is built and pooled
ARCHITECTURES: dict[str, HFArchitecture] = {
    "vit": HFArchitecture(ViTModel, "vit", _class_token, _hidden, (("add_pooling_layer", False),)),
    "deit": HFArchitecture(DeiTModel, "deit", _class_token, _hidden, (("add_pooling_layer", False),)),
    "dinov2": HFArchitecture(Dinov2Model, "dinov2", _class_and_patch_mean, lambda c: 2 * c.hidden_size, any_size=True),
    "dinov2_with_registers": HFArchitecture(
        Dinov2WithRegistersModel,
        "dinov2_with_registers",
        _class_and_patch_mean,
        lambda c: 2 * c.hidden_size,
        any_size=True,
    ),
    "clip_vision_model": HFArchitecture(CLIPVisionModel, "vision_model", _patch_mean, _hidden),
    "clip": HFArchitecture(CLIPVisionModel, "vision_model", _patch_mean, _hidden),  # two towers: the vision one
    "siglip_vision_model": HFArchitecture(SiglipVisionModel, "vision_model", _token_mean, _hidden),
    "siglip": HFArchitecture(SiglipVisionModel, "vision_model", _token_mean, _hidden),
    "beit": HFArchitecture(BeitModel, "beit", _model_pooler, _hidden),
    "videomae": HFArchitecture(VideoMAEModel, "videomae", _video_pool, _hidden, video=True),
    "swin": HFArchitecture(
        SwinModel, "swin", _swin_pool, lambda c: int(c.embed_dim * 2 ** (len(c.depths) - 1)), any_size=True
    ),
}


class HFBackbone(nn.Module):
    """A transformers vision model (under ``architecture.attribute``) and a linear ``classifier``, with timm's
    interface; see the module docstring."""

    def __init__(
        self, model: PreTrainedModel, architecture: HFArchitecture, num_classes: int, pretrained_cfg: dict[str, Any]
    ) -> None:
        super().__init__()
        self.attribute = architecture.attribute
        self.add_module(architecture.attribute, model)
        self.architecture = architecture
        self.num_features = self.head_hidden_size = architecture.width(model.config)
        # VideoMAE pooled by mean: its classifier normalises the mean in a LayerNorm of its own, new for the task
        mean_pooled = architecture.video and model.config.use_mean_pooling
        self.fc_norm = nn.LayerNorm(self.num_features) if mean_pooled else None
        self.task_modules = ("fc_norm",) if mean_pooled else ()
        self.classifier = linear_head(self.num_features, num_classes, torch.device("cpu"))
        self.num_classes = num_classes
        self.pretrained_cfg = self.default_cfg = pretrained_cfg

    @property
    def model(self) -> nn.Module:
        """The transformers model (the one a multi-task router stands in front of: its config, its pooler)."""
        module = self.get_submodule(self.attribute)
        return getattr(module, "frozen", module)  # a multi-task router (inference.routing) holds it as ``frozen``

    @property
    def fixed_image_size(self) -> tuple[int, int] | None:
        """The only (height, width) the model takes, or None when it takes any multiple of its patch size
        (:attr:`HFArchitecture.any_size`)."""
        if self.architecture.any_size:
            return None
        size = self.model.config.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            raise ValueError(f"global_pool: a transformers backbone pools as its classifier does, got {global_pool!r}")
        self.num_classes = num_classes
        self.classifier = linear_head(self.num_features, num_classes, next(self.parameters()).device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, or (B, C, T, H, W) clips for a video model -> (B, N, D) tokens (transformers'
        ``last_hidden_state``)."""
        if self.architecture.video:
            x = x.transpose(1, 2)  # (B, C, T, H, W) -> (B, T, C, H, W), transformers' video layout
        encoder = self.get_submodule(self.attribute)  # the model, or a multi-task router in its place
        return encoder(x).last_hidden_state  # pixel_values, positionally: a router takes no keywords

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, D) tokens -> the pooled feature (B, F), or (B, num_classes) logits."""
        x = self.architecture.pool(self.model, x)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
