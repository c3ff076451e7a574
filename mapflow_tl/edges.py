"""Sets of attention edges and their algebra.

An attention edge (q, k) is one query position q reading one key position k in an attention layer;
under causal attention only k ≤ q exists. Map the Flow describes information flow between token
segments as sets of such edges, and Attention Knockout (after Geva et al., 2023) cuts them.

Direction is flow direction: ``Edges(src=keys, dst=queries)``. "video → question" means the
question's queries attending to the video's keys, i.e. information flowing from video to question.

An :class:`Edges` object is a small set expression (leaves combined with ``|``, ``&``, ``-``). It
is materialised once per sequence length into a dense boolean ``[query, key]`` matrix restricted to
the causal triangle, which the knockout hooks share across heads and layers.
"""

from __future__ import annotations

from functools import wraps
from typing import Callable, Iterable, Sequence, Union

import torch
from jaxtyping import Bool, Int

from .errors import InputError
from .segments import SegmentMap, Span

__all__ = [
    "Edges",
    "Positions",
    "causal_edge_count",
    "cross_frame",
    "intra_frame",
    "video_to_video",
    "video_to_question",
    "video_to_last",
    "question_to_last",
    "question_to_question",
    "last_to_last",
    "question_to_video",
    "non_option_question_to_last",
    "true_option_to_last",
    "false_options_to_last",
    "video_to_non_option_question",
    "non_option_question_to_true_option",
    "video_to_true_option",
    "official_response_span",
    "video_to_response",
    "question_to_response",
    "response_to_response",
    "response_to_last",
    "anchors_to_last",
]

Positions = Union[Span, range, int, Sequence[int], Sequence[Span], torch.Tensor]


def _to_positions(value: Positions, role: str) -> tuple[torch.Tensor, str]:
    """Normalise a position argument to a sorted, unique int64 tensor and a short label."""
    if isinstance(value, Span):
        return torch.arange(value.start, value.stop), value.name
    if isinstance(value, range):
        return torch.tensor(list(value), dtype=torch.long), f"[{value.start}, {value.stop})"
    if isinstance(value, bool):
        raise InputError(f"{role}: a bool is not a position")
    if isinstance(value, int):
        tensor, label = torch.tensor([value], dtype=torch.long), str(value)
    elif isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_floating_point():
            raise InputError(f"{role}: positions must be an integer tensor, got {value.dtype}")
        tensor, label = value.detach().flatten().to("cpu", torch.long), f"{value.numel()} positions"
    else:
        items = list(value)
        if items and all(isinstance(item, Span) for item in items):
            tensor = torch.cat([torch.arange(s.start, s.stop) for s in items])
            label = "+".join(s.name for s in items) if len(items) <= 3 else f"{len(items)} spans"
        elif all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            tensor, label = torch.tensor(items, dtype=torch.long), f"{len(items)} positions"
        else:
            raise InputError(
                f"{role}: expected a Span, a range, ints or a list of Spans, got {value!r}"
            )
    if tensor.numel() and int(tensor.min()) < 0:
        raise InputError(f"{role} {label}: negative position {int(tensor.min())}")
    return torch.unique(tensor), label


def causal_edge_count(n_positions: int) -> int:
    """Number of causal edges of one attention layer over ``n_positions``: n(n+1)/2."""
    return n_positions * (n_positions + 1) // 2


def _causal(n_positions: int) -> Bool[torch.Tensor, "query key"]:
    return torch.ones(n_positions, n_positions, dtype=torch.bool).tril()


