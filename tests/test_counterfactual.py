"""Counterfactual videos and position alignment, checked against frames indexed by hand and
position pairs written out from the layouts; on SynthTV, the edited run's frame tokens are the
original run's tokens of the frame the edit says it shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mapflow_tl.counterfactuals import align, counterfactual
from mapflow_tl.errors import InputError
from mapflow_tl.models import VideoSample
from mapflow_tl.segments import Frame, SegmentMap
# tiny random models of two real families, built once per session by their own test modules
from test_models_qwen import videollama3_dir  # noqa: F401 (fixture)
from test_models_smolvlm import smolvlm_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def clip(n=5, size=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def sample(frames, id="s"):
    return VideoSample(frames, "what happens ?", ["a", "b"], answer=1, id=id, task="t")


@pytest.mark.parametrize("kind, options, origin", [
    ("reverse", {}, [4, 3, 2, 1, 0]),
    ("freeze", {"frame": 2}, [2, 2, 2, 2, 2]),
    ("drop", {"frame": 1}, [0, 2, 3, 4]),
    ("duplicate", {"frame": 3}, [0, 1, 2, 3, 3, 4]),
    ("swap", {"frame": (0, 4)}, [4, 1, 2, 3, 0]),
])
def test_frame_edits_show_the_frames_their_origin_names(kind, options, origin):
    frames = clip()
    cf = counterfactual(sample(frames), kind, **options)
    assert list(cf.origin) == origin
    assert cf.sample.video.shape[0] == len(origin)
    for t, s in enumerate(origin):
        assert np.array_equal(cf.sample.video[t], frames[s])
    assert np.array_equal(cf.original.video, frames)
    assert (cf.sample.question, cf.sample.answer) == ("what happens ?", 1)
    assert cf.sample.id.startswith("s~" + kind)


def test_shuffle_is_seeded_and_never_the_identity():
    frames = clip(n=2)
    for seed in range(5):
        cf = counterfactual(sample(frames), "shuffle", seed=seed)
        assert list(cf.origin) == [1, 0]   # the only permutation of two that is not the identity
    frames = clip(n=6)
    a, b = (counterfactual(sample(frames), "shuffle", seed=7) for _ in range(2))
    assert a.origin == b.origin and sorted(a.origin) == list(range(6))
    assert np.array_equal(a.sample.video, frames[list(a.origin)])


def test_replace_takes_the_other_videos_frame_and_has_no_origin_there():
    frames, other = clip(), clip(seed=1)
    cf = counterfactual(sample(frames), "replace", frame=2, other=sample(other, "o"))
    assert cf.origin == (0, 1, None, 3, 4)
    assert np.array_equal(cf.sample.video[2], other[2])
    assert np.array_equal(np.delete(cf.sample.video, 2, 0), np.delete(frames, 2, 0))
    assert cf.frame_map() == {0: 0, 1: 1, 3: 3, 4: 4}


def test_frame_map_directions():
    cf = counterfactual(sample(clip()), "duplicate", frame=1)    # origin 0 1 1 2 3 4
    assert cf.frame_map("to_original") == {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 4}
    assert cf.frame_map("to_counterfactual") == {0: 0, 1: 1, 2: 3, 3: 4, 4: 5}


@pytest.mark.parametrize("kind, options, message", [
    ("rewind", {}, "is not one of"),
    ("drop", {"frame": 5}, "outside the clip's 5 frames"),
    ("swap", {"frame": (1, 1)}, "two different frames"),
    ("swap", {"frame": 1}, r"frame=\(a, b\)"),
    ("replace", {"frame": 0}, "needs other="),
    ("replace", {"frame": 0, "other": clip(size=6)}, "frames of the same size"),
])
def test_bad_edits_are_refused_with_the_fix(kind, options, message):
    with pytest.raises(InputError, match=message):
        counterfactual(sample(clip()), kind, **options)


def test_a_video_file_needs_the_models_frame_count():
    with pytest.raises(InputError, match="pass num_frames="):
        counterfactual(VideoSample("clip.mp4", "q", ["a"], id="f"), "reverse")


# ----------------------------------------------------------------------------- alignment
def test_alignment_with_separators_maps_frames_by_cell_and_gaps_by_slot():
    # 3 frames of 1×2 with 2 separator tokens in each next frame's extent (VideoLLaMA3's layout)
    seg = SegmentMap.sequential(system=1, frames=[(1, 2)] * 3, separator=2,
                                separators_in_frames=True, question=2, options=[1, 1])
    # positions: system 0; frame_0 1-2; sep 3-4; frame_1 5-6; sep 7-8; frame_2 9-10
    reverse = {0: 2, 1: 1, 2: 0}
    assert align(seg, seg, "frame_0", frames=reverse) == [(1, 9), (2, 10)]
    assert align(seg, seg, "video", frames=reverse) == [
        (1, 9), (2, 10), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 1), (10, 2)]
    assert align(seg, seg, "question") == [(p, p) for p in range(11, 13)]


def test_alignment_shifts_text_when_the_video_is_shorter():
    long = SegmentMap.sequential(system=1, frames=[(2, 2)] * 3, question=3, options=[2, 2])
    short = SegmentMap.sequential(system=1, frames=[(2, 2)] * 2, question=3, options=[2, 2])
    assert align(long, short, "question") == [(13, 9), (14, 10), (15, 11)]
    assert align(long, short, "last") == [(long.n_positions - 1, short.n_positions - 1)]
    # dropped frame 1: long frame 2 is short frame 1; long frame 1 has no counterpart
    dropped = {0: 0, 2: 1}
    assert align(long, short, "frame_2", frames=dropped) == [(9 + i, 5 + i) for i in range(4)]
    with pytest.raises(InputError, match="no counterpart"):
        align(long, short, "frame_1", frames=dropped)
    with pytest.raises(InputError, match="'all' pairs positions one to one"):
        align(long, short, "all")


def test_alignment_refuses_frames_of_different_token_counts():
    small = SegmentMap.sequential(frames=[(2, 2)] * 2, question=2)
    large = SegmentMap.sequential(frames=[(3, 3)] * 2, question=2)
    with pytest.raises(InputError, match=r"2×2 grid in the target .* 3×3 grid in the source"):
        align(small, large, "frame_0")
    shorter_question = SegmentMap.sequential(frames=[(2, 2)] * 2, question=3)
    with pytest.raises(InputError, match="has 2 positions in the target and 3 in the source"):
        align(small, shorter_question, "question")
    with pytest.raises(InputError, match="no segment named 'nope'"):
        align(small, small, "nope")


def test_alignment_of_temporal_patch_frames_follows_their_input_frames():
    # Qwen2-VL style: each token frame covers two input frames
    def seg():
        frames = tuple(Frame(f"frame_{t}", 2 + 2 * t, 4 + 2 * t, index=t, grid=(1, 2),
                             source_frames=(2 * t, 2 * t + 1)) for t in range(2))
        return SegmentMap(10, frames=frames)

    target = source = seg()
    pairs_swapped = {0: 2, 1: 3, 2: 0, 3: 1}
    assert align(target, source, "frame_0", frames=pairs_swapped) == [(2, 4), (3, 5)]
    reverse = {0: 3, 1: 2, 2: 1, 3: 0}   # token frame 0 would need input frames (3, 2): none
    with pytest.raises(InputError, match=r"no source token frame made of input frames \[3, 2\]"):
        align(target, source, "frame_0", frames=reverse)


# ----------------------------------------------------------------------------- SynthTV
@pytest.fixture(scope="module")
def synthtv():
    import mapflow_tl as mf

    vlm = mf.load_videollm("synthtv-video-ft")
    data = list(mf.load_dataset("synthtv", tasks=["action_sequence"], limit=2))
    return vlm, data


@pytest.mark.parametrize("kind, options", [("reverse", {}), ("drop", {"frame": 2}),
                                           ("swap", {"frame": (1, 6)})])
def test_synthtv_edited_frames_carry_the_original_frames_tokens(synthtv, kind, options):
    """SynthTV computes each frame's tokens from that frame alone, so the edited run's tokens at
    a frame equal the original run's at the frame the edit shows there, cell by cell; text
    positions are shifted when the video's length changed."""
    vlm, data = synthtv
    cf = counterfactual(data[0], kind, num_frames=8, **options)
    original, edited = vlm.prepare(cf.original), vlm.prepare(cf.sample)
    frames = cf.frame_map("to_original")
    for frame in edited.segments.frames:
        pairs = align(edited.segments, original.segments, frame.name, frames=frames)
        source_frame = original.segments.frames[cf.origin[frame.index]]
        assert [s for _, s in pairs] == list(source_frame.positions)
        mine, theirs = zip(*pairs)
        assert torch.allclose(edited.embeds[0, list(mine)], original.embeds[0, list(theirs)],
                              atol=1e-5)
    for name in ("question", "option_A", "option_B", "last"):
        mine, theirs = zip(*align(edited.segments, original.segments, name))
        assert torch.equal(edited.input_ids[0, list(mine)], original.input_ids[0, list(theirs)])


