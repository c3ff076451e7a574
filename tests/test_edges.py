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
    # cached per length: asked again, and over a longer sequence (padding adds no edge)
    assert edges.first_query(n) == first
    assert edges.first_query(n + 3) == first and as_set(edges.dense(n + 3)) == reference


@settings(max_examples=30, deadline=None)
@given(seg=layouts())
def test_cross_frame_count_matches_formula(seg):
    sizes = [len(f) for f in seg.frames]
    expected = sum(sizes[t] * sum(sizes[:t]) for t in range(1, len(sizes)))
    assert E.cross_frame(seg).count(seg.n_positions) == expected


# ---------------------------------------------------------------------- paper-shaped accounting
# Token counts of one TVBench question ("What happened after the person took the food?", options
# "Ate the medicine." / "Tidied up the blanket." / "Put down the cup/glass/bottle." / "Took the
# box.", the true one B) in each model's official prompt, counted offline: LLaVA-NeXT (Vicuna)
# and Mini-InternVL (Phi-3) with the LLaMA-2 SentencePiece vocabulary and merges (32000 pieces;
# "Hello world" → [1, 15043, 3186] as the real tokenizer), VideoLLaMA3 by the pre-tokens of
# Qwen2's pre-tokenizer regex (one token each). docs/paper_parity.md lists the layouts.
def llava_layout(video_grid):  # PLLaVA's eval_mvbench conversation, 8 frames
    return SegmentMap.sequential(
        system=53,                      # <s> + system prompt + "\n USER: "
        frames=[video_grid] * 8,
        after_video=5,                  # "\n USER: "
        question_prefix=2, question=9,  # "Question:" + the question
        after_question=4,               # "\nOptions:\n"
        options=[8, 11, 14, 8], option_label=3, between_options=1, true_option=1,
        before_last=15)                 # " \nOnly give the best option. ASSISTANT:Best option:("


def internvl_layout():  # conv_eval_mvbench_phi3, one <img>…</img> of 8×16×16 tokens
    return SegmentMap.sequential(
        system=54, frames=[(16, 16)] * 8,
        after_video=7,                  # "</img>\n <|user|>\n"
        question_prefix=2, question=9, after_question=4,
        options=[8, 11, 14, 8], option_label=3, between_options=1, true_option=1,
        before_last=13)                 # " \nOnly give the best option. <|assistant|>\nBest option:("


def videollama3_layout(grid):
    """<|im_start|>user\\n, then per frame "Time t.0s:" (7 tokens; frames ≥ 1 also the ","),
    the frame's tokens, "\\n", the coarse question (41 tokens), the instruction (18) and
    "<|im_end|>\\n<|im_start|>assistant\\n" (5, the last token its "\\n")."""
    from mapflow_tl.segments import Frame, Option, Span

    cursor, frames, separators = 3, [], []
    for t in range(8):
        text = 7 if t == 0 else 8
        separators.append(Span(f"time_{t}", cursor, cursor + text, "separator"))
        size = grid[0] * grid[1]
        frames.append(Frame(f"frame_{t}", cursor + text, cursor + text + size, index=t,
                            grid=grid, extent_start=cursor, extent_stop=cursor + text + size))
        cursor += text + size
    video = Span("video", 3, cursor, "video")
    cursor += 1
    coarse_start = cursor
    question = Span("question", cursor + 2, cursor + 11, "question")  # "Question", ":" | 9
    cursor += 13  # + "Options", ":\n"
    options = []
    for i, length in enumerate([6, 7, 9, 6]):  # "(A", ")", " Ate", " the", " medicine", ".\n"
        options.append(Option(f"option_{'ABCD'[i]}", cursor, cursor + length, label="ABCD"[i],
                              is_true=(i == 1)))
        cursor += length
    coarse = Span("question_with_options", coarse_start, cursor, "text")
    n = cursor + 18 + 5
    return SegmentMap(n, system=Span("system", 0, 3, "system"), video=video,
                      frames=tuple(frames), separators=tuple(separators), question=question,
                      options=tuple(options), question_with_options=coarse)


