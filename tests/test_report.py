"""Results and the report: typed tables (pandas / Parquet), frame thumbnails, the figures' numbers
checked against hand computations on hand-made run folders, and the report opened in a real
headless browser (Chromium over the DevTools protocol): no console error, every figure drawn."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from mapflow_tl.report import (FIGURE_IDS, MIN_BAND_SAMPLES, bootstrap_band, build_report,
                               curve_color)
from mapflow_tl.results import frame_thumbnails, load_run, read_rows, table_frame, write_tables
from mapflow_tl.runs import RunWriter, read_table
from mapflow_tl.segments import Frame, SegmentMap

TASKS = ("Task A", "Task B")


# ----------------------------------------------------------------------------- hand-made run
def _colour(t):
    """A distinct flat colour per source frame, so a thumbnail shows which frame it is."""
    return np.array([30 * t % 256, 255 - 30 * t % 256, 100], dtype=np.uint8)


class _Prepared:
    """The parts of a Prepared that frame_thumbnails reads."""

    def __init__(self, segments, n_source_frames, sample="s0", meta=None):
        self.segments = segments
        self.frames = np.stack([np.broadcast_to(_colour(t), (48, 64, 3))
                                for t in range(n_source_frames)]).copy()
        self.meta = {"id": sample, "task": "Task A", **(meta or {})}


def _mixed_layout():
    """Three token frames: a 2×3 grid, a 3×2 grid, and a compressed frame of 2 kept tokens of a
    2×3 grid (VideoLLaMA3's kind: grid None, kept (h, w) in meta); separators between frames."""
    seg = SegmentMap.sequential(system=1, frames=[(2, 3), (3, 2), (1, 2)], separator=1,
                                after_video=1, question=3, options=[1, 1], true_option=0,
                                between_options=1, before_last=1)
    last = seg.frames[2]
    compressed = Frame(last.name, last.start, last.stop, index=last.index, grid=None)
    return replace(seg, frames=seg.frames[:2] + (compressed,))


KEPT = [[[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]], [], [[1, 2], [0, 1]]]


def _frames_rows(sample="s0"):
    x = _Prepared(_mixed_layout(), 6, sample, meta={"kept_coords": KEPT, "frame_grid": [2, 3]})
    return frame_thumbnails(x)


def _run_folder(root: Path) -> Path:
    """A run folder with every table the report draws, its numbers chosen by hand: two tasks,
    per task two samples answered correctly and one wrongly; two curves over four layers."""
    out = root / "run"
    writer = RunWriter(out, {"command": "demo", "model": "video-model", "image_model":
                             "image-model", "dataset": "handmade", "seed": 0,
                             "model_family": "Test", "n_layers": 4,
                             "definitions": {"correct": "decoded-letter"},
                             "versions": {"python": "3"}})
    samples, flow, prob, crossframe, prune = [], [], [], [], []
    for t, task in enumerate(TASKS):
        for i in range(3):
            sample = f"{task[-1]}{i}"
            correct = i < 2
            samples.append({"sample": sample, "task": task, "base_token": 1,
                            "base_p_pred": 0.9, "base_p_true": 0.9 if correct else 0.1,
                            "base_correct": correct, "base_option": 0, "selected": True})
            for curve in ("cross-frame", "video → last"):
                for layer in range(4):
                    change = -10.0 * (i + 1) * layer if curve == "cross-frame" else -5.0 * t
                    flow.append({"sample": sample, "task": task, "circuit": "c",
                                 "curve": curve, "layer": layer, "layers": [layer], "k": 1,
                                 "style": "center", "base_token": 1, "base_p_pred": 0.9,
                                 "base_p_true": 0.9, "base_correct": correct, "base_option": 0,
                                 "p_pred": 0.5, "p_true": 0.5, "change_pred": change,
                                 "change_true": change, "token": 1, "option": 0,
                                 "correct": layer != 2 or i == 0, "edges": 4})
            for layer in range(4):
                for option in range(2):
                    prob.append({"sample": sample, "task": task, "layer": layer,
                                 "option": option, "is_true": option == 0,
                                 "probability": 0.25 * layer if option == 0 else 0.1})
            for model, drop in (("video-model", True), ("image-model", False)):
                for condition in ("base", "cross-frame knockout"):
                    crossframe.append({
                        "sample": sample, "task": task, "model": model, "condition": condition,
                        "layers": [0, 1], "token": 1,
                        "correct": correct and not (drop and condition != "base" and i == 1)})
            for variant in ("full", "pathway", "random"):
                prune.append({"sample": sample, "task": task, "circuit": "c",
                              "variant": variant, "seed": 0 if variant == "random" else None,
                              "token": 1, "correct": variant != "random", "p_true": 0.5,
                              "kept_edges": 10 if variant == "full" else 6, "total_edges": 10,
                              "retained": 1.0 if variant == "full" else 0.6})
    writer.write("samples", samples)
    writer.write("flow", flow)
    writer.write("prob", prob)
    writer.write("crossframe", crossframe)
    writer.write("prune", prune)
    writer.write("keywords", [{"layer": l, "spatial": l, "temporal": 4 - l, "positions": 16}
                              for l in range(4)])
    layout = _mixed_layout()
    lens, attention = [], []
    for layer in range(4):
        for frame in layout.frames:
            for position in frame.positions:
                _, h, w = layout.frame_of(position)
                cell = {"sample": "s0", "task": "Task A", "position": position,
                        "frame": frame.index, "h": h, "w": w}
                lens.append({**cell, "layer": layer, "top_ids": [position, 0],
                             "top_tokens": [f"p{position}", "x"], "top_probs": [0.5, 0.1]})
                for condition in ("baseline", "cross-frame knockout"):
                    attention.append({**cell, "condition": condition, "layer": layer,
                                      "attention": position / 100 + layer})
    writer.write("lens", lens)
    writer.write("attention", attention)
    writer.write("frames", _frames_rows())
    writer.write("patch", [
        {"sample": "s0", "task": "Task A", "source": "s0~reverse", "method": method,
         "activation": "resid_pre", "segment": segment, "position": None, "layer": layer,
         "head": None, "positions": 4, "target_token": 1, "source_token": 2,
         "target_diff": -1.0, "source_diff": 1.0, "patched_diff": -1.0 + 2 * score,
         "score": score}
        for method in ("patch", "attribution") for segment in ("frame_0", "last")
        for layer in range(4) for score in [layer / 4 if segment == "last" else 0.1]])
    writer.write("heads", [_head_row(sample, curve, layer, head, change)
                           for sample, offset in (("s0", 0.0), ("s1", 10.0))
                           for curve, sign in (("cross-frame", -1), ("video → last", 1))
                           for layer in range(4) for head in range(2)
                           for change in [sign * (layer * 10 + head) + offset]])
    writer.write("discover", _discover_rows())
    writer.write("discover_samples", [
        {"sample": sample, "task": "T", "edge_type": edge_type, "layer": layer,
         "task_open": layer < 2, "sample_open": layer < (1 if sample == "s0" else 2),
         "sample_retained": 0.5, "evaluations": 10, "complete": True}
        for sample in ("s0", "s1") for edge_type in ("cross-frame", "video → last")
        for layer in range(4)])
    writer.finish()
    return out


def _discover_rows():
    """A search path of two steps, a hand pathway and two random seeds per point, by hand."""
    def row(method, step, label, seed, split, accuracy, retained):
        return {"method": method, "step": step, "label": label, "seed": seed, "split": split,
                "samples": 10, "correct": round(accuracy / 10), "accuracy": accuracy,
                "kept_edges": int(retained * 1000), "total_edges": 1000, "retained": retained}

    rows = [row("full", 0, "full model", None, "eval", 90.0, 1.0),
            row("full", 0, "full model", None, "search", 80.0, 1.0)]
    for step, retained, accuracy in ((1, 0.8, 90.0), (2, 0.5, 80.0)):
        label = f"step {step}"
        rows.append(row("search", step, label, None, "eval", accuracy, retained))
        rows.append(row("search", step, label, None, "search", accuracy - 10, retained))
        rows += [row("random", step, f"random at {label}", seed, "eval", 40.0 + 10 * seed,
                     retained + 0.001 * seed) for seed in (0, 2)]
    rows.append(row("hand", None, "hand-c", None, "eval", 70.0, 0.7))
    return rows


def _head_row(sample, curve, layer, head, change):
    return {"sample": sample, "task": "Task A", "circuit": "c", "curve": curve, "layer": layer,
            "layers": [layer], "head": head, "base_token": 1, "base_p_pred": 0.9,
            "base_p_true": 0.9, "base_correct": True, "base_option": 0, "p_pred": 0.5,
            "p_true": 0.5, "change_pred": change, "change_true": change, "token": 1,
            "correct": True}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _run_folder(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir)


# ------------------------------------------------------------------------------- load_run
def test_load_run_gives_typed_frames_and_parquet_round_trips(tmp_path):
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "test", "model": "m"})
    rows = [{"sample": "a", "task": "t", "layer": 0, "seed": None, "correct": None,
             "p": 0.5, "top_tokens": ["x", "y"], "top_probs": [0.75, 0.25]},
            {"sample": "b", "task": "t", "layer": 3, "seed": 2, "correct": True,
             "p": 1, "top_tokens": ["z"], "top_probs": [1.0]}]
    writer.write("custom", rows)
    writer.write("samples", [{"sample": "a", "task": "t", "base_correct": True}])
    writer.finish()
    run = load_run(out)
    assert set(run) == {"custom", "samples"} and run.config["model"] == "m"
    frame = run.custom
    assert str(frame.layer.dtype) == "int64" and list(frame.layer) == [0, 3]
    assert str(frame.seed.dtype) == "Int64" and frame.seed.isna().tolist() == [True, False]
    assert str(frame.correct.dtype) == "boolean" and frame.correct.isna().tolist() == [True, False]
    assert bool(frame.correct[1]) is True
    assert str(frame.p.dtype) == "float64" and frame.p.tolist() == [0.5, 1.0]
    assert frame.top_tokens.tolist() == [["x", "y"], ["z"]]
    assert run["samples"].base_correct.dtype == bool
    # the schema's columns come first, in order, even for a table with fewer fields
    assert list(run.samples.columns[:2]) == ["sample", "task"]
    paths = write_tables(out)
    assert read_rows(out, "custom") == read_table(out, "custom")  # from the Parquet file
    assert sorted(p.name for p in paths) == ["custom.parquet", "samples.parquet"]
    again = load_run(out)
    parquet = again.custom
    assert dict(parquet.dtypes.astype(str)) == dict(frame.dtypes.astype(str))
    assert parquet.top_tokens.tolist() == [["x", "y"], ["z"]]
    assert type(parquet.top_probs[0]) is list and type(parquet.top_probs[0][0]) is float
    assert parquet.top_probs.tolist() == [[0.75, 0.25], [1.0]]
    # a JSONL newer than its Parquet (a resumed run still writing) is read instead
    time.sleep(0.01)
    RunWriter(out, {"command": "test", "model": "m"}, resume=True).write(
        "custom", [{**rows[1], "sample": "c"}])
    assert load_run(out).custom["sample"].tolist() == ["a", "b", "c"]
    with pytest.raises(KeyError, match="no table 'nope'"):
        run["nope"]