class Edges:
    """A set of causal attention edges: queries in ``dst`` attending to keys in ``src``.

    Map the Flow's pathways are edge sets between segments ("video → question" is
    ``Edges(src=seg.video, dst=seg.question_with_options)``, the coarse question from "Question:"
    through the last option). Combine them with ``|`` (union),
    ``&`` (intersection) and ``-`` (difference). Only causal edges (key ≤ query) exist: an
    ``Edges`` whose keys all come after its queries (question → video) is valid and empty.

    ``src`` and ``dst`` accept a :class:`~mapflow_tl.segments.Span`, a ``range``, an int, a list of
    ints or Spans, or an integer tensor of positions.
    """

    __slots__ = ("_op", "_operands", "_src", "_dst", "_mask", "_name", "_dense_cache",
                 "_first_cache", "_segment_map")

    def __init__(self, src: Positions, dst: Positions, *, name: str | None = None) -> None:
        self._op = "leaf"
        self._operands: tuple[Edges, ...] = ()
        self._src, src_label = _to_positions(src, "src")
        self._dst, dst_label = _to_positions(dst, "dst")
        self._mask: torch.Tensor | None = None
        self._name = name or f"{src_label} → {dst_label}"
        self._dense_cache: dict[int, torch.Tensor] = {}
        self._first_cache: dict[int, int | None] = {}
        self._segment_map: SegmentMap | None = None  # set by the pathway functions below

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _node(cls, op: str, operands: tuple["Edges", ...], name: str) -> "Edges":
        node = cls.__new__(cls)
        node._op, node._operands, node._name = op, operands, name
        node._src = node._dst = node._mask = None
        node._dense_cache = {}
        node._first_cache = {}
        node._segment_map = None
        return node

    @classmethod
    def empty(cls) -> "Edges":
        """The empty edge set."""
        return cls([], [], name="∅")

    @classmethod
    def from_mask(
        cls, mask: Bool[torch.Tensor, "query key"], *, name: str = "explicit edges"
    ) -> "Edges":
        """Edges given as a dense boolean ``[query, key]`` matrix (entries above the diagonal are
        dropped: they are not causal edges)."""
        if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise InputError(f"{name}: mask must be square [query, key], got {tuple(mask.shape)}")
        node = cls._node("mask", (), name)
        node._mask = mask.detach().to("cpu", torch.bool).tril()
        return node

    @classmethod
    def from_pairs(
        cls,
        queries: Int[torch.Tensor, " n"],
        keys: Int[torch.Tensor, " n"],
        n_positions: int,
        *,
        name: str = "explicit edges",
    ) -> "Edges":
        """Edges given as parallel lists of query and key positions."""
        queries, keys = torch.as_tensor(queries).long(), torch.as_tensor(keys).long()
        if queries.shape != keys.shape:
            raise InputError(f"{name}: queries {tuple(queries.shape)} and keys "
                             f"{tuple(keys.shape)} must have the same shape")
        if queries.numel() and (int(queries.max()) >= n_positions or int(keys.max()) >= n_positions
                                or int(queries.min()) < 0 or int(keys.min()) < 0):
            raise InputError(f"{name}: positions must lie in [0, {n_positions})")
        mask = torch.zeros(n_positions, n_positions, dtype=torch.bool)
        mask[queries, keys] = True
        return cls.from_mask(mask, name=name)

    # ------------------------------------------------------------------ algebra
    def __or__(self, other: "Edges") -> "Edges":
        return self._binary("|", other)

    def __and__(self, other: "Edges") -> "Edges":
        return self._binary("&", other)

    def __sub__(self, other: "Edges") -> "Edges":
        return self._binary("-", other)

    def _binary(self, op: str, other: "Edges") -> "Edges":
        if not isinstance(other, Edges):
            return NotImplemented
        return Edges._node(op, (self, other), f"({self._name} {op} {other._name})")

    @staticmethod
    def union(edge_sets: Iterable["Edges"]) -> "Edges":
        """Union of any number of edge sets (the empty set for none)."""
        result: Edges | None = None
        for edges in edge_sets:
            result = edges if result is None else result | edges
        return Edges.empty() if result is None else result

    # ------------------------------------------------------------------ materialisation
    @property
    def src(self) -> Int[torch.Tensor, " n_src"]:
        """The key positions of a plain ``Edges(src, dst)`` (sorted, unique). A union, an
        intersection or a mask has no single source: that is refused with what to use instead."""
        return self._leaf_side("src")

    @property
    def dst(self) -> Int[torch.Tensor, " n_dst"]:
        """The query positions of a plain ``Edges(src, dst)`` (sorted, unique); see :attr:`src`."""
        return self._leaf_side("dst")

    def _leaf_side(self, side: str) -> torch.Tensor:
        if self._op != "leaf":
            raise InputError(f"edge set {self.name!r} ({self._op}) has no single {side}: read "
                             f"its (query, key) pairs with .dense(n_positions).nonzero()")
        return (self._src if side == "src" else self._dst).clone()

    @property
    def name(self) -> str:
        return self._name

    def extent(self) -> int:
        """One past the largest position this expression mentions (0 when it mentions none)."""
        if self._op == "leaf":
            largest = [int(t.max()) + 1 for t in (self._src, self._dst) if t.numel()]
            return max(largest) if len(largest) == 2 else 0
        if self._op == "mask":
            return self._mask.shape[0]
        return max(operand.extent() for operand in self._operands)

    def _evaluate(self, n_positions: int) -> torch.Tensor:
        if self._op == "leaf":
            mask = torch.zeros(n_positions, n_positions, dtype=torch.bool)
            if self._src.numel() and self._dst.numel():
                for role, tensor in (("src", self._src), ("dst", self._dst)):
                    if int(tensor.max()) >= n_positions:
                        raise InputError(
                            f"edges {self._name!r}: {role} position {int(tensor.max())} is beyond "
                            f"the sequence of {n_positions} positions"
                        )
                mask[self._dst[:, None], self._src[None, :]] = True
            return mask
        if self._op == "mask":
            size = self._mask.shape[0]
            if size > n_positions and bool(self._mask[n_positions:].any() |
                                           self._mask[:, n_positions:].any()):
                raise InputError(
                    f"edges {self._name!r} reach position {size - 1}, beyond the sequence of "
                    f"{n_positions} positions"
                )
            mask = torch.zeros(n_positions, n_positions, dtype=torch.bool)
            keep = min(size, n_positions)
            mask[:keep, :keep] = self._mask[:keep, :keep]
            return mask
        left, right = (operand._evaluate(n_positions) for operand in self._operands)
        if self._op == "|":
            return left | right
        if self._op == "&":
            return left & right
        return left & ~right

    def dense(self, n_positions: int | None = None) -> Bool[torch.Tensor, "query key"]:
        """The edge set as a boolean ``[query, key]`` matrix over ``n_positions`` (CPU).

        Entry ``[q, k]`` is True when query position q attending to key position k is in the set;
        only the causal triangle (k ≤ q) can be True. Cached per ``n_positions``.
        """
        if n_positions is None:
            n_positions = self.extent()
        if isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions < 0:
            raise InputError(f"n_positions must be a non-negative int, got {n_positions!r}")
        cached = self._dense_cache.get(n_positions)
        if cached is None:
            cached = self._evaluate(n_positions) & _causal(n_positions)
            self._dense_cache[n_positions] = cached
        return cached

    def count(self, n_positions: int | None = None) -> int:
        """Number of causal edges in the set."""
        return int(self.dense(n_positions).sum())

    def is_empty(self, n_positions: int | None = None) -> bool:
        return self.count(n_positions) == 0

    def first_query(self, n_positions: int) -> int | None:
        """The smallest query position with a blocked key, or None for an empty set.

        Under causal attention nothing before this position can change when these edges are cut.
        """
        # Cached per n_positions as the dense matrix is: a sweep asks once per configuration,
        # and the configurations of a curve share one edge set (a full-matrix reduction each
        # time cost ≈ 5% of a paper-scale sweep).
        if n_positions not in self._first_cache:
            rows = self.dense(n_positions).any(dim=1).nonzero()
            self._first_cache[n_positions] = int(rows[0]) if rows.numel() else None
        return self._first_cache[n_positions]

    def segment_maps(self) -> list[SegmentMap]:
        """The distinct segment maps this expression's pathways were built from (the pathway
        functions below record theirs; ``Edges(src=..., dst=...)`` from spans records none)."""
        found: list[SegmentMap] = []
        stack = [self]
        while stack:
            edges = stack.pop()
            if edges._segment_map is not None and edges._segment_map not in found:
                found.append(edges._segment_map)
            stack.extend(edges._operands)
        return found

    def check_fits(self, segments: SegmentMap) -> None:
        """Refuse running these edges on a sample they were not built for, before any forward:
        a pathway built from another sample's segment map (another length or other frames)
        would cut the wrong positions without a word, and positions beyond the sequence would
        fail inside the forward. Raises :class:`~mapflow_tl.errors.InputError` naming both."""
        n = segments.n_positions
        for built in self.segment_maps():
            if built != segments:
                raise InputError(
                    f"edges {self._name!r} were built from another sample's segment map "
                    f"({built.n_positions} positions, {len(built.frames)} frames) but run on one "
                    f"of {n} positions, {len(segments.frames)} frames; build them from this "
                    f"sample's x.segments")
        try:
            self.dense(n)
        except ValueError as error:
            raise InputError(f"{error}; these edges were built for a longer sequence: build "
                             f"them from this sample's x.segments") from None

    def same_as(self, other: "Edges", n_positions: int) -> bool:
        """Whether two expressions denote the same edges over ``n_positions``."""
        return bool(torch.equal(self.dense(n_positions), other.dense(n_positions)))

    def __repr__(self) -> str:
        return f"Edges({self._name})"


