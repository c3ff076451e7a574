"""Counterfactual videos and the alignment of two prepared inputs' positions.

Temporal questions are about the order, the count and the identity of frames, so the edits that
probe them are frame edits: reverse the clip, shuffle it, freeze one frame across it, drop or
duplicate a frame, swap two frames, or replace a frame with another video's. :func:`counterfactual`
makes the edited sample and records, for every frame of the edited clip, which frame of the
original it shows (:attr:`Counterfactual.origin`).

Patching between two runs needs positions that *mean the same thing* in both. :func:`align` maps
a named segment of one :class:`~mapflow_tl.segments.SegmentMap` onto another: frame tokens by
(frame, row, column) — through a frame correspondence when the frames were reordered — and text
spans by their offset inside the span of the same name. Where no such correspondence exists (grids
of different shapes, text spans of different lengths, a frame that came from another video) it
refuses with the reason instead of pairing raw positions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError
from .segments import Frame, SegmentMap, Span

__all__ = ["KINDS", "Counterfactual", "counterfactual", "align", "frame_segments"]

#: The frame edits :func:`counterfactual` makes.
KINDS = ("reverse", "shuffle", "freeze", "drop", "duplicate", "swap", "replace")


@dataclass(frozen=True)
class Counterfactual:
    """An edited sample and where its frames came from.

    ``sample`` is the edited :class:`~mapflow_tl.models.VideoSample` (frames as a uint8 array);
    ``original`` the unedited one with the same frames array the edit started from, so that both
    go through the model's preprocessing identically (prepare both from here, not from a video
    file that the model would sample again). ``origin[t]`` is the original frame shown at frame
    ``t`` of the edit, None where the frame came from another video (``replace``).
    """

    kind: str
    sample: Any
    original: Any
    origin: tuple[int | None, ...]

    def frame_map(self, direction: str = "to_original") -> dict[int, int]:
        """Input-frame correspondence for :func:`align`'s ``frames``.

        ``"to_original"``: edited frame → the original frame it shows (target = the edit,
        source = the original); ``"to_counterfactual"``: original frame → the first edited frame
        that shows it (target = the original). Frames with no counterpart are left out."""
        forward = {t: s for t, s in enumerate(self.origin) if s is not None}
        if direction == "to_original":
            return forward
        if direction == "to_counterfactual":
            inverse: dict[int, int] = {}
            for t, s in forward.items():
                inverse.setdefault(s, t)
            return inverse
        raise InputError(f"direction {direction!r} is not 'to_original' or 'to_counterfactual'")


def _frames_of(sample: Any, num_frames: int | None, sampler: str) -> tuple[np.ndarray, Any]:
    """The sample's frames and its subtitles as they stay with those frames: the text chosen for
    the sampled frames (a file's subtitles are matched once, to the original frames; an edit
    keeps that text, so only the video differs)."""
    from .models.frames import check_frames, load_frames_and_context

    video = sample.video
    subtitles = getattr(sample, "subtitles", None)
    if isinstance(video, np.ndarray) or hasattr(video, "detach"):
        return check_frames(video, what=f"sample {sample.id!r}"), subtitles
    if num_frames is None:
        raise InputError(f"sample {sample.id!r}: its video is a file; pass num_frames= (the number "
                         f"of frames the model samples, e.g. 8) so the edit works on those frames")
    frames, _, context = load_frames_and_context(
        sample, num_frames=num_frames,
        sampler=sampler or getattr(sample, "frame_sampler", None) or "midpoints")
    return frames, (subtitles if context is None else context)


def _frame_index(frame: Any, n_frames: int, kind: str) -> int:
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise InputError(f"counterfactual {kind!r} needs frame=<int>, got {frame!r}")
    if not 0 <= frame < n_frames:
        raise InputError(f"counterfactual {kind!r}: frame {frame} is outside the clip's "
                         f"{n_frames} frames (0..{n_frames - 1})")
    return int(frame)


def counterfactual(sample: Any, kind: str, *, seed: int = 0, frame: int | Sequence[int] = 0,
                   other: Any = None, num_frames: int | None = None,
                   sampler: str | None = None) -> Counterfactual:
    """The sample with its frames edited by ``kind`` (one of :data:`KINDS`).

    - ``reverse``: the frames in reverse order;
    - ``shuffle``: a seeded permutation (``seed``) other than the identity;
    - ``freeze``: frame ``frame`` repeated across the clip;
    - ``drop``: frame ``frame`` removed (one frame fewer);
    - ``duplicate``: frame ``frame`` shown twice in a row (one frame more);
    - ``swap``: the two frames ``frame=(a, b)`` exchanged;
    - ``replace``: frame ``frame`` replaced by frame ``frame`` of ``other`` (a sample or a frames
      array of the same frame size).

    A video file is read to ``num_frames`` frames with ``sampler`` first (the model's own
    count; default: the sample's benchmark rule, else the segment midpoints), its subtitles (if
    any) matched to those frames and kept as text with the edit; an array is used as given. The question, options and answer are kept: whether the
    answer still holds after the edit is the question being asked of the model.
    """
    from .models.videollm import as_video_sample

    if kind not in KINDS:
        raise InputError(f"counterfactual kind {kind!r} is not one of {KINDS}")
    sample = as_video_sample(sample)
    frames, subtitles = _frames_of(sample, num_frames, sampler)
    n = frames.shape[0]
    edited: np.ndarray
    if kind == "reverse":
        origin: list[int | None] = list(range(n - 1, -1, -1))
    elif kind == "shuffle":
        if n < 2:
            raise InputError(f"counterfactual 'shuffle' needs at least 2 frames, got {n}")
        rng = np.random.default_rng(seed)
        origin = list(range(n))
        while origin == list(range(n)):   # the identity would be no counterfactual at all
            origin = [int(i) for i in rng.permutation(n)]
    elif kind == "freeze":
        origin = [_frame_index(frame, n, kind)] * n
    elif kind == "drop":
        if n < 2:
            raise InputError("counterfactual 'drop' needs at least 2 frames, got 1")
        t = _frame_index(frame, n, kind)
        origin = [i for i in range(n) if i != t]
    elif kind == "duplicate":
        t = _frame_index(frame, n, kind)
        origin = list(range(t + 1)) + list(range(t, n))
    elif kind == "swap":
        if isinstance(frame, (int, np.integer)) or len(frame) != 2:
            raise InputError(f"counterfactual 'swap' needs frame=(a, b), two frames, got {frame!r}")
        a, b = (_frame_index(f, n, kind) for f in frame)
        if a == b:
            raise InputError(f"counterfactual 'swap' needs two different frames, got ({a}, {b})")
        origin = list(range(n))
        origin[a], origin[b] = b, a
    else:  # replace
        t = _frame_index(frame, n, kind)
        if other is None:
            raise InputError("counterfactual 'replace' needs other= (a sample or a frames array) "
                             "whose frame replaces this one")
        other_frames = other if isinstance(other, np.ndarray) else _frames_of(
            as_video_sample(other), num_frames, sampler)[0]
        if t >= other_frames.shape[0]:
            raise InputError(f"counterfactual 'replace': the other video has "
                             f"{other_frames.shape[0]} frames, no frame {t}")
        if other_frames.shape[1:] != frames.shape[1:]:
            raise InputError(f"counterfactual 'replace': the other video's frames are "
                             f"{other_frames.shape[1:3]}, this one's {frames.shape[1:3]}; give "
                             f"frames of the same size")
        edited = frames.copy()
        edited[t] = other_frames[t]
        origin = [i if i != t else None for i in range(n)]
    if kind != "replace":
        edited = frames[np.asarray(origin)]
    suffix = {"reverse": kind, "shuffle": f"{kind}:{seed}"}.get(kind, f"{kind}:{frame}")
    base = replace(sample, video=frames, subtitles=subtitles)
    edit = replace(base, video=np.ascontiguousarray(edited), id=f"{sample.id}~{suffix}")
    return Counterfactual(kind=kind, sample=edit, original=base, origin=tuple(origin))


# ---------------------------------------------------------------------------- alignment
def frame_segments(segments: SegmentMap) -> list[str]:
    """The names of the frames of a map, in order (``["frame_0", "frame_1", …]``)."""
    return [frame.name for frame in segments.frames]


def _input_frames(frame: Frame) -> tuple[int, ...]:
    return frame.source_frames if frame.source_frames is not None else (frame.index,)


def _counterpart_frame(frame: Frame, source: SegmentMap,
                       frames: Mapping[int, int] | None) -> Frame:
    """The source token frame showing what ``frame`` shows: the same index, or through the
    input-frame correspondence ``frames`` (a token frame covering several input frames, as
    Qwen2-VL's temporal patches, maps to the source token frame covering their images in order)."""
    wanted = _input_frames(frame)
    if frames is not None:
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise InputError(f"segment {frame.name!r} shows input frame(s) {missing}, which have "
                             f"no counterpart in the source video (the frame map leaves them "
                             f"out: a frame from another video, or a dropped one)")
        wanted = tuple(frames[i] for i in wanted)
    for candidate in source.frames:
        if _input_frames(candidate) == wanted:
            return candidate
    raise InputError(f"segment {frame.name!r} (input frames {list(_input_frames(frame))}) has no "
                     f"source token frame made of input frames {list(wanted)}; the source has "
                     f"{[list(_input_frames(f)) for f in source.frames]}")


Coords = Sequence[Sequence[tuple[int, int]] | None]


def _cells(frame: Frame, coords: Coords | None) -> list[tuple[int, int]] | None:
    """(h, w) of each token of a frame, in sequence order: from its grid, or for a frame that
    kept only some tokens (VideoLLaMA3's compressed frames, no grid on the map) from the kept
    coordinates the model recorded (``x.meta["kept_coords"][t]``); None when neither is known."""
    if frame.grid is not None:
        return [divmod(i, frame.grid[1]) for i in range(len(frame))]
    if coords is not None and frame.index < len(coords) and coords[frame.index] is not None:
        cells = [tuple(int(v) for v in cell) for cell in coords[frame.index]]
        if len(cells) != len(frame):
            raise InputError(f"segment {frame.name!r} has {len(frame)} tokens but "
                             f"{len(cells)} kept coordinates")
        return cells
    return None


def _frame_pairs(frame: Frame, other: Frame, coords: tuple[Coords | None, Coords | None]
                 ) -> list[tuple[int, int]]:
    if frame.grid is not None and other.grid is not None and frame.grid != other.grid:
        raise InputError(
            f"segment {frame.name!r} is a {frame.grid[0]}×{frame.grid[1]} grid in the target "
            f"and {other.name!r} a {other.grid[0]}×{other.grid[1]} grid in the source: their "
            f"cells do not correspond; prepare both at the same resolution")
    mine, theirs = _cells(frame, coords[0]), _cells(other, coords[1])
    if mine is None or theirs is None:
        which = frame.name if mine is None else f"the source's {other.name}"
        raise InputError(f"segment {which!r} has no (H, W) grid on its map and no kept token "
                         f"coordinates: its tokens cannot be matched cell by cell; pass "
                         f"coords=(target.meta['kept_coords'], source.meta['kept_coords'])")
    # the same cell ↔ the same content position; a cell one frame kept and the other dropped
    # (compressed frames keep different tokens) has no counterpart and is not paired
    where = {cell: other.start + i for i, cell in enumerate(theirs)}
    return [(frame.start + i, where[cell]) for i, cell in enumerate(mine) if cell in where]


def _span_pairs(span: Span, source: SegmentMap, what: str) -> list[tuple[int, int]]:
    if span.name not in source:
        raise InputError(f"segment {span.name!r} of the target has no segment of that name in the "
                         f"source")
    other = source[span.name]
    if len(other) != len(span):
        raise InputError(f"segment {span.name!r} has {len(span)} positions in the target and "
                         f"{len(other)} in the source: {what} of different lengths cannot be "
                         f"aligned position by position")
    return [(span.start + i, other.start + i) for i in range(len(span))]


def _video_gaps(segments: SegmentMap) -> list[Span]:
    """The video's positions outside every frame (separators, timestamps), one span per gap:
    before frame 0, between consecutive frames, after the last frame."""
    video, gaps, cursor = segments.video, [], segments.video.start
    bounds = [(f.start, f.stop) for f in segments.frames] + [(video.stop, video.stop)]
    for index, (start, stop) in enumerate(bounds):
        if start > cursor:
            gaps.append(Span(f"video_gap_{index}", cursor, start, "separator"))
        cursor = stop
    return gaps


def align(target: SegmentMap, source: SegmentMap, segment: str, *,
          frames: Mapping[int, int] | None = None,
          coords: tuple[Coords | None, Coords | None] = (None, None)
          ) -> list[tuple[int, int]]:
    """``(target position, source position)`` pairs that mean the same thing in two prompts.

    ``segment`` names a span of the target map: a frame (``"frame_3"``) maps by grid cell to its
    counterpart in the source — the same frame index, or, with ``frames`` (target input frame →
    source input frame, :meth:`Counterfactual.frame_map`), the frame showing the same image;
    ``"video"`` maps every frame so and the text between frames (separators, timestamps) gap by
    gap; ``"all"`` pairs every position with itself (two prompts of the same length, as a run
    with itself); any other name (``"question"``, ``"option_A"``, ``"last"``, a user's span)
    maps to the source's span of the same name by offset. Refuses, naming the reason, where the
    two maps do not correspond (grids of different shapes, spans of different lengths, a frame
    with no counterpart). ``coords``: the kept (h, w) of each token of each frame, target's
    and source's (``x.meta["kept_coords"]``), for frames that kept only some of their tokens and
    carry no grid on the map; only the cells both frames kept are paired.
    """
    if segment == "all":
        if target.n_positions != source.n_positions:
            raise InputError(f"segment 'all' pairs positions one to one, but the target has "
                             f"{target.n_positions} positions and the source "
                             f"{source.n_positions}; patch named segments instead")
        return [(p, p) for p in range(target.n_positions)]
    if segment not in target:
        raise InputError(f"no segment named {segment!r} in the target; segments: "
                         f"{['all'] + [s.name for s in target.spans()]}")
    span = target[segment]
    if isinstance(span, Frame):
        return _frame_pairs(span, _counterpart_frame(span, source, frames), coords)
    if segment == "video":
        if source.video is None:
            raise InputError("segment 'video': the source has no video")
        pairs = [pair for frame in target.frames
                 for pair in _frame_pairs(frame, _counterpart_frame(frame, source, frames),
                                          coords)]
        target_gaps, source_gaps = _video_gaps(target), _video_gaps(source)
        if [len(g) for g in target_gaps] != [len(g) for g in source_gaps]:
            raise InputError(f"segment 'video': the text between frames differs (target gaps "
                             f"{[len(g) for g in target_gaps]} positions, source "
                             f"{[len(g) for g in source_gaps]}); patch the frames one by one")
        for gap, other in zip(target_gaps, source_gaps):
            pairs += [(gap.start + i, other.start + i) for i in range(len(gap))]
        return sorted(pairs)
    return _span_pairs(span, source, "spans")