def test_table_frame_of_mixed_kinds_and_empty_tables():
    frame = table_frame([{"index": 3}, {"index": "key"}], "skipped")
    assert frame["index"].tolist() == ["3", "key"]
    empty = table_frame([], "flow")
    assert "change_pred" in empty.columns and len(empty) == 0


def test_import_stays_light():
    code = ("import sys, mapflow_tl as mf; mf.load_run; "
            "assert 'pandas' not in sys.modules and 'pyarrow' not in sys.modules, 'heavy'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- thumbnails
def _decode(uri):
    from PIL import Image

    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_frame_thumbnails_follow_each_frames_grid_and_source_frame():
    rows = _frames_rows()
    assert [r["frame"] for r in rows] == [0, 1, 2]
    assert [(r["grid_h"], r["grid_w"]) for r in rows] == [(2, 3), (3, 2), (2, 3)]
    assert [r["coords"] for r in rows] == [None, None, [[1, 2], [0, 1]]]
    # 6 input frames over 3 token frames: token frame t shows input frame 2t (its pair's first)
    assert [r["source_frame"] for r in rows] == [0, 2, 4]
    for r in rows:
        pixels = _decode(r["image"])
        assert pixels.shape[:2] == (r["height"], r["width"]) and max(pixels.shape[:2]) <= 160
        assert np.abs(pixels.reshape(-1, 3).mean(0) - _colour(r["source_frame"])).max() < 4
    # thumbnails stay small: the longest side is capped, never upscaled
    big = _Prepared(SegmentMap.sequential(frames=[(2, 2)]), 1)
    big.frames = np.zeros((1, 720, 1280, 3), dtype=np.uint8)
    (row,) = frame_thumbnails(big)
    assert (row["width"], row["height"]) == (160, 90) and len(row["image"]) < 4000
    with pytest.raises(ValueError, match="uint8"):
        big.frames = big.frames.astype(np.float32)
        frame_thumbnails(big)


# -------------------------------------------------------------------------------- figures
def test_bootstrap_band_by_hand():
    # two samples, 0 and 100: resampled means are 0, 50, 100 with probability 1/4, 1/2, 1/4
    centre, low, high = bootstrap_band(np.array([[0.0, 5.0], [100.0, 5.0]]))
    assert centre.tolist() == [50.0, 5.0]
    assert (low[0], high[0]) == (0.0, 100.0) and low[1] == high[1] == 5.0
    one = bootstrap_band(np.array([[3.0, np.nan]]))
    assert one[0][0] == one[1][0] == one[2][0] == 3.0 and np.isnan(one[0][1])
    values = np.random.default_rng(1).normal(size=(40, 3))
    again = bootstrap_band(values)
    first = bootstrap_band(values)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # seeded
    # the normal-theory interval of a mean of 40 standard normals is about ±0.31
    assert np.all((first[2] - first[1]) > 0.4) and np.all((first[2] - first[1]) < 0.9)


def _percentile(sorted_values, q):
    """numpy's default ("linear") percentile, by hand: position q/100·(n−1), interpolated."""
    position = q / 100 * (len(sorted_values) - 1)
    below = int(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


def test_bootstrap_band_is_the_95_percent_percentile_interval_restated_by_hand():
    """The band its label promises: resample the samples (rows) with replacement, 2000 times
    with the report's fixed seed 0, take each resample's mean (NaN left out), and read the 2.5th
    and 97.5th percentiles — restated with loops; a 90 % or 99 % band would differ."""
    values = np.random.default_rng(7).normal(size=(12, 3))
    values[3, 1] = np.nan
    centre, low, high = bootstrap_band(values)
    picks = np.random.default_rng(0).integers(0, 12, size=(2000, 12))
    for column in range(3):
        means = []
        for pick in picks:
            column_values = [values[i, column] for i in pick if not np.isnan(values[i, column])]
            means.append(sum(column_values) / len(column_values))
        means.sort()
        present = [v for v in values[:, column] if not np.isnan(v)]
        assert centre[column] == pytest.approx(sum(present) / len(present))
        assert low[column] == pytest.approx(_percentile(means, 2.5))
        assert high[column] == pytest.approx(_percentile(means, 97.5))
        assert low[column] != pytest.approx(_percentile(means, 5.0))
        assert high[column] != pytest.approx(_percentile(means, 95.0))
    with pytest.raises(ValueError, match="n_samples"):
        bootstrap_band(np.zeros((0, 3)))


def test_check_row_notices_a_missing_or_an_extra_column():
    from mapflow_tl.schema import TABLES, check_row

    row = {column: 0 for column in TABLES["keywords"]}
    check_row("keywords", row)
    check_row("keywords", dict(reversed(list(row.items()))))  # order does not matter
    missing = {c: 0 for c in TABLES["keywords"] if c != "temporal"}
    with pytest.raises(ValueError, match=r"missing \['temporal'\] and extra \[\]"):
        check_row("keywords", missing)
    with pytest.raises(ValueError, match=r"missing \[\] and extra \['other'\]"):
        check_row("keywords", {**row, "other": 1})
    with pytest.raises(ValueError, match=r"missing \['spatial'\] and extra \['other'\]"):
        check_row("keywords", {**{c: 0 for c in TABLES["keywords"] if c != "spatial"},
                               "other": 1})


def test_sample_fields_name_the_sample_and_its_task():
    from types import SimpleNamespace

    from mapflow_tl.schema import sample_fields

    x = SimpleNamespace(meta={"id": "tvbench/12", "task": "Action Sequence"})
    assert sample_fields(x) == {"sample": "tvbench/12", "task": "Action Sequence"}
    assert sample_fields(SimpleNamespace(meta=None)) == {"sample": "", "task": ""}


def test_probability_trace_false_curve_excludes_the_true_option(tmp_path):
    """Three options: the true one at 0.6 and two false ones at 0.1 and 0.3 in every layer; the
    "false options" curve is their mean (0.2), never including the true option's 0.6."""
    writer = RunWriter(tmp_path / "run", {"command": "prob", "model": "m", "n_layers": 3})
    probabilities = {0: 0.1, 1: 0.6, 2: 0.3}
    writer.write("prob", [{"sample": s, "task": "T", "layer": layer, "option": option,
                           "is_true": option == 1, "probability": p * (1 + layer)}
                          for s in ("s0", "s1") for layer in range(3)
                          for option, p in probabilities.items()])
    # s0 answered correctly, s1 wrongly: the failure diagnosis draws both groups' curves too
    writer.write("samples", [{"sample": s, "task": "T", "base_token": 1, "base_p_pred": 0.6,
                              "base_p_true": 0.6, "base_correct": s == "s0", "base_option": 1,
                              "selected": True} for s in ("s0", "s1")])
    writer.finish()
    page = build_report(tmp_path / "run").read_text()
    expected = {"true option": [0.6 * (1 + layer) for layer in range(3)],
                "false options": [0.2 * (1 + layer) for layer in range(3)]}
    for figure_id, panels in (("probability-trace", 1), ("failure-diagnosis", 2)):
        lines = [t for t in _figure(page, figure_id)["data"] if t.get("mode") == "lines+markers"]
        for name, values in expected.items():
            drawn = [t for t in lines if t["name"] == name]
            assert len(drawn) >= panels, (figure_id, name)
            for trace in drawn:
                assert trace["y"] == pytest.approx(values), (figure_id, name)


def _figure(page: str, figure_id: str) -> dict:
    """The traces and layout ``Plotly.newPlot`` receives for ``figure_id`` in the page."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(figure_id) + r'",\s*', page)
    assert match, figure_id
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(page, match.end())
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return {"data": data, "layout": layout}


def test_report_has_every_figure_and_a_readable_header(report, run_dir):
    page = report.read_text()
    for figure_id in FIGURE_IDS:
        assert f'id="{figure_id}"' in page, figure_id
    assert "<script src=" not in page and "http://" not in page.split("<script")[0]
    header = page[page.index('<table class="meta">'):page.index("</table>")]
    for text in ("video-model", "handmade", "6 evaluated in 2 tasks", "Task A: 3",
                 "accuracy without knockout 66.7 %", "decoded-letter", "numbered from 0",
                 "python 3", "bootstrap"):
        assert text in header, text
    assert re.search(r"This file: \d+\.\d\d MB", page)
    size = report.stat().st_size
    stated = float(re.search(r"This file: (\d+\.\d\d) MB", page).group(1))
    assert abs(stated - size / 1e6) < 0.011


def test_flow_figures_by_hand(report):
    page = report.read_text()
    change = _figure(page, "flow-change")
    # the main figures use the samples answered correctly (i = 0, 1) when the run has both
    lines = {(t.get("name"), t["xaxis"] if "xaxis" in t else "x"): t for t in change["data"]
             if t.get("mode") == "lines+markers"}
    all_tasks = lines[("cross-frame", "x")]
    assert all_tasks["x"] == [0, 1, 2, 3]
    assert all_tasks["y"] == pytest.approx([-15.0 * layer for layer in range(4)])
    task_b = lines[("video → last", "x3")]  # third panel: Task B, change −5 at every layer
    assert task_b["y"] == pytest.approx([-5.0] * 4)
    titles = [a["text"] for a in change["layout"]["annotations"]]
    assert any("all tasks" in t and "n = 4" in t for t in titles)
    assert any("Task B" in t and "n = 2" in t for t in titles)
    for axis in ("xaxis", "xaxis2", "xaxis3"):
        assert change["layout"][axis]["tickvals"] == [0, 1, 2, 3]  # layers, not fractions
    accuracy = _figure(page, "flow-accuracy")
    curve = next(t for t in accuracy["data"] if t.get("name") == "cross-frame"
                 and t.get("mode") == "lines+markers")
    # the official accuracy under knockout: correct knocked-out answers over all six evaluated
    # samples (the two wrong ones count as not correct): 4/6 at every layer but layer 2, where
    # one swept sample of each task fails, 2/6
    assert curve["y"] == pytest.approx([100 * 4 / 6, 100 * 4 / 6, 100 * 2 / 6, 100 * 4 / 6])
    # the no-knockout line is the accuracy over all six evaluated samples (4/6), not 100 %
    lines = [s for s in accuracy["layout"]["shapes"] if s.get("y0") == s.get("y1")]
    assert pytest.approx(100 * 4 / 6) in [s["y0"] for s in lines]


def test_head_maps_by_hand(report):
    """One layer × head heatmap per curve, in the pathways' order; each cell the mean of the
    two samples' change_pred, computed by hand."""
    figure = _figure(report.read_text(), "head-maps")
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles[:2] == ["cross-frame", "video → last"]
    for trace, sign in zip(figure["data"], (-1, 1)):
        assert trace["type"] == "heatmap"
        assert list(trace["x"]) == [0, 1, 2, 3] and list(trace["y"]) == [0, 1]
        expected = [[(sign * (l * 10 + h) + sign * (l * 10 + h) + 10) / 2 for l in range(4)]
                    for h in range(2)]
        assert [list(map(float, row)) for row in trace["z"]] == expected
        assert trace["customdata"] == [[2] * 4] * 2
    assert figure["layout"]["coloraxis"]["cmid"] == 0


def test_finding_one_and_failure_diagnosis_by_hand(report):
    page = report.read_text()
    finding = _figure(page, "finding-1")
    bars = {(t["name"], t.get("xaxis", "x")): t["y"] for t in finding["data"]}
    # video model: 4 of 6 right without knockout; under knockout sample 1 of each task fails
    assert bars[("no knockout", "x")] == pytest.approx([100 * 4 / 6, 100 * 2 / 3, 100 * 2 / 3])
    assert bars[("cross-frame knockout", "x")] == pytest.approx([100 * 2 / 6, 100 / 3, 100 / 3])
    assert bars[("cross-frame knockout", "x2")] == bars[("no knockout", "x2")]
    failure = _figure(page, "failure-diagnosis")
    titles = [a["text"] for a in failure["layout"]["annotations"]]
    assert any("answered wrongly" in t and "n = 2" in t for t in titles)
    wrong = next(t for t in failure["data"] if t.get("name") == "cross-frame"
                 and t.get("xaxis") == "x2" and t.get("mode") == "lines+markers")
    assert wrong["y"] == pytest.approx([-30.0 * layer for layer in range(4)])  # i = 2


def test_frame_views_put_each_token_on_its_frames_grid(report):
    page = report.read_text()
    lens = _figure(page, "lens-overlay")
    heatmaps = [t for t in lens["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4 * 3  # 4 layers × 3 frames
    layout = _mixed_layout()
    shapes = [(len(h["z"]), len(h["z"][0])) for h in heatmaps[:3]]
    assert shapes == [(2, 3), (3, 2), (2, 3)]
    compressed = heatmaps[2]
    kept = list(layout.frames[2].positions)
    # the compressed frame's two tokens sit at their kept (h, w): (1, 2) then (0, 1)
    assert compressed["text"][1][2] == f"p{kept[0]}" and compressed["text"][0][1] == f"p{kept[1]}"
    assert compressed["z"][0][0] is None
    # each frame drawn once, in its own top row, beside (not under) the opaque cells
    assert len(lens["layout"]["images"]) == 3 and lens["layout"]["coloraxis"]["colorbar"]
    assert {i["yref"] for i in lens["layout"]["images"]} == {"y", "y2", "y3"}
    assert {h["yaxis"] for h in heatmaps}.isdisjoint({"y", "y2", "y3"})
    for stop in lens["layout"]["coloraxis"]["colorscale"]:
        assert re.fullmatch(r"#[0-9a-f]{6}", stop[1]), stop  # opaque: no rgba alpha
    attention = _figure(page, "attention-maps")
    assert "attention" in attention["layout"]["coloraxis"]["colorbar"]["title"]["text"]
    slider = attention["layout"]["sliders"][0]
    assert [s["label"] for s in slider["steps"]] == ["0", "1", "2", "3"]
    visible = [t for t in attention["data"] if t.get("visible", True) is True]
    assert len(visible) == 2 * 3  # baseline and knockout rows, three frames, one layer shown
    first = visible[0]
    position = layout.frames[0].start
    assert first["z"][0][0] == pytest.approx(position / 100 + 2)  # layer 2, the middle one


def test_frame_views_draw_knockout_lens_rows_and_each_attention_query(tmp_path):
    """Lens rows with a ``condition`` get their own figure rows; attention rows with a
    ``query`` (a question keyword, the last token) get one figure per query."""
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "lens", "model": "m"})
    layout = SegmentMap.sequential(frames=[(1, 2), (1, 2)], question=2, before_last=1)
    lens, attention = [], []
    for frame in layout.frames:
        for position in frame.positions:
            _, h, w = layout.frame_of(position)
            cell = {"sample": "s", "task": "T", "position": position, "frame": frame.index,
                    "h": h, "w": w, "layer": 0}
            for condition, token in (("baseline", "dog"), ("cross-frame knockout", "cat")):
                lens.append({**cell, "condition": condition, "top_ids": [1],
                             "top_tokens": [token], "top_probs": [0.9]})
                for query in ("keyword 'before'", "last token"):
                    attention.append({**cell, "condition": condition, "query": query,
                                      "attention": 0.5})
    writer.write("lens", lens)
    writer.write("attention", attention)
    writer.finish()
    page = build_report(out).read_text()
    figure = _figure(page, "lens-overlay")
    rows = [a["text"] for a in figure["layout"]["annotations"] if a.get("textangle") == 90]
    assert rows == ["baseline, layer 0", "cross-frame knockout, layer 0"]
    tokens = [t["text"][0][0] for t in figure["data"]]
    assert tokens == ["dog", "dog", "cat", "cat"]
    assert "query: keyword &#x27;before&#x27;" in page and "query: last token" in page
    assert 'id="attention-maps"' in page and 'id="attention-maps-2"' in page
    assert "no frame thumbnails" in page  # this run saved none: said, not hidden


def test_official_attention_view_is_drawn_on_the_official_log_scale_with_the_window(tmp_path):
    """A run of the official attention view (run.json: attention_view per-word) draws
    log10(5e-5 + a) (attention_visualization.py:398-411) with the colour scale from the map's
    minimum to its maximum; the header states the window the run chose (definitions.window)."""
    import math

    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "attention", "model": "m", "window": None,
                             "definitions": {"attention_view": "per-word",
                                             "window": "k = 9 (official)"}})
    layout = SegmentMap.sequential(frames=[(1, 2), (1, 2)], question=2, before_last=1)
    attention = []
    for frame in layout.frames:
        for position in frame.positions:
            _, h, w = layout.frame_of(position)
            for condition in ("baseline", "cross-frame knockout"):
                attention.append({"sample": "s", "task": "T", "position": position,
                                  "frame": frame.index, "h": h, "w": w, "layer": 10,
                                  "condition": condition, "query": "'first' @7",
                                  "attention": 0.001 * (position + 1)})
    writer.write("attention", attention)
    writer.finish()
    page = build_report(out).read_text()
    figure = _figure(page, "attention-maps")
    values = [math.log10(5e-5 + r["attention"]) for r in attention]
    drawn = [v for t in figure["data"] if "z" in t for row in t["z"] for v in row
             if v is not None]
    assert sorted(set(drawn)) == pytest.approx(sorted(set(float(f"{v:.4g}") for v in values)))
    axis = figure["layout"]["coloraxis"]
    assert axis["cmin"] == pytest.approx(min(values), abs=1e-3)
    assert axis["cmax"] == pytest.approx(max(values), abs=1e-3)
    assert "log10" in axis["colorbar"]["title"]["text"]
    header = page[page.index('<table class="meta">'):page.index("</table>")]
    assert "window k</th><td>k = 9 (official)" in header


