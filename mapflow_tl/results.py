"""Results people can load: a run folder's tables as typed pandas DataFrames, stored as Parquet.

A run folder keeps every table as ``<table>.jsonl`` (appended per sample, the source of truth
while a run is going) and, once the run has finished, as ``<table>.parquet`` beside it: typed
columns, lists stored as lists, compressed — at paper scale the ``lens`` table holds tens of
thousands of rows per sample, and lists inside CSV cells are JSON strings nobody wants to parse.

    import mapflow_tl as mf
    run = mf.load_run("outputs/demo")
    run.flow.groupby(["curve", "layer"]).change_pred.mean()
    run["lens"].top_tokens.str[0]          # lists are Python lists
    run.config["model"]

The ``frames`` table holds small JPEG thumbnails of the frames a sample's token grids cover
(:func:`frame_thumbnails`), so that the report can draw the logit lens and attention over the
actual video from the run folder alone.

pandas and pyarrow are imported inside the functions: ``import mapflow_tl`` stays light.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .errors import InputError
from .runs import read_run_config, read_table
from .schema import TABLES

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = ["Run", "load_run", "read_rows", "table_frame", "write_parquet", "write_tables",
           "frame_thumbnails", "FRAMES_COLUMNS", "THUMBNAIL_SIZE"]

#: Columns of the ``frames`` table: one row per token frame of a sample. ``frame`` is the token
#: frame t of the segment map (the ``frame`` of ``lens`` / ``attention`` rows); ``source_frame``
#: the input frame whose pixels are shown (models that merge frames in time, Qwen2-VL's pairs,
#: show the first of the group); ``grid_h`` × ``grid_w`` the frame's token grid (for a frame
#: whose kept tokens have no grid, VideoLLaMA3's compressed frames, the full grid they come
#: from); ``coords`` the (h, w) of each of the frame's tokens in sequence order, only where the
#: order is not row-major (else null); ``image`` a ``data:image/jpeg;base64,…`` URI.
FRAMES_COLUMNS = TABLES["frames"]

#: Longest side of a thumbnail in pixels: big enough to recognise the scene under a 24×24 token
#: grid, small enough that a report with a few samples × 8–32 frames stays a few hundred kB.
THUMBNAIL_SIZE = 160


def _columns(table: str) -> tuple[str, ...]:
    return TABLES.get(table, ())


class Run(Mapping[str, "pd.DataFrame"]):
    """A loaded run folder: its tables as DataFrames (``run["flow"]`` or ``run.flow``), its
    ``run.json`` as :attr:`config` and its folder as :attr:`path`. Tables load on first access
    and are cached. Iterating gives the table names present in the folder."""

    def __init__(self, path: Path, config: dict[str, Any], names: list[str]) -> None:
        self.path, self.config, self._names = path, config, names
        self._frames: dict[str, pd.DataFrame] = {}

    def __getitem__(self, table: str) -> "pd.DataFrame":
        if table not in self._names:
            raise KeyError(f"{self.path} has no table {table!r}; it has {self._names}")
        if table not in self._frames:
            self._frames[table] = _read_frame(self.path, table)
        return self._frames[table]

    def __getattr__(self, table: str) -> "pd.DataFrame":
        if table.startswith("_"):
            raise AttributeError(table)
        try:
            return self[table]
        except KeyError as error:
            raise AttributeError(error.args[0]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._names))

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, command={self.config.get('command')!r}, "
                f"model={self.config.get('model')!r}, tables={self._names})")


def load_run(run_dir: str | Path) -> Run:
    """Load a run folder (``run.json`` plus its tables) as pandas DataFrames, one per table.

    Each table is read from ``<table>.parquet`` when that is at least as new as its
    ``<table>.jsonl`` (the finished run), else from the JSONL (a run still going, or one written
    before Parquet). Columns are typed either way: whole numbers ``int64`` (``Int64`` where a
    value is missing), flags ``bool`` (``boolean`` with missing values), reals ``float64``,
    lists Python lists. Column order follows :data:`mapflow_tl.schema.TABLES`.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    names = sorted({p.stem for p in path.glob("*.jsonl")}
                   | {p.stem for p in path.glob("*.parquet")})
    return Run(path, config, names)


def _fresh_parquet(run_dir: Path, table: str) -> Path | None:
    """``<table>.parquet`` when it is at least as new as ``<table>.jsonl`` (else None)."""
    jsonl, parquet = run_dir / f"{table}.jsonl", run_dir / f"{table}.parquet"
    if parquet.is_file() and (not jsonl.is_file()
                              or parquet.stat().st_mtime_ns >= jsonl.stat().st_mtime_ns):
        return parquet
    return None


def read_rows(run_dir: str | Path, table: str) -> list[dict[str, Any]]:
    """A table's rows as dicts, like :func:`~mapflow_tl.runs.read_table`, read from its Parquet
    file when that is fresh (several times faster than parsing JSON lines at paper scale)."""
    run_dir = Path(run_dir)
    parquet = _fresh_parquet(run_dir, table)
    if parquet is None:
        return read_table(run_dir, table)
    import pyarrow.parquet as pq

    return pq.read_table(parquet).to_pylist()


def _read_frame(run_dir: Path, table: str) -> "pd.DataFrame":
    parquet = _fresh_parquet(run_dir, table)
    if parquet is not None:
        import pandas as pd

        frame = pd.read_parquet(parquet, engine="pyarrow")
        for column in frame.columns:  # pyarrow gives list cells back as numpy arrays
            if frame[column].dtype == object:
                frame[column] = [_as_list(v) for v in frame[column]]
        return frame
    return table_frame(read_table(run_dir, table), table)


