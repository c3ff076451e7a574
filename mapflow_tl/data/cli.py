"""``mapflow-tl data check``: validate a downloaded benchmark before a long GPU run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .benchmarks import Skipped, list_datasets, load_dataset
from .errors import DataError
from .video import probe_video, uniform_indices

__all__ = ["check_dataset", "register"]


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


def _print_report(report: dict[str, Any]) -> None:
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


def _check(args: argparse.Namespace) -> int:
    report = check_dataset(args.dataset, args.data_root, args.task, args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if report["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data check`` to the ``mapflow-tl`` command line."""
    data = subparsers.add_parser("data", help="benchmark data: validate a download")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    check = commands.add_parser(
        "check",
        help="count samples per task and find missing or unreadable videos and malformed entries",
        description="Validate a downloaded benchmark before a long GPU run. Exit code 0 when every "
        "sample is usable, 1 when problems were found.",
    )
    check.add_argument("--dataset", required=True, choices=list_datasets())
    check.add_argument("--data-root", required=True, type=Path, help="the benchmark's root folder")
    check.add_argument(
        "--task", action="append", default=None, help="only this task (stem or name); repeatable"
    )
    check.add_argument("--limit", type=int, default=None, help="check only the first N per task")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_check)
    data.set_defaults(handler=lambda args: (data.print_help(), 0)[1])