def test_report_rebuilds_identically(report, tmp_path):
    again = build_report(report.parent, tmp_path / "again.html").read_text()
    page = report.read_text()
    strip = lambda text: re.sub(r"(run folder</th><td>)[^<]*|This file: [^<]*", "", text)
    assert strip(again) == strip(page)


# ------------------------------------------------------------------------- a real browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
    browser reads commands on fd 3 and writes on fd 4, NUL-separated JSON)."""

    def __init__(self, chromium: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--mute-audio",
                   f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "chromium",
             *command], pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r), os.close(from_browser_w)
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._next = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._cond.notify_all()

    def send(self, method, params=None, session=None, timeout=30):
        self._next += 1
        ident = self._next
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method, timeout=30):
        with self._cond:
            if not self._cond.wait_for(
                    lambda: any(e["method"] == method for e in self.events), timeout):
                raise TimeoutError(f"no {method} in {timeout} s")

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)


_CHECK_FIGURES = """JSON.stringify(
  Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
  id: d.id,
  svg: d.querySelectorAll('svg.main-svg').length,
  traces: (d._fullData || []).filter(t => t.visible === true).length,
  drawn: d.querySelectorAll('g.trace, g.hm').length,
  width: d.getBoundingClientRect().width})))"""


# where a heatmap cell of a plot is drawn on the page (CSS pixels from the document's top left)
_CELL_POSITION = """(() => {
  const d = document.getElementById(%(id)s);
  const trace = d._fullData.filter(t => t.type === 'heatmap' && t.visible === true)[%(trace)d];
  const name = a => a.length > 1 ? a[0] + 'axis' + a.slice(1) : a + 'axis';
  const xa = d._fullLayout[name(trace.xaxis)], ya = d._fullLayout[name(trace.yaxis)];
  const box = d.getBoundingClientRect();
  return JSON.stringify({x: box.left + window.scrollX + xa._offset + xa.l2p(%(w)d),
    y: box.top + window.scrollY + ya._offset + ya.l2p(%(h)d),
    width: Math.abs(xa.l2p(1) - xa.l2p(0)), z: trace.z[%(h)d][%(w)d],
    cmin: d._fullLayout.coloraxis.cmin, cmax: d._fullLayout.coloraxis.cmax,
    scale: d._fullLayout.coloraxis.colorscale});
})()"""


def render(path: Path, profile: Path, cells: Sequence[dict] = ()
           ) -> tuple[list[dict], list[str], dict]:
    """Open ``path`` in headless Chromium (a 1300 px wide window); returns each plot's drawing
    summary, the console errors / uncaught exceptions the page raised, and ``{"load_ms": the
    page's load time, "cells": per entry of ``cells`` ({id, trace, h, w, dx}) the cell's value,
    colour scale and the RGB of the pixel drawn ``dx`` cell widths right of its centre}``."""
    from PIL import Image

    chromium = _chromium()
    browser = _DevTools(chromium, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target,
                                                         "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(domain, session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {
            "width": 1300, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session)
        browser.send("Page.navigate", {"url": path.as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", timeout=60)

        def evaluate(expression):
            return browser.send("Runtime.evaluate", {
                "expression": expression, "returnByValue": True, "awaitPromise": True},
                session=session)["result"]["value"]

        result = {"load_ms": evaluate(
            "new Promise(r => setTimeout(() => r(performance.getEntriesByType('navigation')[0]"
            ".loadEventEnd), 0))"), "cells": []}
        for cell in cells:
            where = json.loads(evaluate(_CELL_POSITION % {**cell, "id": json.dumps(cell["id"])}))
            x = where["x"] + cell.get("dx", 0) * where["width"]
            shot = browser.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": x - 1, "y": where["y"] - 1, "width": 3, "height": 3, "scale": 1}},
                session=session)
            pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"])))
                                .convert("RGB"))
            result["cells"].append({**where, "rgb": pixels[1, 1].tolist()})
        plots = json.loads(evaluate(_CHECK_FIGURES))
        errors = []
        for event in browser.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append("uncaught: " + str(details.get("exception", {}).get(
                    "description", details.get("text"))))
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                    "error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                     for a in params["args"]))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append("log: " + params["entry"]["text"])
        return plots, errors, result
    finally:
        browser.close()


def test_report_renders_in_a_real_browser(report, tmp_path):
    if _chromium() is None:
        pytest.skip("headless Chromium is not installed: the report was not opened in a browser "
                    "(.ci/run installs Debian's chromium; apt-get install chromium to run this)")
    plots, errors, _ = render(report, tmp_path / "profile")
    assert errors == []
    page = report.read_text()
    expected = re.findall(r'Plotly\.newPlot\(\s*"([^"]+)"', page)
    assert sorted(p["id"] for p in plots) == sorted(expected) and len(expected) >= 8
    for plot in plots:
        assert plot["svg"] >= 1 and plot["traces"] >= 1 and plot["drawn"] >= 1, plot
        assert plot["width"] > 300, plot


def test_browser_check_catches_a_broken_page(tmp_path):
    """The rendering check can fail: a page whose script throws, and a figure that never draws,
    are both caught."""
    if _chromium() is None:
        pytest.skip("headless Chromium is not installed")
    page = tmp_path / "broken.html"
    page.write_text('<html><body><div class="js-plotly-plot" id="empty"></div>'
                    '<script>console.error("bad thing"); undefinedFunction();</script>'
                    '</body></html>')
    plots, errors, _ = render(page, tmp_path / "profile")
    assert any("bad thing" in e for e in errors)
    assert any("undefinedFunction" in e for e in errors)
    assert plots == [{"id": "empty", "svg": 0, "traces": 0, "drawn": 0,
                      "width": plots[0]["width"]}]


# ------------------------------------------------------------ the real analyses, end to end
class _Letters:
    """Every token decodes to a letter: id % 3 → A, B, C."""

    def decode(self, ids):
        return "".join("ABC"[int(i) % 3] for i in ids)

    def convert_ids_to_tokens(self, ids):
        return ["ABC"[int(i) % 3] for i in ids]


def test_report_of_the_real_analyses_on_a_tiny_model(tiny_backbone, layout, tmp_path):
    """The analyses' own rows (tiny random backbone, random video embeddings and frames) make a
    report with every figure; the flow curve is the plain mean of the rows' change_pred."""
    import torch

    from mapflow_tl import analyses as A
    from mapflow_tl.circuits import load_circuit
    from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM, VideoSample

    class Adapter(FamilyAdapter):
        model_types, name = ("test-report",), "test-report"

        def __init__(self):
            self.backbone, self.vision, self.processor = tiny_backbone, None, None
            self.tokenizer = _Letters()

        def load(self):
            pass

        def prepare(self, sample):
            generator = torch.Generator().manual_seed(int(sample.id))
            embeds = torch.randn(1, layout.n_positions, tiny_backbone.cfg.d_model,
                                 generator=generator)
            frames = np.random.default_rng(int(sample.id)).integers(
                0, 255, (len(layout.frames), 40, 60, 3), dtype=np.uint8)
            return Prepared(embeds=embeds, segments=layout, frames=frames,
                            input_ids=torch.zeros(1, layout.n_positions, dtype=torch.long),
                            answer_ids=torch.tensor([30, 31, 32]), answer=int(sample.id) % 3,
                            meta={"id": sample.id, "task": sample.task})

    vlm = VideoLLM(Adapter(), "tiny")
    writer = RunWriter(tmp_path / "run", {"command": "test", "model": "tiny"})
    for i in range(3):
        x = vlm.prepare(VideoSample(video="unused", question="q", options=("a", "b", "c"),
                                    id=str(i), task="t" if i < 2 else "u"))
        base = A.base_prediction(vlm, x)
        writer.write("samples", [{"sample": str(i), "task": x.meta["task"], **base,
                                  "selected": True}])
        writer.write("flow", A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=3,
                                          method="naive", base=base))
        writer.write("prob", A.probability_trace(vlm, x))
        writer.write("lens", A.video_lens(vlm, x, k=2))
        writer.write("attention", A.attention_to_frames(vlm, x, view="mean"))
        writer.write("crossframe", A.crossframe_knockout(vlm, x, model="tiny"))
        writer.write("frames", frame_thumbnails(x))
    writer.finish()
    flow = read_table(tmp_path / "run", "flow")
    page = build_report(tmp_path / "run").read_text()
    for figure_id in ("flow-change", "flow-accuracy", "finding-1", "probability-trace",
                      "lens-overlay", "attention-maps"):
        assert f'id="{figure_id}"' in page, figure_id
    change = _figure(page, "flow-change")
    curve = next(t for t in change["data"] if t.get("name") == "cross-frame"
                 and t.get("mode") == "lines+markers" and t.get("xaxis", "x") == "x")
    layers = list(range(vlm.n_layers))
    assert curve["x"] == layers
    chosen = [r for r in flow if r["curve"] == "cross-frame"]
    if {r["base_correct"] for r in flow} == {True, False}:
        chosen = [r for r in chosen if r["base_correct"]]
    for layer in layers:
        values = [r["change_pred"] for r in chosen if r["layer"] == layer]
        assert curve["y"][layer] == pytest.approx(sum(values) / len(values))
    lens = _figure(page, "lens-overlay")
    assert len(lens["layout"]["images"]) == len(layout.frames)


