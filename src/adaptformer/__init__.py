"""adaptformer: AdaptFormer (Chen et al., NeurIPS 2022) and its baselines for timm Vision Transformers.

    import adaptformer as af
    model = af.create_model("vit_base_patch16_224", num_classes=100, method=af.AdaptFormerConfig(bottleneck=64),
                            checkpoint="mae_pretrain.pth", checkpoint_source="mae")
    print(af.parameter_report(model))   # 1,266,532 trainable
    af.save_adapter(model, "out/adapter")

The names below are the public API; everything else is reachable through its module.
"""

from .backbones import VideoVisionTransformer
from .backbones.checkpoints.load import load_pretrained, register_converter
from .errors import CheckpointError, OutputError, UnsupportedModelError
from .factory import build_backbone, create_model
from .inference.multitask import MultiTaskModel
from .methods import (
    AdapterPlusConfig,
    AdaptFormerConfig,
    FullConfig,
    LinearConfig,
    LoRAConfig,
    Method,
    MethodConfig,
    VPTConfig,
    get_method,
    merge_lora,
    method_names,
    register_method,
    unmerge_lora,
)
from .model import ModelSpec, ParameterReport, adapt, apply_method, count_trainable, parameter_report
from .preprocessing import Preprocessing
from .saving import AdapterFileError, load_adapter, read_adapter_config, save_adapter
from .segmentation import SegmentationConfig, SegmentationModel, create_segmentation_model, load_segmentation_model
from .speed import SpeedConfig, apply_speed
from .version import __version__ as __version__

__all__ = [
    "AdaptFormerConfig",
    "AdapterFileError",
    "AdapterPlusConfig",
    "CheckpointError",
    "FullConfig",
    "LinearConfig",
    "LoRAConfig",
    "Method",
    "MethodConfig",
    "ModelSpec",
    "MultiTaskModel",
    "OutputError",
    "ParameterReport",
    "Preprocessing",
    "SegmentationConfig",
    "SegmentationModel",
    "SpeedConfig",
    "UnsupportedModelError",
    "VPTConfig",
    "VideoVisionTransformer",
    "adapt",
    "apply_method",
    "apply_speed",
    "build_backbone",
    "count_trainable",
    "create_model",
    "create_segmentation_model",
    "get_method",
    "load_adapter",
    "load_pretrained",
    "load_segmentation_model",
    "merge_lora",
    "method_names",
    "parameter_report",
    "read_adapter_config",
    "register_converter",
    "register_method",
    "save_adapter",
    "unmerge_lora",
]
