import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mapflow_tl.edges as E
from mapflow_tl.edges import Edges, causal_edge_count
from mapflow_tl.segments import SegmentMap


def pairs(keys, queries):
    """Reference: the causal (query, key) pairs as a Python set."""
    return {(q, k) for q in queries for k in keys if k <= q}


def as_set(mask):
    return {tuple(map(int, index)) for index in mask.nonzero()}


def test_leaf_matches_hand_count():
    edges = Edges(src=range(2, 5), dst=range(3, 7))
    assert as_set(edges.dense(8)) == pairs(range(2, 5), range(3, 7))
    assert edges.count(8) == len(pairs(range(2, 5), range(3, 7))) == 11


def test_question_to_video_is_empty_under_causal_attention(layout):
    edges = E.question_to_video(layout)
    assert edges.count(layout.n_positions) == 0
    assert edges.first_query(layout.n_positions) is None


def test_cross_frame_by_hand(layout):
    frames = [list(f.positions) for f in layout.frames]
    expected = set()
    for t in range(1, len(frames)):
        expected |= pairs([k for earlier in frames[:t] for k in earlier], frames[t])
    assert as_set(E.cross_frame(layout).dense(layout.n_positions)) == expected
    assert E.cross_frame(layout).first_query(layout.n_positions) == layout.frames[1].start


def test_intra_plus_cross_frame_is_video_to_video_without_separators(layout):
    n = layout.n_positions
    assert (E.cross_frame(layout) | E.intra_frame(layout)).same_as(E.video_to_video(layout), n)


def test_named_pathways_by_hand(layout):
    # conftest layout: system [0,2), video [2,20), one text token, question [21,25), options
    # A [25,27), B [28,29), C [30,32), one instruction token, last 33. The coarse question of the
    # official code runs from the question through the end of the last option: [21, 32).
    n, video, last = layout.n_positions, layout.video.positions, layout.last.positions
    assert (n, video, last) == (34, range(2, 20), range(33, 34))
    question = range(21, 32)
    true = layout.true_option.positions
    false = [p for o in layout.false_options for p in o.positions]
    expected = {
        E.video_to_question: pairs(video, question),
        E.video_to_last: pairs(video, last),
        E.question_to_last: pairs(question, last),
        E.last_to_last: {(n - 1, n - 1)},
        E.non_option_question_to_last: pairs(layout.question.positions, last),
        E.true_option_to_last: pairs(true, last),
        E.false_options_to_last: pairs(false, last),
        E.video_to_non_option_question: pairs(video, layout.question.positions),
        E.non_option_question_to_true_option: pairs(layout.question.positions, true),
        E.video_to_true_option: pairs(video, true),
        E.question_to_question: pairs(question, question),
    }
    for constructor, reference in expected.items():
        assert as_set(constructor(layout).dense(n)) == reference, constructor.__name__


def test_wide_question_span_is_an_option(layout):
    # every position between the video and the last one: [20, 33)
    wide = layout.with_question_span("between_video_and_last")
    n, video, last = layout.n_positions, range(2, 20), [33]
    assert as_set(E.video_to_question(wide).dense(n)) == pairs(video, range(20, 33))
    assert as_set(E.question_to_last(wide).dense(n)) == pairs(range(20, 33), last)
    assert as_set(E.question_to_question(wide).dense(n)) == pairs(range(20, 33), range(20, 33))
    # the finer targets do not move
    assert as_set(E.true_option_to_last(wide).dense(n)) == pairs(range(28, 29), last)


def test_cross_frame_uses_frame_extents_with_the_text_between_frames():
    # VideoLLaMA3-like: 3 frames of 1×2 tokens, 2 text tokens ("," and "Time 1.0s:") before
    # frames 1 and 2 that belong to them (official frames: from the comma up to the next one)
    seg = SegmentMap.sequential(frames=[(1, 2)] * 3, separator=2, separators_in_frames=True,
                                question=1, options=[1, 1], true_option=0)
    assert [(f.start, f.stop) for f in seg.frames] == [(0, 2), (4, 6), (8, 10)]
    assert [(f.extent.start, f.extent.stop) for f in seg.frames] == [(0, 2), (2, 6), (6, 10)]
    expected = pairs(range(0, 2), range(2, 6)) | pairs(range(0, 6), range(6, 10))
    assert as_set(E.cross_frame(seg).dense(seg.n_positions)) == expected
    tokens_only = pairs([0, 1], [4, 5]) | pairs([0, 1, 4, 5], [8, 9])
    assert as_set(E.cross_frame(seg, frame_text=False).dense(seg.n_positions)) == tokens_only