def test_a_run_with_no_selected_sample_still_gets_a_report(tmp_path):
    """A finished flow run whose sample mode selected nothing (say --mode wrong on a model that
    answers everything) has a samples table and no flow table: the report says so and shows the
    header, instead of refusing the folder."""
    from mapflow_tl.runs import RunWriter

    writer = RunWriter(tmp_path / "run", {"command": "flow", "model": "m", "mode": "wrong"})
    writer.write("samples", [{"sample": f"s{i}", "task": "T", "base_token": 5,
                              "base_p_pred": 0.9, "base_p_true": 0.9, "base_correct": True,
                              "base_option": 0, "selected": False} for i in range(3)])
    writer.finish()
    page = build_report(tmp_path / "run").read_text()
    assert 'id="no-selected-samples"' in page and "none matched the sample mode 'wrong'" in page
    assert "All 3 evaluated samples" in page


# ----------------------------------------------------------- bands, n and the paper's findings
def _flow_row(sample, task, curve, layer, change):
    return {"sample": sample, "task": task, "circuit": "c", "curve": curve, "layer": layer,
            "layers": [layer], "k": 1, "style": "center", "base_token": 1, "base_p_pred": 0.9,
            "base_p_true": 0.9, "base_correct": True, "base_option": 0, "p_pred": 0.5,
            "p_true": 0.5, "change_pred": change, "change_true": change, "token": 1,
            "option": 0, "correct": True, "edges": 4}


