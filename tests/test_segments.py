import json

import pytest

from mapflow_tl.segments import Frame, Option, SegmentMap, Span


def make(**overrides):
    spans = dict(
        n_positions=30,
        system=Span("system", 0, 3, "system"),
        frames=(Frame("frame_0", 3, 7, index=0, grid=(2, 2)),
                Frame("frame_1", 8, 12, index=1, grid=(2, 2))),
        separators=(Span("separator_0", 7, 8, "separator"),),
        question=Span("question", 13, 20, "question"),
        options=(Option("option_A", 21, 23, label="A", text="left", is_true=False),
                 Option("option_B", 24, 26, label="B", text="right", is_true=True)),
    )
    spans.update(overrides)
    return SegmentMap(**spans)


def test_access_and_defaults():
    seg = make()
    assert seg.video == Span("video", 3, 12, "video")  # derived from the frames
    assert seg.last.positions == range(29, 30)
    assert seg.frames[1].grid == (2, 2) and len(seg.frames[1]) == 4
    assert seg.true_option.label == "B" and [o.label for o in seg.false_options] == ["A"]
    assert seg["question"].start == 13 and "separator_0" in seg
    # derived coarse question: from the question through the last option (no prefix tokens here)
    assert seg.question_with_options.positions == range(13, 26)
    assert seg.between_video_and_last.positions == range(12, 29)
    assert seg.n_frames == 2


def test_frame_coordinates_are_frame_major():
    seg = SegmentMap.sequential(system=1, frames=[(2, 3)] * 2, question=2, options=[1, 1],
                                true_option=0)
    # position = video_start + t*H*W + h*W + w
    for t in range(2):
        for h in range(2):
            for w in range(3):
                position = 1 + t * 6 + h * 3 + w
                assert seg.frames[t].position(h, w) == position
                assert seg.frame_of(position) == (t, h, w)
    assert seg.frame_of(0) is None


def test_separators_are_not_frame_tokens():
    seg = make()
    assert seg.frame_of(7) is None
    assert all(7 not in frame for frame in seg.frames)


def test_repr_one_line_per_segment_and_per_unnamed_stretch():
    text = repr(make())
    lines = text.splitlines()
    assert lines[0].startswith("SegmentMap(30 positions, 2 frames)")
    unnamed = [line.split() for line in lines if "(unnamed)" in line]
    # what no span names is printed too, so every position is accounted for: the role tag
    # between the video and the question, the instruction and assistant prefix before the last
    assert [u[1:4] for u in unnamed] == [["[", "12,", "13)"], ["[", "26,", "29)"]]
    assert "between video and question_with_options" in text
    assert "between question_with_options and last" in text
    assert len(lines) == 1 + len(make().spans()) + 2
    assert any("grid 2×2" in line for line in lines)
    assert any("(B) 'right'  (true)" in line for line in lines)
    assert "[    26,     29)" not in repr(make(n_positions=27))  # options run into the last


def test_json_round_trip():
    seg = make().with_span("keyword", 15, 16)
    again = SegmentMap.from_json(json.dumps(seg.to_dict()))
    assert again == seg
    assert isinstance(again.frames[0], Frame) and isinstance(again.options[1], Option)
    assert again["keyword"].positions == range(15, 16)