def test_causal_edge_count():
    assert causal_edge_count(1250) == 1250 * 1251 // 2
    everything = Edges(src=range(10), dst=range(10))
    assert everything.count(10) == causal_edge_count(10)


def test_positions_beyond_the_sequence_raise():
    edges = Edges(src=range(0, 3), dst=range(5, 12), name="video → question")
    with pytest.raises(ValueError, match="'video → question'.*11 is beyond the sequence of 10"):
        edges.dense(10)


def test_bad_position_arguments():
    with pytest.raises(ValueError, match="negative position"):
        Edges(src=[-1, 2], dst=[3])
    with pytest.raises(ValueError, match="integer tensor"):
        Edges(src=torch.tensor([0.5]), dst=[3])
    with pytest.raises(ValueError, match="expected a Span"):
        Edges(src=["video"], dst=[3])


def test_from_mask_and_pairs_drop_non_causal_entries():
    mask = torch.ones(4, 4, dtype=torch.bool)
    assert Edges.from_mask(mask).count() == causal_edge_count(4)
    edges = Edges.from_pairs(torch.tensor([3, 1]), torch.tensor([0, 2]), 4)
    assert as_set(edges.dense(4)) == {(3, 0)}


# ---------------------------------------------------------------- property-based algebra
@st.composite
def layouts(draw):
    frames = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1,
                           max_size=4))
    n_options = draw(st.integers(0, 3))
    return SegmentMap.sequential(
        system=draw(st.integers(0, 3)), frames=frames, separator=draw(st.integers(0, 1)),
        after_video=draw(st.integers(0, 2)), question=draw(st.integers(1, 4)),
        options=[draw(st.integers(1, 3)) for _ in range(n_options)],
        true_option=draw(st.one_of(st.none(), st.integers(0, max(n_options - 1, 0))))
        if n_options else None,
        between_options=draw(st.integers(0, 1)), before_last=draw(st.integers(0, 2)))


@st.composite
def expressions(draw, seg, depth=3):
    """A random set expression over the segment map and its reference edge set."""
    spans = seg.spans()
    if depth == 0 or draw(st.booleans()):
        src = draw(st.lists(st.sampled_from(spans), min_size=1, max_size=3))
        dst = draw(st.lists(st.sampled_from(spans), min_size=1, max_size=3))
        keys = {p for s in src for p in s.positions}
        queries = {p for s in dst for p in s.positions}
        return Edges(src=src, dst=dst), pairs(keys, queries)
    left, left_ref = draw(expressions(seg, depth - 1))
    right, right_ref = draw(expressions(seg, depth - 1))
    op = draw(st.sampled_from(["|", "&", "-"]))
    if op == "|":
        return left | right, left_ref | right_ref
    if op == "&":
        return left & right, left_ref & right_ref
    return left - right, left_ref - right_ref


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_algebra_matches_python_sets(data):
    seg = data.draw(layouts())
    edges, reference = data.draw(expressions(seg))
    n = seg.n_positions
    assert as_set(edges.dense(n)) == reference
    assert edges.count(n) == len(reference)
    first = min((q for q, _ in reference), default=None)
    assert edges.first_query(n) == first


@settings(max_examples=30, deadline=None)
@given(seg=layouts())
def test_cross_frame_count_matches_formula(seg):
    sizes = [len(f) for f in seg.frames]
    expected = sum(sizes[t] * sum(sizes[:t]) for t in range(1, len(sizes)))
    assert E.cross_frame(seg).count(seg.n_positions) == expected