def test_coinciding_bands_are_drawn_once_and_small_panels_warn_instead(tmp_path):
    """Two pathways with the same values at layers 0–1 (both leave the answer as it was):
    the second one's band covers only where it differs (layers 2–3, reaching back to layer 1),
    so stacked translucent bands cannot darken into a block; a task with 3 samples (< 5) gets
    no band and a warning in its title."""
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "flow", "model": "m"})
    flow = []
    for task, count in (("A", 5), ("B", 3)):
        for i in range(count):
            for layer in range(4):
                same = -10.0 * i
                flow.append(_flow_row(f"{task}{i}", task, "cross-frame", layer, same))
                flow.append(_flow_row(f"{task}{i}", task, "video → last", layer,
                                      same if layer < 2 else -50.0 - 7 * i))
    writer.write("flow", flow)
    writer.finish()
    figure = _figure(build_report(out).read_text(), "flow-change")
    bands = {(t["name"], t.get("xaxis", "x")): t for t in figure["data"]
             if t["name"].endswith("95% CI")}
    assert bands[("cross-frame 95% CI", "x")]["x"] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert bands[("video → last 95% CI", "x")]["x"] == [1, 2, 3, 3, 2, 1]
    assert ("cross-frame 95% CI", "x2") in bands  # task A: 5 samples, a band
    assert not any(axis == "x3" for _, axis in bands)  # task B: 3 samples, none
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert any("B" in t and "n = 3 ⚠" in t for t in titles)
    assert not any("A</b>" in t and "⚠" in t for t in titles)
    # the warning stays short (three panels share a row; a longer one ran into its
    # neighbour's title) and the caption says what it means
    assert not any("too few" in t for t in titles)
    page = build_report(out).read_text()
    assert f"fewer than {MIN_BAND_SAMPLES} samples (⚠)" in _captions(page)["flow-change"]


