"""Pre-trained checkpoints: reading a weights file, one converter per source (state_dict in, state_dict out, chosen
explicitly by name), and loading that checks the exact missing and unexpected keys (:mod:`.load`). The VideoMAE and
Video Swin converters live in their own modules."""

from .load import CONVERTERS, LoadReport, load_pretrained, read_state_dict, register_converter

__all__ = ["CONVERTERS", "LoadReport", "load_pretrained", "read_state_dict", "register_converter"]