# ---------------------------------------------------------------------- the paper's pathways
def _records_segment_map(pathway: Callable[..., Edges]) -> Callable[..., Edges]:
    """Let the edges a pathway function returns remember the segment map they come from
    (:meth:`Edges.check_fits` refuses running them on another sample's input)."""

    @wraps(pathway)
    def build(seg: SegmentMap, *args, **kwargs) -> Edges:
        edges = pathway(seg, *args, **kwargs)
        edges._segment_map = seg
        return edges

    return build


def _need(seg: SegmentMap, what: str):
    value = getattr(seg, what)
    if value is None or (isinstance(value, tuple) and not value):
        raise InputError(f"this segment map has no {what!r} segment")
    return value


@_records_segment_map
def cross_frame(seg: SegmentMap, *, frame_text: bool = True) -> Edges:
    """Cross-frame interaction (Map the Flow, Finding 1): for every frame t ≥ 1, its tokens
    attending to the tokens of every earlier frame t' < t.

    A frame is its :attr:`~mapflow_tl.segments.Frame.extent`: its tokens plus the text a model
    writes with it (VideoLLaMA3's "," and "Time 1.0s:"), as the official code delimits frames.
    ``frame_text=False`` uses the frames' token grids alone. The two agree for models without
    text between frames.
    """
    frames = _need(seg, "frames")
    spans = [frame.extent if frame_text else frame for frame in frames]
    parts = [
        Edges(src=spans[:t], dst=spans[t], name=f"frames<{t} → frame_{t}")
        for t in range(1, len(spans))
    ]
    return _named(Edges.union(parts), "cross-frame")