def _finding_run(tmp_path, true_by_layer, spatial, temporal, name="run"):
    out = tmp_path / name
    writer = RunWriter(out, {"command": "prob", "model": "m"})
    writer.write("prob", [{"sample": f"s{i}", "task": "T", "layer": layer, "option": option,
                           "is_true": option == 0,
                           "probability": true_by_layer[layer] if option == 0 else 0.05}
                          for i in range(2) for layer in range(len(true_by_layer))
                          for option in range(2)])
    writer.write("keywords", [{"layer": layer, "spatial": s, "temporal": t, "positions": 20}
                              for layer, (s, t) in enumerate(zip(spatial, temporal))])
    writer.finish()
    page = build_report(out).read_text()
    sections = [part.split('">', 1) for part in page.split('<section id="sec-')[1:]]
    captions = {name: re.search(r'<p class="caption"[^>]*>(.*?)</p>', body, re.S).group(1)
                for name, body in sections}
    return captions["probability-trace"], captions["keyword-frequency"]


def test_captions_say_where_the_run_departs_from_the_paper(tmp_path):
    """From the run's own numbers: p(true) that rises only at the last of 8 layers, and temporal
    keywords that fall with depth, depart from the paper (rise after ~60 % depth; temporal
    concepts emerging in the middle layers); a rise at layer 4 of 8 (57 % depth) and temporal
    keywords peaking in the middle agree."""
    late, falling = _finding_run(tmp_path, [0.05] * 7 + [0.9], [8] * 8,
                                 [8, 8, 8, 4, 4, 2, 1, 0])
    assert "Departs from the paper" in late and "only at the last layer (7" in late
    # depth ℓ/7: early thirds are layers 0–2 (8 of 20 tokens, 40 %), the middle third layers
    # 3–4 (4 of 20, 20 %)
    assert "Departs from the paper" in falling and "40 % of video tokens early" in falling
    assert "20 % in the middle (layers 0–2 vs 3–4)" in falling and "fall with depth" in falling
    middle, rising = _finding_run(tmp_path, [0.05, 0.05, 0.1, 0.2, 0.6, 0.8, 0.9, 0.9],
                                  [10] * 8, [0, 0, 1, 6, 6, 4, 1, 0], "agrees")
    # half the rise 0.05 → 0.9 is 0.475, first reached at layer 4 (4/7 = 57 % depth)
    assert "Departs" not in middle and "As in the paper" in middle
    assert "at layer 4 (57 % depth)" in middle
    assert "Departs" not in rising and "emerge in the middle layers" in rising


def test_pruning_figure_shows_each_seed_and_says_how_many(report, tmp_path):
    page = report.read_text()
    figure = _figure(page, "pruning")
    points = {t["name"]: t for t in figure["data"]}
    # hand-made run: full keeps 10/10 edges, pathway and random 6/10; random always wrong
    full, pathway = points["full model"], points["effective pathways"]
    assert (full["x"], full["y"]) == ([100.0], [100.0])
    assert (pathway["x"], pathway["y"]) == ([60.0], [100.0])
    assert points["random pruning (one point per seed)"]["y"] == [0.0]
    assert "used <b>one seed</b> (0)" in page and "one seed, so no ± spread" in page
    # three seeds: three points, each seed's accuracy over the samples (seed s: s of 3 right)
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "prune", "model": "m"})
    writer.write("prune", [{"sample": f"s{i}", "task": "T", "circuit": "c",
                            "variant": variant, "seed": seed, "token": 1,
                            "correct": variant != "random" or i < seed, "p_true": 0.5,
                            "kept_edges": 6, "total_edges": 10, "retained": 0.6}
                           for i in range(3) for variant, seed in
                           (("full", None), ("pathway", None), ("random", 1), ("random", 2),
                            ("random", 3))])
    writer.finish()
    page = build_report(out).read_text()
    random = {t["name"]: t for t in _figure(page, "pruning")["data"]}[
        "random pruning (one point per seed)"]
    assert random["y"] == pytest.approx([100 / 3, 200 / 3, 100.0])
    assert "used 3 seeds (1, 2, 3)" in page and "over its 3 seeds" in page


def test_plotly_can_be_linked_instead_of_inlined(run_dir, tmp_path):
    from plotly.offline.offline import get_plotlyjs_version

    from mapflow_tl.errors import InputError

    cdn = build_report(run_dir, tmp_path / "cdn.html", plotly="cdn").read_text()
    assert (f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"'
            in cdn)
    local = tmp_path / "site" / "report.html"
    local.parent.mkdir()
    page = build_report(run_dir, local, plotly=str(tmp_path / "js" / "plotly.min.js"))
    assert '<script src="../js/plotly.min.js"' in page.read_text()
    assert (tmp_path / "js" / "plotly.min.js").stat().st_size > 1e6
    assert page.stat().st_size < 0.3 * build_report(run_dir, tmp_path / "in.html").stat().st_size
    with pytest.raises(InputError, match="--plotly"):
        build_report(run_dir, tmp_path / "x.html", plotly=str(tmp_path))


def _scale_colour(scale, fraction):
    """The RGB a plotly colour scale gives ``fraction`` (0–1): linear between its '#rrggbb'
    stops, by hand."""
    stops = [(float(at), [int(c[i:i + 2], 16) for i in (1, 3, 5)]) for at, c in scale]
    for (a, low), (b, high) in zip(stops, stops[1:]):
        if a <= fraction <= b:
            t = (fraction - a) / (b - a)
            return [lo + t * (hi - lo) for lo, hi in zip(low, high)]
    raise ValueError(fraction)


def test_frame_cells_have_the_colour_bars_colour_and_linked_plotly_loads(report, run_dir,
                                                                         tmp_path):
    """A screenshot in headless Chromium: a lens cell (top-1 probability 0.5) and an attention
    cell are drawn in the colour their colour bar gives their value, not blended with the
    frame under them (the hand-made frames are flat green, (0, 255, 100)); the report also
    loads with plotly.js linked from a file, and both load times are measured."""
    if _chromium() is None:
        pytest.skip("headless Chromium is not installed")
    layout = _mixed_layout()
    # attention's middle layer (2) is shown: the value of frame 1's cell (1, 0) is its
    # position / 100 + 2
    cells = [{"id": "lens-overlay", "trace": 0, "h": 0, "w": 0, "dx": 0.35},
             {"id": "attention-maps", "trace": 1, "h": 1, "w": 0, "dx": 0}]
    _, errors, inline = render(report, tmp_path / "profile", cells)
    assert errors == []
    lens, attention = inline["cells"]
    assert lens["z"] == 0.5 and (lens["cmin"], lens["cmax"]) == (0, 1)
    position = layout.frames[1].start + 1 * 2 + 0  # frame 1 is a 3×2 grid: (h=1, w=0)
    assert attention["z"] == pytest.approx(position / 100 + 2)
    for cell in (lens, attention):
        fraction = (cell["z"] - cell["cmin"]) / (cell["cmax"] - cell["cmin"])
        expected = _scale_colour(cell["scale"], fraction)
        assert np.abs(np.array(cell["rgb"]) - expected).max() <= 6, (cell, expected)
    linked = build_report(run_dir, tmp_path / "site" / "report.html",
                          plotly=str(tmp_path / "site" / "plotly.min.js"))
    plots, errors, timing = render(linked, tmp_path / "profile2")
    assert errors == [] and all(p["drawn"] >= 1 for p in plots) and len(plots) >= 8
    print(f"report load time in headless Chromium: inline plotly.js {inline['load_ms']:.0f} ms "
          f"({report.stat().st_size / 1e6:.2f} MB), linked {timing['load_ms']:.0f} ms "
          f"({linked.stat().st_size / 1e6:.2f} MB)")
    for load_ms in (inline["load_ms"], timing["load_ms"]):
        assert 0 < load_ms < 30_000


