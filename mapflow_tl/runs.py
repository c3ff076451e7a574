"""Run directories: the resolved configuration, package versions and tidy result tables.

A run writes to one folder::

    run.json            resolved configuration, model id, package versions, seeds
    run.lock            held while a process writes the run (pid and host of the holder)
    <table>.jsonl       one JSON row per line, appended per sample (flush + fsync)
    <table>.csv         the same rows as CSV, written when the run finishes
    report.html         the figures (mapflow-tl report RUN_DIR rebuilds it)

Nothing is lost, nothing is mixed:

- A folder that is not empty and holds no ``run.json`` is not a run of ours: it is refused by
  name and nothing in it is touched.
- One process at a time writes a run: :class:`RunWriter` takes an exclusive lock on the folder
  (a kernel ``flock``, so a killed holder never leaves the folder stuck; where the filesystem
  has no ``flock``, a lock left by a dead process on this host is recognised by its pid and
  reclaimed). A second process is refused with the holder's pid and host.
- Rows are appended as each sample finishes, so an interrupted run keeps everything it computed.
  ``--resume`` reopens the same folder: a damaged last line (a write cut off by a crash, or a
  line that is not a JSON object) is dropped, the samples marked done whose rows are all still
  there (:meth:`RunWriter.verified`: each marker records its sample's rows per table and
  circuit) are skipped, and only the rest is computed.
- ``run.json`` lists the files the run wrote (its manifest, :mod:`mapflow_tl.outputs`, the one
  write policy): ``--overwrite`` removes those and nothing else. Resuming with anything that changes the rows (:data:`IDENTITY_KEYS`: model,
  dataset, circuits and their file content, window, seed, number of ranks, definitions, ...) is
  refused, naming the difference.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import platform
import signal
import socket
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import outputs
from .errors import InputError, NonFiniteError
from .schema import TABLES

try:  # the kernel lock; absent on Windows, where the pid check below is the only guard
    import fcntl
except ImportError:  # pragma: no cover - not on Linux / macOS
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunWriter", "RunFolderError", "read_table", "read_run_config", "package_versions",
           "IDENTITY_KEYS", "identity_differences", "circuit_fingerprint", "merge_shards",
           "SHARDS_DIR", "CONFIG_FILE", "LOCK_FILE", "SKIPPED_COLUMNS", "skipped_row",
           "skipped_at_load", "skipped_at_prepare", "describe_skipped", "write_csv",
           "sticky_interrupts", "check_interrupt", "check_run_folder"]

CONFIG_FILE = "run.json"
LOCK_FILE = "run.lock"
SHARDS_DIR = "shards"
#: Configuration keys that must match for a run to be resumed: everything that changes the rows.
#: ``world_size`` (ranks split the samples and write per-rank shards), ``circuit_content`` (the
#: text of each circuit file, :func:`circuit_fingerprint`: one name can be two different files)
#: and ``definitions`` (the metric and window definitions in force).
IDENTITY_KEYS = ("command", "model", "dataset", "data_root", "task", "limit", "sample",
                 "sample_seed", "circuit", "circuit_content", "window", "style", "mode",
                 "sweep_range", "method", "seed", "dtype", "top_k", "keywords", "world_size",
                 "definitions", "compare_model", "layers", "query", "model_content",
                 "dataset_content", "frame_sampler", "subtitles")
#: Columns of the ``skipped`` table (declared in :mod:`mapflow_tl.schema`): one schema for entries
#: left out when the dataset is loaded (``stage`` "load") and samples that could not be prepared
#: (``stage`` "prepare").
SKIPPED_COLUMNS = TABLES["skipped"]


class RunFolderError(outputs.OutputError):
    """A run folder that cannot be used as asked, with the folder and the fix in one line.

    An :class:`~mapflow_tl.errors.InputError`: the command line reports it in one line (exit
    code 2).
    """


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


def circuit_fingerprint(circuit: Any) -> str:
    """16 hex digits of SHA-256 over a circuit file's text: what ``--resume`` compares, so that a
    different file under the same name (a user's file shadowing a built-in one, an edited
    circuit) is a different configuration.

    ``circuit``: a loaded :class:`~mapflow_tl.circuits.Circuit` (its ``path`` is read) or the
    path of a circuit ``.py`` file. The text is read with universal newlines, so a CRLF checkout
    of the same file has the same fingerprint. Only the file itself is hashed, not the modules it
    imports.
    """
    path = Path(getattr(circuit, "path", circuit))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read circuit file {path} to fingerprint it ({error})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def identity_differences(previous: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The :data:`IDENTITY_KEYS` on which two configurations differ, as "key: then, now" lines
    (both sides compared in their JSON form)."""
    previous, config = _jsonable(dict(previous)), _jsonable(dict(config))
    return [f"{key}: {previous.get(key)!r} then, {config.get(key)!r} now"
            for key in IDENTITY_KEYS if previous.get(key) != config.get(key)]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------------- the lock
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), telling a process
    apart from a later one that got the same pid; ``None`` where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class _FolderLock:
    """An exclusive lock on a run folder, held by this process (shared by its writers).

    The lock is ``OUT/run.lock``, ``flock``-ed while held, holding the holder's pid, host, start
    time. The kernel drops a ``flock`` when its process dies however it dies, so a killed run never
    leaves the folder stuck. Where the filesystem refuses ``flock``, the file's content decides:
    a holder on this host whose pid is gone (or is now another process) is stale and the lock is
    taken over; a live one, or one on another host that cannot be checked, is refused.
    """

    _held: dict[str, "_FolderLock"] = {}
    _guard = threading.Lock()

    def __init__(self, folder: Path) -> None:
        self.folder, self.path = folder, folder / LOCK_FILE
        self.key, self.pid, self.count, self.fd = os.path.realpath(folder), os.getpid(), 0, -1

    @classmethod
    def acquire(cls, folder: Path) -> "_FolderLock":
        key = os.path.realpath(folder)
        with cls._guard:
            lock = cls._held.get(key)
            if lock is None or lock.pid != os.getpid():  # a forked child holds nothing
                lock = cls(folder)
                lock._take()
                cls._held[key] = lock
            lock.count += 1
            return lock

    def release(self) -> None:
        with self._guard:
            self.count -= 1
            if self.count > 0 or self.fd < 0:
                return
            if self._held.get(self.key) is self:
                del self._held[self.key]
            try:  # remove the file only while it is still ours, then let the kernel lock go
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1

    def _take(self) -> None:
        for _ in range(20):  # retried only when a releasing holder removed the file meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                kernel = self._flock(fd)
                try:
                    current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    os.close(fd)
                    continue
                if not kernel:
                    holder = _read_holder(fd)
                    if holder and not self._stale(holder):
                        raise self._busy(holder, kernel=False)
                _write_holder(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return
        raise RunFolderError(f"cannot lock {self.folder}: {self.path} keeps being replaced; "
                             f"another process is opening the same run, choose another --out")

    def _flock(self, fd: int) -> bool:
        """Take the kernel lock; ``False`` where the filesystem has none (fall back to pids)."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(_read_holder(fd), kernel=True) from None
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise
        return True

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
            return not isinstance(pid, int)  # another host's process cannot be checked
        if pid == os.getpid() or not _alive(pid):
            return True
        started = holder.get("started_ticks")
        return started is not None and started != _process_start(pid)  # pid reused

    def _busy(self, holder: dict[str, Any] | None, *, kernel: bool) -> RunFolderError:
        holder = holder or {}
        who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
               + (f" (since {holder['since']})" if holder.get("since") else ""))
        fix = "wait for it to finish or stop it, or choose another --out"
        if not kernel and holder.get("host") != socket.gethostname():
            fix += f"; if that process is gone, delete {self.path}"
        return RunFolderError(f"{self.folder} is in use by another run: {who} holds "
                              f"{self.path}; {fix}")


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "started_ticks": _process_start(os.getpid())}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)


# ---------------------------------------------------------------------------- the run folder
def _count_key(table: str, row: Mapping[str, Any]) -> str:
    """What a completion marker counts a row under: its table, and its circuit where it has one
    (rows of one sample and circuit are written together)."""
    circuit = row.get("circuit")
    return table if circuit is None else f"{table}/{circuit}"


def _shard_folders(folder: Path) -> list[Path]:
    return sorted(path for path in (Path(folder) / SHARDS_DIR).glob("rank-*") if path.is_dir())


def _check_ours(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise RunFolderError(f"{out}: resume and overwrite exclude each other; pass one of them")
    try:
        outputs.check_folder(out, "run")
    except outputs.OutputError as error:
        raise RunFolderError(str(error)) from None


def check_run_folder(out: str | Path, config: Mapping[str, Any], *, resume: bool,
                     overwrite: bool) -> None:
    """Refuse, before anything is written, what a run with ``config`` may not do in ``out``: a
    folder that is not a run of ours (:func:`mapflow_tl.outputs.check_folder`), a run there
    without ``resume`` or ``overwrite``, or a resume whose :data:`IDENTITY_KEYS` differ from
    the run's own or from any of its rank shards' (a run split over another number of ranks).

    Every rank of a multi-rank run calls it on the top folder before any rank writes, so that
    they all refuse together; a rank's own shard folder is checked again by its writer."""
    out = Path(out)
    _check_ours(out, resume=resume, overwrite=overwrite)
    configs = ([(out, read_run_config(out))] if (out / CONFIG_FILE).is_file() else [])
    configs += [(shard, read_run_config(shard)) for shard in _shard_folders(out)
                if (shard / CONFIG_FILE).is_file()]
    if not configs or overwrite:
        return
    if not resume:
        raise RunFolderError(f"{out} already holds a run; pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")
    for folder, previous in configs:
        differences = identity_differences(previous, config)
        if differences:
            where = "" if folder == out else f" (its shard {folder.name})"
            raise RunFolderError(f"cannot resume {out}{where} with a different configuration: "
                                 + "; ".join(differences)
                                 + "; choose another --out for the new configuration")


def _previous_config(folder: Path) -> dict[str, Any] | None:
    """The configuration of the run in ``folder``: its ``run.json``, or while a run of several
    ranks has not been merged yet, that of its first rank's shard."""
    if (folder / CONFIG_FILE).is_file():
        return read_run_config(folder)
    ranks = sorted((folder / SHARDS_DIR).glob(f"rank-*/{CONFIG_FILE}"))
    return read_run_config(ranks[0].parent) if ranks else None


class RunWriter:
    """Writes one run's configuration and its tables into ``out``, holding the folder's lock.

    The constructor checks the folder before touching anything: a non-empty folder that is not
    a run of ours is refused; a run of ours needs ``resume=True`` (or ``overwrite=True`` to
    replace its tables) and, to resume, the same :data:`IDENTITY_KEYS`. It then takes the
    folder's lock (another process writing the same run is refused with its pid), drops damaged
    last lines and writes ``run.json``. The lock is held until :meth:`finish` or :meth:`close`
    (or the writer is garbage collected, or the process ends, however it ends); a
    :meth:`write` after :meth:`finish` takes it again. Use it as a context manager to release
    the lock on any exit. Writers of one process on one folder share the lock.

    ``columns``: table name → its columns, for the header of a table's CSV when it has no rows
    (default: the ``skipped`` table's :data:`SKIPPED_COLUMNS`).

    Every refusal and every failing write to the folder (read-only, full disk) is a
    :class:`RunFolderError` naming the folder and the fix.
    """

    def __init__(self, out: str | Path, config: dict[str, Any], *, resume: bool = False,
                 overwrite: bool = False,
                 columns: Mapping[str, Sequence[str]] | None = None) -> None:
        self.out = Path(out)
        self.columns = {"skipped": SKIPPED_COLUMNS, **(columns or {})}
        #: Damaged last lines dropped on resume, per table (a crash's torn write).
        self.repaired: dict[str, int] = {}
        self._lock: _FolderLock | None = None
        _check_ours(self.out, resume=resume, overwrite=overwrite)   # before the lock file
        config = _jsonable(config)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = _FolderLock.acquire(self.out)
            self._open(config, resume=resume, overwrite=overwrite)
        except BaseException as error:
            self.close()
            if isinstance(error, OSError):
                raise _write_error(self.out, error) from error
            raise
        self._tables: set[str] = {path.stem for path in self.out.glob("*.jsonl")
                                  if path.name in self._files}
        #: Rows written by this process, per sample: {sample: {"table" or "table/circuit": n}}.
        self._written: dict[str, dict[str, int]] = {}

    def _open(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        """Under the lock: compare with the run already there (again: another process may have
        written it since the constructor's check), repair its tables, write ``run.json`` with
        the manifest of the files the run owns."""
        check_run_folder(self.out, config, resume=resume, overwrite=overwrite)
        previous = _previous_config(self.out)
        #: Resuming a run written before run.json listed its files (and every command marked
        #: its samples done).
        self._legacy = previous is not None and not overwrite \
            and outputs.FILES_KEY not in previous
        kept: list[str] = []
        if previous is not None and overwrite:
            outputs.remove_owned(self.out, "run")
        elif previous is not None:
            # the manifest's files, and a table of ours that a write cut off before it was
            # listed (the manifest is written first, but a crash cannot be argued with)
            kept = [name for name in sorted(set(outputs.owned_files(self.out, "run"))
                                            | {f"{table}.jsonl" for table in TABLES})
                    if (self.out / name).is_file()]
            for name in kept:
                if name.endswith(".jsonl"):
                    dropped = _drop_damaged_tail(self.out / name)
                    if dropped:
                        self.repaired[Path(name).stem] = dropped
        self.config = outputs.record(self.out, "run", kept,
                                     base={**config, "versions": package_versions()})
        self._files = set(self.config[outputs.FILES_KEY])

    def _own(self, *names: str) -> None:
        """Add files about to be written to the run's manifest (``run.json``): what
        ``--overwrite`` may remove later."""
        new = [name for name in names if name not in self._files]
        if new:
            self.config = outputs.record(self.out, "run", new)
            self._files.update(new)

    def record_config(self, extra: Mapping[str, Any]) -> None:
        """Add ``extra`` to ``run.json`` (what a run learns only as it runs: a search's split).
        Keys of the configuration a resume compares are refused."""
        clash = sorted(set(extra) & set(IDENTITY_KEYS))
        if clash:
            raise ValueError(f"record_config cannot change the run's identity keys {clash}")
        self._locked()
        self.config = outputs.record(self.out, "run", [],
                                     base={**self.config, **_jsonable(dict(extra))})

    def write_text(self, name: str, text: str) -> Path:
        """Write a file of the run's own (``name`` relative to the run folder, e.g. a discovered
        circuit ``circuits/x.py``), listed in the manifest first so that ``--overwrite`` removes
        it; a file already there that the run does not own is refused, never replaced."""
        path = outputs._inside(self.out, name)
        if path is None:
            raise RunFolderError(f"{name!r} is not a path inside the run folder {self.out}")
        if path.exists() and name not in self._files:
            raise RunFolderError(f"{path} exists and is not one of this run's files; nothing "
                                 f"was written: remove it yourself or choose another --out")
        self._locked()
        self._own(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
        except OSError as error:
            raise _write_error(self.out, error) from error
        return path

    # ---------------------------------------------------------------- the lock's lifetime
    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _locked(self) -> None:
        if self._lock is None:
            try:
                self._lock = _FolderLock.acquire(self.out)
            except OSError as error:
                raise _write_error(self.out, error) from error

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    # -------------------------------------------------------------------------- the rows
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
        self._locked()
        try:
            _rewrite_jsonl(path, kept)
        except OSError as error:
            raise _write_error(self.out, error) from error

    def row_counts(self, sample: Any) -> str:
        """What a completion marker records of the rows this process wrote for ``sample``: JSON
        text of {"table" or "table/circuit": number of rows} (text, so every table format
        stores it as one column). :meth:`verified` checks the tables against it on resume."""
        return json.dumps(dict(sorted(self._written.get(str(sample), {}).items())))

    def verified(self, marker: str, tables: Sequence[str]) -> set[tuple]:
        """The samples marked done in ``marker`` (e.g. ``samples``) whose rows are all in
        ``tables``, as :meth:`completed` keys; what ``--resume`` skips.

        A marker records its sample's rows per table and circuit (:meth:`row_counts`). A sample
        whose rows no longer match — rows deleted by hand, a table cut short or replaced —
        loses its marker and its remaining rows here, so the run computes it again; so do rows
        of samples without a marker (a crash between the rows and the marker) and a repeated
        marker. Markers written before counts were recorded are trusted. The samples redone
        are in :attr:`redone`."""
        tables = list(tables)
        self.redone: list[str] = []
        if self._legacy and not (self.out / f"{marker}.jsonl").is_file() and tables:
            # a run from before manifests and markers (prune, attention): as it was resumed then,
            # the samples in its first table are done
            return self.completed(tables[0], "sample")
        actual: dict[str, dict[str, int]] = {}
        for table in tables:
            for row in read_table(self.out, table):
                if row.get("sample") is not None:
                    counts = actual.setdefault(str(row["sample"]), {})
                    counts[_count_key(table, row)] = counts.get(_count_key(table, row), 0) + 1
        markers, kept, done = read_table(self.out, marker), [], set()
        for row in markers:
            sample = str(row.get("sample"))
            if sample in done:
                continue
            expected = row.get("row_counts")
            if expected is not None:
                try:
                    expected = json.loads(expected) if isinstance(expected, str) else expected
                    wanted = {key: int(n) for key, n in dict(expected).items()
                              if key.split("/", 1)[0] in tables}
                except (ValueError, TypeError):
                    wanted = None
                if wanted != actual.get(sample, {}):
                    self.redone.append(sample)
                    continue
            done.add(sample)
            kept.append(row)
        if len(kept) != len(markers):
            self._locked()
            _rewrite_jsonl(self.out / f"{marker}.jsonl", kept)
        keys = {self.key({"sample": sample}, "sample") for sample in done}
        for table in tables:
            self.retain(table, "sample", keys)
        return keys

    @staticmethod
    def key(row: dict[str, Any], *keys: str) -> tuple:
        """The key of a row (or of a sample's fields) as :meth:`completed` reports it."""
        return tuple(json.dumps(row.get(k), default=str) for k in keys)

    def write(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to ``<table>.jsonl``, durably (flush + fsync) before returning, in one
        write call, so that a killed process does not leave only some of the rows written
        together (the completion markers of samples computed together: a resume then computes
        the same group again). A machine crash can still tear the write; resume drops a damaged
        last line and redoes the samples whose markers are missing."""
        rows = list(rows)
        self._tables.add(table)
        if not rows:
            return
        payload = "".join(_json_line(table, row) for row in rows)
        self._locked()
        for row in rows:
            if row.get("sample") is not None:
                counts = self._written.setdefault(str(row["sample"]), {})
                counts[_count_key(table, row)] = counts.get(_count_key(table, row), 0) + 1
        try:
            self._own(f"{table}.jsonl")
            with open(self.out / f"{table}.jsonl", "a", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise _write_error(self.out, error) from error

    def finish(self) -> None:
        """Write every table as CSV and Parquet next to its JSONL, then release the lock."""
        from .results import write_parquet

        self._locked()
        try:
            self._own(*(f"{table}.{ext}" for table in sorted(self._tables)
                        for ext in ("jsonl", "csv", "parquet")))
            for table in sorted(self._tables):
                write_csv(self.out / f"{table}.csv", read_table(self.out, table),
                          self.columns.get(table, ()))
                write_parquet(self.out, table)
        except OSError as error:
            raise _write_error(self.out, error) from error
        finally:
            self.close()


def _json_line(table: str, row: dict[str, Any]) -> str:
    """One row as a JSON line. NaN and inf are refused (JSON has neither; Python would write
    the invalid tokens ``NaN``/``Infinity`` that other readers reject), naming the column, so
    that no row of such numbers is ever presented as a result."""
    try:
        return json.dumps(row, default=str, allow_nan=False) + "\n"
    except ValueError:
        columns = [key for key, value in row.items() if not _finite(value)]
        sample = f" of sample {row['sample']!r}" if "sample" in row else ""
        raise NonFiniteError(
            f"table {table!r}: the row{sample} holds NaN or inf in {columns}, which JSON cannot "
            f"hold; nothing of it was written: the computation produced non-finite numbers "
            f"(a NaN weight, a float16 overflow or a hook writing NaN)") from None


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item) for item in value)
    return True


def _write_error(out: Path, error: OSError) -> RunFolderError:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        fix = "free some space and continue with --resume (rows written so far are kept)"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a writable --out"
    else:
        fix = "check the folder, then continue with --resume or choose another --out"
    where = f" ({error.filename})" if error.filename else ""
    return RunFolderError(f"cannot write the run folder {out}{where}: {reason}; {fix}")


def _rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a table with ``rows`` atomically: a temporary file, fsync, then rename."""
    temporary = path.with_suffix(".jsonl.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _row(line: bytes | str) -> dict[str, Any] | None:
    """The JSON object on a line, or ``None`` when the line is not one."""
    try:
        row = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _drop_damaged_tail(path: Path) -> int:
    """Cut a table back to its last line that is a complete JSON object: a crash can leave half
    a row without its newline, and a torn write can leave a line of garbage (NUL bytes, a
    fragment) or a JSON value that is not a row. Returns the number of lines dropped."""
    data = path.read_bytes()
    keep, dropped = len(data), 0
    if data and not data.endswith(b"\n"):
        keep, dropped = data.rfind(b"\n") + 1, 1
    while keep:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        line = data[start:keep]
        if line.strip() and _row(line) is not None:
            break
        dropped += bool(line.strip())
        keep = start
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return dropped


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """Rows as CSV (lists and dicts as JSON), written atomically; ``columns`` come first and make
    the header of a table without rows."""
    columns = list(columns)
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
    """Rows of ``<table>.jsonl`` (an empty list when the table was not written). Damaged last
    lines — a write cut off by a crash, lines that are not JSON objects — are ignored, as
    ``--resume`` drops them; a damaged line before a good row is a :class:`RunFolderError`
    naming it."""
    path = Path(run_dir) / f"{table}.jsonl"
    if not path.is_file():
        return []
    parsed = [(number, _row(line)) for number, line in
              enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
              if line.strip()]
    while parsed and parsed[-1][1] is None:  # the damaged tail that --resume drops
        parsed.pop()
    rows = []
    for number, row in parsed:
        if row is None:
            raise RunFolderError(f"{path}: line {number} is not a JSON object row (a damaged "
                                 f"file): delete that line to keep the others, or rerun into "
                                 f"another --out")
        rows.append(row)
    return rows


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a mapflow-tl run directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read ({error}); it is damaged: restore it or "
                             f"start the run again in another --out") from None
    if not isinstance(config, dict):
        raise RunFolderError(f"{path} holds {type(config).__name__}, not a run configuration; "
                             f"restore it or start the run again in another --out")
    return config


# ---------------------------------------------------------------------------- skipped rows
def skipped_row(*, reason: str, stage: str, sample: str | None = None, task: str | None = None,
                file: str | None = None, index: int | str | None = None,
                field: str | None = None) -> dict[str, Any]:
    """One row of the ``skipped`` table, with exactly :data:`SKIPPED_COLUMNS`."""
    row = {"sample": sample, "task": task, "file": None if file is None else str(file),
           "index": index, "field": field, "reason": str(reason), "stage": stage}
    return {column: row[column] for column in SKIPPED_COLUMNS}


def skipped_at_load(skipped: Any) -> dict[str, Any]:
    """The row of an entry a non-strict load left out (a
    :class:`~mapflow_tl.data.loaders.Skipped`: file, index, field, reason, task)."""
    return skipped_row(reason=skipped.reason, stage="load", task=skipped.task, file=skipped.file,
                       index=skipped.index, field=skipped.field)


def skipped_at_prepare(sample: Any, error: BaseException) -> dict[str, Any]:
    """The row of a sample that could not be prepared: its id, task and entry (``entry``, or
    ``None`` for a sample built by hand), the file at fault (the error's ``path`` when it names
    one, else the sample's video) and the error's ``field``."""
    path = getattr(error, "path", None)
    video = getattr(sample, "video", None)
    file = path if path is not None else (video if isinstance(video, (str, Path)) else None)
    return skipped_row(reason=str(error), stage="prepare",
                       sample=str(getattr(sample, "id", "") or "") or None,
                       task=getattr(sample, "task", None), file=file,
                       index=getattr(sample, "entry", None), field=getattr(error, "field", None))


def describe_skipped(row: Mapping[str, Any]) -> str:
    """One line for a skipped row: "<file> entry <index> field '<field>' (sample <id>):
    <reason>"."""
    where = str(row.get("file") or row.get("sample") or "?")
    if row.get("index") is not None:
        where += f" entry {row['index']}"
    if row.get("field"):
        where += f" field '{row['field']}'"
    if row.get("sample") and str(row.get("sample")) not in where:
        where += f" (sample {row['sample']})"
    return f"{where}: {row.get('reason')}"


# ---------------------------------------------------------------------------------- shards
def merge_shards(out: str | Path, sample_order: list[str], world_size: int | None = None
                 ) -> list[str]:
    """Merge the per-rank shards ``out/shards/rank-*/<table>.jsonl`` into ``out/<table>.jsonl``,
    rows ordered by their sample's position in ``sample_order`` (rows of one sample keep their
    order), written atomically and added to the run's manifest. Returns the merged table names.

    Never duplicates: only the shards of ranks below ``world_size`` (default: all) count, and
    each sample's rows come from one shard, the first (by rank) that holds it — a shard left by
    a run over more ranks, or a sample computed by two ranks, cannot add its rows twice."""
    out = Path(out)
    shard_dirs = _shard_folders(out)
    if world_size is not None:
        shard_dirs = [folder for folder in shard_dirs
                      if folder.name[len("rank-"):].isdigit()
                      and int(folder.name[len("rank-"):]) < world_size]
    position = {sample: i for i, sample in enumerate(sample_order)}
    tables = sorted({path.stem for folder in shard_dirs for path in folder.glob("*.jsonl")
                     if path.name in outputs.owned_files(folder, "run")})
    by_shard = {folder: {table: read_table(folder, table) for table in tables}
                for folder in shard_dirs}
    owner: dict[str, Path] = {}
    for folder in shard_dirs:
        for rows in by_shard[folder].values():
            for row in rows:
                if row.get("sample") is not None:
                    owner.setdefault(str(row["sample"]), folder)
    for table in tables:
        rows = [row for folder in shard_dirs for row in by_shard[folder][table]
                if row.get("sample") is None or owner[str(row["sample"])] == folder]
        rows.sort(key=lambda row: position.get(str(row.get("sample")), len(position)))
        outputs.record(out, "run", [f"{table}.jsonl", f"{table}.csv"])
        _rewrite_jsonl(out / f"{table}.jsonl", rows)
        write_csv(out / f"{table}.csv", rows, TABLES.get(table, ()))
    return tables
