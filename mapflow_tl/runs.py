"""Run directories: the resolved configuration, package versions and tidy result tables.

A run writes to one folder::

    run.json            resolved configuration, model id, package versions, seeds
    <table>.jsonl       one JSON row per line, appended per sample (flush + fsync)
    <table>.csv         the same rows as CSV, written when the run finishes
    report.html         the figures (mapflow-tl report RUN_DIR rebuilds it)

Rows are appended as each sample finishes, so an interrupted run keeps everything it computed.
``--resume`` reopens the same folder: a half-written last line (a write cut off by a crash) is
dropped, the rows already present are skipped, and only the rest is computed. Resuming with a
different model, circuit, window, dataset or seed is refused, naming the difference.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import threading
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RunWriter", "read_table", "read_run_config", "package_versions", "IDENTITY_KEYS",
           "merge_shards", "SHARDS_DIR", "sticky_interrupts", "check_interrupt"]

CONFIG_FILE = "run.json"
SHARDS_DIR = "shards"
#: Configuration keys that must match for a run to be resumed.
IDENTITY_KEYS = ("command", "model", "dataset", "data_root", "task", "limit", "circuit", "window",
                 "style", "mode", "method", "seed", "dtype", "top_k", "keywords")


_INTERRUPTED = threading.Event()


@contextmanager
def sticky_interrupts():
    """Make Ctrl-C stop a run even when Python swallows the ``KeyboardInterrupt``.

    Python raises ``KeyboardInterrupt`` in whatever code runs when the signal arrives. When that
    is a finaliser (decord's ``VideoReader.__del__`` runs after every sample), Python prints
    "Exception ignored in ..." and carries on, and the run would finish as if nothing happened.
    Inside this context a SIGINT still raises at once, and is also remembered:
    :func:`check_interrupt`, called between samples, raises it again. Outside the main thread,
    or when someone else installed a SIGINT handler, the handler is left alone.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def on_sigint(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTED.clear()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived inside :func:`sticky_interrupts`, even one
    that a finaliser swallowed. Call it where stopping is safe (between samples)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mapflow-tl", "torch", "transformers", "transformer-lens", "numpy", "plotly"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class RunWriter:
    """Writes one run's configuration and its tables into ``out``."""

    def __init__(self, out: str | Path, config: dict[str, Any], *, resume: bool = False) -> None:
        self.out = Path(out)
        config = json.loads(json.dumps(config, default=str))
        existing = self.out / CONFIG_FILE
        if existing.is_file():
            if not resume:
                raise ValueError(f"{self.out} already holds a run; pass --resume to continue it "
                                 f"or choose another --out")
            previous = read_run_config(self.out)
            differences = [f"{key}: {previous.get(key)!r} then, {config.get(key)!r} now"
                           for key in IDENTITY_KEYS if previous.get(key) != config.get(key)]
            if differences:
                raise ValueError(f"cannot resume {self.out} with a different configuration: "
                                 + "; ".join(differences))
            for table in self.out.glob("*.jsonl"):
                _drop_partial_line(table)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config = {**config, "versions": package_versions()}
        temporary = self.out / (CONFIG_FILE + ".tmp")
        temporary.write_text(json.dumps(self.config, indent=2, default=str))
        os.replace(temporary, existing)
        self._tables: set[str] = {path.stem for path in self.out.glob("*.jsonl")}

    def completed(self, table: str, *keys: str) -> set[tuple]:
        """The distinct values of ``keys`` among the rows already written to ``table``."""
        return {tuple(json.dumps(row.get(k), default=str) for k in keys)
                for row in read_table(self.out, table)}

    def retain(self, table: str, key: str, done: set[tuple]) -> None:
        """Drop the rows of ``table`` whose ``key`` is not in ``done`` (rows of a sample whose
        completion was never recorded, left by a crash), rewriting the file atomically."""
        path = self.out / f"{table}.jsonl"
        if not path.is_file():
            return
        rows = read_table(self.out, table)
        kept = [row for row in rows if self.key(row, key) in done]
        if len(kept) == len(rows):
            return
        _rewrite_jsonl(path, kept)

    @staticmethod
    def key(row: dict[str, Any], *keys: str) -> tuple:
        """The key of a row (or of a sample's fields) as :meth:`completed` reports it."""
        return tuple(json.dumps(row.get(k), default=str) for k in keys)

    def write(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to ``<table>.jsonl``, durably (flush + fsync) before returning."""
        rows = list(rows)
        self._tables.add(table)
        if not rows:
            return
        with open(self.out / f"{table}.jsonl", "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        """Write every table as CSV next to its JSONL."""
        for table in sorted(self._tables):
            write_csv(self.out / f"{table}.csv", read_table(self.out, table))


def _rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a table with ``rows`` atomically: a temporary file, fsync, then rename."""
    temporary = path.with_suffix(".jsonl.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _drop_partial_line(path: Path) -> None:
    """Cut a file back to its last complete line (a crash may leave half a JSON row)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    temporary = path.with_suffix(".csv.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                             for k, v in row.items()})
    os.replace(temporary, path)


def read_table(run_dir: str | Path, table: str) -> list[dict[str, Any]]:
    """Rows of ``<table>.jsonl`` (an empty list when the table was not written). A truncated
    last line — a write cut off by a crash — is ignored."""
    path = Path(run_dir) / f"{table}.jsonl"
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON") from None
    return rows


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a mapflow-tl run directory (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def merge_shards(out: str | Path, sample_order: list[str]) -> list[str]:
    """Merge the per-rank shards ``out/shards/rank-*/<table>.jsonl`` into ``out/<table>.jsonl``,
    rows ordered by their sample's position in ``sample_order`` (rows of one sample keep their
    order), written atomically. Returns the merged table names."""
    out = Path(out)
    shard_dirs = sorted((out / SHARDS_DIR).glob("rank-*"))
    position = {sample: i for i, sample in enumerate(sample_order)}
    tables = sorted({path.stem for folder in shard_dirs for path in folder.glob("*.jsonl")})
    for table in tables:
        rows = [row for folder in shard_dirs for row in read_table(folder, table)]
        rows.sort(key=lambda row: position.get(str(row.get("sample")), len(position)))
        _rewrite_jsonl(out / f"{table}.jsonl", rows)
        write_csv(out / f"{table}.csv", rows)
    return tables