def test_flow_finding_one_and_pruning_captions_compare_with_the_paper(report, tmp_path):
    """Flow: of 8 layers, the paper's ranges scale to cross-frame 1–3 and question → last 3–5
    (round(ℓ · 7 / 31)); a cross-frame drop strongest at layer 2 agrees, a question → last drop
    strongest at layer 0 and a 50 % video → last drop depart. The hand-made run's Finding 1
    (video model −33.3 points, image model 0) and pruning (full and pathways 100 %, random 0 %)
    agree."""
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "flow", "model": "m"})
    drops = {"cross-frame": 2, "question → last": 0, "video → last": 5}
    writer.write("flow", [_flow_row(f"s{i}", "T", curve, layer,
                                    -50.0 if layer == worst else -1.0)
                          for i in range(5) for curve, worst in drops.items()
                          for layer in range(8)])
    writer.finish()
    page = build_report(out).read_text()
    caption = page[page.index('<section id="sec-flow-change">'):]
    caption = caption[:caption.index("</p>")]
    departs, _, agrees = caption.partition("<b>As in the paper:</b>")
    assert "cross-frame matters most at layer 2 (-50 %)" in agrees and "here 1–3" in agrees
    assert "question → last matters most at layer 0 (-50 %), outside" in departs
    assert "here 3–5" in departs and "blocking video → last costs -50 % at layer 5" in departs
    page = report.read_text()
    finding = page[page.index('<section id="sec-finding-1">'):page.index("</p>", page.index(
        '<section id="sec-finding-1">'))]
    assert "As in the paper:</b> video-model loses 33.3 points over all tasks, image-model 0.0" \
        in finding
    assert "As in the paper:</b> full 100.0 %, pathways 100.0 %, random 0.0 %" in page


def test_pathway_table_by_hand():
    """Table 1's layout per task and variant: accuracy (random: mean over seeds), the seed
    count on the random rows only, and kept / total edges per sample (the mean over rows)."""
    from mapflow_tl.report import pathway_table

    rows = []
    for i in range(2):
        rows.append({"sample": f"s{i}", "task": "T", "variant": "full", "seed": None,
                     "correct": True, "kept_edges": 100, "total_edges": 100})
        rows.append({"sample": f"s{i}", "task": "T", "variant": "pathway", "seed": None,
                     "correct": i == 0, "kept_edges": 40 + 10 * i, "total_edges": 100})
        for seed in (0, 1):
            rows.append({"sample": f"s{i}", "task": "T", "variant": "random", "seed": seed,
                         "correct": seed == 1, "kept_edges": 45, "total_edges": 100})
    table = {row["variant"]: row for row in pathway_table(rows)}
    assert table["full"]["accuracy"] == 100.0 and table["full"]["seeds"] is None
    assert table["pathway"]["accuracy"] == 50.0 and table["pathway"]["seeds"] is None
    assert table["pathway"]["kept_edges"] == 45 and table["pathway"]["total_edges"] == 100
    assert table["pathway"]["retained"] == pytest.approx(0.45)
    assert table["random"]["seeds"] == 2 and table["random"]["accuracy"] == 50.0
    assert table["random"]["kept_edges"] == 45 and table["random"]["samples"] == 2


def test_curve_colours_are_fixed_and_distinct_per_pathway():
    """Each of the paper's pathways keeps its own colour (distinct while the palette lasts);
    any other curve name gets a colour that depends on the name alone."""
    from mapflow_tl.report import _PALETTE, curve_color
    from mapflow_tl.schema import PATHWAY_ORDER

    # every one of them: the palette used to wrap round, and the open-ended figure drew
    # "video → response" in "video → question"'s red
    assert len(_PALETTE) >= len(PATHWAY_ORDER)
    assert len({curve_color(curve) for curve in PATHWAY_ORDER}) == len(PATHWAY_ORDER)
    assert curve_color("cross-frame") == _PALETTE[0]
    assert curve_color("video → question") == _PALETTE[1]
    assert curve_color("my curve") == curve_color("my curve") in _PALETTE


def test_sample_layer_matrix_skips_missing_values():
    """Per sample and layer the mean of the values present: None and NaN (rows that went
    through pandas) are left out, a cell with none is NaN."""
    import math

    from mapflow_tl.report import _matrix

    rows = [{"sample": "a", "layer": 0, "v": 1.0}, {"sample": "a", "layer": 0, "v": 3.0},
            {"sample": "a", "layer": 1, "v": float("nan")}, {"sample": "b", "layer": 1, "v": 4.0},
            {"sample": "b", "layer": 0, "v": None}, {"sample": "a", "layer": 1, "v": 5.0}]
    matrix = _matrix(rows, lambda r: r["v"], [0, 1])
    assert matrix[0].tolist() == [2.0, 5.0]
    assert math.isnan(matrix[1, 0]) and matrix[1, 1] == 4.0


def test_tradeoff_figure_by_hand(report):
    """The trade-off figure draws the held-out search path from the full model on, the search
    split dotted, the hand pathway, and the random baseline as its seeds' mean ± sd; each method
    has its own colour, and a trace's line and markers share it (what the legend shows)."""
    figure = _figure(report.read_text(), "pathway-tradeoff")
    traces = {t["name"].split(",")[0].split(" (")[0]: t for t in figure["data"]}
    search = traces["discovered"]
    assert search["x"] == pytest.approx([100.0, 80.0, 50.0])
    assert search["y"] == pytest.approx([90.0, 90.0, 80.0])
    on_search = traces["search path on the search split"]
    assert on_search["y"] == pytest.approx([80.0, 80.0, 70.0])
    assert on_search["line"]["dash"] == "dot"
    random = traces["random pruning at the same fraction"]
    assert random["y"] == pytest.approx([50.0, 50.0])            # mean of 40 and 60
    assert random["error_y"]["array"] == pytest.approx([14.1421356, 14.1421356])
    assert random["x"] == pytest.approx([50.1, 80.1])
    assert traces["hand-written pathway hand-c"]["y"] == [70.0]
    colours = [t["marker"]["color"] for t in figure["data"]]
    assert len(set(colours)) == len(colours)
    for trace in figure["data"]:
        assert trace["line"]["color"] == trace["marker"]["color"], trace["name"]


def test_pathway_variability_by_hand(report):
    """Per edge type and layer, the share of sample pathways that differ from the task's: s0
    closes layer 1 where the task keeps it open, s1 agrees everywhere."""
    figure = _figure(report.read_text(), "pathway-variability")
    [heatmap] = figure["data"]
    assert heatmap["y"] == ["cross-frame", "video → last"]
    # drawn top-down in that order, as the tables list the edge types
    assert figure["layout"]["yaxis"]["autorange"] == "reversed"
    assert heatmap["z"] == [[0, 0.5, 0, 0], [0, 0.5, 0, 0]]
    assert heatmap["text"][0] == ["●", "●", "", ""]


# ------------------------------------------------- the sections added for eval / diagnose / OE
def _captions(page: str) -> dict[str, str]:
    """Each section's caption, by the section's id."""
    sections = [part.split('">', 1) for part in page.split('<section id="sec-')[1:]]
    return {name: match.group(1) for name, body in sections
            if (match := re.search(r'<p class="caption"[^>]*>(.*?)</p>', body, re.S))}


def _legend_colours(figure) -> dict[str, str]:
    """Legend entry → the colour its line is drawn in (plotly draws the legend's marker from
    the trace itself, so a duplicate here is two legend entries of one colour)."""
    return {t["name"]: t["line"]["color"] for t in figure["data"]
            if t.get("showlegend", True) and t.get("mode") != "none" and "line" in t
            and not t["name"].endswith("95% CI")}


def test_open_ended_figure_gives_each_pathway_its_own_colour_and_titles_its_anchor_panel(
        tmp_path):
    """The open-ended circuits' five curves are five colours (video → response was drawn in
    video → question's red), each its pathway's colour; the first panel is over every anchor,
    not "all tasks"."""
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "flow", "model": "m", "n_layers": 2})
    curves = ("video → question", "video → last", "question → last", "video → response",
              "response → last")
    rows = [{"sample": f"s{i}", "task": "T", "circuit": "open-ended", "curve": curve,
             "layer": layer, "layers": [layer], "k": 1, "style": "center",
             "anchor_order": order, "anchor_text": "two", "anchor_position": 3,
             "anchor_token": 7, "base_p": 0.5, "p": 0.25, "change": -50.0, "token": 7,
             "edges": 4, "knockout_response": None}
            for i in range(2) for curve in curves for layer in range(2) for order in (1, 2)]
    writer.write("open_ended", rows)
    writer.write("answers", [{"sample": f"s{i}", "task": "T", "response": "two",
                              "response_ids": [7], "anchors": [], "traced": [1, 2]}
                             for i in range(2)])
    writer.finish()
    figure = _figure(build_report(out).read_text(), "open-ended-change")
    colours = _legend_colours(figure)
    assert sorted(colours) == sorted(curves)
    assert len(set(colours.values())) == len(curves)
    assert all(colours[c] == curve_color(c) for c in curves)
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles[0].startswith("<b>all anchors</b>")
    assert [t.split("</b>")[0] for t in titles[1:3]] == ["<b>anchor 1", "<b>anchor 2"]