@_records_segment_map
def intra_frame(seg: SegmentMap) -> Edges:
    """Each frame's tokens attending to tokens of the same frame."""
    frames = _need(seg, "frames")
    return _named(Edges.union(Edges(src=f, dst=f) for f in frames), "intra-frame")


@_records_segment_map
def video_to_video(seg: SegmentMap) -> Edges:
    """All video-token queries attending to video-token keys (cross- and intra-frame)."""
    video = _need(seg, "video")
    return Edges(src=video, dst=video, name="video → video")


@_records_segment_map
def video_to_question(seg: SegmentMap) -> Edges:
    """Video → question: the coarse question's queries ("Question:" through the last option,
    :attr:`~mapflow_tl.segments.SegmentMap.question_with_options`) reading the video's keys."""
    return Edges(src=_need(seg, "video"), dst=_need(seg, "question_with_options"),
                 name="video → question")


@_records_segment_map
def video_to_last(seg: SegmentMap) -> Edges:
    """Video → last: the last position reading the video directly."""
    return Edges(src=_need(seg, "video"), dst=seg.last, name="video → last")


@_records_segment_map
def question_to_last(seg: SegmentMap) -> Edges:
    """Question ("Question:" through the last option) → last."""
    return Edges(src=_need(seg, "question_with_options"), dst=seg.last, name="question → last")


@_records_segment_map
def question_to_question(seg: SegmentMap) -> Edges:
    """Question ("Question:" through the last option) attending to itself, diagonal included."""
    question = _need(seg, "question_with_options")
    return Edges(src=question, dst=question, name="question → question")


@_records_segment_map
def last_to_last(seg: SegmentMap) -> Edges:
    """Last → last: the last position attending to itself."""
    return Edges(src=seg.last, dst=seg.last, name="last → last")


@_records_segment_map
def question_to_video(seg: SegmentMap) -> Edges:
    """Question → video: video queries reading question keys — empty under causal attention."""
    return Edges(src=_need(seg, "question_with_options"), dst=_need(seg, "video"),
                 name="question → video")


@_records_segment_map
def non_option_question_to_last(seg: SegmentMap) -> Edges:
    """The question text without its options → last."""
    return Edges(src=_need(seg, "question"), dst=seg.last, name="non-option question → last")


