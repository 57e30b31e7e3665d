"""Backbones defined by adaptformer and registered with timm (``timm.create_model`` finds them by name).

- ``video_vit_{small,base,large}_patch16_224``: the VideoMAE video ViT (:mod:`.video_vit`).
- ``tv_vit_{b_16,b_32,l_16,l_32,h_14}``, ``tv_swin_{t,s,b}``: torchvision's image ViT and Swin (V1) with timm's
  interface (:mod:`.torchvision_image`).
- ``tv_swin3d_{t,s,b}``: Video Swin, torchvision's Swin3D with timm's interface (:mod:`.video_swin`).
- ``vit_shapes_patch8_32``: a tiny image ViT pre-trained here on procedural shapes (:mod:`.shapes_vit`).
"""

from .shapes_vit import SHAPES_VIT_ARGS, SHAPES_VIT_FILE, vit_shapes_patch8_32
from .torchvision_image import TorchvisionSwin, TorchvisionViT
from .video_swin import VideoSwinTransformer
from .video_vit import QVBiasAttention, TubeletEmbed, VideoVisionTransformer, sinusoid_position_table

__all__ = [
    "SHAPES_VIT_ARGS",
    "SHAPES_VIT_FILE",
    "QVBiasAttention",
    "TorchvisionSwin",
    "TorchvisionViT",
    "TubeletEmbed",
    "VideoSwinTransformer",
    "VideoVisionTransformer",
    "sinusoid_position_table",
    "vit_shapes_patch8_32",
]
