"""Benchmark data: video reading and frame sampling, benchmark loaders (one Sample type)."""

from .benchmarks import (
    LoadedBenchmark,
    Sample,
    Skipped,
    list_datasets,
    load_dataset,
    load_mvbench,
    load_tomato,
    load_tvbench,
)
from .errors import DataError
from .video import VideoClip, VideoInfo, probe_video, read_sample_video, read_video

__all__ = [
    "DataError",
    "LoadedBenchmark",
    "Sample",
    "Skipped",
    "VideoClip",
    "VideoInfo",
    "list_datasets",
    "load_dataset",
    "load_mvbench",
    "load_tomato",
    "load_tvbench",
    "probe_video",
    "read_sample_video",
    "read_video",
]
