"""Validate a downloaded benchmark before a long GPU run (``mapflow-tl data check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loaders import Skipped
from .datasets import load_dataset

__all__ = ["check_dataset", "print_report"]


def check_dataset(
    name: str,
    data_root: str | Path,
    tasks: list[str] | None = None,
    limit: int | None = None,
    num_frames: int = 8,
    *,
    allow_outside_root: bool = False,
    frame_sampler: str | None = None,
    subtitles: bool = False,
) -> dict[str, Any]:
    """Load a benchmark non-strictly and read every sample's frames the way the analyses do:
    :func:`mapflow_tl.models.frames.load_frames` (the sample's start/end window, ``num_frames``
    frames decoded at the paper's segment midpoints, the frame checks every model runs), so a
    video that would fail a run (corrupt, truncated, a size the decoder cannot copy out, a
    window past its end) fails here first. Frames are picked by ``frame_sampler`` (default:
    the benchmark's official rule, else the paper's segment midpoints). With ``subtitles`` each
    sample's subtitle file is read and matched to its frames, so a missing or malformed file is
    a problem here too. Entries the loader refuses (a windowed task without its window, a path
    outside the root, an answer not among the candidates) are listed too.

    Returns a JSON-ready report: ``dataset``, ``data_root``, ``tasks`` (task -> ``{"samples":
    usable samples, "problems": count}``), ``problems`` (each with file, index, field, reason,
    task), ``videos_checked`` and ``ok`` (no problems and at least one usable sample).
    """
    from ..models.frames import load_frames_and_context  # the analyses' own (imports torch)

    loaded = load_dataset(name, data_root, tasks, limit, strict=False, check_videos=True,
                          allow_outside_root=allow_outside_root, frame_sampler=frame_sampler,
                          subtitles=subtitles)
    problems: list[Skipped] = list(loaded.skipped)
    usable = []
    videos = set()
    for sample in loaded:
        videos.add(sample.video)
        try:
            load_frames_and_context(sample, num_frames=num_frames,
                                    sampler=sample.frame_sampler or "midpoints")
        except ValueError as error:  # DataError from the reader, ValueError from check_frames
            field_name = getattr(error, "field", None) or "video"
            at_fault = getattr(error, "path", None) or sample.video
            reason = str(error).removeprefix(f"{at_fault}: ")
            problems.append(Skipped(str(at_fault), sample.id, field_name, reason, sample.task))
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
        "videos_checked": len(videos),
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
