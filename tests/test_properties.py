"""Property-based hardening: invalid segment maps, edge expressions and window arguments raise
ValueError with a message; valid ones match an independent reference."""

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mapflow_tl.edges import Edges
from mapflow_tl.hooks import knockout
from mapflow_tl.layers import WINDOW_STYLES, window
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
@example(n=3, spans=[(0, 1), (1, 2)])  # valid maps with a question: random draws rarely are
@example(n=12, spans=[(0, 2), (3, 5), (5, 7), (8, 10)])
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
        # the coarse question (question through the last option) contains the question and the
        # options by definition; every other span is disjoint from the rest
        coarse = seg.question_with_options
        covered = [p for s in seg.spans() if s is not coarse for p in s.positions]
        assert len(covered) == len(set(covered))  # non-overlapping, as the reference says
        if coarse is not None:
            assert all(coarse.start <= s.start and s.stop <= coarse.stop
                       for s in [seg.question, *seg.options])
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


# ------------------------------------------------------------------ run folders (issue 24)
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from mapflow_tl.runs import IDENTITY_KEYS, RunFolderError, RunWriter, read_table  # noqa: E402

RUN_CONFIG = {"command": "flow", "model": "m", "window": 3}


class Killed(Exception):
    """The process died here."""


class KilledWriter(RunWriter):
    """A RunWriter whose process dies after ``budget`` more bytes: a write is cut at any byte,
    as SIGKILL or a power cut mid-``write`` leaves it."""

    def __init__(self, *args, budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget = budget

    def write(self, table, rows):
        text = "".join(json.dumps(row) + "\n" for row in rows)
        if len(text) <= self.budget:
            self.budget -= len(text)
            return super().write(table, rows)
        with open(self.out / f"{table}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(text[:self.budget])
        self._tables.add(table)
        self.close()  # the kernel drops a dead process' lock
        raise Killed


def sample_rows(i: int, per_sample: list[int]) -> list[dict]:
    return [{"sample": f"s{i}", "layer": j, "p": (31 * i + j) / 7} for j in range(per_sample[i])]


def run_protocol(writer: RunWriter, per_sample: list[int]) -> None:
    """The flow command's protocol: a sample is done once its ``samples`` row exists; its rows
    are written just before, so rows of a sample without one are a crash's leftovers."""
    done = writer.completed("samples", "sample")
    writer.retain("flow", "sample", done)
    for i in range(len(per_sample)):
        if RunWriter.key({"sample": f"s{i}"}, "sample") in done:
            continue
        writer.write("flow", sample_rows(i, per_sample))
        writer.write("samples", [{"sample": f"s{i}", "correct": i % 2 == 0}])
    writer.finish()


def damage_tail(folder: Path, how: str) -> None:
    """What a torn write can leave after the last complete line, or instead of it."""
    for path in sorted(folder.glob("*.jsonl")):
        data = path.read_bytes()
        if how == "garbage-line":
            path.write_bytes(data + b'{"sample": "s\x00\x00\n')
        elif how == "not-an-object":
            path.write_bytes(data + b"[1, 2]\n")
        elif how == "zeroed-last-line" and data.endswith(b"\n") and data.count(b"\n") >= 1:
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            path.write_bytes(data[:start] + b"\x00" * (len(data) - start - 1) + b"\n")


@settings(max_examples=60, deadline=None)
@given(per_sample=st.lists(st.integers(1, 4), min_size=1, max_size=6),
       kills=st.lists(st.floats(0, 1), min_size=1, max_size=3),
       damage=st.sampled_from(["none", "garbage-line", "not-an-object", "zeroed-last-line"]))
def test_resume_after_kills_at_any_byte_gives_the_uninterrupted_rows(per_sample, kills, damage):
    """Kill the run at any byte (any number of times), damage the torn tail, resume: exactly
    the rows of a run that was never interrupted, none duplicated, none missing."""
    with tempfile.TemporaryDirectory() as scratch:
        reference, out = Path(scratch) / "reference", Path(scratch) / "run"
        run_protocol(RunWriter(reference, RUN_CONFIG), per_sample)
        total = sum((reference / f"{t}.jsonl").stat().st_size for t in ("flow", "samples"))
        for attempt, fraction in enumerate(kills):
            try:
                run_protocol(KilledWriter(out, RUN_CONFIG, resume=attempt > 0,
                                          budget=int(fraction * total)), per_sample)
            except Killed:
                damage_tail(out, damage)
        run_protocol(RunWriter(out, RUN_CONFIG, resume=(out / "run.json").exists()), per_sample)
        for table in ("flow", "samples"):
            assert read_table(out, table) == read_table(reference, table)
            assert (out / f"{table}.jsonl").read_bytes() == (
                reference / f"{table}.jsonl").read_bytes()


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.sampled_from(["flow.jsonl", "samples.jsonl", "results.csv", "notes.txt",
                                       "report.html", "shards", "run.lock", "data"]),
                      min_size=1, max_size=4, unique=True),
       resume=st.booleans())
def test_a_folder_that_is_not_ours_is_never_touched(names, resume):
    """Any non-empty folder without run.json (other than our own lock file) is refused, and
    every byte in it stays as it was."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in names:
            if name in ("shards", "data"):
                (folder / name).mkdir()
                (folder / name / "x.jsonl").write_text('{"mine": 1}\n')
            else:
                (folder / name).write_text(f"user content of {name}\n")
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        foreign = sorted(set(names) - {"run.lock"})
        if not foreign:
            RunWriter(folder, RUN_CONFIG, resume=resume).finish()
            return
        with pytest.raises(RunFolderError, match="is not a mapflow-tl run"):
            RunWriter(folder, RUN_CONFIG, resume=resume)
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


IDENTITY_VALUES = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from(["a", "b"]),
                            st.lists(st.sampled_from(["a", "b"]), max_size=2),
                            st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 1),
                                            max_size=2))


@settings(max_examples=100, deadline=None)
@given(then=st.dictionaries(st.sampled_from(IDENTITY_KEYS + ("device", "threads")),
                            IDENTITY_VALUES, max_size=6),
       changes=st.dictionaries(st.sampled_from(IDENTITY_KEYS + ("device", "threads")),
                               IDENTITY_VALUES, max_size=3))
def test_resume_is_refused_exactly_when_an_identity_key_differs(then, changes):
    """Reference: the keys of IDENTITY_KEYS whose JSON values differ, by a plain comparison."""
    now = {**then, **changes}
    differing = sorted(key for key in IDENTITY_KEYS
                       if json.dumps(then.get(key), sort_keys=True)
                       != json.dumps(now.get(key), sort_keys=True))
    with tempfile.TemporaryDirectory() as scratch:
        RunWriter(scratch, then).finish()
        if not differing:
            RunWriter(scratch, now, resume=True).finish()
            return
        with pytest.raises(RunFolderError, match="different configuration") as refused:
            RunWriter(scratch, now, resume=True)
        named = sorted(key for key in IDENTITY_KEYS if f"; {key}: " in f"; {refused.value}"
                       or f": {key}: " in str(refused.value))
        assert named == differing
