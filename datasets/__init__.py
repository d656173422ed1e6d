"""LISA's data: the four training families read from their real on-disk layouts, their mixture, the
validation splits, the batch collator and a toy corpus in the same layouts (the original's `utils/*_dataset.py`);
videos (`video.py`) and the video segmentation sets Ref-YouTube-VOS, MeViS, ReVOS and ReasonVOS (`vos.py`).

This folder shadows the Hugging Face `datasets` package when scripts run from the repository root; nothing
here uses that package.
"""

from datasets.collate import LisaCollator
from datasets.common import SampleError, Sample, ValSample, decode_segmentation
from datasets.hybrid import HybridDataset, build_val_dataset
from datasets.reason_seg import ReasonSegDataset, ReasonSegValDataset, get_mask_from_json
from datasets.refer_seg import ReferSegDataset, ReferSegValDataset
from datasets.sem_seg import SemSegDataset
from utils.video import VideoError, VideoReader
from datasets.vos import VideoExpression, VideoSegDataset, VideoValDataset, load_video_expressions
from datasets.vqa import VQADataset

__all__ = [
    "HybridDataset",
    "LisaCollator",
    "ReasonSegDataset",
    "ReasonSegValDataset",
    "ReferSegDataset",
    "ReferSegValDataset",
    "Sample",
    "SampleError",
    "SemSegDataset",
    "VQADataset",
    "ValSample",
    "VideoError",
    "VideoExpression",
    "VideoReader",
    "VideoSegDataset",
    "VideoValDataset",
    "build_val_dataset",
    "decode_segmentation",
    "get_mask_from_json",
    "load_video_expressions",
]
