"""The token-segment map: named, ordered spans over the positions of one VideoLLM prompt.

A VideoLLM prompt (Map the Flow, §2 "Input layout") is laid out as

    <system> USER: <video tokens> Question: ... Options: (A) ... (B) ... ASSISTANT: Best option:(

and every analysis of the paper is phrased in terms of these segments: frames 0..T-1 of the video
(each an H×W grid of tokens, flattened frame-major), the question without its options, each option
(one of them true), and the last input position, whose next-token prediction is the answer.

A :class:`SegmentMap` records exactly which positions belong to which segment. Model adapters build
it from the positions they computed; circuits read it to build edge sets; results store it (as a
plain dict) so that a figure can always be traced back to the positions it used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["Span", "Frame", "Option", "SegmentMap"]


@dataclass(frozen=True)
class Span:
    """A half-open range of sequence positions ``[start, stop)`` with a name.

    ``kind`` says what the span is (``system``, ``video``, ``frame``, ``separator``, ``question``,
    ``option``, ``last``, ``text`` or ``custom`` for a user's own span).
    """

    name: str
    start: int
    stop: int
    kind: str = "custom"

    def __post_init__(self) -> None:
        for attribute in ("start", "stop"):
            value = getattr(self, attribute)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"segment {self.name!r}: {attribute} must be an int, got {value!r}"
                )
        if self.start < 0:
            raise ValueError(f"segment {self.name!r} {self._range()} starts before position 0")
        if self.stop <= self.start:
            raise ValueError(
                f"segment {self.name!r} {self._range()} is empty: stop must be greater than start"
            )

    def _range(self) -> str:
        return f"[{self.start}, {self.stop})"

    @property
    def positions(self) -> range:
        """The sequence positions of this span, in order."""
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and self.start <= position < self.stop

    def overlaps(self, other: "Span") -> bool:
        return self.start < other.stop and other.start < self.stop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.name:<18} [{self.start:>6}, {self.stop:>6})  {len(self):>6} positions"


@dataclass(frozen=True)
class Frame(Span):
    """The tokens of one video frame: ``index`` is the frame number t, ``grid`` its (H, W) shape.

    Positions are flattened row-major inside the frame, as the paper's models lay them out:
    ``position = start + h * W + w``. ``grid`` may be None for a model whose frame tokens have no
    spatial layout (then ``len(frame)`` is all that is known).
    """

    kind: str = "frame"
    index: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(x) for x in self.grid))
            height, width = self.grid
            if height <= 0 or width <= 0 or height * width != len(self):
                raise ValueError(
                    f"segment {self.name!r} {self._range()} has {len(self)} positions but its "
                    f"grid {height}×{width} holds {height * width}: the grid must cover the frame"
                )

    def position(self, h: int, w: int) -> int:
        """Sequence position of the token at row ``h``, column ``w`` of this frame."""
        if self.grid is None:
            raise ValueError(f"segment {self.name!r} has no (H, W) grid")
        height, width = self.grid
        if not (0 <= h < height and 0 <= w < width):
            raise ValueError(f"({h}, {w}) is outside the {height}×{width} grid of {self.name!r}")
        return self.start + h * width + w

    def coords(self, position: int) -> tuple[int, int]:
        """(h, w) of a sequence position inside this frame."""
        if position not in self:
            raise ValueError(f"position {position} is not in segment {self.name!r} {self._range()}")
        if self.grid is None:
            raise ValueError(f"segment {self.name!r} has no (H, W) grid")
        return divmod(position - self.start, self.grid[1])

    def describe(self) -> str:
        grid = f"  grid {self.grid[0]}×{self.grid[1]}" if self.grid else ""
        return super().describe() + grid


@dataclass(frozen=True)
class Option(Span):
    """One answer option of a multiple-choice prompt: its ``label`` ("A"), ``text`` and truth."""

    kind: str = "option"
    label: str = ""
    text: str = ""
    is_true: bool = False

    def describe(self) -> str:
        truth = "  (true)" if self.is_true else ""
        return super().describe() + f"  ({self.label}) {self.text!r}{truth}"


_SPAN_TYPES = {"frame": Frame, "option": Option}


def _span_from_dict(data: Mapping[str, Any]) -> Span:
    span_type = _SPAN_TYPES.get(data.get("kind", "custom"), Span)
    known = {f.name for f in fields(span_type)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"segment {data.get('name')!r}: unknown fields {sorted(unknown)}")
    return span_type(**dict(data))


@dataclass(frozen=True)
class SegmentMap:
    """Named, ordered, non-overlapping spans over the ``n_positions`` positions of one prompt.

    Map the Flow §2 segments: ``system``, ``video`` (made of ``frames[t]``, each with its H×W grid,
    plus ``separators`` between frames — newline or timestamp tokens some models insert, never
    counted as frame tokens), ``question`` (question text without options), ``options[i]`` and
    ``last`` (the final input position). ``extra`` holds a user's own named spans (for instance one
    temporal keyword inside the question); these may overlap the built-in segments.

    Build it with explicit :class:`Span` objects (model adapters compute them) or lay a synthetic
    prompt out with :meth:`sequential`. Every inconsistency raises ``ValueError`` naming the
    segment and its range.
    """

    n_positions: int
    system: Span | None = None
    video: Span | None = None
    frames: tuple[Frame, ...] = ()
    separators: tuple[Span, ...] = ()
    question: Span | None = None
    options: tuple[Option, ...] = ()
    last: Span | None = None
    extra: tuple[Span, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.n_positions, bool) or not isinstance(self.n_positions, int):
            raise ValueError(f"n_positions must be an int, got {self.n_positions!r}")
        if self.n_positions <= 0:
            raise ValueError(f"n_positions must be positive, got {self.n_positions}")
        object.__setattr__(self, "frames", tuple(self.frames))
        object.__setattr__(self, "separators", tuple(self.separators))
        object.__setattr__(self, "options", tuple(self.options))
        extra = self.extra.values() if isinstance(self.extra, Mapping) else self.extra
        object.__setattr__(self, "extra", tuple(extra))
        if self.last is None:
            last_position = self.n_positions - 1
            object.__setattr__(self, "last", Span("last", last_position, last_position + 1, "last"))
        if self.video is None and self.frames:
            video = Span("video", self.frames[0].start, self.frames[-1].stop, "video")
            object.__setattr__(self, "video", video)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = self.n_positions
        for span in self.spans():
            if span.stop > n:
                raise ValueError(
                    f"segment {span.name!r} [{span.start}, {span.stop}) runs past the sequence "
                    f"length {n}"
                )
        names = [span.name for span in self.spans()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"segment names must be unique; repeated: {duplicates}")
        if len(self.last) != 1:
            raise ValueError(
                f"segment 'last' [{self.last.start}, {self.last.stop}) must be exactly one position"
            )
        top_level = [s for s in (self.system, self.video, self.question, self.last) if s]
        top_level += list(self.options)
        self._check_disjoint(top_level, "")
        if self.frames or self.separators:
            if self.video is None:
                raise ValueError("frames or separators given without a 'video' segment")
            inside = list(self.frames) + list(self.separators)
            for span in inside:
                if not (self.video.start <= span.start and span.stop <= self.video.stop):
                    raise ValueError(
                        f"segment {span.name!r} [{span.start}, {span.stop}) lies outside "
                        f"'video' [{self.video.start}, {self.video.stop})"
                    )
            self._check_disjoint(inside, " inside 'video'")
        for t, frame in enumerate(self.frames):
            if not isinstance(frame, Frame):
                raise ValueError(f"frames[{t}] must be a Frame, got {type(frame).__name__}")
            if frame.index != t:
                raise ValueError(f"segment {frame.name!r} has index {frame.index}, expected {t}")
            if t and frame.start < self.frames[t - 1].stop:
                raise ValueError(
                    f"segment {frame.name!r} starts at {frame.start}, before frame {t - 1} "
                    f"ends at {self.frames[t - 1].stop}: frames must be in order"
                )
        labels = [option.label for option in self.options]
        if len(set(labels)) != len(labels):
            raise ValueError(f"option labels must be unique, got {labels}")
        if sum(option.is_true for option in self.options) > 1:
            raise ValueError(
                f"at most one option may be true, got {[o.label for o in self.options if o.is_true]}"
            )

    @staticmethod
    def _check_disjoint(spans: Sequence[Span], where: str) -> None:
        ordered = sorted(spans, key=lambda s: s.start)
        for previous, current in zip(ordered, ordered[1:]):
            if previous.overlaps(current):
                raise ValueError(
                    f"segment {current.name!r} [{current.start}, {current.stop}) overlaps "
                    f"{previous.name!r} [{previous.start}, {previous.stop}){where}"
                )

    # ------------------------------------------------------------------ access
    def spans(self) -> list[Span]:
        """Every span of the map, ordered by start position."""
        candidates: list[Span | None] = [self.system, self.video, self.question, self.last]
        candidates += list(self.frames) + list(self.separators) + list(self.options)
        candidates += list(self.extra)
        return sorted((s for s in candidates if s is not None), key=lambda s: (s.start, -s.stop))

    def __getitem__(self, name: str) -> Span:
        for span in self.spans():
            if span.name == name:
                return span
        raise KeyError(f"no segment named {name!r}; segments: {[s.name for s in self.spans()]}")

    def __contains__(self, name: object) -> bool:
        return any(span.name == name for span in self.spans())

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def true_option(self) -> Option:
        for option in self.options:
            if option.is_true:
                return option
        raise ValueError("this segment map has no true option (the sample has no answer)")

    @property
    def false_options(self) -> tuple[Option, ...]:
        return tuple(option for option in self.options if not option.is_true)

    @property
    def question_with_options(self) -> Span:
        """All text between the video and the last position: question, options, instructions.

        This is the paper's coarse "question" segment of the video→question and question→last
        pathways; the finer targets use :attr:`question` (without options) and :attr:`options`.
        """
        if self.question is None:
            raise ValueError("this segment map has no 'question' segment")
        start = self.video.stop if self.video is not None else self.question.start
        if start >= self.last.start:
            raise ValueError("no positions between the video and the last position")
        return Span("question_with_options", start, self.last.start, "text")

    def frame_of(self, position: int) -> tuple[int, int, int] | None:
        """(t, h, w) of a video-token position, or None for a position outside every frame."""
        for frame in self.frames:
            if position in frame:
                h, w = frame.coords(position) if frame.grid else (0, position - frame.start)
                return frame.index, h, w
        return None

    def with_span(self, name: str, start: int, stop: int) -> "SegmentMap":
        """A copy with one more user-named span (for example a temporal keyword)."""
        return replace(self, extra=self.extra + (Span(name, start, stop, "custom"),))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def sequential(
        cls,
        *,
        system: int = 0,
        frames: Sequence[tuple[int, int]] = (),
        separator: int = 0,
        after_video: int = 0,
        question: int = 0,
        options: Sequence[int] = (),
        true_option: int | None = None,
        between_options: int = 0,
        before_last: int = 0,
    ) -> "SegmentMap":
        """Lay out a prompt from segment lengths, left to right.

        ``system`` positions, then each frame's H×W grid (with ``separator`` tokens after every
        frame but the last), ``after_video`` text positions, the ``question``, the options (each of
        the given length, ``between_options`` positions apart), ``before_last`` positions of
        instruction text and finally the last position. Used for synthetic layouts (tests,
        benchmarks); model adapters build maps from the positions they computed.
        """
        cursor = 0
        spans: dict[str, Any] = {}
        if system:
            spans["system"] = Span("system", 0, system, "system")
            cursor = system
        frame_spans: list[Frame] = []
        separator_spans: list[Span] = []
        for t, (height, width) in enumerate(frames):
            frame_spans.append(Frame(f"frame_{t}", cursor, cursor + height * width, index=t,
                                     grid=(height, width)))
            cursor += height * width
            if separator and t < len(frames) - 1:
                separator_spans.append(Span(f"separator_{t}", cursor, cursor + separator,
                                            "separator"))
                cursor += separator
        cursor += after_video
        if question:
            spans["question"] = Span("question", cursor, cursor + question, "question")
            cursor += question
        option_spans = []
        for i, length in enumerate(options):
            if i:
                cursor += between_options
            label = chr(ord("A") + i)
            option_spans.append(Option(f"option_{label}", cursor, cursor + length, label=label,
                                       is_true=(i == true_option)))
            cursor += length
        cursor += before_last
        return cls(cursor + 1, frames=tuple(frame_spans), separators=tuple(separator_spans),
                   options=tuple(option_spans), **spans)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict; :meth:`from_dict` reads it back."""

        def one(span: Span | None) -> dict[str, Any] | None:
            return None if span is None else span.to_dict()

        return {
            "n_positions": self.n_positions,
            "system": one(self.system),
            "video": one(self.video),
            "frames": [one(f) for f in self.frames],
            "separators": [one(s) for s in self.separators],
            "question": one(self.question),
            "options": [one(o) for o in self.options],
            "last": one(self.last),
            "extra": [one(s) for s in self.extra],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegmentMap":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"segment map: unknown fields {sorted(unknown)}")
        if "n_positions" not in data:
            raise ValueError("segment map: missing field 'n_positions'")

        def one(value: Any) -> Span | None:
            return None if value is None else _span_from_dict(value)

        return cls(
            n_positions=data["n_positions"],
            system=one(data.get("system")),
            video=one(data.get("video")),
            frames=tuple(_span_from_dict(f) for f in data.get("frames", ())),
            separators=tuple(_span_from_dict(s) for s in data.get("separators", ())),
            question=one(data.get("question")),
            options=tuple(_span_from_dict(o) for o in data.get("options", ())),
            last=one(data.get("last")),
            extra=tuple(_span_from_dict(s) for s in data.get("extra", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SegmentMap":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        lines = [f"SegmentMap({self.n_positions} positions, {self.n_frames} frames)"]
        lines += ["  " + span.describe() for span in self.spans()]
        return "\n".join(lines)
