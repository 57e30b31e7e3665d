"""Backbones defined by adaptformer and registered with timm (``timm.create_model`` finds them by name).

- ``video_vit_{small,base,large}_patch16_224``: the VideoMAE video ViT (:mod:`.video_vit`).
"""

from .video_vit import QVBiasAttention, TubeletEmbed, VideoVisionTransformer, sinusoid_position_table

__all__ = ["QVBiasAttention", "TubeletEmbed", "VideoVisionTransformer", "sinusoid_position_table"]