def official_edge_count(seg, n_layers, cross_frame, video_question, question_last):
    """The official effective-pathway masks re-stated on a dense [query, key] matrix per layer
    (official.md §7, 0-based kept ranges): cross-frame, video→question and question→last are
    blocked outside their ranges, video→last and last→last everywhere, video→video from
    max(video→question)+1, question→question from max(question→last)+1. Returns (kept, base):
    allowed causal entries summed over layers, and n_layers · n(n+1)/2."""
    import numpy as np

    n = seg.n_positions
    video = slice(seg.video.start, seg.video.stop)
    question = slice(seg.question_with_options.start, seg.question_with_options.stop)
    last = n - 1
    frames = [slice(f.extent.start, f.extent.stop) for f in seg.frames]
    kept = 0
    for layer in range(n_layers):
        allowed = np.tril(np.ones((n, n), dtype=bool))
        if layer not in cross_frame:
            for t in range(1, len(frames)):
                allowed[frames[t], frames[0].start:frames[t].start] = False
        if layer not in video_question:
            allowed[question, video] = False
        if layer not in question_last:
            allowed[last, question] = False
        allowed[last, video] = False
        allowed[last, last] = False
        if layer > max(video_question):
            allowed[video, video] = False
        if layer > max(question_last):
            allowed[question, question] = False
        kept += int(allowed.sum())
    return kept, n_layers * n * (n + 1) // 2


@pytest.mark.parametrize("circuit, layout, n_layers, ranges, paper", [
    ("pathway-llava-next-7b", lambda: llava_layout((12, 12)), 32,
     (range(5, 15), range(5, 20), range(15, 25)), 0.42),
    ("pathway-llava-next-13b", lambda: llava_layout((12, 12)), 40,
     (range(5, 15), range(5, 20), range(15, 30)), 0.37),
    ("pathway-mini-internvl-4b", internvl_layout, 32,
     (range(5, 15), range(5, 20), range(10, 30)), 0.40),
    ("pathway-videollama3-7b", lambda: videollama3_layout((12, 12)), 28,
     (range(0, 15), range(5, 20), range(20, 28)), 0.58),
    ("pathway-videollama3-7b", lambda: videollama3_layout((10, 13)), 28,  # 4:3 frames
     (range(0, 15), range(5, 20), range(20, 28)), 0.58),
])
def test_edge_accounting_on_the_papers_layouts(circuit, layout, n_layers, ranges, paper):
    from mapflow_tl.circuits import load_circuit

    seg = layout()
    spec = load_circuit(circuit).build_pathway(seg, n_layers)
    kept, total = spec.edge_accounting(seg.n_positions)
    assert (kept, total) == official_edge_count(seg, n_layers, *ranges)
    # the paper's Table 1 is a mean over TVBench samples; one sample's layout lands within 2 points
    assert abs(kept / total - paper) < 0.02, kept / total


def test_src_and_dst_of_a_plain_edge_set_and_the_refusal_of_a_union(layout):
    edges = Edges(src=layout.video, dst=[layout.last.start, 3, 3])
    assert edges.src.tolist() == list(layout.video.positions)
    assert edges.dst.tolist() == [3, layout.last.start]          # sorted, unique
    edges.src[0] = 99                                              # a copy: the set is unchanged
    assert edges.src[0] == layout.video.start
    assert E.video_to_question(layout).dst.tolist() == list(layout.question_with_options.positions)
    with pytest.raises(ValueError, match=r"no single src.*dense\(n_positions\)"):
        E.cross_frame(layout).src
    with pytest.raises(ValueError, match="no single dst"):
        (E.video_to_last(layout) | E.question_to_last(layout)).dst


def test_explicit_masks_and_pairs_at_their_bounds():
    """from_mask keeps only the causal triangle (an entry above the diagonal is not an edge, so
    it cannot make the mask "reach" past a shorter sequence); a smaller mask pads with no edges
    to a longer sequence; from_pairs and leaves refuse a position equal to the length (one past
    the end) with a one-line error, not an index error."""
    import torch

    from mapflow_tl.edges import Edges

    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 3] = True          # above the diagonal: dropped
    mask[2, 1] = True
    edges = Edges.from_mask(mask)
    assert edges.count(4) == 1 and edges.count(3) == 1
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2, 1] = True
    assert torch.equal(edges.dense(6), expected)   # padded to a longer sequence
    mask[3, 0] = True
    with pytest.raises(ValueError, match="reach position 3, beyond the sequence of 3"):
        Edges.from_mask(mask).dense(3)
    assert Edges.from_pairs([2, 1], [0, 1], 3).count() == 2
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 3\)"):
        Edges.from_pairs([3], [0], 3)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 3\)"):
        Edges.from_pairs([2], [3], 3)
    with pytest.raises(ValueError, match="dst position 5 is beyond the sequence of 5"):
        Edges(src=[0], dst=[5]).dense(5)
    with pytest.raises(ValueError, match="src position 5 is beyond the sequence of 5"):
        Edges(src=[5], dst=[0]).dense(5)
    assert Edges(src=[0], dst=[4]).count(5) == 1


