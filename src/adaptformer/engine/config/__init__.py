"""A run's configuration: the nested dataclass sections (:mod:`.sections`), configuration data as YAML layers
(:mod:`.layers`), the command line and files through jsonargparse (:mod:`.parser`) and the upgrade of adaptformer 0.1's
flat files and flags (:mod:`.v01`)."""

from .sections import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, VideoConfig

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "VideoConfig"]