def test_frame_attribution_aligns_by_content_and_leaves_out_a_dropped_frame(synthtv):
    """analyses.counterfactual_patching with a dropped frame: by content, original frame t is
    patched from the edit's frame showing it; the dropped frame has no counterpart and no row."""
    from mapflow_tl import analyses

    vlm, data = synthtv
    x = vlm.prepare(data[1])
    rows = analyses.counterfactual_patching(vlm, data[1], x, "drop", frame=3,
                                            align_frames="content", layers=[0],
                                            attribution=False)
    segments = [row["segment"] for row in rows]
    assert segments == [f"frame_{t}" for t in range(8) if t != 3] + ["question", "last"]
    assert {row["source"] for row in rows} == {f"{data[1].id}~drop:3"}
    # the residual stream entering layer 0 is the embeddings: a frame patched from the frame
    # showing the same image changes nothing
    for row in rows:
        if row["segment"].startswith("frame_"):
            assert row["patched_diff"] == pytest.approx(row["target_diff"], abs=1e-4)
    with pytest.raises(InputError, match="no counterpart"):
        analyses.counterfactual_patching(vlm, data[1], x, "drop", frame=3,
                                         align_frames="content", segments=["frame_3"])


def test_frames_that_kept_different_tokens_pair_only_their_common_cells():
    """VideoLLaMA3-style compressed frames: no grid on the map, the kept (h, w) per frame in the
    prepared input's meta; a frame with different token counts pairs the cells both kept."""
    def seg(lengths):
        frames, cursor = [], 1
        for t, length in enumerate(lengths):
            frames.append(Frame(f"frame_{t}", cursor, cursor + length, index=t))
            cursor += length
        return SegmentMap(cursor + 1, frames=tuple(frames))

    target, source = seg([4, 2]), seg([4, 3])
    target_kept = [[(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0), (1, 1)]]
    source_kept = [[(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 1), (1, 0), (1, 1)]]
    coords = (target_kept, source_kept)
    # target frame_1 = positions 5, 6 holding cells (0,0), (1,1); source frame_1 = 5, 6, 7
    # holding (0,1), (1,0), (1,1): only (1,1) is in both
    assert align(target, source, "frame_1", coords=coords) == [(6, 7)]
    assert align(target, source, "frame_0", coords=coords) == [(p, p) for p in range(1, 5)]
    with pytest.raises(InputError, match="no \\(H, W\\) grid on its map and no kept token"):
        align(target, source, "frame_0")