def test_extent_of_one_sided_and_empty_expressions():
    """An expression with keys but no queries (or none at all) mentions no edge: extent 0, and
    its dense matrix over 0 positions is the empty 0×0 matrix."""
    from mapflow_tl.edges import Edges

    assert Edges(src=[5], dst=[]).extent() == 0 and Edges(src=[], dst=[5]).extent() == 0
    assert Edges(src=[1, 2], dst=[4]).extent() == 5
    assert Edges.empty().dense().shape == (0, 0) and Edges.empty().count() == 0
    assert (Edges(src=[0], dst=[2]) | Edges(src=[6], dst=[1])).extent() == 7


def _labelled_map():
    """Frames with text around their tokens (extents) and options whose "(A) " label tokens
    come before their text: system [0, 3), frame 0 tokens [4, 8) in extent [3, 8), frame 1
    tokens [9, 13) in extent [8, 13), question [14, 18), option A [19, 22) (text [20, 22), true),
    option B [23, 26) (text [24, 26)), last 29."""
    from mapflow_tl.segments import Frame, Option, Span

    return SegmentMap(
        n_positions=30, system=Span("system", 0, 3, "system"),
        frames=(Frame("frame_0", 4, 8, index=0, grid=(2, 2), extent_start=3, extent_stop=8),
                Frame("frame_1", 9, 13, index=1, grid=(2, 2), extent_start=8, extent_stop=13)),
        question=Span("question", 14, 18, "question"),
        options=(Option("option_A", 19, 22, label="A", is_true=True, text_start=20, text_stop=22),
                 Option("option_B", 23, 26, label="B", text_start=24, text_stop=26)))


def test_option_pathways_take_the_label_and_frames_their_own_tokens():
    """The official option span is "(A) text", label included; intra-frame edges stay inside a
    frame's own tokens (the extent's text belongs to cross-frame only). Reference: pairs by hand."""
    from mapflow_tl.testing import block_mask

    seg = _labelled_map()
    last = [29]
    expected = {
        "true option → last": [(range(19, 22), last)],
        "false options → last": [(range(23, 26), last)],
        "video → true option": [(range(3, 13), range(19, 22))],
        "non-option question → true option": [(range(14, 18), range(19, 22))],
        "intra-frame": [(range(4, 8), range(4, 8)), (range(9, 13), range(9, 13))],
        "cross-frame": [(range(3, 8), range(8, 13))],
    }
    got = {"true option → last": E.true_option_to_last(seg),
           "false options → last": E.false_options_to_last(seg),
           "video → true option": E.video_to_true_option(seg),
           "non-option question → true option": E.non_option_question_to_true_option(seg),
           "intra-frame": E.intra_frame(seg), "cross-frame": E.cross_frame(seg)}
    for name, pairs in expected.items():
        assert torch.equal(got[name].dense(30), block_mask(30, pairs)), name


def test_edges_refuse_another_samples_map_of_the_same_length():
    """A pathway remembers the map it was built from: running it on another map of the same
    length but other frames is refused, naming the fix; a map without frames has no cross-frame
    pathway."""
    seg = _labelled_map()
    other = SegmentMap.sequential(system=3, frames=[(2, 2)] * 2, question=4, options=[3, 3],
                                  true_option=0, between_options=1, before_last=7)
    assert other.n_positions == seg.n_positions and other != seg
    E.video_to_last(seg).check_fits(seg)
    with pytest.raises(ValueError, match="another sample's segment map"):
        E.video_to_last(seg).check_fits(other)
    no_frames = SegmentMap(n_positions=10)
    with pytest.raises(ValueError, match="no 'frames' segment"):
        E.cross_frame(no_frames)
