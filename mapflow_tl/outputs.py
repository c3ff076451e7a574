"""Where mapflow-tl commands may write: the one write policy every writing command goes through.

A command writes only files it owns:

- **Folders** (a run's ``--out``, ``synthtv generate --out``) are written only when they are new
  or empty, or when they are a folder of the same kind that mapflow-tl wrote, recognised by its
  marker file (``run.json`` for a run, ``synthtv.json`` for a generated benchmark). Anything else
  — a TVBench download, a folder of the user's notes — is refused by name and nothing in it is
  touched (:func:`check_folder`).
- **The manifest**: the marker file lists, under ``"files"``, every file the command wrote there
  (:func:`record`). ``--overwrite`` removes exactly those (:func:`remove_owned`): a user's
  ``notes.csv`` or ``my_analysis.parquet`` beside a run's tables stays.
- **Single files** (``report --output``) are written only where they replace nothing of a run's
  or the user's: a new file, or one the same command wrote before (:func:`check_file_target`).

Runs made before manifests existed list no files; their owned files are the tables named in
:data:`~mapflow_tl.schema.TABLES` (JSONL, CSV, Parquet), ``report.html`` and ``run.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError

__all__ = ["MARKERS", "FILES_KEY", "REPORT_MARK", "OutputError", "check_folder",
           "foreign_entries", "owned_files", "record", "remove_owned", "check_file_target",
           "is_report"]

#: The marker file of each kind of folder mapflow-tl writes: it says the folder is ours and holds
#: the folder's manifest.
MARKERS = {"run": "run.json", "synthtv-benchmark": "synthtv.json",
           # a trained SynthTV checkpoint: its training record (no manifest: retraining into it
           # replaces the checkpoint's files, which save_pretrained names)
           "synthtv-checkpoint": "training.json"}
#: The marker's key listing the files written into the folder (paths relative to it).
FILES_KEY = "files"
#: Written into every report's ``<head>``: how ``report --output`` recognises a report it may
#: replace.
REPORT_MARK = '<meta name="generator" content="mapflow-tl report">'
#: Names a run keeps beside its manifest's files that are its own too (the lock, a shard folder).
_RUN_SCAFFOLD = ("run.lock", "run.json.tmp", "shards")


class OutputError(InputError):
    """A write the policy refuses, naming the path and the fix (one line, exit code 2)."""


def _marker(folder: Path, kind: str) -> Path:
    return Path(folder) / MARKERS[kind]


def _read_marker(folder: Path, kind: str) -> dict[str, Any] | None:
    path = _marker(folder, kind)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def foreign_entries(folder: str | Path, kind: str) -> list[str]:
    """The names in ``folder`` that no command of ``kind`` wrote, when it holds no marker of that
    kind (for runs: a lock file and a ``shards/`` folder of rank runs are ours)."""
    folder = Path(folder)
    if not folder.is_dir() or _marker(folder, kind).is_file():
        return []
    foreign = []
    for entry in sorted(folder.iterdir()):
        if kind == "run" and entry.name in _RUN_SCAFFOLD[:2]:
            continue
        if (kind == "run" and entry.name == "shards" and entry.is_dir()
                and all(rank.is_dir() and rank.name.startswith("rank-")
                        and not foreign_entries(rank, kind) for rank in entry.iterdir())):
            continue
        foreign.append(entry.name)
    return foreign


def check_folder(folder: str | Path, kind: str, *, option: str = "--out") -> None:
    """Refuse, before anything is written, a ``folder`` that a command of ``kind`` may not write:
    a file, or a non-empty folder without ``kind``'s marker (not written by mapflow-tl)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; choose a folder for {option}")
    foreign = foreign_entries(folder, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                          if len(foreign) > 5 else "")
        what = "a mapflow-tl run" if kind == "run" else f"a folder mapflow-tl wrote ({kind})"
        raise OutputError(f"{folder} is not empty and is not {what} (no {MARKERS[kind]}; it "
                          f"holds {shown}); nothing in it was changed: choose a new or empty "
                          f"{option} folder")


def owned_files(folder: str | Path, kind: str) -> list[str]:
    """The files of ``folder`` that its ``kind`` command wrote: the marker's manifest (for a run
    written before manifests, its tables, report and ``run.json``), marker included."""
    from .schema import TABLES

    folder = Path(folder)
    content = _read_marker(folder, kind)
    if content is None:
        return []
    listed = content.get(FILES_KEY)
    if isinstance(listed, list):
        names = [str(name) for name in listed]
    elif kind == "run":   # a run from before manifests: only the names our tables have
        names = [f"{table}.{ext}" for table in TABLES for ext in ("jsonl", "csv", "parquet")]
        names.append("report.html")
    else:
        names = []
    return sorted(set(names) | {MARKERS[kind]})


def _inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when ``name`` is a relative path that stays inside ``folder`` (a
    hand-edited manifest cannot make ``--overwrite`` delete elsewhere)."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return folder / path


def remove_owned(folder: str | Path, kind: str) -> list[str]:
    """Delete the files ``folder``'s manifest lists (:func:`owned_files`) and nothing else;
    returns the names removed. What ``--overwrite`` does."""
    folder = Path(folder)
    removed = []
    for name in owned_files(folder, kind):
        if name == MARKERS[kind]:
            continue   # last: a crash midway still leaves the folder recognisably ours
        path = _inside(folder, name)
        if path is not None and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed.append(name)
    _marker(folder, kind).unlink(missing_ok=True)
    return removed


def record(folder: str | Path, kind: str, names: Iterable[str],
           base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add ``names`` (relative to ``folder``) to the manifest in ``folder``'s marker, written
    atomically; ``base`` replaces the marker's other content (a run's configuration). Returns the
    marker's content."""
    folder = Path(folder)
    previous = _read_marker(folder, kind) or {}
    content = dict(base) if base is not None else dict(previous)
    if isinstance(content.get(FILES_KEY), list):
        files = set(content[FILES_KEY])
    elif isinstance(previous.get(FILES_KEY), list):
        files = set(previous[FILES_KEY])
    else:   # a folder from before manifests: what it holds of ours stays ours
        files = {name for name in owned_files(folder, kind) if (folder / name).exists()}
    files |= {str(name) for name in names} | {MARKERS[kind]}
    content[FILES_KEY] = sorted(files)
    marker = _marker(folder, kind)
    temporary = marker.with_name(marker.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, marker)
    return content


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a report mapflow-tl wrote (its head carries :data:`REPORT_MARK`)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    # reports from before the mark carry the same words in their <title>
    return REPORT_MARK.encode() in head or b"<title>mapflow-tl report" in head


def check_file_target(path: str | Path, *, suffixes: tuple[str, ...] = (".html", ".htm"),
                      option: str = "--output") -> Path:
    """Refuse, before anything is written, a single output file that would replace something
    not ours: a name without one of ``suffixes`` (``run/flow.jsonl``, ``run.json``), a file a
    run's manifest lists, or an existing file that is not a mapflow-tl report. Returns the
    path."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: a report is an HTML file; name it with "
                          f"{' or '.join(suffixes)} (a run's tables and run.json are never "
                          f"replaced)")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name such as "
                          f"{path / 'report.html'}")
    run = path.parent
    if _marker(run, "run").is_file() and path.name in owned_files(run, "run") \
            and path.name != "report.html":
        raise OutputError(f"{option} {path} is one of the run's own files; choose another name")
    if path.exists() and not is_report(path):
        raise OutputError(f"{option} {path} exists and is not a mapflow-tl report; nothing was "
                          f"written: choose a new file name or remove it yourself")
    return path
