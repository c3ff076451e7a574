"""Run directories: the resolved configuration, package versions and tidy result tables.

A run writes to one folder::

    run.json            resolved configuration, model id, package versions, seeds
    <table>.jsonl       one JSON row per line, appended per sample (flush + fsync)
    <table>.csv         the same rows as CSV, written when the run finishes
    report.html         the figures (mapflow-tl report RUN_DIR rebuilds it)

Rows are appended as each sample finishes, so an interrupted run keeps everything it computed.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RunWriter", "read_table", "read_run_config", "package_versions"]

CONFIG_FILE = "run.json"


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

    def __init__(self, out: str | Path, config: dict[str, Any]) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config = {**config, "versions": package_versions()}
        temporary = self.out / (CONFIG_FILE + ".tmp")
        temporary.write_text(json.dumps(self.config, indent=2, default=str))
        os.replace(temporary, self.out / CONFIG_FILE)
        self._tables: set[str] = set()

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
