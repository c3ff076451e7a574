"""The token-segment map: named, ordered spans over the positions of one VideoLLM prompt.

A VideoLLM prompt (Map the Flow, §2 "Input layout") is laid out as

    <system> USER: <video tokens> USER: Question: ... Options: (A) ... (B) ... Only give the best
    option. ASSISTANT:Best option:(

and every analysis of the paper is phrased in terms of these segments: frames 0..T-1 of the video
(each an H×W grid of tokens, flattened frame-major), the question without its options, each option
(one of them true), and the last input position, whose next-token prediction is the answer.

The spans follow the paper's official code (byminji/map-the-flow; docs/paper_parity.md):

- an option is the tokens of "(A) text", label included, trailing newline not (``Option.text_span``
  is the text alone);
- :attr:`SegmentMap.question_with_options`, the coarse "question" of video→question and
  question→last, runs from "Question:" through the end of the last option: the instruction, the
  assistant prefix and the turn separators are not in it (:attr:`SegmentMap.between_video_and_last`
  is every position between the video and the last position);
- ``question`` is the question text alone ("Question:" and the options not in it);
- a frame is its H×W token grid; models that write text between frames (VideoLLaMA3's
  "Time 1.0s:" and ",") give each frame an ``extent`` that also holds that text, and cross-frame
  edges use the extents, so the extents tile the video while the grids stay exact.

A :class:`SegmentMap` records exactly which positions belong to which segment. Model adapters build
it from the positions they computed; circuits read it to build edge sets; results store it (as a
plain dict) so that a figure can always be traced back to the positions it used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["Span", "Frame", "Option", "SegmentMap"]

from .errors import InputError

@dataclass(frozen=True)
class Span:
    """A half-open range of sequence positions ``[start, stop)`` with a name.

    ``kind`` says what the span is (``system``, ``video``, ``frame``, ``separator``, ``question``,
    ``option``, ``last``, ``text``, ``response`` and ``anchor`` (an open-ended answer's tokens and
    chosen words in it) or ``custom`` for a user's own span).
    """

    name: str
    start: int
    stop: int
    kind: str = "custom"

    def __post_init__(self) -> None:
        for attribute in ("start", "stop"):
            value = getattr(self, attribute)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(
                    f"segment {self.name!r}: {attribute} must be an int, got {value!r}"
                )
        if self.start < 0:
            raise InputError(f"segment {self.name!r} {self._range()} starts before position 0")
        if self.stop <= self.start:
            raise InputError(
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
        return f"{self.name:<22} [{self.start:>6}, {self.stop:>6})  {len(self):>6} positions"


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
    extent_start: int | None = None
    extent_stop: int | None = None
    #: the input video frames this token frame covers, where a token frame covers several
    #: (Qwen2-VL / Qwen3-VL temporal patches: (2t, 2t+1)); None when it is one input frame
    source_frames: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.extent_start is None) != (self.extent_stop is None):
            raise InputError(f"segment {self.name!r}: give both extent_start and extent_stop, "
                             f"or neither")
        if self.extent_start is not None and not (
                0 <= self.extent_start <= self.start and self.stop <= self.extent_stop):
            raise InputError(
                f"segment {self.name!r}: extent [{self.extent_start}, {self.extent_stop}) must "
                f"contain the frame's tokens {self._range()}")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(x) for x in self.grid))
            height, width = self.grid
            if height <= 0 or width <= 0 or height * width != len(self):
                raise InputError(
                    f"segment {self.name!r} {self._range()} has {len(self)} positions but its "
                    f"grid {height}×{width} holds {height * width}: the grid must cover the frame"
                )

    @property
    def extent(self) -> Span:
        """The frame with the text a model writes around its tokens (VideoLLaMA3: the "," before
        it and its "Time 1.0s:"), as the official code delimits frames for cross-frame edges;
        the frame's own tokens when it has no such text."""
        if self.extent_start is None:
            return Span(self.name, self.start, self.stop, "frame")
        return Span(f"{self.name}_extent", self.extent_start, self.extent_stop, "frame")

    def position(self, h: int, w: int) -> int:
        """Sequence position of the token at row ``h``, column ``w`` of this frame."""
        if self.grid is None:
            raise InputError(f"segment {self.name!r} has no (H, W) grid")
        height, width = self.grid
        if not (0 <= h < height and 0 <= w < width):
            raise InputError(f"({h}, {w}) is outside the {height}×{width} grid of {self.name!r}")
        return self.start + h * width + w

    def coords(self, position: int) -> tuple[int, int]:
        """(h, w) of a sequence position inside this frame."""
        if position not in self:
            raise InputError(f"position {position} is not in segment {self.name!r} {self._range()}")
        if self.grid is None:
            raise InputError(f"segment {self.name!r} has no (H, W) grid")
        return divmod(position - self.start, self.grid[1])

    def describe(self) -> str:
        grid = f"  grid {self.grid[0]}×{self.grid[1]}" if self.grid else ""
        if self.extent_start is not None and (self.extent_start, self.extent_stop) != (
                self.start, self.stop):
            grid += f"  extent [{self.extent_start}, {self.extent_stop})"
        return super().describe() + grid


@dataclass(frozen=True)
class Option(Span):
    """One answer option of a multiple-choice prompt: its ``label`` ("A"), ``text`` and truth.

    The span is the tokens of "(A) text", label included (the official code's option span);
    ``text_start``/``text_stop`` delimit the text alone (:attr:`text_span`), None when the option
    has no label tokens (then the text is the whole span).
    """

    kind: str = "option"
    label: str = ""
    text: str = ""
    is_true: bool = False
    text_start: int | None = None
    text_stop: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.text_start is None) != (self.text_stop is None):
            raise InputError(f"segment {self.name!r}: give both text_start and text_stop, or "
                             f"neither")
        if self.text_start is not None and not (
                self.start <= self.text_start < self.text_stop <= self.stop):
            raise InputError(
                f"segment {self.name!r}: text [{self.text_start}, {self.text_stop}) must be a "
                f"non-empty part of the option {self._range()}")

    @property
    def text_span(self) -> Span:
        """The option's text without its "(A) " label."""
        if self.text_start is None:
            return Span(f"{self.name}_text", self.start, self.stop, "option_text")
        return Span(f"{self.name}_text", self.text_start, self.text_stop, "option_text")

    def describe(self) -> str:
        truth = "  (true)" if self.is_true else ""
        return super().describe() + f"  ({self.label}) {self.text!r}{truth}"


