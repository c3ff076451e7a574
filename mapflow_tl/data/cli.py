"""Validate a downloaded benchmark before a long GPU run (``mapflow-tl data check``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .benchmarks import Skipped
from .datasets import load_dataset
from .errors import DataError
from .video import probe_video, uniform_indices

__all__ = ["check_dataset", "print_report"]


def check_dataset(
    name: str,
    data_root: str | Path,
    tasks: list[str] | None = None,
    limit: int | None = None,
    num_frames: int = 8,
) -> dict[str, Any]:
    """Load a benchmark non-strictly, open every video cheaply (container and frame count, no
    decoding) and check each sample's start/end bounds against its video.

    Returns a JSON-ready report: ``dataset``, ``data_root``, ``tasks`` (task -> ``{"samples":
    usable samples, "problems": count}``), ``problems`` (each with file, index, field, reason,
    task), ``videos_checked`` and ``ok`` (no problems and at least one usable sample).
    """
    loaded = load_dataset(name, data_root, tasks, limit, strict=False, check_videos=True)
    problems: list[Skipped] = list(loaded.skipped)
    usable = []
    video_errors: dict[Path, DataError | None] = {}
    infos = {}
    for sample in loaded:
        if sample.video not in video_errors:
            try:
                infos[sample.video] = probe_video(sample.video)
                video_errors[sample.video] = None
            except DataError as error:
                video_errors[sample.video] = error
        error = video_errors[sample.video]
        if error is None and sample.bounds is not None:
            try:
                uniform_indices(infos[sample.video], num_frames, sample.bounds)
            except DataError as bounds_error:
                error = bounds_error
        if error is not None:
            reason = str(error).removeprefix(f"{sample.video}: ")
            field_name = error.field or "video"
            problems.append(Skipped(str(sample.video), sample.id, field_name, reason, sample.task))
            continue
        usable.append(sample)
    per_task: dict[str, dict[str, int]] = {}
    for sample in usable:
        per_task.setdefault(sample.task, {"samples": 0, "problems": 0})["samples"] += 1
    for problem in problems:
        per_task.setdefault(problem.task or "?", {"samples": 0, "problems": 0})["problems"] += 1
    return {
        "dataset": loaded.name,
        "data_root": str(loaded.root),
        "tasks": per_task,
        "samples": len(usable),
        "videos_checked": len(video_errors),
        "problems": [problem.to_dict() for problem in problems],
        "ok": not problems and bool(usable),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['dataset']} at {report['data_root']}")
    width = max([len(task) for task in report["tasks"]] + [4])
    print(f"  {'task':<{width}}  samples  problems")
    for task, counts in report["tasks"].items():
        print(f"  {task:<{width}}  {counts['samples']:>7}  {counts['problems']:>8}")
    print(f"  {'total':<{width}}  {report['samples']:>7}  {len(report['problems']):>8}")
    print(f"  videos checked: {report['videos_checked']}")
    if report["problems"]:
        print(f"{len(report['problems'])} problem(s):")
        for problem in report["problems"]:
            print(f"  {Skipped(**problem)}")
    elif not report["samples"]:
        print("no samples found: check --data-root and --task")
    else:
        print("ok")