@_records_segment_map
def true_option_to_last(seg: SegmentMap) -> Edges:
    """The true option's tokens ("(A) text", label included) → last."""
    return Edges(src=seg.true_option, dst=seg.last, name="true option → last")


@_records_segment_map
def false_options_to_last(seg: SegmentMap) -> Edges:
    """Every false option's tokens ("(B) text", labels included) → last."""
    return Edges(src=list(seg.false_options), dst=seg.last, name="false options → last")


@_records_segment_map
def video_to_non_option_question(seg: SegmentMap) -> Edges:
    """Video → the question text without its options."""
    return Edges(src=_need(seg, "video"), dst=_need(seg, "question"),
                 name="video → non-option question")


@_records_segment_map
def non_option_question_to_true_option(seg: SegmentMap) -> Edges:
    """The question text without its options → the true option."""
    return Edges(src=_need(seg, "question"), dst=seg.true_option,
                 name="non-option question → true option")


@_records_segment_map
def video_to_true_option(seg: SegmentMap) -> Edges:
    """Video → the true option."""
    return Edges(src=_need(seg, "video"), dst=seg.true_option, name="video → true option")


# ---------------------------------------------------------------------- open-ended answers
# A teacher-forced answer (SegmentMap.with_response): "response" is the answer's tokens before the
# last position, whose next-token prediction is the anchor word being traced. The official
# open-ended script (analysis/information_flow_analysis_open_ended.py, target "vqrl-to-qrl")
# blocks video → question, video → non-last response, video → last, question → last and non-last
# response → last, its question being the question text alone (find_token_range of the question).


def _response(seg: SegmentMap) -> Span:
    if seg.response is None:
        raise InputError("this segment map has no 'response' segment: append an answer of at "
                         "least two tokens (SegmentMap.with_response / VideoLLM.extend)")
    return seg.response


def official_response_span(seg: SegmentMap, open_tokens: int = 1) -> Span:
    """The official "non-last response" of an open-ended knockout: the response without its
    last ``open_tokens`` tokens (left open "to avoid spike", official ``--num_open_tokens``,
    default 1), except that the last earlier anchor inside the response stays in it, and at
    least its first token is kept (official lines 311–323)."""
    response = _response(seg)
    if isinstance(open_tokens, bool) or not isinstance(open_tokens, int) or open_tokens < 0:
        raise InputError(f"open_tokens must be a non-negative int, got {open_tokens!r}")
    if open_tokens == 0:
        return response
    length = len(response)
    end = length - open_tokens
    # the official code keeps the last anchor (its first token) blocked
    firsts = [a.start for a in seg.anchors if a.start in response]
    if firsts:
        end = max(max(firsts) - response.start + 1, end)
    end = max(1, end)
    return Span("response_blocked", response.start, response.start + end, "response")


@_records_segment_map
def video_to_response(seg: SegmentMap, *, open_tokens: int = 0) -> Edges:
    """Video → response: the answer's tokens before the last position reading the video
    (official "Video -/-> Non-last response" with ``open_tokens=1``)."""
    return Edges(src=_need(seg, "video"), dst=official_response_span(seg, open_tokens),
                 name="video → response")


@_records_segment_map
def question_to_response(seg: SegmentMap) -> Edges:
    """Question text → response: the answer's tokens before the last position reading the
    question."""
    return Edges(src=_need(seg, "question"), dst=_response(seg), name="question → response")


@_records_segment_map
def response_to_response(seg: SegmentMap) -> Edges:
    """Response → response: the answer's tokens before the last position reading each other,
    diagonal included."""
    response = _response(seg)
    return Edges(src=response, dst=response, name="response → response")


@_records_segment_map
def response_to_last(seg: SegmentMap, *, open_tokens: int = 0) -> Edges:
    """Response → last: the token before the traced anchor reading the earlier answer
    (official "Non-last response -/-> Last" with ``open_tokens=1``)."""
    return Edges(src=official_response_span(seg, open_tokens), dst=seg.last,
                 name="response → last")


@_records_segment_map
def anchors_to_last(seg: SegmentMap) -> Edges:
    """The earlier anchors (every token of each) → last."""
    if not seg.anchors:
        raise InputError("this segment map has no answer anchors before the last position")
    return Edges(src=list(seg.anchors), dst=seg.last, name="anchors → last")


def _named(edges: Edges, name: str) -> Edges:
    edges._name = name
    return edges
