"""Benchmark data: the dataset registry, benchmark loaders (one Sample type), video reading.

Names resolve on first use, so the command line can list the datasets without importing numpy
or a video decoder.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("LoadedBenchmark", "Sample", "Skipped", "load_mvbench", "load_tomato",
                     "load_tvbench", "load_videomme", "load_longvideobench",
                     "load_tvbench_open_ended", "load_vcgbench"), "loaders"),
    **dict.fromkeys(("DATASETS", "list_datasets", "load_dataset"), "datasets"),
    "DataError": "errors",
    **dict.fromkeys(("VideoClip", "VideoInfo", "probe_video", "read_sample_video",
                     "read_video"), "video"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
