"""The frames of a sample: checked (uint8 RGB ``[T, H, W, 3]``, a frame count the model takes)
and, for a video file, sampled with the paper's segment midpoints or linspace
(:mod:`mapflow_tl.data.video`; the official VideoLLaMA3 runs use linspace).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, UInt8

from ..errors import InputError

__all__ = ["check_frames", "load_frames", "load_frames_and_context", "evenly_timed"]


def check_frames(
    frames: Any, *, min_frames: int = 1, max_frames: int | None = None, what: str = "video"
) -> UInt8[np.ndarray, "T H W 3"]:
    """Validate frames: a uint8 array ``[T, H, W, 3]`` (RGB) with ``min_frames ≤ T ≤ max_frames``.

    Torch tensors are accepted and converted. Errors say what was expected and what came.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise InputError(f"{what}: frames must be a uint8 numpy array [T, H, W, 3], got "
                         f"{type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise InputError(f"{what}: frames must be uint8 (0..255 RGB), got dtype {frames.dtype}; "
                         f"convert with (frames * 255).round().astype(np.uint8) if they are "
                         f"floats in [0, 1]")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{what}: frames must have shape [T, H, W, 3] (RGB, channels last), got "
                         f"{tuple(frames.shape)}")
    count = frames.shape[0]
    if count < min_frames or (max_frames is not None and count > max_frames):
        wanted = (f"exactly {min_frames}" if max_frames == min_frames else
                  f"at least {min_frames}" if max_frames is None else
                  f"{min_frames} to {max_frames}")
        raise InputError(f"{what}: the model needs {wanted} frames, got {count}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise InputError(f"{what}: frames of {frames.shape[1]}×{frames.shape[2]} pixels are too "
                         f"small")
    return np.ascontiguousarray(frames)


def evenly_timed(indices: np.ndarray, n_frames: int, fps: float,
                 bounds: tuple[float, float] | None) -> Float[np.ndarray, " T"]:
    """Timestamps of sampled frames as the official VideoLLaMA3 path times a video file's decoded
    frames: evenly over the clip, ``np.linspace(start, start + duration, n)[i]`` for the i-th of
    the n decoded frames (VideoLLaMA3 ``mm_utils.load_video`` with ``fps=None``), the clip being
    the whole file (duration n_frames / fps) or its [start, end] bounds."""
    start, duration = 0.0, n_frames / fps
    first, last = 0, n_frames - 1
    if bounds is not None:
        start = max(0.0, float(bounds[0]))
        duration = min(duration, float(bounds[1])) - start
        first = max(0, int(np.round(start * fps)))
        last = min(int(np.round(float(bounds[1]) * fps)), n_frames - 1) if math.isfinite(
            float(bounds[1])) else n_frames - 1
    count = last - first + 1
    step = duration / (count - 1) if count > 1 else 0.0
    return start + (np.asarray(indices, dtype=np.float64) - first) * step


def load_frames(
    sample: Any, *, num_frames: int, min_frames: int = 1, max_frames: int | None = None,
    sampler: str = "midpoints",
) -> tuple[UInt8[np.ndarray, "T H W 3"], Float[np.ndarray, " T"] | None]:
    """The frames of a sample and their timestamps in seconds: its array as given (timestamps
    None), or ``num_frames`` frames sampled from its video file / frame folder / GIF by
    ``sampler`` (a name in :data:`~mapflow_tl.data.video.FRAME_SAMPLERS`: "midpoints", the
    paper's segment midpoints; "linspace", first to last frame, as TOMATO's code and the official
    VideoLLaMA3 runs; "longvideobench" and "video-chatgpt", those benchmarks' official rules),
    start/end bounds applied."""
    frames, timestamps, _ = load_frames_and_context(
        sample, num_frames=num_frames, min_frames=min_frames, max_frames=max_frames,
        sampler=sampler)
    return frames, timestamps


def load_frames_and_context(
    sample: Any, *, num_frames: int, min_frames: int = 1, max_frames: int | None = None,
    sampler: str = "midpoints",
) -> tuple[UInt8[np.ndarray, "T H W 3"], Float[np.ndarray, " T"] | None, str | None]:
    """:func:`load_frames` and the text the sample's subtitles put before the question for the
    sampled frames (``sample.subtitles``: :meth:`~mapflow_tl.data.subtitles.Subtitles.context`
    of the frame indices and the file's frame rate; ``None`` without subtitles). Subtitles need
    a video read from a file: frames given as an array have no times to match, unless
    ``sample.subtitles`` is already the chosen text (a string: an edit of a prepared sample's
    frames keeps the text chosen for them, ``Prepared.meta["subtitles"]``)."""
    video = sample.video
    what = f"sample {getattr(sample, 'id', '') or ''}".strip() or "video"
    timestamps = None
    context = None
    subtitles = getattr(sample, "subtitles", None)
    if isinstance(subtitles, str):
        context, subtitles = subtitles, None
    if isinstance(video, (str, Path)):
        from ..data.video import read_video

        start, end = getattr(sample, "start", None), getattr(sample, "end", None)
        bounds = None if start is None and end is None else (
            start if start is not None else 0.0, end if end is not None else math.inf)
        clip = read_video(video, num_frames, bounds=bounds, sampler=sampler,
                          duration=getattr(sample, "duration", None))
        frames, timestamps = clip.frames, np.asarray(clip.timestamps, dtype=np.float64)
        if sampler == "linspace" and clip.info.kind == "video":
            timestamps = evenly_timed(clip.indices, clip.info.num_frames, clip.info.fps, bounds)
        if subtitles is not None:
            context = subtitles.context(clip.indices, clip.info.fps)
        what = str(video)
    else:
        if subtitles is not None:
            raise InputError(f"{what}: subtitles are matched to the times of frames read from "
                             f"a video file; this sample's frames are an array")
        frames = video
    return (check_frames(frames, min_frames=min_frames, max_frames=max_frames, what=what),
            timestamps, context)
