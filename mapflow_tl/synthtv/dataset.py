"""The built-in ``synthtv`` dataset: SynthTV questions as benchmark samples.

Generated deterministically from the held-out evaluation seed, written once in TVBench's format
to a cache folder and read back with the TVBench loader — exactly the path a downloaded benchmark
takes, so a SynthTV run exercises the real video reading and prompt code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["DEFAULT_PER_TASK", "load_synthtv", "cache_root"]

#: Questions per task when no limit is given.
DEFAULT_PER_TASK = 20


def cache_root() -> Path:
    """Where generated sets are cached: ``$MAPFLOW_CACHE/synthtv`` or ``~/.cache/mapflow-tl/synthtv``."""
    import os

    base = os.environ.get("MAPFLOW_CACHE")
    return Path(base) / "synthtv" if base else Path.home() / ".cache" / "mapflow-tl" / "synthtv"


def load_synthtv(tasks: Sequence[str] | None = None, limit: int | None = None, *, seed: int = 0,
                 cache: str | Path | None = None):
    """The fixed SynthTV evaluation set as a
    :class:`~mapflow_tl.data.loaders.LoadedBenchmark`: ``limit`` questions per task (default
    20) of ``tasks`` (default: the five temporal tasks), generated from the held-out evaluation
    seed plus ``seed``."""
    from ..data.loaders import (TVBENCH_TASKS, LoadedBenchmark, load_tvbench, task_choices,
                                 task_key)
    from ..data.errors import DataError
    from . import generator as gen
    from .evaluate import EVAL_SEED

    tasks = list(tasks or gen.TEMPORAL_TASKS)
    by_key = {task_key(task): task for task in gen.ALL_TASKS}
    unknown = [task for task in tasks if task_key(task) not in by_key]
    if unknown:
        display = {task: TVBENCH_TASKS[task][0] for task in gen.ALL_TASKS if task in TVBENCH_TASKS}
        raise DataError(f"unknown SynthTV task(s) {unknown}; tasks: "
                        f"{task_choices(gen.ALL_TASKS, display)} (by file stem or name; case, "
                        f"spaces and underscores ignored)",
                        field="task")
    resolved = list(dict.fromkeys(by_key[task_key(task)] for task in tasks))
    per_task = limit or DEFAULT_PER_TASK
    root = Path(cache) if cache is not None else cache_root()
    items = gen.generate(resolved, per_task, EVAL_SEED + seed)
    # The folder is named after the items' content too, so a changed generator (a new question
    # format, other colours) never reads a stale cache written by an earlier version.
    folder = root / (f"seed{EVAL_SEED + seed}-n{per_task}-{'-'.join(sorted(resolved))}-"
                     f"{_fingerprint(items)}")
    if not (folder / "complete").is_file():
        gen.write_benchmark(folder, items)
        (folder / "complete").write_text("ok\n")
    loaded = load_tvbench(folder, resolved, require_windows=False)  # SynthTV writes none
    # the answer as named without options (what the models learnt to say open-endedly), for
    # `mapflow-tl eval --open-ended`; TVBench's file format has no field for it
    named = {item.name: item.named_answer for group in items.values() for item in group}
    samples = [dataclasses.replace(sample, metadata={
        **sample.metadata, "named_answer": named.get(Path(sample.video).stem, sample.answer)})
        for sample in loaded.samples]
    return LoadedBenchmark("synthtv", loaded.root, samples, loaded.skipped)


def _fingerprint(items_by_task: dict[str, list[Any]]) -> str:
    """12 hex digits of SHA-256 over every item's TVBench entry and rendered frames."""
    digest = hashlib.sha256()
    for task in sorted(items_by_task):
        for item in items_by_task[task]:
            digest.update(json.dumps(item.to_tvbench(), sort_keys=True).encode())
            digest.update(item.frames.tobytes())
    return digest.hexdigest()[:12]