def test_user_span_may_overlap_question():
    seg = make().with_span("keyword", 14, 15)
    assert seg["keyword"].overlaps(seg.question)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(question=Span("question", 13, 31, "question")),
         "segment 'question' [13, 31) runs past the sequence length 30"),
        (dict(question=Span("question", 10, 20, "question")), "overlaps"),
        (dict(separators=(Span("separator_0", 6, 8, "separator"),)), "overlaps 'frame_0'"),
        (dict(frames=(Frame("frame_0", 3, 7, index=0, grid=(2, 2)),
                      Frame("frame_1", 8, 12, index=0, grid=(2, 2)))), "index 0, expected 1"),
        (dict(options=(Option("option_A", 21, 23, label="A", is_true=True),
                       Option("option_B", 24, 26, label="B", is_true=True))),
         "at most one option may be true"),
        (dict(options=(Option("option_A", 21, 23, label="A"),
                       Option("option_B", 24, 26, label="A"))), "labels must be unique"),
        (dict(last=Span("last", 28, 30, "last")), "exactly one position"),
        (dict(video=Span("video", 3, 10, "video")), "lies outside 'video'"),
    ],
)
def test_invalid_maps_name_the_segment(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        make(**overrides)


@pytest.mark.parametrize("start, stop, message", [(-1, 3, "starts before position 0"),
                                                  (4, 4, "is empty"), (5, 2, "is empty")])
def test_bad_spans(start, stop, message):
    with pytest.raises(ValueError, match=message):
        Span("question", start, stop)


def test_frame_grid_must_cover_frame():
    with pytest.raises(ValueError, match="grid 2×3 holds 6"):
        Frame("frame_0", 0, 4, index=0, grid=(2, 3))


def test_from_dict_rejects_unknown_fields():
    data = make().to_dict()
    data["frames"][0]["colour"] = "red"
    with pytest.raises(ValueError, match="unknown fields"):
        SegmentMap.from_dict(data)


def test_missing_true_option():
    seg = SegmentMap.sequential(frames=[(1, 1)], question=1, options=[1, 1])
    with pytest.raises(ValueError, match="no true option"):
        seg.true_option


def test_sequential_paper_layout_by_hand():
    # system 3 | frame 2×2 | 1 text | "Question:" 2 | question 4 | (A) 1+2 | 1 | (B) 1+3 | 5 | last
    seg = SegmentMap.sequential(system=3, frames=[(2, 2)], after_video=1, question_prefix=2,
                                question=4, options=[3, 4], option_label=1, true_option=1,
                                between_options=1, before_last=5)
    assert seg.question.positions == range(10, 14)
    assert [o.positions for o in seg.options] == [range(14, 17), range(18, 22)]
    assert [t.positions for t in seg.option_texts] == [range(15, 17), range(19, 22)]
    assert seg.true_option.text_span.positions == range(19, 22)
    assert seg.question_with_options.positions == range(8, 22)  # "Question:" … last option
    assert seg.between_video_and_last.positions == range(7, 27)
    assert seg.last.start == 27 == seg.n_positions - 1


def test_option_text_span_must_lie_inside_the_option():
    assert Option("option_A", 5, 9, label="A").text_span.positions == range(5, 9)
    with pytest.raises(ValueError, match="must be a non-empty part of the option"):
        Option("option_A", 5, 9, label="A", text_start=6, text_stop=10)
    with pytest.raises(ValueError, match="both text_start and text_stop"):
        Option("option_A", 5, 9, label="A", text_start=6)


def test_frame_extents_hold_their_tokens_and_tile_in_order():
    frame = Frame("frame_1", 6, 10, index=1, grid=(2, 2), extent_start=3, extent_stop=10)
    assert frame.extent.positions == range(3, 10) and frame.position(1, 1) == 9
    with pytest.raises(ValueError, match="must contain the frame's tokens"):
        Frame("frame_1", 6, 10, index=1, grid=(2, 2), extent_start=7, extent_stop=10)
    with pytest.raises(ValueError, match="overlaps"):
        make(frames=(Frame("frame_0", 3, 7, index=0, grid=(2, 2), extent_start=3, extent_stop=8),
                     Frame("frame_1", 8, 12, index=1, grid=(2, 2), extent_start=7,
                           extent_stop=12)))


def test_question_with_options_must_hold_question_and_options():
    with pytest.raises(ValueError, match="does not contain 'option_B'"):
        make(question_with_options=Span("question_with_options", 13, 24, "text"))
    with pytest.raises(ValueError, match="overlaps the video or the last position"):
        make(question_with_options=Span("question_with_options", 11, 26, "text"))
    with pytest.raises(ValueError, match="not one of"):
        make().with_question_span("everything")


def test_json_round_trip_keeps_extents_text_spans_and_the_coarse_question():
    seg = SegmentMap.sequential(frames=[(1, 2)] * 2, separator=1, separators_in_frames=True,
                                question_prefix=1, question=2, options=[2, 2], option_label=1,
                                true_option=0, before_last=2)
    again = SegmentMap.from_json(seg.to_json())
    assert again == seg and again.frames[1].extent.positions == range(2, 5)
    assert again.options[0].text_span == seg.options[0].text_span
    old = seg.to_dict()
    del old["question_with_options"]  # a map saved before the field existed: derived
    assert seg.question_with_options.positions == range(5, 12)  # "Question:" at 5
    assert SegmentMap.from_dict(old).question_with_options.positions == range(6, 12)


def test_frame_without_a_grid_maps_a_position_to_row_zero():
    """A frame whose tokens have no spatial layout (grid None) is one row: its i-th token is
    (t, 0, i), never (t, i, 0); asking it for a grid position is an error naming the frame."""
    seg = make(frames=(Frame("frame_0", 3, 7, index=0), Frame("frame_1", 8, 12, index=1)))
    assert [seg.frame_of(p) for p in range(3, 7)] == [(0, 0, i) for i in range(4)]
    assert [seg.frame_of(p) for p in range(8, 12)] == [(1, 0, i) for i in range(4)]
    assert seg.frame_of(7) is None and seg.frame_of(12) is None
    with pytest.raises(ValueError, match="'frame_1' has no \\(H, W\\) grid"):
        seg.frames[1].position(0, 1)
    with pytest.raises(ValueError, match="'frame_0' has no \\(H, W\\) grid"):
        seg.frames[0].coords(4)


def test_span_bounds_are_half_open():
    """[start, stop): the start is in, the stop is not; spans that touch do not overlap, spans
    that share one position do."""
    span = Span("question", 4, 7)
    assert 4 in span and 6 in span and 7 not in span and 3 not in span
    assert list(span) == [4, 5, 6] and len(span) == 3
    assert not span.overlaps(Span("x", 7, 9)) and not Span("x", 2, 4).overlaps(span)
    assert span.overlaps(Span("x", 6, 9)) and Span("x", 2, 5).overlaps(span)
    assert span.overlaps(Span("x", 5, 6)) and Span("x", 0, 30).overlaps(span)


def test_segments_may_touch_and_end_at_the_last_position():
    """A segment that ends exactly where the next begins, or at n_positions, is valid; one more
    position is an error naming both."""
    seg = make(question=Span("question", 12, 21, "question"),
               options=(Option("option_A", 21, 24, label="A"),
                        Option("option_B", 24, 29, label="B", is_true=True)))
    assert seg.question_with_options.positions == range(12, 29)
    assert seg.between_video_and_last.positions == range(12, 29)
    with pytest.raises(ValueError, match="'option_B' \\[23, 26\\) overlaps 'option_A'"):
        make(options=(Option("option_A", 21, 24, label="A"),
                      Option("option_B", 23, 26, label="B")))
    with pytest.raises(ValueError, match="overlaps"):
        make(question=Span("question", 11, 20, "question"))  # shares position 11 with frame 1
    assert make(n_positions=26, last=Span("last", 25, 26, "last"),
                options=(Option("option_A", 21, 23, label="A"),)).n_positions == 26
    with pytest.raises(ValueError, match="\\[13, 26\\) runs past the sequence length 25"):
        make(n_positions=25, last=Span("last", 24, 25, "last"))


def test_frames_must_come_in_order_and_options_may_all_be_false():
    with pytest.raises(ValueError, match="before frame 0 ends at 7"):
        make(frames=(Frame("frame_0", 3, 7, index=0, grid=(2, 2)),
                     Frame("frame_1", 2, 3, index=1, grid=(1, 1))),
             system=None, separators=(), video=Span("video", 2, 12, "video"))
    seg = make(options=(Option("option_A", 21, 23, label="A"),
                        Option("option_B", 24, 26, label="B")))
    assert [o.label for o in seg.false_options] == ["A", "B"]
    seg = make()
    assert seg.true_option.label == "B" and seg.false_options == (seg.options[0],)
    assert [s.positions for s in make(options=(
        Option("option_A", 21, 23, label="A", text_start=22, text_stop=23),
        Option("option_B", 24, 26, label="B", is_true=True))).option_texts] == [range(22, 23),
                                                                                   range(24, 26)]


def test_video_spans_the_frame_extents_and_needs_a_gap_before_last():
    """The derived video runs from the first frame's extent (its leading text included) to the
    last frame's extent end; a map whose video ends at the last position has nothing between
    them, which is a one-line error."""
    seg = make(frames=(Frame("frame_0", 4, 7, index=0, extent_start=3, extent_stop=7),
                       Frame("frame_1", 8, 11, index=1, extent_start=7, extent_stop=12)),
               separators=())
    assert seg.video == Span("video", 3, 12, "video")
    assert seg.between_video_and_last.positions == range(12, 29)
    tight = SegmentMap(n_positions=8, frames=(Frame("frame_0", 2, 7, index=0),))
    with pytest.raises(ValueError, match="no positions between the video and the last position"):
        tight.between_video_and_last