# ------------------------------------------------------- real families on tiny random models
def test_smolvlm_reversed_frames_align_through_their_separators(smolvlm_dir):
    """SmolVLM writes "Frame from mm:ss" text between frames and encodes each frame on its own:
    aligned by content, the reversed run's frame t holds, cell by cell, the original run's frame
    T-1-t tokens; the separators pair slot by slot (the same text, as the reversed clip is timed
    like the original); the question pairs by offset."""
    from test_models_qwen import OPTIONS, QUESTION, frames_array

    from mapflow_tl.models import load_videollm

    vlm = load_videollm(smolvlm_dir)
    cf = counterfactual(VideoSample(frames_array(), QUESTION, OPTIONS, answer=1), "reverse")
    original, edited = vlm.prepare(cf.original), vlm.prepare(cf.sample)
    assert original.segments.separators, "the fixture must have text between frames"
    n = len(edited.segments.frames)
    frames = cf.frame_map("to_original")
    for frame in edited.segments.frames:
        pairs = align(edited.segments, original.segments, frame.name, frames=frames)
        # the original frame at T-1-t, read off the original map, not through align
        assert [s for _, s in pairs] == list(original.segments.frames[n - 1 - frame.index]
                                             .positions)
        mine, theirs = zip(*pairs)
        # an independent check of the pairing: the tokens themselves, computed per frame
        assert torch.allclose(edited.embeds[0, list(mine)], original.embeds[0, list(theirs)],
                              atol=1e-5)
        assert not torch.allclose(edited.embeds[0, list(mine)],
                                  original.embeds[0, list(frame.positions)], atol=1e-3)
    video = align(edited.segments, original.segments, "video", frames=frames)
    for separator in edited.segments.separators:
        gap = [(t, s) for t, s in video if separator.start <= t < separator.stop]
        assert gap == [(p, p) for p in separator.positions]
        assert torch.equal(edited.input_ids[0, separator.start:separator.stop],
                           original.input_ids[0, separator.start:separator.stop])
    mine, theirs = zip(*align(edited.segments, original.segments, "question"))
    assert torch.equal(edited.input_ids[0, list(mine)], original.input_ids[0, list(theirs)])


