"""adaptformer: AdaptFormer (Chen et al., NeurIPS 2022) for timm Vision Transformers.

model = adaptformer.create_model("vit_base_patch16_224", num_classes=100, checkpoint="mae_pretrain.pth",
                                 checkpoint_source="mae")
print(adaptformer.parameter_report(model))   # 1,266,532 trainable
adaptformer.save_adapter(model, "out/adapter")
"""

from .adapter import AdaptFormerConfig, AdaptMLP
from .backbones import FAMILIES, adapt, adapter_modules
from .errors import CheckpointError, UnsupportedModelError
from .factory import build_backbone, create_model
from .methods import METHODS, ModelSpec, ParameterReport, apply_method, count_trainable, freeze, parameter_report
from .models import VideoVisionTransformer  # registers the video ViTs with timm
from .preprocessing import Preprocessing
from .pretrained import CONVERTERS, load_pretrained, read_state_dict, register_converter
from .prompts import VPTConfig
from .saving import AdapterFileError, load_adapter, read_adapter_config, save_adapter
from .speed import SpeedConfig, apply_speed

__version__ = "0.1.0"

__all__ = [
    "CONVERTERS",
    "FAMILIES",
    "METHODS",
    "AdaptFormerConfig",
    "AdaptMLP",
    "AdapterFileError",
    "CheckpointError",
    "ModelSpec",
    "ParameterReport",
    "Preprocessing",
    "SpeedConfig",
    "UnsupportedModelError",
    "VPTConfig",
    "VideoVisionTransformer",
    "adapt",
    "adapter_modules",
    "apply_method",
    "apply_speed",
    "build_backbone",
    "count_trainable",
    "create_model",
    "freeze",
    "load_adapter",
    "load_pretrained",
    "parameter_report",
    "read_adapter_config",
    "read_state_dict",
    "register_converter",
    "save_adapter",
]
