"""Reading videos, frame folders and GIFs, and choosing which frames a VideoLLM sees.

Uniform sampling follows the evaluation code the paper inherits from VideoChat2 / MVBench (and that
TVBench ships unchanged, ``vqa_dataset.py``: ``get_index``): the frame range is cut into N equal
segments and the frame at the middle of each segment is taken,

    seg_size = (end_idx - start_idx) / N
    index_i  = int(start_idx + seg_size / 2 + round(seg_size * i))        i = 0 .. N-1

where ``start_idx = max(first, round(start_s * fps))`` and
``end_idx = min(round(end_s * fps), last)`` (no bounds: the whole file). ``round`` is NumPy's
round-half-to-even, as in the reference. ``first`` is 0 for video files and GIFs and 1 for frame
folders, whose reference numbering starts at ``00001.jpg``; ``last`` is the highest frame number.
Indices returned here are always 0-based positions in the file.

Video files (mp4, webm, avi, mkv, anything FFmpeg opens) are read with decord; GIFs and frame
folders with Pillow. GIFs are timed at 25 fps and frame folders at 3 fps unless told otherwise, as
in the reference (MVBench's TVQA frames are extracted at 3 fps).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import DataError

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "FRAME_FOLDER_FPS",
    "GIF_FPS",
    "IMAGE_SUFFIXES",
    "ShortVideoPolicy",
    "VideoClip",
    "VideoInfo",
    "fps_indices",
    "probe_video",
    "read_sample_video",
    "read_video",
    "segment_midpoints",
    "uniform_indices",
]

DEFAULT_NUM_FRAMES = 8
FRAME_FOLDER_FPS = 3.0
GIF_FPS = 25.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

ShortVideoPolicy = Literal["repeat", "error"]


@dataclass(frozen=True)
class VideoInfo:
    """What opening a video tells without decoding it: frame count, frame rate and kind.

    ``kind`` is "video" (decord), "gif" or "frames" (a folder of images).
    """

    path: Path
    kind: str
    num_frames: int
    fps: float

    @property
    def duration(self) -> float:
        """Length in seconds, ``num_frames / fps``."""
        return self.num_frames / self.fps


@dataclass(frozen=True)
class VideoClip:
    """Sampled frames of one video.

    - ``frames``: uint8 ``[T, H, W, 3]`` RGB.
    - ``indices``: int64 ``[T]``, 0-based frame positions in the file (repeats possible, see
      ``short_video`` in :func:`read_video`).
    - ``timestamps``: float64 ``[T]``, seconds from the start of the file.
    - ``info``: the whole file's :class:`VideoInfo`.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo

    @property
    def num_frames(self) -> int:
        """T, the number of sampled frames."""
        return int(self.frames.shape[0])


def segment_midpoints(start_idx: int, end_idx: int, num_frames: int) -> np.ndarray:
    """The reference ``get_index`` core: midpoints of ``num_frames`` equal segments of
    ``[start_idx, end_idx]``, as int64 ``[num_frames]`` (see the module docstring)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    seg_size = float(end_idx - start_idx) / num_frames
    return np.array(
        [int(start_idx + seg_size / 2 + np.round(seg_size * i)) for i in range(num_frames)],
        dtype=np.int64,
    )


def _index_range(
    info: VideoInfo, bounds: tuple[float, float] | None
) -> tuple[int, int, int]:
    """(first, start_idx, end_idx) in the file's own numbering for optional (start_s, end_s)."""
    first = 1 if info.kind == "frames" else 0
    last = first + info.num_frames - 1
    if bounds is None:
        return first, first, last
    start_s, end_s = float(bounds[0]), float(bounds[1])
    if not np.isfinite(start_s) or np.isnan(end_s) or end_s < start_s:
        raise DataError(
            f"{info.path}: bounds start={start_s} end={end_s} s are not an increasing pair of "
            "seconds; fix the sample's start/end fields",
            path=info.path,
            field="start/end",
        )
    start_idx = max(first, int(np.round(start_s * info.fps)))
    end_idx = last if end_s == np.inf else min(int(np.round(end_s * info.fps)), last)
    if start_idx > end_idx:
        raise DataError(
            f"{info.path}: bounds [{start_s}, {end_s}] s select no frame of a video of "
            f"{info.num_frames} frames at {info.fps:g} fps ({info.duration:.2f} s); fix the "
            "sample's start/end fields or check that the file is complete",
            path=info.path,
            field="start/end",
        )
    return first, start_idx, end_idx


