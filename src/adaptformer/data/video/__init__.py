"""The video data pipeline of AdaptFormer's SSv2 / HMDB51 experiments, in three pure stages (pytorchvideo style).

1. :mod:`.sampling`: which frame indices make a clip (TSN segments or dense stride; test view grid).
2. :mod:`.decode`: read exactly those frames with PyAV (uint8 ``(T, H, W, C)``), robust to wrong frame counts.
3. :mod:`.transforms`: multi-scale crop / short-side resize + crops, normalisation, ``(C, T, H, W)`` float output.

:mod:`.datasets` glues them (list files, class folders, multi-view test, view aggregation), :mod:`.prepare` writes
list files from the official SSv2 and HMDB51 releases, :mod:`.synthetic` makes motion-labelled clips offline, and
:mod:`.kinds` names the dataset kinds the engine and command line select (``VIDEO_DATASETS``). Stages 1 and 3 draw
their random choices with :func:`.draws.randint`.
"""

from adaptformer.data.video.datasets import (
    VIDEO_EXTENSIONS,
    VideoClipDataset,
    VideoEntry,
    VideoPredictions,
    aggregate_views,
    find_class_folders,
    read_video_list,
    scan_videos,
    write_video_list,
)
from adaptformer.data.video.decode import (
    DecodedClip,
    VideoDecodeError,
    VideoInfo,
    count_frames_by_decoding,
    decode_clip,
    probe_video,
)
from adaptformer.data.video.kinds import (
    VIDEO_DATASETS,
    SyntheticVideos,
    VideoDatasetKind,
    VideoFiles,
    VideoSource,
    load_video_split,
)
from adaptformer.data.video.prepare import PreparedLists, prepare_hmdb51, prepare_ssv2
from adaptformer.data.video.sampling import (
    PAPER_TEST_VIEWS,
    STRATEGIES,
    SamplerConfig,
    TestViews,
    View,
    dense_indices,
    sample_indices,
    segment_indices,
)
from adaptformer.data.video.synthetic import MOTIONS, SyntheticMotionDataset
from adaptformer.data.video.transforms import (
    VideoTransform,
    VideoTransformConfig,
    multi_scale_crop_params,
    spatial_crop_params,
)

__all__ = [
    "MOTIONS",
    "PAPER_TEST_VIEWS",
    "STRATEGIES",
    "VIDEO_DATASETS",
    "VIDEO_EXTENSIONS",
    "DecodedClip",
    "PreparedLists",
    "SamplerConfig",
    "SyntheticMotionDataset",
    "SyntheticVideos",
    "TestViews",
    "VideoClipDataset",
    "VideoDatasetKind",
    "VideoDecodeError",
    "VideoEntry",
    "VideoFiles",
    "VideoInfo",
    "VideoPredictions",
    "VideoSource",
    "VideoTransform",
    "VideoTransformConfig",
    "View",
    "aggregate_views",
    "count_frames_by_decoding",
    "decode_clip",
    "dense_indices",
    "find_class_folders",
    "load_video_split",
    "multi_scale_crop_params",
    "prepare_hmdb51",
    "prepare_ssv2",
    "probe_video",
    "read_video_list",
    "sample_indices",
    "scan_videos",
    "segment_indices",
    "spatial_crop_params",
    "write_video_list",
]
