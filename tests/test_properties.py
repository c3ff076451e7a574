"""Property-based hardening: invalid segment maps, edge expressions and window arguments raise
ValueError with a message; valid ones match an independent reference."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mapflow_tl.edges import Edges
from mapflow_tl.hooks import WINDOW_STYLES, knockout, window
from mapflow_tl.segments import Frame, SegmentMap, Span


@settings(max_examples=200, deadline=None)
@given(center=st.integers(-3, 40), n_layers=st.integers(-1, 40), k=st.integers(-2, 12),
       style=st.sampled_from(WINDOW_STYLES + ("diagonal",)))
def test_window_valid_or_value_error(center, n_layers, k, style):
    valid_args = n_layers > 0 and 0 <= center < n_layers and k > 0 and style in WINDOW_STYLES
    if not valid_args:
        with pytest.raises(ValueError, match=r"\w"):
            window(center, n_layers=n_layers, k=k, style=style)
        return
    lo, hi = center - k // 2, center + (k - 1) // 2  # reference: the paper's window, unclipped
    reference = {
        "center": [l for l in range(n_layers) if lo <= l <= hi],
        "inverse": [l for l in range(n_layers) if not lo <= l <= hi],
        "top_down": list(range(center, n_layers)),
        "bottom_up": list(range(0, center + 1)),
    }[style]
    if not reference:
        with pytest.raises(ValueError, match="covers no layer"):
            window(center, n_layers=n_layers, k=k, style=style)
    else:
        assert window(center, n_layers=n_layers, k=k, style=style) == reference


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), spans=st.lists(st.tuples(st.integers(-2, 32), st.integers(-2, 32)),
                                            min_size=1, max_size=4))
def test_segment_maps_valid_or_value_error(n, spans):
    """Spans as question / options / system: valid iff each is non-empty, inside [0, n), leaves
    the last position alone and none overlap."""
    names = ["system", "question", "option_A", "option_B"][:len(spans)]
    valid = all(0 <= a < b <= n - 1 for a, b in spans)
    ordered = sorted(spans)
    valid = valid and all(ordered[i][1] <= ordered[i + 1][0] for i in range(len(ordered) - 1))
    def build():
        kwargs = {}
        options = []
        for name, (a, b) in zip(names, spans):
            if name.startswith("option"):
                from mapflow_tl.segments import Option
                options.append(Option(name, a, b, label=name[-1]))
            else:
                kwargs[name] = Span(name, a, b, name)
        return SegmentMap(n, options=tuple(options), **kwargs)
    if valid:
        seg = build()
        covered = [p for s in seg.spans() for p in s.positions]
        assert len(covered) == len(set(covered))  # non-overlapping, as the reference says
    else:
        with pytest.raises(ValueError, match=r"segment|positions|start|stop|empty"):
            build()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 12), src=st.lists(st.integers(-1, 14), max_size=5),
       dst=st.lists(st.integers(-1, 14), max_size=5), layers=st.lists(st.integers(-1, 5),
                                                                      max_size=3))
def test_edges_and_knockout_valid_or_value_error(n, src, dst, layers):
    if any(p < 0 for p in src + dst):
        with pytest.raises(ValueError, match="negative position"):
            Edges(src=src, dst=dst)
        return
    edges = Edges(src=src, dst=dst)
    if src and dst and max(src + dst) >= n:
        with pytest.raises(ValueError, match="beyond the sequence"):
            edges.dense(n)
    else:
        reference = torch.zeros(n, n, dtype=torch.bool)
        for q in dst:
            for k in src:
                if k <= q:
                    reference[q, k] = True
        assert torch.equal(edges.dense(n), reference)
    if not layers or any(l < 0 or l >= 4 for l in layers):
        with pytest.raises(ValueError, match="layer"):
            knockout(edges, layers, n_layers=4)
    else:
        hooks = knockout(edges, layers, n_layers=4)
        assert [name for name, _ in hooks] == [f"blocks.{l}.attn.hook_attn_scores"
                                               for l in sorted(set(layers))]


@settings(max_examples=60, deadline=None)
@given(grids=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=4),
       shift=st.integers(-2, 2))
def test_frames_out_of_order_or_outside_video_raise(grids, shift):
    seg = SegmentMap.sequential(system=2, frames=grids, question=2)
    frames = list(seg.frames)
    moved = Frame(frames[-1].name, frames[-1].start + shift, frames[-1].stop + shift,
                  index=frames[-1].index, grid=frames[-1].grid) if frames[-1].start + shift >= 0 \
        else None
    assume(moved is not None and shift != 0)
    frames[-1] = moved
    inside = seg.video.start <= moved.start and moved.stop <= seg.video.stop
    ordered = len(frames) == 1 or moved.start >= frames[-2].stop
    if inside and ordered:
        SegmentMap(seg.n_positions, system=seg.system, video=seg.video, frames=tuple(frames),
                   question=seg.question)
    else:
        with pytest.raises(ValueError, match="frame_"):
            SegmentMap(seg.n_positions, system=seg.system, video=seg.video,
                       frames=tuple(frames), question=seg.question)