def test_videollama3_compressed_frames_align_by_their_kept_cells(videollama3_dir):
    """VideoLLaMA3 with token compression keeps, per frame, only the cells that changed since
    the previous frame, so reversing the clip changes how many tokens each frame has (here 6, 2,
    1, 6 → 6, 6, 1, 2). Aligned by content through the kept coordinates, each reversed frame
    pairs only the cells both runs kept, and those hold the same image's tokens."""
    from test_models_qwen import MODEL_OWN, OPTIONS, QUESTION, static_video

    from mapflow_tl.models import load_videollm

    vlm = load_videollm(videollama3_dir, **MODEL_OWN)
    cf = counterfactual(VideoSample(static_video(), QUESTION, OPTIONS, answer=2), "reverse")
    original, edited = vlm.prepare(cf.original), vlm.prepare(cf.sample)
    assert [len(f) for f in original.segments.frames] == [6, 2, 1, 6]
    assert [len(f) for f in edited.segments.frames] == [6, 6, 1, 2]
    coords = (edited.meta["kept_coords"], original.meta["kept_coords"])
    frames = cf.frame_map("to_original")
    for frame in edited.segments.frames:
        pairs = align(edited.segments, original.segments, frame.name, frames=frames,
                      coords=coords)
        source = original.segments.frames[3 - frame.index]
        # the cells both kept, by hand from the two runs' recorded coordinates
        kept_here = [tuple(c) for c in coords[0][frame.index]]
        kept_there = [tuple(c) for c in coords[1][source.index]]
        expected = [(frame.start + i, source.start + kept_there.index(cell))
                    for i, cell in enumerate(kept_here) if cell in kept_there]
        assert pairs == expected and pairs
        mine, theirs = zip(*pairs)
        assert torch.allclose(edited.embeds[0, list(mine)], original.embeds[0, list(theirs)],
                              atol=1e-5)
    # slot alignment of frame 1 (6 kept cells against the original's 2) pairs their 2 common cells
    assert len(align(edited.segments, original.segments, "frame_1", coords=coords)) == 2
    with pytest.raises(InputError, match="no \\(H, W\\) grid on its map and no kept token"):
        align(edited.segments, original.segments, "frame_2", frames=frames)