def uniform_indices(
    info: VideoInfo,
    num_frames: int = DEFAULT_NUM_FRAMES,
    bounds: tuple[float, float] | None = None,
    short_video: ShortVideoPolicy = "repeat",
) -> np.ndarray:
    """0-based frame positions ``[num_frames]`` chosen by segment midpoints (module docstring).

    A range with fewer than ``num_frames`` frames is "short": ``short_video="repeat"`` keeps the
    reference behaviour (the midpoints land on the same frame more than once, so the clip still has
    exactly ``num_frames`` frames); ``"error"`` raises :class:`DataError`.
    """
    if short_video not in ("repeat", "error"):
        raise ValueError(f"short_video must be 'repeat' or 'error', got {short_video!r}")
    first, start_idx, end_idx = _index_range(info, bounds)
    available = end_idx - start_idx + 1
    if available < num_frames and short_video == "error":
        where = "" if bounds is None else f" between {bounds[0]} s and {bounds[1]} s"
        raise DataError(
            f"{info.path}: only {available} frame(s){where}, fewer than the {num_frames} "
            "requested; sample fewer frames or pass short_video='repeat' to repeat frames",
            path=info.path,
        )
    return segment_midpoints(start_idx, end_idx, num_frames) - first


def fps_indices(
    info: VideoInfo,
    fps: float,
    bounds: tuple[float, float] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """0-based frame positions at ``fps`` frames per second over the (bounded) range.

    Frames are taken every ``info.fps / fps`` source frames from the first frame of the range
    (rounded to the nearest frame; a target rate above the source rate gives every frame once).
    When that is more than ``max_frames``, ``max_frames`` frames are sampled uniformly instead, as
    VideoLLM evaluation code does for long videos. Returns int64 ``[T]``, T >= 1.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    first, start_idx, end_idx = _index_range(info, bounds)
    step = max(info.fps / fps, 1.0)
    count = int(np.floor((end_idx - start_idx) / step + 1e-9)) + 1
    if max_frames is not None and count > max_frames:
        return segment_midpoints(start_idx, end_idx, max_frames) - first
    indices = start_idx + np.round(np.arange(count) * step).astype(np.int64)
    return np.minimum(indices, end_idx) - first


def _kind(path: Path) -> str:
    if path.is_dir():
        return "frames"
    if path.suffix.lower() == ".gif":
        return "gif"
    return "video"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _frame_files(path: Path) -> list[Path]:
    files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence decord's C++ log lines (written straight to file descriptor 2) while it opens or
    decodes a file; its errors still arrive as exceptions, which are turned into DataError."""
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_decord(path: Path, num_threads: int):
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        with _quiet_stderr():
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
            count = len(reader)
            fps = float(reader.get_avg_fps())
    except Exception as error:  # decord raises RuntimeError or its own DECORDError
        raise DataError(
            f"{path}: cannot open the video ({_first_line(error)}); the file is corrupt, "
            "truncated or in a format FFmpeg cannot read: download it again",
            path=path,
        ) from error
    if count < 1 or not fps > 0:
        raise DataError(
            f"{path}: the video reports {count} frames at {fps} fps; the file is empty or "
            "truncated: download it again",
            path=path,
        )
    return reader, count, fps


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def probe_video(
    path: str | Path,
    *,
    frame_folder_fps: float = FRAME_FOLDER_FPS,
    gif_fps: float = GIF_FPS,
) -> VideoInfo:
    """Open a video file, GIF or frame folder cheaply (container and frame count, no decoding of
    video frames) and return its :class:`VideoInfo`; :class:`DataError` naming the file when it is
    missing, empty or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such video file or frame folder; check the data root and that the "
            "benchmark's videos are downloaded and unpacked",
            path=path,
        )
    kind = _kind(path)
    if kind == "frames":
        files = _frame_files(path)
        if not files:
            raise DataError(
                f"{path}: the frame folder holds no images ({', '.join(IMAGE_SUFFIXES)})",
                path=path,
            )
        return VideoInfo(path, kind, len(files), float(frame_folder_fps))
    if kind == "gif":
        from PIL import Image

        try:
            with Image.open(path) as image:
                count = int(getattr(image, "n_frames", 1))
        except Exception as error:
            raise DataError(
                f"{path}: cannot open the GIF ({_first_line(error)}); the file is corrupt or "
                "truncated: download it again",
                path=path,
            ) from error
        return VideoInfo(path, kind, count, float(gif_fps))
    reader, count, fps = _open_decord(path, num_threads=1)
    del reader
    return VideoInfo(path, kind, count, fps)


def _decode_frames(info: VideoInfo, indices: np.ndarray, num_threads: int) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` for 0-based ``indices`` (repeats allowed)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    path = info.path
    try:
        if info.kind == "video":
            reader, _, _ = _open_decord(path, num_threads)
            with _quiet_stderr():
                frames = reader.get_batch([int(i) for i in unique]).asnumpy()
        elif info.kind == "gif":
            from PIL import Image, ImageSequence

            wanted = set(int(i) for i in unique)
            picked = {}
            with Image.open(path) as image:
                for position, frame in enumerate(ImageSequence.Iterator(image)):
                    if position in wanted:
                        picked[position] = np.asarray(frame.convert("RGB"))
            frames = np.stack([picked[int(i)] for i in unique])
        else:
            from PIL import Image

            files = _frame_files(path)
            arrays = []
            for i in unique:
                with Image.open(files[int(i)]) as image:
                    arrays.append(np.asarray(image.convert("RGB")))
            frames = np.stack(arrays)
    except DataError:
        raise
    except Exception as error:
        if "DECORDArrayCopyFromTo" in str(error):
            # decord 0.6 mis-sizes rows of some narrow videos (widths 16, 24, 48, 72 seen)
            raise DataError(
                f"{path}: decord cannot copy out frames of this small size ({_first_line(error)}); "
                "re-encode the video at a width of at least 80 pixels (or 32, 64)",
                path=path,
            ) from error
        raise DataError(
            f"{path}: cannot decode frames {unique.tolist()} ({_first_line(error)}); the file is "
            "corrupt or truncated: download it again",
            path=path,
        ) from error
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(unique):
        raise DataError(
            f"{path}: decoded frames have shape {tuple(frames.shape)}, expected "
            f"[{len(unique)}, H, W, 3]; the file is corrupt or its frames differ in size",
            path=path,
        )
    return np.ascontiguousarray(frames[inverse.reshape(-1)], dtype=np.uint8)


def read_video(
    path: str | Path,
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    bounds: tuple[float, float] | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    short_video: ShortVideoPolicy = "repeat",
    frame_folder_fps: float = FRAME_FOLDER_FPS,
    gif_fps: float = GIF_FPS,
    num_threads: int = 1,
) -> VideoClip:
    """Read a video file, GIF or frame folder and sample frames from it.

    By default ``num_frames`` frames are taken at segment midpoints (the paper's sampling, module
    docstring); with ``fps`` set, frames are taken at that rate instead (``num_frames`` is then
    ignored, ``max_frames`` caps the count). ``bounds`` = (start, end) in seconds restricts
    sampling to that part of the file (``end`` may be ``inf``: to the end). ``short_video`` says
    what to do when the range holds fewer than ``num_frames`` frames ("repeat": repeat frames,
    reference behaviour; "error": raise).

    Returns a :class:`VideoClip` with frames uint8 ``[T, H, W, 3]``, 0-based ``indices [T]`` and
    ``timestamps [T]`` in seconds (frame folders: frame number / fps, the reference's numbering).
    Raises :class:`DataError` naming the file when it is missing, corrupt, truncated or unreadable.
    """
    info = probe_video(path, frame_folder_fps=frame_folder_fps, gif_fps=gif_fps)
    if fps is None:
        indices = uniform_indices(info, num_frames, bounds, short_video)
    else:
        indices = fps_indices(info, fps, bounds, max_frames)
    frames = _decode_frames(info, indices, num_threads)
    first = 1 if info.kind == "frames" else 0
    timestamps = (indices + first).astype(np.float64) / info.fps
    return VideoClip(frames=frames, indices=indices, timestamps=timestamps, info=info)


def read_sample_video(sample, num_frames: int = DEFAULT_NUM_FRAMES, **options) -> VideoClip:
    """:func:`read_video` for a benchmark :class:`~mapflow_tl.data.benchmarks.Sample`, with its
    start/end bounds applied. ``options`` go to :func:`read_video`."""
    return read_video(sample.video, num_frames, bounds=sample.bounds, **options)
