"""The documentation site builds with ``mkdocs build --strict`` (no broken links, no missing API
references, every docstring page renders), and the command-line reference covers every
``mapflow-tl`` subcommand.

``python tests/test_docs.py`` rewrites the generated part of ``docs/cli.md`` from the argparse
help text.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
GENERATED = "<!-- generated from the argparse help text by `python tests/test_docs.py` -->"


def _commands(parser: argparse.ArgumentParser, prefix: str = "mapflow-tl"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    """Markdown with one section per (sub)command: its ``--help`` text."""
    from mapflow_tl.cli import build_parser

    sections = []
    for name, parser in _commands(build_parser()):
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        sections.append(f"## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(sections)


def test_cli_reference_covers_every_subcommand():
    from mapflow_tl.cli import build_parser

    text = CLI_DOC.read_text()
    missing = [name for name, _ in _commands(build_parser()) if f"## `{name}`" not in text]
    assert not missing, (f"docs/cli.md lacks {missing}; regenerate it with "
                         f"`python tests/test_docs.py`")


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs test needs mkdocs (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="the docs test needs mkdocs-material")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="the docs test needs mkdocstrings[python]")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "edges" / "index.html").is_file()


if __name__ == "__main__":
    head = CLI_DOC.read_text().split(GENERATED)[0]
    CLI_DOC.write_text(head + GENERATED + "\n\n" + cli_reference())
    print(f"wrote {CLI_DOC}")


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_first_code_example_runs(page, tmp_path, monkeypatch):
    """The first Python example a reader meets (README's "In code", the docs' home page) runs as
    written, on the shipped SynthTV model and data."""
    text = (ROOT / page).read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    monkeypatch.setenv("MAPFLOW_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, page, "exec"), {"__name__": "__readme__"})
