"""The ``mapflow-tl`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

__all__ = ["main", "COMMAND_MODULES"]

# Modules that add subcommands: each defines ``register(subparsers)``, which adds its parsers and
# sets ``handler`` (a function of the parsed args returning an exit code) as their default.
COMMAND_MODULES: tuple[str, ...] = (
    "mapflow_tl.commands",
    "mapflow_tl.data.cli",
    "mapflow_tl.synthtv.cli",
)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, per_task=args.per_task, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mapflow-tl",
        description="Map how information flows inside Video LLMs (attention knockout, logit lens, "
                    "effective pathways).",
    )
    parser.add_argument("--version", action="version", version=f"mapflow-tl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="the paper's analyses on the SynthTV models, with a "
                                             "summary table and report.html")
    demo.add_argument("--out", default="outputs/demo", help="run directory (default %(default)s)")
    demo.add_argument("--per-task", type=int, default=12, help="questions per SynthTV task")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(handler=_demo)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    from .runs import sticky_interrupts

    try:
        with sticky_interrupts():
            return args.handler(args)
    except ValueError as error:
        print(f"mapflow-tl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "out", None) is not None and hasattr(args, "resume"):
            again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
            hint = (" Everything computed so far is saved in "
                    f"{args.out}; continue with: mapflow-tl {' '.join(again)} --resume")
        print(f"\nmapflow-tl {args.command}: interrupted.{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
