"""Benchmark data: the dataset registry, benchmark loaders (one Sample type), video reading.

Names resolve on first use, so the command line can list the datasets without importing numpy
or a video decoder.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("LoadedBenchmark", "Sample", "Skipped", "load_mvbench", "load_tomato",
                     "load_tvbench"), "benchmarks"),
    **dict.fromkeys(("DATASETS", "list_datasets", "load_dataset"), "datasets"),
    "DataError": "errors",
    **dict.fromkeys(("VideoClip", "VideoInfo", "probe_video", "read_sample_video",
                     "read_video"), "video"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mapflow_tl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
