"""``mapflow-tl data check``: validate a downloaded benchmark before a long GPU run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.datasets import list_datasets
from .run import add_sampling_arguments, positive_int

__all__ = ["register"]


def _check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset, print_report

    report = check_dataset(args.dataset, args.data_root, args.task, args.limit,
                           allow_outside_root=args.allow_outside_root,
                           frame_sampler=args.frame_sampler, subtitles=args.subtitles)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="benchmark data: validate a download")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    check = commands.add_parser(
        "check",
        help="count samples per task and find missing or unreadable videos and malformed entries",
        description="Validate a downloaded benchmark before a long GPU run. Exit code 0 when every "
        "sample is usable, 1 when problems were found.",
    )
    check.add_argument("--dataset", required=True, type=str.lower,
                       choices=list_datasets(builtin=False))
    check.add_argument("--data-root", required=True, type=Path, help="the benchmark's root folder")
    check.add_argument(
        "--task", action="append", default=None, help="only this task (stem or name); repeatable"
    )
    check.add_argument("--limit", type=positive_int, default=None,
                       help="check only the first N per task")
    add_sampling_arguments(check)
    check.add_argument("--allow-outside-root", action="store_true",
                       help="accept annotation paths that lead outside --data-root")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_check)
    data.set_defaults(handler=lambda args: (data.print_help(), 0)[1])
