"""The ``mapflow-tl`` command line.

Each module in :data:`COMMAND_MODULES` adds its subcommands with ``register(subparsers)`` and sets
``handler`` (a function of the parsed arguments returning an exit code) on each parser. Building
the parser imports no torch, TransformerLens or model code: handlers import what they need, so
``mapflow-tl --help`` starts in a fraction of a second.

Errors: the project's own input errors (:class:`~mapflow_tl.errors.InputError`, raised for a bad
argument, file, folder or sample, and ``OSError`` from the file system) are printed as one line
naming the thing and the fix, with exit code 2; anything else is a bug and keeps its traceback.
``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from typing import Sequence

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

COMMAND_MODULES: tuple[str, ...] = (
    "mapflow_tl.cli.demo",
    "mapflow_tl.cli.analysis",
    "mapflow_tl.cli.evaluate",
    "mapflow_tl.cli.discover",
    "mapflow_tl.cli.data",
    "mapflow_tl.cli.synthtv",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="mapflow-tl",
        description="Map how information flows inside Video LLMs (attention knockout, logit lens, "
                    "effective pathways).",
    )
    parser.add_argument("--version", action="version", version=f"mapflow-tl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
    return parser


def _is_input_error(error: BaseException) -> bool:
    """Errors that describe bad input rather than a bug: the project's own
    :class:`~mapflow_tl.errors.InputError` and file-system errors (a read-only or full output
    folder, a missing file)."""
    from ..errors import InputError

    return isinstance(error, (InputError, OSError))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or str(error)
        return f"{error.filename}: {reason}"
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    from ..runs import sticky_interrupts

    try:
        with sticky_interrupts():
            code = args.handler(args)
        _say_where_the_tables_are(args, code)
        return code
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "out", None) is not None and hasattr(args, "resume"):
            again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
            hint = (" Everything computed so far is saved in "
                    f"{args.out}; continue with: mapflow-tl {' '.join(again)} --resume")
        print(f"\nmapflow-tl {args.command}: interrupted.{hint}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        if args.debug or not _is_input_error(error):
            raise
        print(f"mapflow-tl {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _say_where_the_tables_are(args: argparse.Namespace, code: int) -> None:
    """The last line of every analysis command that wrote a run folder (on the main rank): where
    its tables are and the command that draws them."""
    out = getattr(args, "out", None)
    if code != 0 or out is None or not hasattr(args, "resume") or args.command == "demo" \
            or os.environ.get("RANK", "0") != "0":
        return
    print(f"mapflow-tl {args.command}: tables in {out}; see them with: mapflow-tl report "
          f"{shlex.quote(str(out))}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
