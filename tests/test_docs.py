"""The documentation site builds with ``mkdocs build --strict`` (no broken links, no missing API
references, every docstring page renders), the command-line reference covers every
``mapflow-tl`` subcommand, and every ```python block of README.md and docs/*.md runs as written.

A block that cannot run here (it needs a GPU, a downloaded benchmark or a 7B checkpoint) is
preceded by ``<!-- no-run: the reason -->``; the set of such blocks is pinned below, so a new
exemption is a visible change to this file.

``python tests/test_docs.py`` rewrites the generated part of ``docs/cli.md`` from the argparse
help text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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



NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->")
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
# (page, index of the ```python block on the page): each needs what a CPU test cannot have
EXEMPT = {
    ("docs/data.md", 0),      # a downloaded TVBench
    ("docs/models.md", 0),    # the 7B checkpoint on a GPU
    ("docs/scaling.md", 0),   # a 34B checkpoint on two GPUs
}


def code_blocks(page: str) -> list[tuple[int, str, str | None]]:
    """The ```python blocks of ``page``: (first code line, code, no-run reason or None)."""
    lines = (ROOT / page).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
            match = NO_RUN.search(previous)
            end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append((index + 2, "\n".join(lines[index + 1:end]) + "\n",
                           match.group(1) if match else None))
            index = end
        index += 1
    return blocks


# Runs in a fresh interpreter (registrations a page makes, such as a dataset, stay out of the
# test process). Each page's blocks run in order in one namespace, a module of its own so that
# "module:function" names resolve; the pages share one loaded model per set of arguments.
RUNNER = r"""
import json, os, sys, traceback, types
import mapflow_tl as mf

load, models = mf.load_videollm, {}
def shared(*args, **kwargs):
    key = repr((args, sorted(kwargs.items())))
    if key not in models:
        models[key] = load(*args, **kwargs)
    return models[key]
mf.load_videollm = shared

results = {}
for number, (page, blocks) in enumerate(json.loads(sys.stdin.read()).items()):
    folder = os.path.join(os.getcwd(), f"page{number}")
    os.makedirs(folder)
    os.chdir(folder)
    module = types.ModuleType(f"docs_page_{number}")
    sys.modules[module.__name__] = module
    results[page] = None
    for line, code in blocks:
        try:
            exec(compile("\n" * (line - 1) + code, page, "exec"), module.__dict__)
        except BaseException:
            results[page] = traceback.format_exc(limit=-3)
            break
print("RESULTS" + json.dumps(results))
"""


def test_no_run_exemptions_are_few_and_say_why():
    exempt = {(page, index): reason for page in PAGES
              for index, (_, _, reason) in enumerate(code_blocks(page)) if reason is not None}
    assert set(exempt) == EXEMPT, (f"exempt blocks changed: {sorted(set(exempt) ^ EXEMPT)}; "
                                   f"make the example run on SynthTV, or pin the new exemption")
    assert all(len(reason.split()) >= 3 for reason in exempt.values()), exempt


def test_code_block_parser_reads_exemptions(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- no-run: needs a GPU -->\n```python\nx = 1\n```\n\n"
                    "```python\ny = 2\nz = 3\n```\n```text\nnot python\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert code_blocks("page.md") == [(5, "x = 1\n", "needs a GPU"), (9, "y = 2\nz = 3\n", None)]


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> dict[str, str | None]:
    """Every page's runnable blocks, run once: page -> traceback of the first failure or None."""
    pages = {page: [(line, code) for line, code, reason in code_blocks(page) if reason is None]
             for page in PAGES}
    pages = {page: blocks for page, blocks in pages.items() if blocks}
    work = tmp_path_factory.mktemp("docs-run")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(pages), cwd=work, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "MAPFLOW_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "RESULTS" in result.stdout, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


@pytest.mark.parametrize("page", [page for page in PAGES
                                  if any(r is None for _, _, r in code_blocks(page))])
def test_every_code_block_of_the_page_runs(page, docs_run):
    """The page's ```python blocks run in order, as written, on the shipped SynthTV model and
    data (a stale name or signature in an example fails here)."""
    assert docs_run[page] is None, f"{page}: an example fails\n{docs_run[page]}"



# a path of this repository (mapflow_tl/commands.py, tests/test_x.py::test_name, circuits/*.py)
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:mapflow_tl|tests|circuits|benchmarks|tutorials|docs)/[\w./*-]*[\w*])"
    r"(?:::(\w+))?")


def stale_references(text: str) -> list[str]:
    """Repository paths in ``text`` that name no file (globs: no match), and ``file::name``
    references whose file defines no such function or class."""
    stale = []
    for match in REPO_PATH.finditer(text):
        path, name = match.group(1), match.group(2)
        if not any(ROOT.glob(path)) if "*" in path else not (ROOT / path).exists():
            stale.append(path)
        elif name and not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b",
                                    (ROOT / path).read_text(), re.M):
            stale.append(f"{path}::{name}")
    return stale


def test_stale_reference_finder():
    text = ("`mapflow_tl/commands.py`, mapflow_tl/edges.py, circuits/pathway_*.py, "
            "circuits/nothing_*.py, tests/test_docs.py::test_stale_reference_finder, "
            "tests/test_docs.py::test_gone, other/evaluation/benchmarks/tvbench.py")
    assert stale_references(text) == ["mapflow_tl/commands.py", "circuits/nothing_*.py",
                                      "tests/test_docs.py::test_gone"]


@pytest.mark.parametrize("page", PAGES + ["tutorials/README.md"])
def test_every_file_and_test_a_page_names_exists(page):
    """A page that names a module, a test or a circuit file names one that exists (the
    benchmark guide once sent readers to mapflow_tl/commands.py)."""
    stale = stale_references((ROOT / page).read_text())
    assert not stale, f"{page} names what does not exist: {stale}"


if __name__ == "__main__":
    head = CLI_DOC.read_text().split(GENERATED)[0]
    CLI_DOC.write_text(head + GENERATED + "\n\n" + cli_reference())
    print(f"wrote {CLI_DOC}")
