"""The dataset registry: every name that ``load_dataset`` and ``--dataset`` accept.

A benchmark is read from a local folder laid out as it is published (``data_root``); a built-in
dataset (``synthtv``) is generated deterministically and needs no folder. Registering a new
benchmark is one entry here (see docs/adding_a_benchmark.md). The loaders are imported only when
a dataset is loaded, so listing the names costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError

__all__ = ["DatasetSpec", "DATASETS", "list_datasets", "load_dataset", "resolve_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: its loader as ``"module:function"`` (called as
    ``loader(data_root, tasks, limit, strict=..., check_videos=...)``, or for a built-in dataset
    ``loader(tasks, limit, seed=...)``), and a line for listings."""

    loader: str
    description: str
    builtin: bool = False
    #: the benchmark's official frame sampler (:data:`~mapflow_tl.data.video.FRAME_SAMPLERS`),
    #: given to every sample; None leaves it to the model family (the paper's own runs)
    frame_sampler: str | None = None
    #: whether the loader can read the benchmark's subtitles (``subtitles=True``)
    subtitles: bool = False

    def load(self):
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)


DATASETS: dict[str, DatasetSpec] = {
    "synthtv": DatasetSpec("mapflow_tl.synthtv.dataset:load_synthtv",
                           "SynthTV, generated (no download): the built-in evaluation set",
                           builtin=True),
    "tvbench": DatasetSpec("mapflow_tl.data.loaders:load_tvbench",
                           "TVBench (FunAILab/TVBench); also reads a written SynthTV set"),
    "mvbench": DatasetSpec("mapflow_tl.data.loaders:load_mvbench",
                           "MVBench (OpenGVLab/MVBench)"),
    "tomato": DatasetSpec("mapflow_tl.data.loaders:load_tomato", "TOMATO (yale-nlp/TOMATO)"),
    # Video-MME publishes no inference code; lmms-eval's task picks the subtitle lines of
    # np.linspace(0, n - 1, k, dtype=int) frames, the frames its models sample
    "videomme": DatasetSpec("mapflow_tl.data.loaders:load_videomme",
                            "Video-MME (lmms-lab/Video-MME), long videos, subtitles optional",
                            frame_sampler="linspace", subtitles=True),
    "longvideobench": DatasetSpec("mapflow_tl.data.loaders:load_longvideobench",
                                  "LongVideoBench (longvideobench/LongVideoBench), validation "
                                  "set, subtitles optional",
                                  frame_sampler="longvideobench", subtitles=True),
    "tvbench-oe": DatasetSpec("mapflow_tl.data.loaders:load_tvbench_open_ended",
                              "TVBench asked open-endedly, with the official per-task answer "
                              "prompts"),
    "vcgbench": DatasetSpec("mapflow_tl.data.loaders:load_vcgbench",
                            "VCGBench (Video-ChatGPT's benchmark), open-ended",
                            frame_sampler="video-chatgpt"),
}


def list_datasets(*, builtin: bool | None = None) -> list[str]:
    """Names :func:`load_dataset` accepts (``builtin=False``: only those read from a folder)."""
    return sorted(name for name, spec in DATASETS.items()
                  if builtin is None or spec.builtin == builtin)


def resolve_dataset(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (case and surrounding spaces ignored), or a DataError
    listing the names."""
    spec = DATASETS.get(str(name).strip().lower())
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}",
                        field="dataset")
    return spec


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    seed: int = 0,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
    frame_sampler: str | None = None,
    subtitles: bool = False,
):
    """Load dataset ``name`` (see :func:`list_datasets`) as a
    :class:`~mapflow_tl.data.loaders.LoadedBenchmark` (iterate it for samples; ``.skipped``
    lists what a non-strict load left out).

    - ``data_root``: the benchmark's local folder, laid out as the benchmark publishes it;
      built-in datasets need none (given one, ``synthtv`` reads a written SynthTV set from it
      in TVBench's format).
    - ``tasks``: task file stems or names (default: all; for ``synthtv`` the temporal tasks).
    - ``limit``: at most this many samples per task.
    - ``seed``: the generator seed offset of a built-in dataset (benchmarks ignore it).
    - ``strict``: raise :class:`~mapflow_tl.data.errors.DataError` naming the file, entry and
      field at the first bad sample; with ``strict=False`` such samples go to ``.skipped``.
    - ``check_videos``: check that each sample's video exists (``mapflow-tl data check`` also
      opens them).
    - ``allow_outside_root``: accept annotation paths that lead outside ``data_root`` (``../``,
      absolute paths); refused by default, so a hostile annotation file cannot point a run at
      arbitrary files.
    - ``frame_sampler``: how each sample's frames are picked from its video, a name in
      :data:`~mapflow_tl.data.video.FRAME_SAMPLERS`; default: the benchmark's official rule
      (``DatasetSpec.frame_sampler``; docs/data.md), or the model family's own where the
      registry names none (TVBench, MVBench, TOMATO, SynthTV: the paper's runs).
    - ``subtitles``: read the benchmark's subtitles into each sample (Video-MME,
      LongVideoBench; off by default); a dataset without subtitles refuses it.
    """
    spec = resolve_dataset(name)
    from .video import FRAME_SAMPLERS

    if frame_sampler is not None and frame_sampler not in FRAME_SAMPLERS:
        raise DataError(f"frame sampler {frame_sampler!r} is not one of "
                        f"{', '.join(FRAME_SAMPLERS)}", field="frame_sampler")
    if subtitles and not spec.subtitles:
        with_subtitles = ", ".join(n for n, s in DATASETS.items() if s.subtitles)
        raise DataError(f"dataset {name!r} has no subtitles to read; subtitles are available "
                        f"for {with_subtitles}", field="subtitles")
    sampler = frame_sampler or spec.frame_sampler
    loaded = _load(spec, name, data_root, tasks, limit, seed=seed, strict=strict,
                   check_videos=check_videos, allow_outside_root=allow_outside_root,
                   subtitles=subtitles)
    if sampler is not None:
        loaded.samples = [dataclasses.replace(sample, frame_sampler=sampler)
                          for sample in loaded.samples]
    return loaded


def _load(spec: DatasetSpec, name, data_root, tasks, limit, *, seed, strict, check_videos,
          allow_outside_root, subtitles):
    """The registry entry's loader called with the options it takes."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a whole number of at least 1, got {limit!r}",
                        field="limit")
    if spec.builtin and data_root is None:
        return spec.load()(tasks, limit, seed=seed)
    if data_root is None:
        raise DataError(f"dataset {name!r} is read from the folder it was downloaded to: pass "
                        f"data_root (--data-root on the command line)", field="data_root")
    loader = DATASETS["tvbench"].load() if spec.builtin else spec.load()
    # a written SynthTV set has TVBench's windowed task names without windows: whole videos
    options = {"require_windows": False} if spec.builtin else {}
    if allow_outside_root:
        options["allow_outside_root"] = True
    if subtitles:
        options["subtitles"] = True
    return loader(data_root, tasks, limit, strict=strict, check_videos=check_videos, **options)