_SPAN_TYPES = {"frame": Frame, "option": Option}


def _span_from_dict(data: Mapping[str, Any]) -> Span:
    span_type = _SPAN_TYPES.get(data.get("kind", "custom"), Span)
    known = {f.name for f in fields(span_type)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"segment {data.get('name')!r}: unknown fields {sorted(unknown)}")
    return span_type(**dict(data))


@dataclass(frozen=True)
class SegmentMap:
    """Named, ordered, non-overlapping spans over the ``n_positions`` positions of one prompt.

    Map the Flow §2 segments: ``system``, ``video`` (made of ``frames[t]``, each with its H×W grid,
    plus ``separators`` between frames — newline or timestamp tokens some models insert, never
    counted as frame tokens; a frame's ``extent`` may include them), ``question`` (question text
    without "Question:" and the options), ``options[i]`` ("(A) text", label included),
    ``question_with_options`` (the coarse question: "Question:" through the end of the last option;
    derived from ``question`` and ``options`` when not given) and ``last`` (the final input
    position). An open-ended answer teacher-forced after the prompt (:meth:`with_response`)
    adds ``response`` (the answer's tokens before the last position) and ``anchors`` (named
    spans of chosen answer words inside it). ``extra`` holds a user's own named spans (for
    instance one temporal keyword inside the question); these may overlap the built-in segments.

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
    question_with_options: Span | None = None
    response: Span | None = None
    anchors: tuple[Span, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.n_positions, bool) or not isinstance(self.n_positions, int):
            raise InputError(f"n_positions must be an int, got {self.n_positions!r}")
        if self.n_positions <= 0:
            raise InputError(f"n_positions must be positive, got {self.n_positions}")
        object.__setattr__(self, "frames", tuple(self.frames))
        object.__setattr__(self, "separators", tuple(self.separators))
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "anchors", tuple(self.anchors))
        extra = self.extra.values() if isinstance(self.extra, Mapping) else self.extra
        object.__setattr__(self, "extra", tuple(extra))
        if self.last is None:
            last_position = self.n_positions - 1
            object.__setattr__(self, "last", Span("last", last_position, last_position + 1, "last"))
        if self.video is None and self.frames:
            video = Span("video", self.frames[0].extent.start, self.frames[-1].extent.stop,
                         "video")
            object.__setattr__(self, "video", video)
        if self.question_with_options is None and self.question is not None:
            stop = max([self.question.stop] + [option.stop for option in self.options])
            object.__setattr__(self, "question_with_options", Span(
                "question_with_options", self.question.start, stop, "text"))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = self.n_positions
        for span in self.spans():
            if span.stop > n:
                raise InputError(
                    f"segment {span.name!r} [{span.start}, {span.stop}) runs past the sequence "
                    f"length {n}"
                )
        names = [span.name for span in self.spans()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InputError(f"segment names must be unique; repeated: {duplicates}")
        if len(self.last) != 1:
            raise InputError(
                f"segment 'last' [{self.last.start}, {self.last.stop}) must be exactly one position"
            )
        top_level = [s for s in (self.system, self.video, self.question, self.last,
                                 self.response) if s]
        top_level += list(self.options)
        self._check_disjoint(top_level, "")
        for anchor in self.anchors:
            if self.response is None or not (self.response.start <= anchor.start
                                             and anchor.stop <= self.response.stop):
                where = ("no 'response'" if self.response is None else
                         f"'response' [{self.response.start}, {self.response.stop})")
                raise InputError(f"segment {anchor.name!r} [{anchor.start}, {anchor.stop}) is "
                                 f"an answer anchor but lies outside {where}")
        self._validate_question_with_options()
        if self.frames or self.separators:
            if self.video is None:
                raise InputError("frames or separators given without a 'video' segment")
            inside = list(self.frames) + list(self.separators)
            inside += [frame.extent for frame in self.frames if frame.extent_start is not None]
            for span in inside:
                if not (self.video.start <= span.start and span.stop <= self.video.stop):
                    raise InputError(
                        f"segment {span.name!r} [{span.start}, {span.stop}) lies outside "
                        f"'video' [{self.video.start}, {self.video.stop})"
                    )
            self._check_disjoint(list(self.frames) + list(self.separators), " inside 'video'")
            self._check_disjoint([frame.extent for frame in self.frames], " inside 'video'")
        for t, frame in enumerate(self.frames):
            if not isinstance(frame, Frame):
                raise InputError(f"frames[{t}] must be a Frame, got {type(frame).__name__}")
            if frame.index != t:
                raise InputError(f"segment {frame.name!r} has index {frame.index}, expected {t}")
            if t and frame.start < self.frames[t - 1].stop:
                raise InputError(
                    f"segment {frame.name!r} starts at {frame.start}, before frame {t - 1} "
                    f"ends at {self.frames[t - 1].stop}: frames must be in order"
                )
        labels = [option.label for option in self.options]
        if len(set(labels)) != len(labels):
            raise InputError(f"option labels must be unique, got {labels}")
        if sum(option.is_true for option in self.options) > 1:
            raise InputError(
                f"at most one option may be true, got {[o.label for o in self.options if o.is_true]}"
            )

    def _validate_question_with_options(self) -> None:
        coarse = self.question_with_options
        if coarse is None:
            return
        where = f"segment 'question_with_options' [{coarse.start}, {coarse.stop})"
        if coarse.stop > self.n_positions:
            raise InputError(f"{where} runs past the sequence length {self.n_positions}")
        if coarse.overlaps(self.last) or (self.video is not None and coarse.overlaps(self.video)):
            raise InputError(f"{where} overlaps the video or the last position; it is the text "
                             f"from 'Question:' through the last option")
        for span in ([self.question] if self.question else []) + list(self.options):
            if not (coarse.start <= span.start and span.stop <= coarse.stop):
                raise InputError(f"{where} does not contain {span.name!r} [{span.start}, "
                                 f"{span.stop})")

    @staticmethod
    def _check_disjoint(spans: Sequence[Span], where: str) -> None:
        ordered = sorted(spans, key=lambda s: s.start)
        for previous, current in zip(ordered, ordered[1:]):
            if previous.overlaps(current):
                raise InputError(
                    f"segment {current.name!r} [{current.start}, {current.stop}) overlaps "
                    f"{previous.name!r} [{previous.start}, {previous.stop}){where}"
                )

    # ------------------------------------------------------------------ access
    def spans(self) -> list[Span]:
        """Every span of the map, ordered by start position."""
        candidates: list[Span | None] = [self.system, self.video, self.question,
                                         self.question_with_options, self.last, self.response]
        candidates += list(self.anchors)
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
        raise InputError("this segment map has no true option (the sample has no answer)")

    @property
    def false_options(self) -> tuple[Option, ...]:
        return tuple(option for option in self.options if not option.is_true)

    @property
    def option_texts(self) -> tuple[Span, ...]:
        """Each option's text without its "(A) " label (:attr:`Option.text_span`), in order."""
        return tuple(option.text_span for option in self.options)

    @property
    def between_video_and_last(self) -> Span:
        """Every position between the video and the last position: the question, the options,
        the instruction, the turn separators and the assistant prefix.

        The wider alternative to :attr:`question_with_options` (the official coarse question);
        :meth:`with_question_span` makes the pathways use it.
        """
        start = self.video.stop if self.video is not None else (
            self.question_with_options.start if self.question_with_options else None)
        if start is None:
            raise InputError("this segment map has neither a 'video' nor a 'question' segment")
        if start >= self.last.start:
            raise InputError("no positions between the video and the last position")
        return Span("between_video_and_last", start, self.last.start, "text")

    def with_question_span(self, which: str) -> "SegmentMap":
        """A copy whose coarse question (:attr:`question_with_options`, used by video→question,
        question→last, question→question and the pathways) is ``which``:

        - ``"official"``: "Question:" through the end of the last option (the map's own);
        - ``"between_video_and_last"``: every position between the video and the last one.
        """
        if which == "official":
            return self
        if which == "between_video_and_last":
            wide = self.between_video_and_last
            return replace(self, question_with_options=Span(
                "question_with_options", wide.start, wide.stop, "text"))
        raise InputError(f"question span {which!r} is not one of 'official', "
                         f"'between_video_and_last'")

    def frame_of(self, position: int) -> tuple[int, int, int] | None:
        """(t, h, w) of a video-token position, or None for a position outside every frame."""
        for frame in self.frames:
            if position in frame:
                h, w = frame.coords(position) if frame.grid else (0, position - frame.start)
                return frame.index, h, w
        return None

    def with_response(self, n_tokens: int,
                      anchors: Sequence[tuple[str, int, int]] = ()) -> "SegmentMap":
        """The map of this prompt followed by ``n_tokens`` answer tokens (an open-ended answer
        teacher-forced, Map the Flow appendix; official ``information_flow_analysis_open_ended``):
        ``last`` moves to the final appended token (the position whose next-token prediction is
        read), ``response`` is the appended tokens before it (None when only one is appended:
        the official "non-last response" range is then empty), ``anchors`` are named spans
        ``(name, start, stop)`` of sequence positions inside ``response``. The prompt's own
        segments keep their positions; its former last position becomes unnamed text."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise InputError(f"with_response needs a positive number of appended tokens, got "
                             f"{n_tokens!r}")
        if self.response is not None:
            raise InputError("this segment map already has a response; extend the prompt's map")
        n = self.n_positions + n_tokens
        response = (Span("response", self.n_positions, n - 1, "response") if n_tokens > 1
                    else None)
        return replace(self, n_positions=n, last=Span("last", n - 1, n, "last"),
                       response=response,
                       anchors=tuple(Span(name, start, stop, "anchor")
                                     for name, start, stop in anchors))

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
        separators_in_frames: bool = False,
        after_video: int = 0,
        question_prefix: int = 0,
        question: int = 0,
        after_question: int = 0,
        options: Sequence[int] = (),
        option_label: int = 0,
        true_option: int | None = None,
        between_options: int = 0,
        before_last: int = 0,
    ) -> "SegmentMap":
        """Lay out a prompt from segment lengths, left to right.

        ``system`` positions, then each frame's H×W grid (with ``separator`` tokens after every
        frame but the last; ``separators_in_frames`` makes each separator part of the next frame's
        extent, as VideoLLaMA3's "," and "Time 1.0s:"), ``after_video`` text positions,
        ``question_prefix`` positions ("Question:") and the ``question``, ``after_question``
        positions ("Options:"), the options (each of the given length, its first
        ``option_label`` positions being the "(A)" label, ``between_options`` positions apart), ``before_last`` positions of instruction text and
        finally the last position. The coarse question runs from the prefix through the last
        option. Used for synthetic layouts (tests, benchmarks); model adapters build maps from
        the positions they computed.
        """
        cursor = 0
        spans: dict[str, Any] = {}
        if system:
            spans["system"] = Span("system", 0, system, "system")
            cursor = system
        frame_spans: list[Frame] = []
        separator_spans: list[Span] = []
        extent_start = cursor
        for t, (height, width) in enumerate(frames):
            extent = {}
            if separators_in_frames and separator:
                extent = dict(extent_start=extent_start, extent_stop=cursor + height * width)
            frame_spans.append(Frame(f"frame_{t}", cursor, cursor + height * width, index=t,
                                     grid=(height, width), **extent))
            cursor += height * width
            extent_start = cursor
            if separator and t < len(frames) - 1:
                separator_spans.append(Span(f"separator_{t}", cursor, cursor + separator,
                                            "separator"))
                cursor += separator
        cursor += after_video
        coarse_start = cursor
        cursor += question_prefix
        if question:
            spans["question"] = Span("question", cursor, cursor + question, "question")
            cursor += question
        cursor += after_question
        option_spans = []
        for i, length in enumerate(options):
            if i:
                cursor += between_options
            label = chr(ord("A") + i)
            text = {}
            if option_label:
                if not 0 < option_label < length:
                    raise InputError(f"option_label {option_label} must be shorter than the "
                                     f"option's {length} positions")
                text = dict(text_start=cursor + option_label, text_stop=cursor + length)
            option_spans.append(Option(f"option_{label}", cursor, cursor + length, label=label,
                                       is_true=(i == true_option), **text))
            cursor += length
        if question:
            spans["question_with_options"] = Span("question_with_options", coarse_start, cursor,
                                                  "text")
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
            "question_with_options": one(self.question_with_options),
            "response": one(self.response),
            "anchors": [one(a) for a in self.anchors],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegmentMap":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"segment map: unknown fields {sorted(unknown)}")
        if "n_positions" not in data:
            raise InputError("segment map: missing field 'n_positions'")

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
            question_with_options=one(data.get("question_with_options")),
            response=one(data.get("response")),
            anchors=tuple(_span_from_dict(a) for a in data.get("anchors", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SegmentMap":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        """Every span, and every stretch of positions no span names (the instruction, the
        assistant prefix, the role tags between segments), so that each position is accounted
        for."""
        lines = [f"SegmentMap({self.n_positions} positions, {self.n_frames} frames)"]
        spans = self.spans()
        covered, before = 0, None
        for span in spans + [None]:
            start = self.n_positions if span is None else span.start
            if start > covered:
                after = "the end" if span is None else span.name
                where = f"before {after}" if before is None else f"between {before} and {after}"
                lines.append(f"  {'(unnamed)':<22} [{covered:>6}, {start:>6})  "
                             f"{start - covered:>6} positions  {where}")
            if span is not None:
                lines.append("  " + span.describe())
                if span.stop > covered:
                    covered, before = span.stop, span.name
        return "\n".join(lines)