def _as_list(value: Any) -> Any:
    """A cell read back from Parquet as Python values (numpy arrays → lists, recursively)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [_as_list(v) for v in value]
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) \
        else value


def _column_dtype(values: list[Any]) -> str | None:
    """The pandas dtype of a column from its Python values (None: keep objects)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    missing = len(present) != len(values)
    if not present:
        return "object"
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return "boolean" if missing else "bool"
    if kinds == {int}:
        return "Int64" if missing else "int64"
    if kinds <= {int, float}:
        return "float64"
    if kinds == {str}:
        return None
    return None


def table_frame(rows: Iterable[Mapping[str, Any]], table: str = "") -> "pd.DataFrame":
    """Rows (dicts, as :func:`~mapflow_tl.runs.read_table` returns them) as a typed DataFrame:
    the columns of ``table`` in :data:`~mapflow_tl.schema.TABLES` order first (present even
    when there are no rows), then any others; dtypes as :func:`load_run` describes. A column
    mixing kinds (a sample index that is sometimes a number and sometimes a key) is stored as
    text."""
    import pandas as pd

    rows = list(rows)
    columns = list(_columns(table))
    for row in rows:
        columns += [key for key in row if key not in columns]
    data = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        dtype = _column_dtype(values)
        present = {type(v) for v in values if v is not None}
        if dtype is None and len(present) > 1 and not present <= {list, tuple}:
            values = [None if v is None else v if isinstance(v, str) else json.dumps(v)
                      for v in values]
        if dtype is None or dtype == "object":
            series = pd.Series(values, dtype=object)
            if present == {str}:
                series = series.astype("string") if any(v is None for v in values) \
                    else pd.Series(values, dtype=str)
        else:
            series = pd.Series(values, dtype=dtype)
        data[column] = series
    return pd.DataFrame(data, columns=columns)


def write_parquet(run_dir: str | Path, table: str) -> Path:
    """Write ``<table>.parquet`` beside ``<table>.jsonl`` (atomically: a temporary file, then
    rename) and return its path. Call it when a table is complete — :func:`write_tables` does
    every table of a finished run."""
    run_dir = Path(run_dir)
    frame = table_frame(read_table(run_dir, table), table)
    path = run_dir / f"{table}.parquet"
    temporary = path.with_suffix(".parquet.tmp")
    frame.to_parquet(temporary, engine="pyarrow", index=False)
    os.replace(temporary, path)
    return path


def write_tables(run_dir: str | Path) -> list[Path]:
    """Write every ``<table>.jsonl`` of a run folder as Parquet too (see :func:`write_parquet`);
    returns the paths written."""
    run_dir = Path(run_dir)
    return [write_parquet(run_dir, p.stem) for p in sorted(run_dir.glob("*.jsonl"))]


# ------------------------------------------------------------------------------ thumbnails
def _jpeg_data_uri(pixels: Any, size: int) -> tuple[str, int, int]:
    from PIL import Image

    image = Image.fromarray(pixels).convert("RGB")
    scale = size / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, optimize=True)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, image.width, image.height


def frame_thumbnails(x: Any, *, size: int = THUMBNAIL_SIZE) -> list[dict[str, Any]]:
    """Rows of the ``frames`` table for prepared sample ``x``: one small JPEG per token frame of
    ``x.segments`` (longest side ``size`` px), with the frame's token grid, so the report can
    draw token grids over the video. Empty when ``x.frames`` (uint8 ``[T, H, W, 3]``) is None.

    Token frame t of n shows input frame ``⌊t · T / n⌋`` — itself when every input frame has
    its own tokens, the first of each pair for models that merge two frames in time. A frame
    whose tokens are a subset of a grid (``grid`` None, the kept (h, w) in
    ``x.meta["kept_coords"][t]``) records the full grid (``x.meta["frame_grid"]``) and the kept
    coordinates; a frame without any grid is drawn as one row of tokens."""
    import numpy as np

    from .schema import sample_fields

    frames = getattr(x, "frames", None)
    token_frames = list(x.segments.frames)
    if frames is None or not token_frames:
        return []
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"x.frames has shape {frames.shape}; expected uint8 [T, H, W, 3]")
    if frames.dtype != np.uint8:
        raise InputError(f"x.frames has dtype {frames.dtype}; expected uint8 pixels 0-255")
    meta = getattr(x, "meta", {}) or {}
    kept = meta.get("kept_coords")
    full_grid = meta.get("frame_grid")
    rows = []
    for order, frame in enumerate(token_frames):
        source = min(len(frames) - 1, order * len(frames) // len(token_frames))
        coords = None
        if frame.grid is not None:
            grid_h, grid_w = frame.grid
        elif kept is not None and full_grid is not None and frame.index < len(kept):
            grid_h, grid_w = (int(v) for v in full_grid)
            coords = [[int(h), int(w)] for h, w in kept[frame.index]]
            if len(coords) != len(frame):
                raise ValueError(f"frame {frame.index} has {len(frame)} tokens but "
                                 f"meta['kept_coords'] lists {len(coords)}")
        else:
            grid_h, grid_w = 1, len(frame)
        image, width, height = _jpeg_data_uri(frames[source], size)
        rows.append({**sample_fields(x), "frame": frame.index, "source_frame": source,
                     "grid_h": grid_h, "grid_w": grid_w, "coords": coords,
                     "width": width, "height": height, "image": image})
    return rows