def _checkpoint_flow_run(tmp_path, k=3, layers=range(4), n_layers=4):
    out = tmp_path / f"run-k{k}"
    writer = RunWriter(out, {"command": "flow", "model": "m", "n_layers": n_layers})
    changes = {"video → true option": -40.0, "video → non-option question": -30.0,
               "non-option question → true option": -10.0}
    writer.write("flow", [{**_flow_row(f"s{i}", "T", curve, layer, change if layer == 1 else 0.0),
                           "k": k, "circuit": "vq-to-true-opt"}
                          for i in range(2) for curve, change in changes.items()
                          for layer in layers])
    writer.finish()
    return build_report(out).read_text()


def test_checkpoint_bars_take_their_pathways_colours_and_the_caption_says_it_departs(tmp_path):
    """Direct: video → true option's colour, as its curve in the flow figure above (the bars
    were red and blue, the flow figure's video → question and cross-frame); through the
    question: its second link's. Shares by hand: direct 40, indirect min(30, 10) = 10 → 0.8.
    The caption says the shares are not the paper's, and that k = 3 is not the paper's 9."""
    page = _checkpoint_flow_run(tmp_path)
    flow = _legend_colours(_figure(page, "flow-change"))
    bars = {t["name"]: t for t in _figure(page, "checkpoints")["data"]}
    direct = bars["direct: video → true option"]
    indirect = bars["through the non-option question"]
    assert direct["marker"]["color"] == flow["video → true option"]
    assert indirect["marker"]["color"] == flow["non-option question → true option"]
    assert direct["y"] == pytest.approx([0.8]) and indirect["y"] == pytest.approx([0.2])
    caption = _captions(page)["checkpoints"]
    assert "Departs from the paper:</b>" in caption and "Fig. 4" in caption
    assert "window of k = 3 layers (the paper's k = 9 of 32)" in caption
    assert "window of k" not in _captions(_checkpoint_flow_run(tmp_path, k=9))["checkpoints"]


def test_flow_caption_names_the_centres_a_partial_sweep_covered(tmp_path):
    """A run that swept only some window centres (diagnose sweeps the integration layers)
    says which, instead of "centred on each layer"."""
    partial = _captions(_checkpoint_flow_run(tmp_path, layers=(1, 2)))["flow-change"]
    assert ("centred on layers 1–2 (the centres this run swept, of 0–3; cut at the model's "
            "ends)") in partial
    full = _captions(_checkpoint_flow_run(tmp_path, k=9))["flow-change"]
    assert "centred on each layer (cut at the model's ends)" in full


def test_verdict_bars_count_in_whole_numbers_and_the_caption_says_it_departs(tmp_path):
    """One wrong sample: the count axis ticks 0, 1 (plotly's own gave 0.2, 0.4, …); each
    verdict's bar is its legend colour; the caption says the verdicts are mapflow-tl's."""
    from mapflow_tl.metrics import INTEGRATION_SIMILAR
    from mapflow_tl.schema import TABLES

    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "diagnose", "model": "m"})
    row = dict.fromkeys(TABLES["diagnosis"])
    writer.write("diagnosis", [{**row, "sample": "s0", "task": "T", "verdict": "Case 2",
                                "base_token": 1, "true_token": 2}])
    writer.finish()
    page = build_report(out).read_text()
    figure = _figure(page, "diagnosis-verdicts")
    axis = figure["layout"]["yaxis"]
    assert axis["tickformat"] == "d" and axis["dtick"] == 1
    counts = {t["name"]: t["y"] for t in figure["data"]}
    assert counts == {"Case 1": [0], "Case 2": [1], "both": [0], "neither": [0]}
    caption = _captions(page)["diagnosis-verdicts"]
    assert "Departs from the paper:</b>" in caption
    assert f"r ≥ {INTEGRATION_SIMILAR}" in caption and "paper_parity" in caption


def test_tradeoff_legend_sits_below_and_captions_say_the_search_departs(report, tmp_path):
    """The trade-off legend is horizontal under the plot (beside it, its long names squeezed
    the plot to half the page); the caption names green only where a hand-written pathway is
    drawn, and both discover captions say the search is not the paper's."""
    page = report.read_text()
    legend = _figure(page, "pathway-tradeoff")["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] < 0
    captions = _captions(page)
    assert "green: hand-written pathways" in captions["pathway-tradeoff"]
    assert "Departs from the paper:</b> the paper's pathways are written by hand" in \
        captions["pathway-tradeoff"]
    assert "Departs from the paper:</b>" in captions["pathway-variability"]
    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "discover", "model": "m"})
    writer.write("discover", [r for r in _discover_rows() if r["method"] != "hand"])
    writer.finish()
    alone = _captions(build_report(out).read_text())["pathway-tradeoff"]
    assert "green" not in alone and "Departs from the paper" in alone


def test_accuracy_table_caption_names_exact_only_for_open_ended_answers(tmp_path):
    """A multiple-choice run's accuracy table has no "exact" column, so its caption does not
    explain one; a run with an open-ended answer has the column and the explanation."""
    def run(name, rows):
        out = tmp_path / name
        writer = RunWriter(out, {"command": "eval", "model": "m"})
        writer.write("eval", rows)
        writer.finish()
        page = build_report(out).read_text()
        return _captions(page)["accuracy-table"], page

    choice = [{"sample": f"s{i}", "task": "T", "kind": "choice", "prediction": "A", "option": 0,
               "truth": "A" if i else "B", "correct": bool(i), "exact": None, "p_pred": 0.9,
               "p_true": 0.9} for i in range(2)]
    caption, page = run("choice", choice)
    assert "exact" not in caption and "<th>exact</th>" not in page
    open_row = {**choice[0], "sample": "o0", "kind": "open", "prediction": "two", "option": None,
                "truth": "two", "correct": True, "exact": True}
    caption, page = run("open", choice + [open_row])
    assert "exact: the share of open-ended answers" in caption and "<th>exact</th>" in page


_STRIPS_AND_COUNTS = """JSON.stringify({
  strips: Array.from(document.querySelectorAll('div.strip')).map(d => ({
    id: d.id, first: d.querySelector('img').getBoundingClientRect().left})),
  links: Array.from(document.querySelectorAll('#diagnosis-samples a')).map(a => a.hash),
  align: Array.from(document.querySelectorAll('#diagnosis-counts tr')).map(r =>
    Array.from(r.children).map(c => getComputedStyle(c).textAlign))})"""


def test_diagnosis_frames_line_up_and_counts_align_in_a_real_browser(tmp_path):
    """Two wrong samples with labels of different lengths: in Chromium each frame strip
    starts at the same x (the label had no fixed width, so strips were staggered), each
    sample's link leads to its strip, every count column is right-aligned (Case 1's was left),
    and the page raises no console error."""
    if _chromium() is None:
        pytest.skip("headless Chromium is not installed")
    from mapflow_tl.schema import TABLES

    out = tmp_path / "run"
    writer = RunWriter(out, {"command": "diagnose", "model": "m"})
    row = dict.fromkeys(TABLES["diagnosis"])
    samples = ("s0", "a_much_longer_sample_name/12")
    writer.write("diagnosis", [{**row, "sample": s, "task": task, "verdict": verdict,
                                "base_token": 1, "true_token": 2}
                               for s, task, verdict in zip(samples, ("T", "Long Task Name"),
                                                           ("Case 1", "neither"))])
    writer.write("frames", _frames_rows("s0") + _frames_rows(samples[1]))
    writer.finish()
    page = build_report(out)
    browser = _DevTools(_chromium(), tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target,
                                                         "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(domain, session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", timeout=60)
        found = json.loads(browser.send("Runtime.evaluate", {
            "expression": _STRIPS_AND_COUNTS, "returnByValue": True},
            session=session)["result"]["value"])
        errors = [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"
                  or (e["method"] == "Runtime.consoleAPICalled"
                      and e["params"]["type"] == "error")]
    finally:
        browser.close()
    assert errors == []
    assert len(found["strips"]) == 2
    assert found["strips"][0]["first"] == pytest.approx(found["strips"][1]["first"], abs=0.5)
    assert found["links"] == ["#" + s["id"] for s in found["strips"]]
    for cells in found["align"]:
        assert cells[0] == "left" and set(cells[1:]) == {"right"}, cells
