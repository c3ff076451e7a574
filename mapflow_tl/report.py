"""The report: one self-contained, offline ``report.html`` with the paper's figures, built from a
run folder's saved tables alone (``mapflow-tl report RUN_DIR`` never touches a model).

Figures, each present when its table is (ids in :data:`FIGURE_IDS`):

- ``flow-change``, ``flow-accuracy`` (Figs. 2–4): relative change of the predicted answer's
  probability and accuracy vs the knocked-out window's centre, one curve per blocked pathway;
  the all-task mean and one panel per task, each curve the mean over samples with a 95 %
  bootstrap band (resampling samples, seeded), ``n`` samples per panel and per curve;
- ``finding-1``: accuracy with and without cross-frame knockout in the early-to-middle layers,
  per task, for the video-fine-tuned and the image-only model side by side (``crossframe``);
- ``failure-diagnosis``: the same curves for samples answered correctly and wrongly;
- ``probability-trace`` (Finding 3): true vs false option probability per layer;
- ``keyword-frequency`` (Finding 2): spatial vs temporal keywords among video tokens' lens tokens;
- ``lens-overlay`` and ``attention-maps``: the logit lens' top token and the attention from the
  query tokens drawn over the video's frames (thumbnails from the ``frames`` table) with each
  frame's own token grid, baseline vs cross-frame knockout;
- ``pruning`` and ``pathway-table`` (Finding 4): accuracy vs retained edges (each random seed a
  point) and the per-task table, effective pathways vs random pruning;
- ``patching``: the normalised activation-patching score per segment (frames, question, last) and
  layer, real patching beside its attribution-patching estimate, with their rank agreement
  (``patch``);
- ``head-maps``: per blocked pathway, a layer × head heatmap of the mean relative change of the
  predicted answer's probability when that one head's edges are knocked out (``heads``).
- ``diagnosis-verdicts`` (``diagnose`` runs): the failure verdict counts per task as bars, the
  ``diagnosis-counts`` table, and one row per wrong sample with its evidence, each linked to the
  frames the model saw (``diagnosis``, ``frames``);
- ``checkpoints``: per task, the share of the video → true-option information that goes directly
  vs through the non-option question, from the ``vq-to-true-opt`` flow curves
  (:func:`mapflow_tl.analyses.checkpoint_shares`), a bar figure and its table.

Each finding's caption compares the run's own numbers with the paper's finding and says where
they depart; panels with fewer than :data:`MIN_BAND_SAMPLES` samples carry a warning instead of
a band.

Layers are numbered from 0 (``layer`` 0 is the first decoder block), as in every table; the
paper counts from 1. A pathway keeps its colour in every figure.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .errors import InputError
from .metrics import VERDICTS as _VERDICTS
from .results import read_rows
from .runs import read_run_config
from .schema import PATHWAY_ORDER

__all__ = ["build_report", "curve_color", "bootstrap_band", "pathway_table", "FIGURE_IDS",
           "LAYER_NUMBERING", "MIN_BAND_SAMPLES", "PLOTLY_MODES"]

# one colour per pathway of schema.PATHWAY_ORDER (15): with fewer, the list wrapped round and
# "video → response" took "video → question"'s red in the same open-ended figure
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#843c39", "#637939", "#7b4173",
            "#8c6d31"]
FIGURE_IDS = ("flow-change", "flow-accuracy", "finding-1", "failure-diagnosis",
              "probability-trace", "keyword-frequency", "lens-overlay", "attention-maps",
              "pruning", "pathway-table", "patching", "head-maps", "pathway-tradeoff",
              "pathway-variability")
#: How the report numbers layers, stated in its header and on every layer axis.
LAYER_NUMBERING = ("Layers are numbered from 0: layer ℓ is decoder block ℓ (0 = the first), "
                   "as in the tables; the paper's figures count from 1 (paper layer = ℓ + 1).")
_LAYER_AXIS = "layer (0-based)"
# the option curves share a figure with the pathway curves (failure diagnosis): dark shades
# that no pathway uses
_TRUE_COLOR, _FALSE_COLOR = "#00441b", "#67000d"
# colour scales of the frame views: opaque, so a cell's colour is the colour bar's colour for
# its value (a translucent scale blended with the frame's pixels showed near-zero attention in
# the frame's own colours); the frame itself is drawn beside the cells, in its own row.
# plotly.js' named scales differ from plotly.py's, so they are spelled out (Blues, YlOrRd).
_LENS_SCALE = [[0, "#f7fbff"], [0.25, "#c6dbef"], [0.5, "#6baed6"], [0.75, "#2171b5"],
               [1, "#08306b"]]
_ATTENTION_SCALE = [[0, "#ffffb2"], [0.25, "#fecc5c"], [0.5, "#fd8d3c"], [0.75, "#f03b20"],
                    [1, "#bd0026"]]
#: Below this many samples a curve gets no bootstrap band (a percentile interval of 2–4 samples
#: is mostly the samples themselves); its panel carries a warning instead.
MIN_BAND_SAMPLES = 5
_BAND_NOTE = (f"95 % bootstrap interval over samples, drawn once where curves coincide (hover "
              f"a layer for every curve's value) and not drawn where a panel has fewer than "
              f"{MIN_BAND_SAMPLES} samples (⚠)")
_BOOTSTRAP_RESAMPLES = 2000
_BOOTSTRAP_SEED = 0
_MAX_FRAMES = 8        # frame columns in a frame-grounded figure (evenly spaced beyond that)
_MAX_LENS_LAYERS = 4   # layer rows in the lens figure
_MAX_FRAME_SAMPLES = 2  # samples drawn in the frame-grounded views
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_FONT = dict(family="Helvetica, Arial, sans-serif", size=12)
#: The patching score's diverging scale, spelled out: plotly.js and plotly's Python package
#: orient the named "RdBu" opposite ways, and the two patching figures must agree (blue: the
#: patch moves the answer towards the counterfactual's).
_SCORE_SCALE = [[0.0, "rgb(103,0,31)"], [0.25, "rgb(214,96,77)"], [0.5, "rgb(247,247,247)"],
                [0.75, "rgb(67,147,195)"], [1.0, "rgb(5,48,97)"]]


def curve_color(curve: str) -> str:
    """A fixed colour per pathway, the same in every figure and every report."""
    if curve in PATHWAY_ORDER:
        return _PALETTE[PATHWAY_ORDER.index(curve) % len(_PALETTE)]
    return _PALETTE[sum(map(ord, curve)) % len(_PALETTE)]


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _by(rows, *keys):
    """Rows grouped by the values of ``keys`` (one key: the value itself, else a tuple)."""
    groups: dict[Any, list] = defaultdict(list)
    for row in rows:
        value = tuple(row.get(k) for k in keys)
        groups[value[0] if len(keys) == 1 else value].append(row)
    return groups


def bootstrap_band(values: np.ndarray, *, resamples: int = _BOOTSTRAP_RESAMPLES,
                   seed: int = _BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over samples and its 95 % percentile-bootstrap interval, per column.

    ``values``: ``[n_samples, n_points]`` (NaN where a sample has no value at a point). The
    samples (rows) are resampled with replacement ``resamples`` times with a fixed ``seed``, so
    a report is reproducible; returns ``(mean, low, high)``, each ``[n_points]`` (the 2.5th and
    97.5th percentiles of the resampled means; one sample gives a band of zero width)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"bootstrap_band needs values [n_samples ≥ 1, n_points], got shape "
                         f"{values.shape}")
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        centre = np.nanmean(values, axis=0)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
        means = np.nanmean(values[picks], axis=1)
        low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
    return centre, low, high


class _quiet_nan_warnings:
    """All-NaN columns (a layer no sample reached) give NaN, not a RuntimeWarning."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def _matrix(rows: list[dict], value, xs: Sequence[int]) -> np.ndarray:
    """``[n_samples, len(xs)]``: per sample and layer the mean of ``value(row)`` (NaN if none)."""
    position = {x: i for i, x in enumerate(xs)}
    samples = sorted({r["sample"] for r in rows})
    index = {s: i for i, s in enumerate(samples)}
    total = np.zeros((len(samples), len(xs)))
    count = np.zeros((len(samples), len(xs)))
    for r in rows:
        v = value(r)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        total[index[r["sample"]], position[r["layer"]]] += float(v)
        count[index[r["sample"]], position[r["layer"]]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _own_band_runs(centre, low, high, drawn) -> list[tuple[int, int]]:
    """Index runs ``[start, stop)`` where a curve's band is its own: at a point where an earlier
    curve of the panel has the same mean and interval (pathways that leave the answer as it
    was all sit on the no-knockout value with one interval), stacking a second translucent band
    only darkens the first into an opaque block, so it is drawn once."""
    own = np.ones(len(centre), dtype=bool)
    for other in drawn:
        same = np.ones(len(centre), dtype=bool)
        for mine, theirs in zip((centre, low, high), other):
            same &= np.isclose(mine, theirs, rtol=0, atol=1e-9) | (np.isnan(mine)
                                                                   & np.isnan(theirs))
        own &= ~same
    own &= ~np.isnan(centre)
    runs, start = [], None
    for i, flag in enumerate(list(own) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _add_curve(figure, xs, values, *, name, color, row, col, showlegend, hover_unit="",
               drawn=None):
    """One curve: the mean over samples (line) and its 95 % bootstrap band (filled) where the
    band is not already drawn by an earlier curve of the panel (``drawn``: their
    ``(centre, low, high)``, appended to); no band below :data:`MIN_BAND_SAMPLES` samples."""
    centre, low, high = bootstrap_band(values)
    n = values.shape[0]
    keep = ~np.isnan(centre)
    xs_kept = [x for x, k in zip(xs, keep) if k]
    runs = (_own_band_runs(centre, low, high, drawn if drawn is not None else [])
            if n >= MIN_BAND_SAMPLES else [])
    if drawn is not None:
        drawn.append((centre, low, high))
    if runs:
        band_x: list = []
        band_y: list = []
        for start, stop in runs:
            # reach the neighbouring points so a one-layer run is not a zero-width sliver
            span = [i for i in range(max(0, start - 1), min(len(xs), stop + 1)) if keep[i]]
            band_x += [xs[i] for i in span] + [xs[i] for i in span[::-1]] + [None]
            band_y += [high[i] for i in span] + [low[i] for i in span[::-1]] + [None]
        figure.add_trace(go.Scatter(
            x=band_x[:-1], y=[float(v) if v is not None else None for v in band_y[:-1]],
            fill="toself", fillcolor=_rgba(color, 0.15), line=dict(width=0), mode="lines",
            hoverinfo="skip", showlegend=False, legendgroup=name, name=f"{name} 95% CI"),
            row=row, col=col)
    figure.add_trace(go.Scatter(
        x=xs_kept, y=list(centre[keep]), name=name, legendgroup=name, showlegend=showlegend,
        mode="lines+markers", marker=dict(size=5), line=dict(color=color, width=2),
        customdata=np.stack([low[keep], high[keep]], axis=-1),
        hovertemplate=(f"{html.escape(name)} (n = {n})<br>layer %{{x}}: %{{y:.1f}}{hover_unit}"
                       f"<br>95% CI [%{{customdata[0]:.1f}}, %{{customdata[1]:.1f}}]"
                       "<extra></extra>")), row=row, col=col)


def _panel_grid(n_panels: int, columns: int = 3):
    cols = min(columns, n_panels)
    return math.ceil(n_panels / cols), cols


def _panels(rows: list[dict], all_label: str = "all tasks") -> list[tuple[str, list[dict]]]:
    """The all-task panel (titled ``all_label``) first, then one per task (only the all-task
    one when there is one task)."""
    tasks = _by(rows, "task")
    panels = [(all_label, rows)]
    if len(tasks) > 1:
        panels += sorted(tasks.items(), key=lambda item: str(item[0]))
    return panels


def _n_label(rows: list[dict]) -> str:
    """``n = …`` samples, with a warning where there are too few for a bootstrap band."""
    n = len({r['sample'] for r in rows})
    if n < MIN_BAND_SAMPLES:
        # short: three panels share a row, and a longer title ran into its neighbour's; the
        # captions say what ⚠ means (_BAND_NOTE)
        return f"n = {n} ⚠"
    return f"n = {n}"


def _curve_panels(rows, curves, value, *, y_title, hover_unit="", baseline=None,
                  height_per_row=300, all_label="all tasks"):
    """Panels (all tasks, then each task) of curves over layers, with bootstrap bands.

    ``curves``: ``[(name, color, row filter)]``; ``value(row)`` the plotted number;
    ``baseline(task_rows, task) -> (y, label) | None`` a dashed reference line per panel;
    ``all_label`` the first panel's title (rows grouped by something else than the task)."""
    panels = _panels(rows, all_label)
    n_rows, n_cols = _panel_grid(len(panels))
    lines = [baseline(task_rows, task) if baseline is not None else None
             for task, task_rows in panels]
    # the reference line's value goes in the panel's title, where it cannot cover a curve
    titles = [f"<b>{html.escape(str(task))}</b> · {_n_label(task_rows)}"
              + (f"<br><span style='font-size:10px'>{html.escape(line[1])}</span>" if line
                 else "")
              for (task, task_rows), line in zip(panels, lines)]
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles,
                           horizontal_spacing=0.07, vertical_spacing=0.3 / n_rows)
    xs = sorted({r["layer"] for r in rows})
    for i, (task, task_rows) in enumerate(panels):
        row, col = divmod(i, n_cols)
        drawn: list = []
        for name, color, keep in curves:
            chosen = [r for r in task_rows if keep(r)]
            if not chosen:
                continue
            _add_curve(figure, xs, _matrix(chosen, value, xs), name=name, color=color,
                       row=row + 1, col=col + 1, showlegend=i == 0, hover_unit=hover_unit,
                       drawn=drawn)
        if lines[i] is not None:
            figure.add_hline(y=lines[i][0], line_dash="dash", line_color="#444", line_width=1,
                             row=row + 1, col=col + 1)
    _integer_layer_axes(figure, xs)
    figure.update_yaxes(title_text=y_title, col=1)
    figure.update_xaxes(title_text=_LAYER_AXIS, row=n_rows)
    # a reference line's label makes the first row's titles two lines high: lift the legend
    two_line = any(line is not None for line in lines[:n_cols])
    # curves that coincide hide each other's line: one hover lists every curve at a layer
    figure.update_layout(height=height_per_row * n_rows + 80, hovermode="x unified",
                         legend=dict(orientation="h", yanchor="bottom",
                                     y=1.0 + (0.12 + 0.1 * two_line) / n_rows,
                                     x=0, xanchor="left"),
                         margin=dict(t=60 + 25 * two_line + 20 * math.ceil(len(curves) / 4),
                                     b=50))
    return figure


def _integer_layer_axes(figure, xs):
    step = max(1, math.ceil(len(xs) / 12))
    figure.update_xaxes(tickmode="array", tickvals=list(xs)[::step], showgrid=True)


def _curve_legend_names(rows) -> list[str]:
    names = {r["curve"] for r in rows}
    return sorted(names, key=lambda c: (PATHWAY_ORDER.index(c) if c in PATHWAY_ORDER
                                        else len(PATHWAY_ORDER), c))


# ------------------------------------------------------------------------- against the paper
# What the paper finds, each compared with the run's own numbers in the figure's caption. The
# layer ranges are the paper's effective pathways for LLaVA-NeXT-7B (DESIGN Finding 4; 0-based
# of 32 layers), scaled to the run's depth; nothing here is specific to a dataset or model.
_PAPER_LAYERS = 32
_PAPER_FLOW = {
    "cross-frame": (5, 14, "early-to-middle"),
    "video → question": (5, 19, "early-to-middle"),
    "question → last": (15, 24, "middle-to-late"),
}
# pathways the paper's effective circuit blocks in every layer: blocking them costs little
_PAPER_WEAK = ("video → last", "last → last")
_WEAK_CHANGE = 20.0     # % change of p(predicted) that still counts as "little"
_PAPER_RISE_DEPTH = (0.4, 0.85)  # p(true) rises after ~layer 20 of 32 (~60 % depth)


def _scaled(layer: int, n_layers: int) -> int:
    return round(layer * (n_layers - 1) / (_PAPER_LAYERS - 1))


def _versus_paper(agrees: list[str], departs: list[str]) -> str:
    """The caption's sentence on where this run agrees with the paper and where it departs."""
    parts = []
    if departs:
        parts.append("<b>Departs from the paper:</b> " + "; ".join(departs) + ".")
    if agrees:
        parts.append("<b>As in the paper:</b> " + "; ".join(agrees) + ".")
    return (" " + " ".join(parts)) if parts else ""


def _flow_versus_paper(rows) -> str:
    """Per pathway the paper names: where its mean drop over all samples is strongest, vs the
    layers where the paper finds it effective; video → last and last → last should cost
    little."""
    n_layers = max(r["layer"] for r in rows) + 1
    agrees, departs = [], []
    for curve in _curve_legend_names(rows):
        chosen = [r for r in rows if r["curve"] == curve]
        means = {layer: mean(float(r["change_pred"]) for r in group)
                 for layer, group in _by(chosen, "layer").items()
                 if all(r.get("change_pred") is not None for r in group)}
        if not means:
            continue
        worst = min(means, key=means.get)
        drop = means[worst]
        if curve in _PAPER_FLOW:
            first, last, where = _PAPER_FLOW[curve]
            low, high = _scaled(first, n_layers), _scaled(last, n_layers)
            paper = (f"the paper finds it in the {where} layers ({first + 1}–{last + 1} of "
                     f"{_PAPER_LAYERS}, here {low}–{high})")
            if drop > -_WEAK_CHANGE / 4:
                departs.append(f"blocking {curve} hardly changes p (at most {round(drop)} %), "
                               f"where {paper}")
            elif low - 1 <= worst <= high + 1:
                agrees.append(f"{curve} matters most at layer {worst} ({round(drop)} %), {paper}")
            else:
                departs.append(f"{curve} matters most at layer {worst} ({round(drop)} %), outside "
                               f"the range where {paper}")
        elif curve in _PAPER_WEAK:
            if drop > -_WEAK_CHANGE:
                agrees.append(f"blocking {curve} costs little (at most {round(drop)} %)")
            else:
                departs.append(f"blocking {curve} costs {round(drop)} % at layer {worst}; the "
                               f"paper's effective pathways block it in every layer")
    return _versus_paper(agrees, departs)


def _probability_versus_paper(rows) -> str:
    """Where the mean p(true option) first covers half its rise from the first to the last
    layer, as a share of the depth, vs the paper's sharp rise after about layer 20 of 32."""
    layers = sorted({r["layer"] for r in rows})
    true = [mean(r["probability"] for r in rows if r["layer"] == l and r["is_true"])
            for l in layers]
    false = [mean([r["probability"] for r in rows if r["layer"] == l and not r["is_true"]]
                  or [0.0]) for l in layers]
    finding = "p(true) rises sharply after about layer 20 of 32 (~60 % depth)"
    paper = f"the paper: {finding}"
    if len(layers) < 2 or true[-1] - true[0] < 0.05:
        return _versus_paper([], [f"p(true) does not rise over the layers ({true[0]:.2f} → "
                                  f"{true[-1]:.2f}); {paper}"])
    half = true[0] + (true[-1] - true[0]) / 2
    rise = next(i for i, p in enumerate(true) if p >= half)
    depth = rise / (len(layers) - 1)
    where = (f"only at the last layer ({layers[rise]}, the model's output)"
             if rise == len(layers) - 1 else f"at layer {layers[rise]} ({100 * depth:.0f} % depth)")
    text = f"p(true) reaches half its rise {where}"
    over = next((layers[i] for i, (t, f) in enumerate(zip(true, false)) if t > f + 0.05), None)
    text += ("; it never clearly exceeds the false options' p" if over is None else
             f", first clearly above the false options' at layer {over}")
    low, high = _PAPER_RISE_DEPTH
    if low <= depth <= high:
        return _versus_paper([f"{text}; {paper}"], [])
    return _versus_paper([], [f"{text}, {'later' if depth > high else 'earlier'} than in the "
                              f"paper, where {finding}"])


def _keywords_versus_paper(layers, shares) -> str:
    """Temporal keywords should emerge in the middle layers (more than in the early ones) and
    spatial ones early (before the temporal ones), as the paper's Finding 2 reads."""
    n = len(layers)
    if n < 3:
        return ""
    early = [i for i in range(n) if i / (n - 1) < 1 / 3]
    middle = [i for i in range(n) if 1 / 3 <= i / (n - 1) <= 2 / 3]
    share = {kind: (mean(values[i] for i in early), mean(values[i] for i in middle))
             for kind, values in shares.items()}
    agrees, departs = [], []
    span = (f"layers {layers[early[0]]}–{layers[early[-1]]} vs "
            f"{layers[middle[0]]}–{layers[middle[-1]]}")
    t_early, t_middle = share["temporal"]
    text = f"temporal keywords {t_early:.0f} % of video tokens early, {t_middle:.0f} % in the middle ({span})"
    if t_middle > t_early:
        agrees.append(f"{text}: they emerge in the middle layers")
    else:
        departs.append(f"{text}: they {'fall' if t_middle < t_early else 'stay flat'} with "
                       f"depth, where the paper finds temporal concepts emerging in the middle "
                       f"layers")
    s_early, _ = share["spatial"]
    text = f"spatial keywords {s_early:.0f} % early"
    if s_early > 0 and s_early >= t_early:
        agrees.append(f"{text}: spatial concepts appear early")
    else:
        departs.append(f"{text}, below the temporal ones; the paper finds spatial concepts "
                       f"early")
    return _versus_paper(agrees, departs)


def _main_flow_rows(flow):
    """The rows the main flow figures use: the paper's default sample set, those answered
    correctly without knockout, when the run swept both correct and wrong samples."""
    verdicts = {r.get("base_correct") for r in flow}
    if True in verdicts and False in verdicts:
        return [r for r in flow if r.get("base_correct") is True], True
    return flow, False


def _flow_sections(flow, samples, config):
    rows, filtered = _main_flow_rows(flow)
    curves = [(c, curve_color(c), (lambda r, c=c: r["curve"] == c))
              for c in _curve_legend_names(rows)]
    chosen = ("only samples answered correctly without knockout (the paper's default); "
              "the failure diagnosis below compares them with the others"
              if filtered else _sample_set_phrase(rows, config))
    k = sorted({r.get("k") for r in rows if r.get("k") is not None})
    centres = sorted({r["layer"] for r in rows})
    n_layers = config.get("n_layers")
    # a run that swept only some centres (diagnose: the integration layers; --sweep-range)
    # says which, rather than "each layer"
    every = not n_layers or centres == list(range(n_layers))
    swept = "" if every else f"the centres this run swept, of 0–{n_layers - 1}"
    window = (("one layer at a time" + ("" if every else f", layers {_layer_span(centres)} "
                                                          f"({swept})")) if k == [1] else
              f"a window of {k[0]} consecutive layers centred on "
              + ("each layer (" if every else f"layers {_layer_span(centres)} ({swept}; ")
              + "cut at the model's ends)" if len(k) == 1 else "the run's layer windows")
    sections = []
    change = _curve_panels(rows, curves, lambda r: r.get("change_pred"),
                           y_title="% change of p(predicted answer)", hover_unit=" %")
    sections.append(("flow-change", "Relative change of the answer probability under knockout",
                     f"Each curve blocks one pathway's attention edges in {window}; the value is "
                     f"(p<sub>knockout</sub> − p<sub>base</sub>) / p<sub>base</sub> × 100 for the "
                     f"token the model predicts without knockout. Line: mean over samples; "
                     f"band: {_BAND_NOTE}; n: samples per panel. "
                     f"Samples: {chosen}." + _flow_versus_paper(rows), change))
    graded = [r for r in rows if r.get("correct") is not None]
    if graded:
        base_by_task = _base_accuracy(samples, flow)

        def baseline(task_rows, task):
            key = None if task == "all tasks" else task
            if key not in base_by_task:
                return None
            accuracy, n = base_by_task[key]
            return 100 * accuracy, f"dashed: no knockout, {100 * accuracy:.1f} % of {n} evaluated"

        evaluated = _over_all_evaluated(graded, samples)
        accuracy = _curve_panels(evaluated, curves, lambda r: 100.0 * bool(r["correct"]),
                                 y_title="accuracy (%)", hover_unit=" %", baseline=baseline)
        accuracy.update_yaxes(range=[-5, 105])
        over_all = len(evaluated) > len(graded)
        if over_all:
            caption = ("Accuracy when each pathway is blocked, over every evaluated sample (the "
                       "official definition, <code>metrics.accuracy_by_layer</code>): a "
                       "knocked-out answer counts when it is correct, and the samples the run "
                       f"did not sweep count as not correct (swept: {chosen.split(';')[0]})")
        else:
            caption = (f"Accuracy of the swept samples when each pathway is blocked. "
                       f"Samples: {chosen}")
        sections.append((
            "flow-accuracy", "Accuracy under knockout",
            caption + f" (mean and {_BAND_NOTE}; n per panel). Dashed: "
            "the model's accuracy without knockout over all samples it was evaluated on, the "
            "reference the drops compare to." + _flow_versus_paper(rows), accuracy))
    return sections


def _open_ended_sections(rows, answers):
    """The flow into an open-ended answer: relative change of the anchor token's probability
    per layer window and pathway, one panel over all traced anchors and one per anchor order."""
    circuits = sorted({r["circuit"] for r in rows})
    pairs = sorted({(r["circuit"], r["curve"]) for r in rows},
                   key=lambda pair: (circuits.index(pair[0]), _curve_legend_names(
                       [r for r in rows if r["circuit"] == pair[0]]).index(pair[1])))
    curves = [(curve if len(circuits) == 1 else f"{circuit} · {curve}", curve_color(curve),
               (lambda r, c=circuit, v=curve: r["circuit"] == c and r["curve"] == v))
              for circuit, curve in pairs]
    # panels by anchor order: the panel helper groups by "task"
    by_anchor = [{**r, "task": f"anchor {r['anchor_order']}"} for r in rows]
    figure = _curve_panels(by_anchor, curves, lambda r: r.get("change"),
                           y_title="% change of p(anchor)", hover_unit=" %",
                           all_label="all anchors")
    k = sorted({r.get("k") for r in rows if r.get("k") is not None})
    traced = sum(1 for a in answers if a.get("traced"))
    caption = (f"The model answers each question without options (greedy); the answer is "
               f"teacher-forced up to an anchor word and each curve blocks one pathway into the "
               f"answer in a window of {k[0] if len(k) == 1 else k} layers centred on each "
               f"layer; the value is (p<sub>knockout</sub> − p<sub>base</sub>) / "
               f"p<sub>base</sub> × 100 of the anchor's token at the position before it. "
               f"\"last\" is that position, \"response\" the answer before it. Line: mean "
               f"over samples; band: {_BAND_NOTE}. First panel: every traced anchor; then one "
               f"panel per anchor order. {traced} of {len(answers)} answers traced.")
    return [("open-ended-change", "Flow into the open-ended answer", caption, figure)]


def _over_all_evaluated(graded: list[dict], samples: list[dict]) -> list[dict]:
    """Flow rows plus, for every evaluated sample without rows (one the sample mode left out or
    the figure does not show), a not-correct row at each (curve, layer): the mean over samples is
    then hits / all evaluated samples, the official accuracy under knockout
    (:func:`mapflow_tl.metrics.accuracy_by_layer` with ``over="all-samples"``)."""
    swept = {r["sample"] for r in graded}
    keys = sorted({(r["curve"], r["layer"]) for r in graded}, key=str)
    unswept = [s for s in samples or [] if s.get("base_correct") is not None
               and s["sample"] not in swept]
    return graded + [{"sample": s["sample"], "task": s.get("task"), "curve": curve,
                      "layer": layer, "correct": False}
                     for s in unswept for curve, layer in keys]


def _only_correct(rows) -> bool:
    return {r.get("base_correct") for r in rows} == {True}


def _sample_set_phrase(rows, config) -> str:
    mode = (config.get("definitions") or {}).get("sample_mode") if isinstance(
        config.get("definitions"), dict) else None
    mode = mode or config.get("mode")
    if _only_correct(rows):
        return "samples answered correctly without knockout" + (
            f" (mode {mode!r})" if mode else "")
    if {r.get("base_correct") for r in rows} == {False}:
        return "samples answered wrongly without knockout"
    return "every sample swept" + (f" (mode {mode!r})" if mode else "")


def _base_accuracy(samples, flow) -> dict[str | None, tuple[float, int]]:
    """Accuracy without knockout over all evaluated samples, per task and overall (key None):
    from the samples table when there is one, else from the flow rows' ``base_correct``."""
    source = samples or list({r["sample"]: r for r in flow}.values())
    graded = [r for r in source if r.get("base_correct") is not None]
    out: dict[str | None, tuple[float, int]] = {}
    if graded:
        out[None] = (mean(bool(r["base_correct"]) for r in graded), len(graded))
        for task, group in _by(graded, "task").items():
            out[task] = (mean(bool(r["base_correct"]) for r in group), len(group))
    return out


def _probability_section(rows):
    curves = [("true option", _TRUE_COLOR, lambda r: bool(r["is_true"])),
              ("false options", _FALSE_COLOR, lambda r: not bool(r["is_true"]))]
    figure = _curve_panels(rows, curves, lambda r: r["probability"],
                           y_title="probability at the last position")
    return ("probability-trace", "Answer probability per layer (logit lens)",
            "Probability of the true option's letter and of the false options' letters (mean over "
            "the false options of a sample) at the last position, read with the logit lens after "
            f"each layer; mean over samples, band: {_BAND_NOTE}; n per panel."
            + _probability_versus_paper(rows), figure)


def _keyword_section(rows):
    figure = go.Figure()
    layers = _by(rows, "layer")
    xs = sorted(layers)
    positions = [sum(r["positions"] for r in layers[x]) for x in xs]
    shares = {}
    for kind, color in (("spatial", "#1f77b4"), ("temporal", "#ff7f0e")):
        counts = [sum(r[kind] for r in layers[x]) for x in xs]
        shares[kind] = [100 * c / max(1, p) for c, p in zip(counts, positions)]
        figure.add_trace(go.Scatter(
            x=xs, y=shares[kind],
            customdata=np.stack([counts, positions], axis=-1), name=f"{kind} keywords",
            mode="lines+markers", line=dict(color=color),
            hovertemplate=f"{kind}: %{{customdata[0]}} of %{{customdata[1]}} video tokens "
                          f"(%{{y:.1f}} %)<extra></extra>"))
    _integer_layer_axes(figure, xs)
    figure.update_layout(xaxis_title=_LAYER_AXIS, yaxis_title="% of video tokens",
                         height=380, margin=dict(t=30))
    n = positions[0] if positions else 0
    return ("keyword-frequency", "Spatial vs temporal concepts in video tokens",
            f"Share of video tokens whose top-1 logit-lens token is a spatial or a temporal "
            f"keyword, "
            f"per layer, over the {n} video tokens read per layer (all lens samples together)."
            + _keywords_versus_paper(xs, shares), figure)


def _finding_one_section(rows, config):
    models = list(dict.fromkeys(r["model"] for r in rows))
    image_model = config.get("image_model")
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    tasks = sorted({r["task"] for r in rows})
    columns = (["all tasks"] + tasks) if len(tasks) > 1 else tasks
    titles = []
    for model in models:
        kind = ("image-only" if model == image_model else
                "video-fine-tuned" if image_model is not None else "")
        titles.append(f"<b>{html.escape(model)}</b>" + (f" ({kind})" if kind else ""))
    figure = make_subplots(rows=1, cols=len(models), subplot_titles=titles, shared_yaxes=True,
                           horizontal_spacing=0.05)
    colors = {"base": "#9e9e9e"}
    knockout_layers = sorted({tuple(r["layers"]) for r in rows if r.get("layers")})
    for i, model in enumerate(models):
        for condition in conditions:
            ys, lows, highs, labels = [], [], [], []
            for column in columns:
                chosen = [r for r in rows if r["model"] == model and r["condition"] == condition
                          and (column == "all tasks" or r["task"] == column)
                          and r.get("correct") is not None]
                n = len({r["sample"] for r in chosen})
                labels.append(f"{column}<br>n = {n}" + (" ⚠" if n < MIN_BAND_SAMPLES else ""))
                if not chosen:
                    ys.append(None), lows.append(0), highs.append(0)
                    continue
                values = _matrix([{**r, "layer": 0} for r in chosen],
                                 lambda r: 100.0 * bool(r["correct"]), [0])
                centre, low, high = bootstrap_band(values)
                ys.append(float(centre[0]))
                if n < MIN_BAND_SAMPLES:  # too few samples for an interval: none drawn
                    lows.append(0), highs.append(0)
                    continue
                lows.append(float(centre[0] - low[0]))
                highs.append(float(high[0] - centre[0]))
            color = colors.get(condition, "#1f77b4" if i == 0 else "#ff7f0e")
            name = "no knockout" if condition == "base" else condition
            figure.add_trace(go.Bar(
                x=labels, y=ys, name=name, legendgroup=name, showlegend=i == 0,
                marker_color=color if condition == "base" else "#d62728",
                error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows,
                             color="#333", thickness=1),
                text=[None if y is None else f"{y:.0f}" for y in ys], textposition="inside",
                hovertemplate=f"{html.escape(model)}, {html.escape(name)}<br>%{{x}}: "
                              f"%{{y:.1f}} %<extra></extra>"), row=1, col=i + 1)
    figure.update_yaxes(title_text="accuracy (%)", range=[0, 105], col=1)
    versus = _finding_one_versus_paper(rows, models, image_model)
    figure.update_layout(barmode="group", height=440, margin=dict(t=50, b=90),
                         legend=dict(x=1.01, y=1, xanchor="left", yanchor="top"))
    layers = ", ".join(_layer_span(l) for l in knockout_layers) or "the run's layers"
    return ("finding-1", "Finding 1: cross-frame knockout, video-fine-tuned vs image-only model",
            f"Accuracy per task without knockout and with every frame's tokens blocked from "
            f"attending to earlier frames in layers {layers} (the early-to-middle half). "
            f"Error bars: 95 % bootstrap interval over samples (none where fewer than "
            f"{MIN_BAND_SAMPLES} samples, marked ⚠); n: samples per task. A model that "
            f"needs cross-frame interaction for a task loses accuracy there; a model that reads "
            f"each frame alone does not." + versus, figure)


def _finding_one_versus_paper(rows, models, image_model) -> str:
    """The accuracy each model loses under cross-frame knockout over all samples, vs the
    paper's large loss for the video-fine-tuned model and none for the image-only one."""
    def accuracy(model, knocked_out):
        chosen = [bool(r["correct"]) for r in rows if r["model"] == model
                  and (r["condition"] != "base") == knocked_out and r.get("correct") is not None]
        return 100 * mean(chosen) if chosen else None

    drops = {}
    for model in models:
        base, knocked = accuracy(model, False), accuracy(model, True)
        if base is not None and knocked is not None:
            drops[model] = base - knocked
    video = [m for m in drops if m != image_model]
    if not video:
        return ""
    video_drop = drops[video[0]]
    paper = ("the paper: the video-fine-tuned model loses 18–61 points per task, the image-only "
             "one hardly any")
    text = f"{video[0]} loses {video_drop:.1f} points over all tasks"
    if image_model in drops:
        text += f", {image_model} {drops[image_model]:.1f}"
        ok = video_drop >= 5 and video_drop - drops[image_model] >= 5
    else:
        ok = video_drop >= 5
    return _versus_paper([f"{text}; {paper}"], []) if ok else _versus_paper([], [f"{text}; {paper}"])


def _layer_span(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ", ".join(map(str, layers))


def _failure_section(flow, prob, samples):
    verdict = {r["sample"]: r.get("base_correct") for r in samples} if samples else {}
    for r in flow:
        verdict.setdefault(r["sample"], r.get("base_correct"))
    groups = [("answered correctly", True), ("answered wrongly", False)]
    counts = {label: sum(1 for v in verdict.values() if v is want) for label, want in groups}
    notes = []
    parts: list[tuple[str, list[dict], Any, str, list]] = []
    flow_split = {want: [r for r in flow if verdict.get(r["sample"]) is want]
                  for _, want in groups}
    if flow and flow_split[True] and flow_split[False]:
        curves = [(c, curve_color(c), (lambda r, c=c: r["curve"] == c))
                  for c in _curve_legend_names(flow)]
        parts.append(("flow", flow, lambda r: r.get("change_pred"),
                      "% change of p(predicted)", curves))
    elif flow:
        notes.append("The flow table holds only samples answered " +
                     ("correctly" if flow_split[True] else "wrongly") +
                     " without knockout (the run's sample mode), so its curves cannot be split; "
                     "run the flow analysis with <code>--mode all</code> to compare them.")
    prob_split = {want: [r for r in prob if verdict.get(r["sample"]) is want]
                  for _, want in groups}
    if prob and prob_split[True] and prob_split[False]:
        parts.append(("prob", prob, lambda r: r["probability"], "p(option) at the last position",
                      [("true option", _TRUE_COLOR, lambda r: bool(r["is_true"])),
                       ("false options", _FALSE_COLOR, lambda r: not bool(r["is_true"]))]))
    if not parts:
        if not (counts["answered correctly"] and counts["answered wrongly"]):
            notes.insert(0, f"Every evaluated sample was answered "
                            f"{'correctly' if counts['answered correctly'] else 'wrongly'} "
                            f"without knockout ({len(verdict)} samples): there is nothing to "
                            f"compare.")
        return ("failure-diagnosis", "Failure diagnosis: correct vs wrong samples",
                " ".join(notes), None)
    figure = make_subplots(
        rows=len(parts), cols=2, horizontal_spacing=0.07, vertical_spacing=0.18,
        subplot_titles=[f"<b>{label}</b> · "
                        f"{_n_label((flow_split if kind == 'flow' else prob_split)[want])}"
                        for kind, *_ in parts for label, want in groups])
    for i, (kind, rows, value, y_title, curves) in enumerate(parts):
        xs = sorted({r["layer"] for r in rows})
        for j, (_, want) in enumerate(groups):
            chosen_rows = [r for r in rows if verdict.get(r["sample"]) is want]
            drawn: list = []
            for name, color, keep in curves:
                chosen = [r for r in chosen_rows if keep(r)]
                if chosen:
                    _add_curve(figure, xs, _matrix(chosen, value, xs), name=name, color=color,
                               row=i + 1, col=j + 1, showlegend=j == 0, drawn=drawn)
        figure.update_yaxes(title_text=y_title, row=i + 1, col=1)
        figure.update_yaxes(matches=f"y{2 * i + 1}" if i else "y", row=i + 1, col=2)
        _integer_layer_axes(figure, xs)
    figure.update_xaxes(title_text=_LAYER_AXIS, row=len(parts))
    figure.update_layout(height=330 * len(parts) + 60, margin=dict(t=100),
                         legend=dict(orientation="h", y=1.0 + 0.2 / len(parts), x=0))
    return ("failure-diagnosis", "Failure diagnosis: correct vs wrong samples",
            "The same curves for samples the model answers correctly (left) and wrongly (right) "
            "without knockout, side by side on one scale: where the flow or the answer's "
            "emergence differs is where the wrong answers go astray. Mean over samples, band: "
            f"{_BAND_NOTE}; n per panel. " + " ".join(notes), figure)


# --------------------------------------------------------------------- frame-grounded views
def _pick(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` values evenly spaced, always the first and the last."""
    values = list(values)
    if len(values) <= count:
        return values
    return [values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)]


def _sample_label(sample, task) -> str:
    """The figure-title suffix ' — sample (task)', leaving out what the rows do not name."""
    label = " ".join(p for p in (str(sample or ""), f"({task})" if task else "") if p)
    return f" — {label}" if label else ""


class _FrameGrid:
    """One token frame of one sample: its grid, its thumbnail and how a row's (h, w) maps to a
    grid cell (for a frame stored as a list of kept tokens, ``w`` is the token's index)."""

    def __init__(self, frame_row: dict | None, rows: list[dict]):
        self.image = frame_row.get("image") if frame_row else None
        coords = frame_row.get("coords") if frame_row else None
        self.coords = [tuple(c) for c in coords] if coords else None
        if frame_row and frame_row.get("grid_h"):
            self.height, self.width = int(frame_row["grid_h"]), int(frame_row["grid_w"])
        else:
            self.height = max(r["h"] for r in rows) + 1
            self.width = max(r["w"] for r in rows) + 1
        self.aspect = (frame_row["height"] / frame_row["width"]
                       if frame_row and frame_row.get("width") else self.height / self.width)

    def cell(self, row: dict) -> tuple[int, int]:
        if self.coords is not None:
            return self.coords[row["w"]] if row["h"] == 0 else (row["h"], row["w"])
        return row["h"], row["w"]


class _FrameFigure:
    """A grid of frame cells (rows × frames) built as plain plotly.js JSON: the plotly Python
    objects validate every property on every update, which took tens of seconds for a few
    hundred heatmaps; the frame views need none of it.

    When the run saved thumbnails, the first row shows each frame itself and the heatmap rows
    below it are opaque (their colours are the colour bar's); ``draw``'s ``row`` counts the
    heatmap rows only."""

    def __init__(self, n_rows: int, frame_ids: Sequence[int], grids: dict, row_titles):
        self.frame_row = int(any(g.image for g in grids.values()))
        row_titles = ["video frame"] * self.frame_row + list(row_titles)
        n_rows += self.frame_row
        self.n_rows, self.n_cols = n_rows, len(frame_ids)
        cell_width = 1080 / self.n_cols
        aspect = max(g.aspect for g in grids.values())
        self.height = int(n_rows * cell_width * aspect * 1.04 + 130)
        self.data: list[dict] = []
        h_space, v_space = 0.012, (0.03 if n_rows > 1 else 0.0)
        self.width_share = (1 - h_space * (self.n_cols - 1)) / self.n_cols
        self.height_share = (1 - v_space * (n_rows - 1)) / n_rows
        self.h_space, self.v_space = h_space, v_space
        annotations = [dict(text=f"frame {t}", x=self._x(j) + self.width_share / 2, y=1.0,
                            xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                            showarrow=False, font=dict(size=11))
                       for j, t in enumerate(frame_ids)]
        annotations += [dict(text=html.escape(str(title)), x=1.0, y=self._y(i)
                             + self.height_share / 2, xref="paper", yref="paper",
                             xanchor="left", yanchor="middle", textangle=90, showarrow=False,
                             font=dict(size=11))
                        for i, title in enumerate(row_titles)]
        self.layout: dict[str, Any] = dict(
            height=self.height, margin=dict(t=50, l=40, r=110, b=60), font=_FONT,
            plot_bgcolor="white", paper_bgcolor="white", annotations=annotations, images=[],
            showlegend=False, hovermode="closest")
        for j, t in enumerate(frame_ids):
            grid = grids[t]
            if grid.image:
                suffix = self._axes(grid, 0, j)
                self.layout["images"].append(dict(
                    source=grid.image, xref=f"x{suffix}", yref=f"y{suffix}", x=-0.5, y=-0.5,
                    sizex=grid.width, sizey=grid.height, sizing="stretch", layer="below",
                    xanchor="left", yanchor="top"))

    def _x(self, col: int) -> float:
        return col * (self.width_share + self.h_space)

    def _y(self, row: int) -> float:  # row 0 on top
        return 1 - row * (self.height_share + self.v_space) - self.height_share

    def draw(self, grid: "_FrameGrid", z, text, hover, *, row: int, col: int, coloraxis: str,
             opacity: float, visible: bool = True, show_text: bool = True) -> None:
        """One frame cell (0-based heatmap row, col): the token grid's opaque heatmap, on axes
        with integer row / column ticks and the frame's aspect ratio (the frame itself is in
        the top row). ``hover``: a text per cell, or one plotly.js hover template for all
        cells (smaller)."""
        suffix = self._axes(grid, row + self.frame_row, col)
        hovering = (dict(hovertemplate=hover) if isinstance(hover, str)
                    else dict(hovertext=hover, hoverinfo="text"))
        trace = dict(type="heatmap", z=z, **hovering, coloraxis=coloraxis, opacity=opacity,
                     xgap=0.5, ygap=0.5, xaxis=f"x{suffix}", yaxis=f"y{suffix}",
                     visible=visible)
        if show_text and text is not None:
            # no text colour: plotly.js picks black or white by contrast with each cell
            trace.update(text=text, texttemplate="%{text}", textfont=dict(size=9))
        self.data.append(trace)

    def _axes(self, grid: "_FrameGrid", row: int, col: int) -> str:
        """The axis suffix of the cell at (row, col) of the whole figure, its axes made once."""
        number = row * self.n_cols + col + 1
        suffix = "" if number == 1 else str(number)
        if f"xaxis{suffix}" in self.layout:
            return suffix
        step_x = max(1, math.ceil(grid.width / 4))
        step_y = max(1, math.ceil(grid.height / 4))
        axis = dict(tickmode="array", tickfont=dict(size=8), showgrid=False, zeroline=False,
                    constrain="domain", fixedrange=False)
        self.layout[f"xaxis{suffix}"] = dict(
            axis, domain=[self._x(col), self._x(col) + self.width_share], anchor=f"y{suffix}",
            range=[-0.5, grid.width - 0.5], tickvals=list(range(0, grid.width, step_x)))
        self.layout[f"yaxis{suffix}"] = dict(
            axis, domain=[self._y(row), self._y(row) + self.height_share],
            anchor=f"x{suffix}", range=[grid.height - 0.5, -0.5],
            tickvals=list(range(0, grid.height, step_y)), scaleanchor=f"x{suffix}",
            scaleratio=grid.aspect * grid.width / grid.height)
        return suffix

    def html(self, div_id: str) -> str:
        data = json.dumps(self.data, separators=(",", ":"))
        layout = json.dumps(self.layout, separators=(",", ":"))
        config = json.dumps(_PLOT_CONFIG)
        return (f'<div id="{div_id}" class="plotly-graph-div" '
                f'style="height:{self.layout["height"]}px; width:100%;"></div>\n'
                f'<script type="text/javascript">Plotly.newPlot("{div_id}", {data}, {layout}, '
                f'{config});</script>')


def _frame_rows(frames_table, sample):
    return {r["frame"]: r for r in frames_table if r["sample"] == sample}


def _grid_matrix(grid: _FrameGrid, cells: list[dict], value, label, hover):
    z = [[None] * grid.width for _ in range(grid.height)]
    text = [[""] * grid.width for _ in range(grid.height)]
    tips = [["not kept" for _ in range(grid.width)] for _ in range(grid.height)]
    for r in cells:
        h, w = grid.cell(r)
        z[h][w] = value(r)
        text[h][w] = label(r)
        tips[h][w] = f"row {h}, column {w}<br>" + hover(r)
    return z, text, tips


def _lens_sections(rows, frames_table, config):
    sections = []
    samples = list(dict.fromkeys(r["sample"] for r in rows))[:_MAX_FRAME_SAMPLES]
    conditions = list(dict.fromkeys(r.get("condition") or "baseline" for r in rows))
    for number, sample in enumerate(samples):
        sample_rows = [r for r in rows if r["sample"] == sample]
        task = sample_rows[0].get("task", "")
        layers = _pick(sorted({r["layer"] for r in sample_rows}), _MAX_LENS_LAYERS)
        frame_ids = _pick(sorted({r["frame"] for r in sample_rows}), _MAX_FRAMES)
        thumbs = _frame_rows(frames_table, sample)
        by_frame = _by(sample_rows, "frame")
        grids = {t: _FrameGrid(thumbs.get(t), by_frame[t]) for t in frame_ids}
        big = max(max(g.height, g.width) for g in grids.values()) > 12
        row_keys = [(c, l) for c in conditions for l in layers]
        titles = [f"{c}, layer {l}" if len(conditions) > 1 else f"layer {l}" for c, l in row_keys]
        figure = _FrameFigure(len(row_keys), frame_ids, grids, titles)
        cells = _by(sample_rows, "frame", "layer")
        for i, (condition, layer) in enumerate(row_keys):
            for j, t in enumerate(frame_ids):
                chosen = [r for r in cells.get((t, layer), [])
                          if (r.get("condition") or "baseline") == condition]
                z, text, tips = _grid_matrix(
                    grids[t], chosen, lambda r: float(f"{r['top_probs'][0]:.3g}"),
                    lambda r: html.escape(str(r["top_tokens"][0]))[:8],
                    lambda r: "<br>".join(f"{html.escape(str(tok))}: {p:.2f}" for tok, p in
                                          zip(r["top_tokens"][:3], r["top_probs"][:3])))
                figure.draw(grids[t], z, text, tips, row=i, col=j, coloraxis="coloraxis",
                            opacity=1.0, show_text=not big)
        figure.layout.update(coloraxis=dict(
            colorscale=_LENS_SCALE, cmin=0, cmax=1,
            colorbar=dict(title=dict(text="top-1<br>probability", side="top"), len=0.6,
                          thickness=12)))
        has_images = any(g.image for g in grids.values())
        note = ("" if has_images else
                " This run saved no frame thumbnails (no <code>frames</code> table), so the grids "
                "are drawn without the video.")
        if len(conditions) == 1:
            note += (" The lens table holds the clean run only; a lens run under knockout "
                     "(rows with a <code>condition</code>) is drawn as extra rows.")
        figure_id = "lens-overlay" if number == 0 else f"lens-overlay-{number + 1}"
        sections.append((
            figure_id, f"Logit lens over the frames{_sample_label(sample, task)}",
            f"Each video token's most probable vocabulary token under the logit lens (text; "
            f"colour: its probability on the colour bar's scale), drawn on the token's cell of "
            f"its frame's own grid, the frame itself in the top row; heatmap rows are layers "
            f"{', '.join(map(str, layers))} "
            f"(evenly spaced from the first to the last), columns frames "
            f"{', '.join(map(str, frame_ids))}. Hover a cell for its top-3 tokens."
            + (" Grids larger than 12 tokens a side show the tokens on hover only." if big
               else "") + note, figure))
    return sections


def _attention_sections(rows, frames_table, config):
    sections = []
    queries = list(dict.fromkeys(r.get("query") or "" for r in rows))
    samples = list(dict.fromkeys(r["sample"] for r in rows))[:_MAX_FRAME_SAMPLES]
    definitions = config.get("definitions") if isinstance(config.get("definitions"), dict) else {}
    default_query = definitions.get("queries", "the question tokens")
    # the official figure (per-word view) draws log10(5e-5 + a) (attention_visualization.py:398-
    # 411); runs written before the view was recorded hold the mean view's plain weights
    official = definitions.get("attention_view") == "per-word"

    def value(row):
        return math.log10(5e-5 + row["attention"]) if official else row["attention"]

    number = 0
    for sample in samples:
        for query in queries:
            chosen_rows = [r for r in rows if r["sample"] == sample
                           and (r.get("query") or "") == query]
            if not chosen_rows:
                continue
            task = chosen_rows[0].get("task", "")
            conditions = list(dict.fromkeys(r["condition"] for r in chosen_rows))
            layers = sorted({r["layer"] for r in chosen_rows})
            frame_ids = _pick(sorted({r["frame"] for r in chosen_rows}), _MAX_FRAMES)
            thumbs = _frame_rows(frames_table, sample)
            by_frame = _by(chosen_rows, "frame")
            grids = {t: _FrameGrid(thumbs.get(t), by_frame[t]) for t in frame_ids}
            figure = _FrameFigure(len(conditions), frame_ids, grids, conditions)
            cells = _by(chosen_rows, "condition", "frame", "layer")
            active = layers[len(layers) // 2]
            visibility, maxima, minima = [], [], []
            for layer in layers:
                for i, condition in enumerate(conditions):
                    for j, t in enumerate(frame_ids):
                        z, _, _ = _grid_matrix(
                            grids[t], cells.get((condition, t, layer), []),
                            lambda r: float(f"{value(r):.4g}"), lambda r: "",
                            lambda r: "")
                        tips = (f"row %{{y}}, column %{{x}}<br>layer {layer}: "
                                f"{'log10(5e-5 + attention)' if official else 'attention'} "
                                f"%{{z:.4g}}<extra>{html.escape(condition)}</extra>")
                        figure.draw(grids[t], z, None, tips, row=i, col=j,
                                    coloraxis="coloraxis", opacity=1.0,
                                    visible=layer == active, show_text=False)
                        visibility.append(layer)
                values = [value(r) for c in conditions for t in frame_ids
                          for r in cells.get((c, t, layer), [])]
                maxima.append(max(values, default=1.0))
                minima.append(min(values, default=0.0) if official else 0)
            steps = [dict(method="update", label=str(layer),
                          args=[{"visible": [v == layer for v in visibility]},
                                {"coloraxis.cmax": maxima[k], "coloraxis.cmin": minima[k]}])
                     for k, layer in enumerate(layers)]
            figure.layout.update(
                coloraxis=dict(colorscale=_ATTENTION_SCALE, cmin=minima[layers.index(active)],
                               cmax=maxima[layers.index(active)],
                               colorbar=dict(title=dict(text="log10(5e-5 +<br>attention)"
                                                        if official else "attention<br>weight",
                                                        side="top"),
                                             len=0.7, thickness=12)),
                sliders=[dict(active=layers.index(active), steps=steps, pad=dict(t=30),
                              currentvalue=dict(prefix="layer ", font=dict(size=12)), len=0.9,
                              x=0.05)])
            figure.layout["height"] += 60
            query_text = html.escape(query) if query else html.escape(str(default_query))
            has_images = any(g.image for g in grids.values())
            knockout = [c for c in conditions if c != "baseline"]
            figure_id = "attention-maps" if number == 0 else f"attention-maps-{number + 1}"
            number += 1
            sections.append((
                figure_id, f"Attention over the frames{_sample_label(sample, task)}, query: "
                           f"{query or default_query}",
                (f"log10(5e-5 + attention) from the query token ({query_text}; mean over "
                 f"heads), as the official figure draws it, to each video token, on the "
                 f"token's cell of its frame's grid (the frame itself in the top row); layers {layers[0]}–{layers[-1]} (the official "
                 f"11–20 of 32, scaled). Rows: " if official else
                 f"Attention weight from the query ({query_text}; mean over heads and query "
                 f"positions) to each video token, on the token's cell of its frame's grid (the frame "
                 f"itself in the top row). Rows: ")
                + f"{' vs '.join(html.escape(c) for c in conditions)}"
                + ((" (cross-frame edges blocked in every layer)" if official else
                    " (cross-frame edges blocked in the early-to-middle layers)") if knockout
                   else "")
                + "; the slider picks the layer (colour scale per layer, shared by the rows)."
                + ("" if has_images else " This run saved no frame thumbnails (no "
                                         "<code>frames</code> table): grids only."), figure))
    return sections


# ---------------------------------------------------------------------------- pathway table
def pathway_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and variant (full / pathway / random): accuracy, samples, random seeds and
    retained edges — the paper's Table 1 layout, from :func:`mapflow_tl.metrics.prune_summary`:
    the random baseline's accuracy is the mean ± standard deviation over its seeds, each seed's
    accuracy taken over the task's samples first."""
    from .metrics import prune_summary

    table = []
    for row in prune_summary(rows):
        group = [r for r in rows if r["task"] == row["task"] and r["variant"] == row["variant"]]
        table.append({**row, "seeds": row["seeds"] if row["variant"] == "random" else None,
                      "kept_edges": sum(r["kept_edges"] for r in group) // len(group),
                      "total_edges": sum(r["total_edges"] for r in group) // len(group)})
    return table


def _seed_of(row) -> Any:
    seed = row.get("seed")
    return None if isinstance(seed, float) and math.isnan(seed) else seed


def _prune_section(rows):
    """Accuracy vs retained edges over all tasks: the full model, the effective pathways and
    each random seed as its own point (so one seed shows as one point, not as a spread)."""
    figure = go.Figure()
    points: dict[str, list[tuple[float, float, Any]]] = defaultdict(list)
    # rows that went through pandas carry NaN for "no seed", and NaN keys never group
    for (variant, seed), group in _by([{**r, "seed": _seed_of(r)} for r in rows],
                                      "variant", "seed").items():
        graded = [bool(r["correct"]) for r in group if r.get("correct") is not None]
        total = sum(r["total_edges"] for r in group)
        if not graded or not total:
            continue
        points[variant].append((100 * sum(r["kept_edges"] for r in group) / total,
                                100 * mean(graded), seed))
    style = {"full": ("#7f7f7f", "square", "full model"),
             "pathway": ("#1f77b4", "diamond", "effective pathways"),
             "random": ("#d62728", "circle", "random pruning (one point per seed)")}
    for variant, found in sorted(points.items(), key=lambda item: list(style).index(item[0])
                                 if item[0] in style else len(style)):
        color, symbol, name = style.get(variant, ("#9467bd", "x", variant))
        found.sort(key=lambda p: (p[2] is None, p[2]))
        figure.add_trace(go.Scatter(
            x=[p[0] for p in found], y=[p[1] for p in found], mode="markers", name=name,
            marker=dict(color=color, symbol=symbol, size=11, line=dict(width=1, color="#222")),
            customdata=[["" if p[2] is None else f", seed {p[2]}"] for p in found],
            hovertemplate=f"{html.escape(name)}%{{customdata[0]}}<br>retained %{{x:.1f}} %: "
                          f"accuracy %{{y:.1f}} %<extra></extra>"))
    figure.update_xaxes(title_text="retained attention edges (% of causal edges, all layers)",
                        range=[0, 105])
    figure.update_yaxes(title_text="accuracy over all tasks (%)", range=[-5, 105])
    figure.update_layout(height=380, margin=dict(t=30),
                         legend=dict(x=1.01, y=1, xanchor="left", yanchor="top"))
    seeds = sorted({_seed_of(r) for r in rows if r["variant"] == "random"} - {None}, key=str)
    n = len({r["sample"] for r in rows})
    caption = (f"Accuracy over all {n} samples vs the share of causal attention edges kept: the "
               f"full model, only the circuit's effective pathways, and as many edges per layer "
               f"pruned at random, each random seed its own point. ")
    if not seeds:
        caption += "This run has no random baseline. "
    elif len(seeds) == 1:
        caption += (f"The random baseline used <b>one seed</b> ({seeds[0]}): there is no spread "
                    f"over seeds to show (run <code>mapflow-tl prune --random-seeds</code> with "
                    f"two or more). ")
    else:
        caption += (f"The random baseline used {len(seeds)} seeds "
                    f"({', '.join(map(str, seeds))}). ")
    full, pathway = (mean(p[1] for p in points[v]) if points.get(v) else None
                     for v in ("full", "pathway"))
    random = mean(p[1] for p in points["random"]) if points.get("random") else None
    paper = ("the paper: the pathways keep accuracy within about a point of the full model "
             "while random pruning of the same share loses 7–11 points")
    if full is not None and pathway is not None and random is not None:
        text = (f"full {full:.1f} %, pathways {pathway:.1f} %, random {random:.1f} %"
                + (" (mean over seeds)" if len(seeds) > 1 else ""))
        ok = pathway >= full - 3 and random <= pathway - 5
        caption += (_versus_paper([f"{text}; {paper}"], []) if ok else
                    _versus_paper([], [f"{text}; {paper}"]))
    return ("pruning", "Effective pathways vs random pruning", caption.strip(), figure)


def _eval_section(rows):
    """Accuracy per task of an accuracy pass (``mapflow-tl eval``): one bar per task and one
    over all samples, from the ``eval`` table (:func:`~mapflow_tl.metrics.eval_summary`)."""
    from .metrics import eval_summary

    summary = eval_summary(rows)
    figure = go.Figure(go.Bar(
        x=[row["task"] for row in summary], y=[row["accuracy"] for row in summary],
        marker_color=["#7f7f7f" if row["task"] == "all" else "#1f77b4" for row in summary],
        customdata=[[row["samples"]] for row in summary],
        hovertemplate="%{x}: %{y:.1f} % of %{customdata[0]} samples<extra></extra>"))
    figure.update_yaxes(title_text="accuracy (%)", range=[0, 105])
    figure.update_layout(height=340, margin=dict(t=30))
    kinds = {row.get("kind") for row in rows}
    grading = []
    if "choice" in kinds:
        grading.append("a multiple-choice answer is correct when the argmax token equals the "
                       "true letter (the official --eval_only grading)")
    if "open" in kinds:
        grading.append("an open-ended answer is correct when it contains the reference answer's "
                       "words (exact: equal to it); long free-text answers need their "
                       "benchmark's judge, which reads the answers in scorer/")
    n = sum(row.get("correct") is not None for row in rows)
    caption = (f"Accuracy of every evaluated sample ({n}), per task and over all: "
               + "; ".join(grading) + ".")
    return ("accuracy", "Accuracy per task", caption, figure), summary


#: The trade-off figure's methods: colour, marker, legend name.
_TRADEOFF_STYLE = {
    "search": ("#1f77b4", "circle", "discovered (search path), held out"),
    "search-split": ("#9ecae1", "circle-open", "search path on the search split"),
    "hand": ("#2ca02c", "diamond", "hand-written pathway {label}, held out"),
    "random": ("#d62728", "x", "random pruning at the same fraction, held out (mean ± sd "
                               "over {seeds} seed(s))"),
    "full": ("#7f7f7f", "square", "full model, held out"),
}


def _discover_section(rows, config):
    """The trade-off curve of a pathway search (``discover`` rows): retained edges vs accuracy
    for every accepted step of the search (on the held-out split, and dashed on the search
    split as the search saw it), each hand-written pathway, and the random baseline at each of
    their fractions (mean ± sd over seeds), with the full model."""
    figure = go.Figure()
    rows = [{**r, "seed": _seed_of(r), "step": _seed_of({"seed": r.get("step")})}
            for r in rows]

    def point(r):
        return 100 * r["retained"], r["accuracy"]

    def add(xs, ys, style, *, label="", seeds=0, mode="lines+markers", dash=None, error=None,
            hover=None):
        color, symbol, name = _TRADEOFF_STYLE[style]
        name = name.format(label=label, seeds=seeds)
        figure.add_trace(go.Scatter(
            x=xs, y=ys, mode=mode, name=name,
            line=dict(color=color, dash=dash), marker=dict(color=color, symbol=symbol, size=9,
                                                          line=dict(width=1, color=color)),
            error_y=None if error is None else dict(type="data", array=error, color=color),
            customdata=hover, hovertemplate=(
                ("%{customdata}<br>" if hover is not None else "")
                + "retained %{x:.1f} %: accuracy %{y:.1f} %<extra>" + html.escape(name[:40])
                + "</extra>")))

    held = [r for r in rows if r["split"] == "eval"]
    searched = sorted((r for r in held if r["method"] == "search"), key=lambda r: r["step"])
    full = [r for r in held if r["method"] == "full"]
    start = [(100.0, full[0]["accuracy"])] if full else []
    if searched:
        points = start + [point(r) for r in searched]
        add([p[0] for p in points], [p[1] for p in points], "search",
            hover=["full model"] * len(start) + [r["label"] for r in searched])
    on_search = sorted((r for r in rows if r["split"] == "search" and r["method"] in
                        ("search", "full")), key=lambda r: r["step"])
    if on_search:
        add([point(r)[0] for r in on_search], [point(r)[1] for r in on_search], "search-split",
            dash="dot", hover=[r["label"] for r in on_search])
    for label in dict.fromkeys(r["label"] for r in held if r["method"] == "hand"):
        [hand] = [r for r in held if r["method"] == "hand" and r["label"] == label]
        add([point(hand)[0]], [point(hand)[1]], "hand", label=label, mode="markers",
            hover=[label])
    randoms = _by([r for r in held if r["method"] == "random"], "label")
    seeds = len({r["seed"] for r in held if r["method"] == "random"})
    if randoms:
        means = sorted(((mean(100 * r["retained"] for r in group),
                         mean(r["accuracy"] for r in group),
                         stdev([r["accuracy"] for r in group]) if len(group) > 1 else 0.0,
                         label) for label, group in randoms.items()))
        add([m[0] for m in means], [m[1] for m in means], "random", seeds=seeds,
            error=[m[2] for m in means], hover=[m[3] for m in means])
    if full:
        add([100.0], [full[0]["accuracy"]], "full", mode="markers", hover=["full model"])
    figure.update_xaxes(title_text="retained attention edges (% of causal edges, all layers, "
                                   "summed over samples)", autorange="reversed")
    figure.update_yaxes(title_text="accuracy (%)", range=[-5, 105])
    # the legend's long names beside the plot squeezed it to half the page: below it instead
    figure.update_layout(height=480, margin=dict(t=30),
                         legend=dict(orientation="h", x=0, y=-0.2, xanchor="left",
                                     yanchor="top"))
    record = config.get("discover") or {}
    definitions = config.get("definitions") or {}
    n_eval = full[0]["samples"] if full else 0
    n_search = len(record.get("search_samples") or ())
    caption = (f"Accuracy vs the share of causal attention edges kept (the paper's accounting: "
               f"kept over all causal edges, summed over layers and samples), right to left as "
               f"the search removes edges. Blue: each accepted step of the greedy search "
               f"(ε = {definitions.get('search_epsilon_points', '?')} points, order "
               f"{definitions.get('search_order', '?')}) measured on the {n_eval} held-out "
               f"samples; dotted: the same steps on the {n_search} search samples, as the "
               f"search saw them; red: random pruning of the same fraction "
               f"(official-uniform, drawn afresh per sample and seed), mean ± sd over "
               f"{seeds} seed(s)"
               + ("; green: hand-written pathways" if any(r["method"] == "hand" for r in held)
                  else "") + ". <b>Departs from the paper:</b> the paper's pathways are written "
               "by hand (layer ranges \"determined manually\"); the search and its held-out "
               "split are mapflow-tl's (docs/discover.md).")
    cost = record.get("cost") or {}
    if cost:
        caption += (f" The search cost {cost.get('evaluations')} evaluations (pathway × sample), "
                    f"{cost.get('forward_equivalents', 0):.0f} forward equivalents"
                    + ("" if cost.get("complete", True) else "; its budget ran out") + ".")
    if "curve_evaluations" in cost:
        accepted = cost.get("start") == "curves"
        caption += (f" It started from the flow curves of the search split (window "
                    f"{cost.get('curve_window')}): that start was "
                    + ("accepted" if accepted else "refused, so the search started from the "
                       "full model")
                    + f"; the curves cost {cost['curve_evaluations']} evaluations, "
                      f"{cost.get('curve_forward_equivalents', 0):.0f} forward equivalents more.")
    return ("pathway-tradeoff", "Discovered pathway: the trade-off curve", caption, figure)


def _discover_samples_section(rows):
    """Per-sample adaptive pathways against the per-task one: per edge type and layer, the
    share of samples whose own pathway differs (open where the task's is closed or closed where
    it is open)."""
    types = list(dict.fromkeys(r["edge_type"] for r in rows))
    layers = sorted({int(r["layer"]) for r in rows})
    cells = _by(rows, "edge_type", "layer")
    z, text, hover = [], [], []
    for name in types:
        z.append([]), text.append([]), hover.append([])
        for layer in layers:
            group = cells.get((name, layer), [])
            differ = sum(bool(r["sample_open"]) != bool(r["task_open"]) for r in group)
            opened = sum(bool(r["sample_open"]) for r in group)
            task = bool(group[0]["task_open"]) if group else False
            z[-1].append(differ / len(group) if group else None)
            text[-1].append("●" if task else "")
            hover[-1].append(f"task pathway: {'open' if task else 'closed'}; open in {opened} "
                             f"of {len(group)} sample pathways")
    figure = go.Figure(go.Heatmap(
        z=z, x=layers, y=types, text=text, texttemplate="%{text}", customdata=hover,
        zmin=0, zmax=1, colorscale=_ATTENTION_SCALE, colorbar=dict(title="differ"),
        hovertemplate="%{y}, layer %{x}: %{z:.0%} of samples differ<br>%{customdata}"
                      "<extra></extra>"))
    figure.update_xaxes(title_text=_LAYER_AXIS, dtick=1)
    # edge types read top-down in the search's order (a heatmap's y axis runs bottom-up)
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(height=120 + 40 * len(types), margin=dict(t=30))
    n = len({r["sample"] for r in rows})
    incomplete = len({r["sample"] for r in rows if not r["complete"]})
    caption = (f"A pathway searched for each of {n} held-out samples the full model answers "
               f"correctly (same greedy search, the sample alone as its search split), against "
               f"the per-task pathway (● = open in the per-task pathway): the colour is the "
               f"share of samples whose own pathway differs there. <b>Departs from the "
               f"paper:</b> it names sample-adaptive pathways only as a future direction "
               f"(docs/discover.md)."
               + (f" {incomplete} per-sample search(es) ran out of budget." if incomplete
                  else ""))
    return ("pathway-variability", "Per-sample pathways vs the per-task one", caption, figure)


def _segment_order(name: str) -> tuple:
    """Frames in frame order, then the other segments as they come in a prompt."""
    if name.startswith("frame_") and name[len("frame_"):].isdigit():
        return (0, int(name[len("frame_"):]), "")
    order = ("video", "question", "question_with_options", "last")
    return (1, order.index(name) if name in order else len(order), name)


def _patching_section(rows):
    """Mean normalised patching score per (segment, layer): one heatmap per activation and
    method (real patching, attribution patching), samples with an undefined score left out."""
    from .patching import rank_agreement

    whole = [r for r in rows if r.get("position") is None]
    activations = list(dict.fromkeys(r["activation"] for r in whole))
    methods = [m for m in ("patch", "attribution") if any(r["method"] == m for r in whole)]
    titles = [f"{activation}: {'patching' if method == 'patch' else 'attribution patching'}"
              for activation in activations for method in methods]
    figure = make_subplots(rows=len(activations), cols=len(methods), subplot_titles=titles,
                           horizontal_spacing=0.08, vertical_spacing=0.12)
    for i, activation in enumerate(activations):
        for j, method in enumerate(methods):
            chosen = [r for r in whole if r["activation"] == activation and r["method"] == method]
            segments = sorted({r["segment"] for r in chosen}, key=_segment_order)
            layers = sorted({int(r["layer"]) for r in chosen})
            cells = _by(chosen, "segment", "layer")
            z, counts = [], []
            for segment in segments:
                scores = [[r["score"] for r in cells.get((segment, layer), [])
                           if r["score"] is not None and math.isfinite(r["score"])]
                          for layer in layers]
                z.append([mean(s) if s else None for s in scores])
                counts.append([len(s) for s in scores])
            figure.add_trace(go.Heatmap(
                z=z, x=layers, y=segments, customdata=counts, coloraxis="coloraxis",
                hovertemplate="%{y}, layer %{x}: score %{z:.3f} (mean of %{customdata} "
                              "samples)<extra></extra>"), row=i + 1, col=j + 1)
            figure.update_xaxes(title_text=_LAYER_AXIS, dtick=1, row=i + 1, col=j + 1)
    figure.update_layout(height=320 * len(activations), margin=dict(t=40),
                         coloraxis=dict(colorscale=_SCORE_SCALE, cmid=0,
                                        colorbar=dict(title="score")))
    agreement = []
    for activation in activations:
        real = [r for r in whole if r["activation"] == activation and r["method"] == "patch"]
        estimated = [r for r in whole if r["activation"] == activation
                     and r["method"] == "attribution"]
        if len(real) >= 3 and estimated:
            agreement.append(f"{activation} {rank_agreement(real, estimated):.2f}")
    n = len({r["sample"] for r in whole})
    sources = sorted({str(r["source"]).rpartition("~")[2] for r in whole} - {""})
    caption = (f"Normalised patching score (patched − target) / (source − target) of the logit "
               f"difference logit[source answer] − logit[target answer] at the last position, "
               f"each segment of the video as the model saw it patched from "
               f"{', '.join(sources) or 'the source run'} in one layer at a time; mean over "
               f"{n} samples (1: the patch moves the answer all the way to the source's, 0: "
               f"not at all).")
    if agreement:
        caption += (" Attribution patching estimates every patch from two forwards and one "
                    "backward; Spearman rank correlation with real patching: "
                    + ", ".join(agreement) + ".")
    return ("patching", "Activation patching from a counterfactual video", caption, figure)


def _heads_section(rows):
    """Mean relative change of the predicted answer's probability per (layer, head): one
    layer × head heatmap per curve, on one diverging scale centred on 0 (red: the head's
    knockout lowers the answer's probability), rows without a change (a zero base) left out."""
    curves = sorted({r["curve"] for r in rows}, key=lambda c: (
        PATHWAY_ORDER.index(c) if c in PATHWAY_ORDER else len(PATHWAY_ORDER), c))
    n_rows, n_cols = _panel_grid(len(curves), columns=2)
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=curves,
                           horizontal_spacing=0.1, vertical_spacing=0.14)
    for index, curve in enumerate(curves):
        chosen = [r for r in rows if r["curve"] == curve]
        layers = sorted({int(r["layer"]) for r in chosen})
        heads = sorted({int(r["head"]) for r in chosen})
        cells = _by(chosen, "head", "layer")
        z, counts = [], []
        for head in heads:
            changes = [[r["change_pred"] for r in cells.get((head, layer), [])
                        if r["change_pred"] is not None and math.isfinite(r["change_pred"])]
                       for layer in layers]
            z.append([mean(c) if c else None for c in changes])
            counts.append([len(c) for c in changes])
        row, col = index // n_cols + 1, index % n_cols + 1
        figure.add_trace(go.Heatmap(
            z=z, x=layers, y=heads, customdata=counts, coloraxis="coloraxis",
            hovertemplate="layer %{x}, head %{y}: %{z:.2f} % (mean of %{customdata} "
                          "samples)<extra></extra>"), row=row, col=col)
        figure.update_xaxes(title_text=_LAYER_AXIS, dtick=1, row=row, col=col)
        figure.update_yaxes(title_text="head", dtick=1, row=row, col=col)
    figure.update_layout(height=340 * n_rows, margin=dict(t=40),
                         coloraxis=dict(colorscale=_SCORE_SCALE, cmid=0,
                                        colorbar=dict(title="change %")))
    windows = sorted({len(r["layers"]) for r in rows})
    n = len({r["sample"] for r in rows})
    caption = (f"Relative change (%) of the clean run's predicted answer probability when a "
               f"pathway's edges are knocked out in one attention head only, in a window of "
               f"{' / '.join(map(str, windows))} layer(s) centred on each layer; mean over {n} "
               f"samples. Strongly negative cells are the heads that carry the pathway.")
    return ("head-maps", "Head-level knockout maps", caption, figure)


def _patching_frame_sections(rows, frames_table):
    """"Which frames matter": per sample, each frame's thumbnail above its normalised patching
    score in each layer (real patching of the whole frame, the first activation patched), on one
    diverging scale: the frames whose content carries the answer, and where."""
    whole = [r for r in rows if r.get("position") is None and r["method"] == "patch"
             and str(r["segment"]).startswith("frame_")]
    if not whole:
        return []
    activation = whole[0]["activation"]
    whole = [r for r in whole if r["activation"] == activation]
    sections = []
    for number, sample in enumerate(list(dict.fromkeys(r["sample"] for r in whole))
                                    [:_MAX_FRAME_SAMPLES]):
        sample_rows = [r for r in whole if r["sample"] == sample]
        task = sample_rows[0].get("task", "")
        thumbs = _frame_rows(frames_table, sample)
        by_frame = _by(sample_rows, "segment")
        frame_ids = _pick(sorted(int(s[len("frame_"):]) for s in by_frame), _MAX_FRAMES)
        # one cell a frame and layer: the frame's thumbnail keeps its aspect, its token grid is
        # not what was patched (the whole frame was)
        grids = {t: _FrameGrid({**thumbs[t], "grid_h": 1, "grid_w": 1, "coords": None}
                               if t in thumbs else None, [{"h": 0, "w": 0}])
                 for t in frame_ids}
        layers = _pick(sorted({int(r["layer"]) for r in sample_rows}), 2 * _MAX_LENS_LAYERS)
        figure = _FrameFigure(len(layers), frame_ids, grids, [f"layer {l}" for l in layers])
        cells = _by(sample_rows, "segment", "layer")
        for i, layer in enumerate(layers):
            for j, t in enumerate(frame_ids):
                scores = [r["score"] for r in cells.get((f"frame_{t}", layer), [])
                          if r["score"] is not None and math.isfinite(r["score"])]
                score = scores[0] if scores else None
                figure.draw(grids[t], [[score]], [["" if score is None else f"{score:.2f}"]],
                            [[f"frame {t}, layer {layer}: score "
                              + ("undefined" if score is None else f"{score:.3f}")]],
                            row=i, col=j, coloraxis="coloraxis", opacity=1.0)
        figure.layout.update(coloraxis=dict(
            colorscale=_SCORE_SCALE, cmin=-1, cmax=1,
            colorbar=dict(title=dict(text="score", side="top"), len=0.6, thickness=12)))
        source = str(sample_rows[0]["source"]).rpartition("~")[2] or "the source run"
        note = ("" if any(g.image for g in grids.values()) else
                " This run saved no frame thumbnails, so the frames are drawn without the video.")
        figure_id = "patching-frames" if number == 0 else f"patching-frames-{number + 1}"
        sections.append((
            figure_id, f"Which frames matter{_sample_label(sample, task)}",
            f"Each frame of the video as the model saw it (top row), patched whole from the "
            f"{html.escape(source)} counterfactual in one layer at a time ({activation}): the "
            f"normalised patching score of the answer's logit difference (1: the patch alone "
            f"moves the answer all the way to the counterfactual's; 0: not at all; the colour is "
            f"the colour bar's), layers {', '.join(map(str, layers))}." + note, figure))
    return sections


# ------------------------------------------------------------------------------ diagnosis
_VERDICT_COLORS = {"Case 1": "#d62728", "Case 2": "#1f77b4", "both": "#9467bd",
                   "neither": "#7f7f7f"}


def _frames_anchor(sample: Any) -> str:
    """The HTML id of a sample's frame strip: the sample id with anything but letters, digits,
    ``_`` and ``-`` replaced by ``-``."""
    return "frames-" + "".join(c if c.isalnum() or c in "_-" else "-" for c in str(sample))


def _diagnosis_section(rows):
    """Failure verdict counts per task as stacked bars (``diagnosis-verdicts``)."""
    from .metrics import INTEGRATION_SIMILAR

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    figure = go.Figure()
    for verdict in _VERDICTS:
        figure.add_bar(name=verdict, x=tasks, marker_color=_VERDICT_COLORS[verdict],
                       y=[sum(r["verdict"] == verdict for r in rows if r["task"] == t)
                          for t in tasks])
    most = max((sum(r["task"] == t for r in rows) for t in tasks), default=0)
    # counts: whole-number ticks (plotly's own gave 0.2, 0.4, … for one wrong sample)
    figure.update_layout(barmode="stack", height=380,
                         yaxis=dict(title="wrong samples", tickformat="d", rangemode="tozero",
                                    dtick=max(1, math.ceil(most / 8))),
                         legend=dict(x=1.01, y=1, xanchor="left", yanchor="top"))
    return ("diagnosis-verdicts", "Failure diagnosis: a verdict per wrong sample",
            "Every sample the model answers wrongly, by the paper's two failure mechanisms "
            "(docs/diagnose.md): <b>Case 1</b>, blocking cross-frame attention in the "
            "early-to-middle layers gives the right answer (spurious cross-frame interaction "
            "misled the video representation); <b>Case 2</b>, the answer is static — the "
            "shuffled and the frozen video give the same answer, or it is the answer the model "
            "gives most often on the task; <b>both</b>; <b>neither</b>. The tables below give "
            "the counts and every sample's evidence, linked to its frames. <b>Departs from the "
            "paper:</b> the paper reads its failure cases off figures and its code has no "
            "failure analysis; these verdicts, and the integration r (alike at r ≥ "
            f"{INTEGRATION_SIMILAR}), are mapflow-tl definitions (docs/paper_parity.md).",
            figure)


def _diagnosis_blocks(rows, frames_table) -> list[tuple[str, str, str]]:
    """The verdict counts per task (``diagnosis-counts``), one row per wrong sample with the
    numbers behind its verdict linked to its frames, and the frame strips."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("task", *_VERDICTS, "wrong samples"))
    body = ""
    for task in tasks + ["all tasks"]:
        chosen = [r for r in rows if task == "all tasks" or r["task"] == task]
        cells = "".join(f"<td>{sum(r['verdict'] == v for r in chosen)}</td>" for v in _VERDICTS)
        body += f"<tr><td>{html.escape(str(task))}</td>{cells}<td>{len(chosen)}</td></tr>"
    counts = (f'<table class="data counts" id="diagnosis-counts"><thead><tr>{head}</tr></thead>'
              f"<tbody>{body}</tbody></table>")

    def number(value):
        return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else \
            html.escape(str(value))

    def answer(row, name):
        """The decoded answer with its token id: 'B' (24)."""
        text, token = row.get(f"{name}_text"), row[f"{name}_token"]
        if token is None:
            return "–"
        return html.escape(f"{text.strip()!r} ({token})" if text is not None else str(token))

    answers = ("base", "true", "crossframe", "shuffled", "frozen", "task_mode")
    columns = ("sample", "task", "verdict", "answer", "truth", "cross-frame knockout",
               "shuffled", "frozen", "task's most frequent", "its share", "integration r",
               "integration distance")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = ""
    for row in rows:
        link = (f'<a href="#{_frames_anchor(row["sample"])}">'
                f'{html.escape(str(row["sample"]))}</a>')
        cells = ([html.escape(str(row["task"])), html.escape(row["verdict"])]
                 + [answer(row, name) for name in answers]
                 + [number(row[c]) for c in ("task_mode_share", "integration_r",
                                             "integration_distance")])
        body += ("<tr><td>" + link + "</td>"
                 + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    samples = (f'<table class="data" id="diagnosis-samples"><thead><tr>{head}</tr></thead>'
               f"<tbody>{body}</tbody></table>")
    strips = ""
    for row in rows:
        thumbs = _frame_rows(frames_table, row["sample"])
        images = "".join(f'<img src="{thumbs[t]["image"]}" alt="frame {t}" title="frame {t}" '
                         f'style="height:64px;margin-right:3px">' for t in sorted(thumbs)
                         if thumbs[t].get("image"))
        # the label in a fixed-width column: every strip's frames start at the same x, so
        # frame t of one sample sits above frame t of the next
        strips += (f'<div id="{_frames_anchor(row["sample"])}" class="strip" '
                   f'style="display:flex;align-items:center;margin:6px 0">'
                   f'<span style="flex:0 0 26em;padding-right:0.5em">'
                   f'<b>{html.escape(str(row["sample"]))}</b> '
                   f'({html.escape(str(row["task"]))}, {html.escape(row["verdict"])})</span>'
                   + (images or "<i>no frame thumbnails in this run</i>") + "</div>")
    return [("diagnosis-table", "Failure verdicts per task and per sample",
             '<p class="caption">Verdict counts per task, then every wrong sample with the '
             "tokens behind its verdict: its answer, the truth, the answer with cross-frame "
             "attention blocked in the early-to-middle layers, with the frames shuffled and "
             "frozen, the task's most frequent answer and its share; integration r / distance: "
             "how its mid-late video → question and question → last knockout curve compares "
             "with the task's correct samples' mean (Pearson r, RMS difference in percentage "
             "points). Each sample links to its frames below.</p>" + counts + samples
             + "<h3>Frames of the wrong samples</h3>" + strips)]


def _checkpoint_rows(flow) -> list[dict[str, Any]]:
    """:func:`mapflow_tl.metrics.checkpoint_shares` of the flow table (the vq-to-true-opt
    curves), one row per task that has all three."""
    from .metrics import checkpoint_shares

    return checkpoint_shares(flow)


def _checkpoint_section(rows, windows: Sequence[int] = ()):
    """Direct vs through-the-question share of the video → true-option information per task
    (``checkpoints``); ``windows``: the window sizes k of the flow rows behind it."""
    from .metrics import CHECKPOINT_CURVES

    tasks = [r["task"] for r in rows]
    figure = go.Figure()
    # each route in its pathway's colour of the flow figures above (the indirect one in its
    # second link's), so a bar reads against the curves it comes from
    for column, name, color in (
            ("direct_share", "direct: video → true option",
             curve_color(CHECKPOINT_CURVES["direct"])),
            ("indirect_share", "through the non-option question",
             curve_color(CHECKPOINT_CURVES["question to option"]))):
        figure.add_bar(name=name, x=tasks, y=[r[column] for r in rows], marker_color=color)
    figure.update_layout(barmode="stack", height=360, yaxis=dict(title="share", range=[0, 1]),
                         legend=dict(orientation="h", y=1.12, x=0))
    return ("checkpoints", "Temporal keywords as checkpoints: direct vs through the question",
            "Per task, how the video's information reaches the true option: the direct share "
            "is the largest mean drop of the true option's probability with video → true "
            "option blocked, over that plus the indirect route's (the smaller of the drops with "
            "video → non-option question and non-option question → true option blocked: a "
            "route in series carries no more than its weaker link); the table gives the drops "
            "(%). A task without any drop has no share. <b>Departs from the paper:</b> the "
            "paper reads the checkpoints off these curves (Fig. 4) and gives no number; the "
            "shares are a mapflow-tl measure (docs/paper_parity.md)"
            + ("" if list(windows) == [9] else
               f", and each drop is over a window of k = "
               f"{', '.join(map(str, windows)) or '?'} layers (the paper's k = 9 of 32)")
            + ".", figure)


def _table_html(rows: list[dict[str, Any]], element_id: str = "") -> str:
    columns = [c for c in rows[0] if c != "accuracy_sd"
               and any(r.get(c) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = ""
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if v is None:
                v = "–"
            elif c == "retained":
                v = f"{100 * v:.1f} %"
            elif c == "accuracy":
                sd = row.get("accuracy_sd")
                v = f"{v:.1f} ± {sd:.1f} %" if sd is not None else f"{v:.1f} %"
            elif isinstance(v, float):
                v = f"{v:.3g}"
            elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
                v = f"{v:,}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    ident = f' id="{element_id}"' if element_id else ""
    return f'<table class="data"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ------------------------------------------------------------------------------------ header
def _header_rows(config, samples, run_dir) -> list[tuple[str, str]]:
    def text(value):
        if isinstance(value, (list, tuple)):
            return ", ".join(map(str, value))
        return str(value)

    rows = []
    model = config.get("model")
    if model:
        family = config.get("model_family")
        rows.append(("model", f"{model}" + (f" ({family}" + (
            f", {config['n_layers']} layers" if config.get("n_layers") else "") + ")"
            if family else "")))
    if config.get("image_model"):
        rows.append(("image-only model", text(config["image_model"])))
    if config.get("dataset"):
        root = config.get("data_root")
        rows.append(("dataset", f"{config['dataset']}" + (f" ({root})" if root else "")))
    if samples:
        tasks = _by(samples, "task")
        graded = [r for r in samples if r.get("base_correct") is not None]
        share = 100 * mean(bool(r["base_correct"]) for r in graded) if graded else None
        accuracy = f"; accuracy without knockout {share:.1f} %" if graded else ""
        rows.append(("samples", f"{len(samples)} evaluated in {len(tasks)} task"
                     f"{'s' if len(tasks) != 1 else ''} ("
                     + ", ".join(f"{t}: {len(g)}" for t, g in sorted(tasks.items()))
                     + f"){accuracy}"))
    elif config.get("n_samples") is not None:
        rows.append(("samples", f"{config['n_samples']} loaded"))
    for key, label in (("command", "command"), ("circuit", "circuits"), ("window", "window k"),
                       ("style", "window style"), ("mode", "sample mode"), ("seed", "seed"),
                       ("dtype", "dtype"), ("task", "tasks chosen"), ("limit", "limit per task")):
        if config.get(key) not in (None, "", []):
            rows.append((label, text(config[key])))
        elif key == "window" and isinstance(config.get("definitions"), dict) \
                and config["definitions"].get("window"):
            # the default window depends on the model's depth; run.json says what it was
            rows.append((label, text(config["definitions"]["window"])))
    definitions = config.get("definitions")
    if isinstance(definitions, dict) and definitions:
        rows.append(("definitions", "; ".join(f"{k}: {text(v)}" for k, v in definitions.items())))
    else:
        rows.append(("definitions", "not recorded in run.json; each figure's caption states "
                                    "what it computes"))
    rows.append(("layer numbering", LAYER_NUMBERING))
    rows.append(("uncertainty", f"95 % percentile bootstrap over samples "
                                f"({_BOOTSTRAP_RESAMPLES} resamples, seed {_BOOTSTRAP_SEED})"))
    versions = config.get("versions")
    if isinstance(versions, dict) and versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    rows.append(("run folder", str(run_dir)))
    return rows


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1240px;margin:0 auto;padding:0 24px 48px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin:24px 0 8px}h2{font-size:1.2em;margin:0 0 4px}
section{border-top:1px solid #ddd;padding:18px 0 8px}
p.caption{color:#444;font-size:0.92em;margin:2px 0 8px;max-width:1100px}
table{border-collapse:collapse;font-size:0.9em}
table.meta th{text-align:left;padding:3px 14px 3px 0;color:#555;font-weight:600;
vertical-align:top;white-space:nowrap}
table.meta td{padding:3px 0}
table.data td,table.data th{border:1px solid #ccc;padding:4px 10px;text-align:right}
table.data td:first-child,table.data td:nth-child(2),table.data th:first-child,
table.data th:nth-child(2){text-align:left}
table.data.counts td:nth-child(2),table.data.counts th:nth-child(2){text-align:right}
nav ul{columns:2;font-size:0.92em;padding-left:20px}
.size{color:#666;font-size:0.85em}
"""


def _plotly_script(plotly: str, path: Path) -> tuple[str, str]:
    """The page's plotly.js ``<script>`` and the size note's words for it.

    ``inline`` embeds plotly.js (offline, ~4.8 MB); ``cdn`` links plotly's CDN copy of the
    bundled version; any other value is a file path: the bundled plotly.js is written there
    when no file is, and the page links it by its path relative to the report."""
    from plotly.offline.offline import get_plotlyjs_version

    if plotly == "inline":
        code = get_plotlyjs()
        return (f'<script type="text/javascript">{code}</script>',
                f"self-contained and offline (plotly.js {len(code.encode()) / 1e6:.2f} MB, ")
    if plotly == "cdn":
        url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        return (f'<script src="{url}" charset="utf-8"></script>',
                f"plotly.js linked from {html.escape(url)}, so opening it needs the network (")
    target = Path(plotly).expanduser()
    if target.is_dir() or not target.suffix == ".js":
        raise InputError(f"--plotly {plotly!r} is neither inline, cdn nor a path to a .js file; "
                         f"give e.g. --plotly {Path(plotly) / 'plotly.min.js'}")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(get_plotlyjs(), encoding="utf-8")
    link = Path(os.path.relpath(target.resolve(), path.parent.resolve())).as_posix()
    return (f'<script src="{html.escape(link)}" charset="utf-8"></script>',
            f"plotly.js linked from {html.escape(link)}, which must travel with it (")


#: How ``build_report`` puts plotly.js in the page (``report --plotly``).
PLOTLY_MODES = ("inline", "cdn", "PATH")


def build_report(run_dir: str | Path, out: str | Path | None = None, *,
                 plotly: str = "inline") -> Path:
    """Build ``report.html`` (or ``out``) from a run folder's saved tables; returns its path.

    By default one self-contained HTML file: plotly.js and any frame thumbnails are embedded,
    nothing is fetched when it is opened. ``plotly="cdn"`` or a path to a ``.js`` file links
    plotly.js instead (a report of ~0.5 MB instead of ~5 MB; see :func:`_plotly_script`). Writes
    through the one write policy (:mod:`mapflow_tl.outputs`): never over a run's tables,
    ``run.json`` or a file that is not a mapflow-tl report. Raises ``InputError`` when the folder
    holds no result table."""
    from .outputs import REPORT_MARK, check_file_target, record

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    # the one write policy: never over a run's tables, run.json or a file that is not a report
    path = check_file_target(Path(out) if out is not None else run_dir / "report.html")
    tables = {name: read_rows(run_dir, name) for name in
              ("samples", "flow", "prob", "keywords", "crossframe", "lens", "attention",
               "prune", "frames", "patch", "heads", "eval", "diagnosis", "open_ended",
               "answers", "discover", "discover_samples")}
    samples, flow, prob = tables["samples"], tables["flow"], tables["prob"]
    sections: list[tuple[str, str, str, Any]] = []
    accuracy_table = None
    if tables["eval"]:
        section, accuracy_table = _eval_section(tables["eval"])
        sections.append(section)
    if flow:
        sections += _flow_sections(flow, samples, config)
    if tables["crossframe"]:
        sections.append(_finding_one_section(tables["crossframe"], config))
    if flow or prob:
        sections.append(_failure_section(flow, prob, samples))
    if prob:
        sections.append(_probability_section(prob))
    if tables["keywords"]:
        sections.append(_keyword_section(tables["keywords"]))
    if tables["lens"]:
        sections += _lens_sections(tables["lens"], tables["frames"], config)
    if tables["attention"]:
        sections += _attention_sections(tables["attention"], tables["frames"], config)
    if tables["prune"]:
        sections.append(_prune_section(tables["prune"]))
    if tables["patch"]:
        sections.append(_patching_section(tables["patch"]))
        sections += _patching_frame_sections(tables["patch"], tables["frames"])
    if tables["heads"]:
        sections.append(_heads_section(tables["heads"]))
    checkpoints = _checkpoint_rows(flow)
    if checkpoints:
        from .metrics import CHECKPOINT_CURVES

        sections.append(_checkpoint_section(checkpoints, sorted(
            {r["k"] for r in flow if r.get("curve") in CHECKPOINT_CURVES.values()
             and r.get("k") is not None})))
    if tables["diagnosis"]:
        sections.append(_diagnosis_section(tables["diagnosis"]))
    if tables["open_ended"]:
        sections += _open_ended_sections(tables["open_ended"], tables["answers"])
    if tables["discover"]:
        sections.append(_discover_section(tables["discover"], config))
    if tables["discover_samples"]:
        sections.append(_discover_samples_section(tables["discover_samples"]))
    if samples and not tables["eval"] and not any(r.get("selected", True) for r in samples):
        mode = (config.get("definitions") or {}).get("sample_mode") or config.get("mode")
        sections.insert(0, ("no-selected-samples", "No sample was selected",
                            f"All {len(samples)} evaluated samples are in the samples table, "
                            f"but none matched the sample mode {mode!r}, so no knockout was run; "
                            f"run again with another --mode (e.g. all) to sweep them.", None))
    if not sections and not tables["prune"]:
        raise InputError(f"{run_dir} holds no result tables to report (flow, prob, keywords, "
                         f"crossframe, lens, attention, prune, patch, heads, eval, diagnosis "
                         f"or discover); run an analysis into it first")
    blocks = []
    for figure_id, title, caption, figure in sections:
        if figure is None:
            content = f'<p class="caption" id="{figure_id}">{caption}</p>'
        elif isinstance(figure, _FrameFigure):
            content = f'<p class="caption">{caption}</p>\n' + figure.html(figure_id)
        else:
            figure.update_layout(template="plotly_white", font=_FONT)
            content = (f'<p class="caption">{caption}</p>\n'
                       + figure.to_html(full_html=False, include_plotlyjs=False,
                                        div_id=figure_id, config=_PLOT_CONFIG))
        blocks.append((figure_id, title, content))
    if accuracy_table:
        blocks.append(("accuracy-table", "Accuracy per task, table",
                       '<p class="caption">The figures of the accuracy plot: samples graded and '
                       'accuracy per task'
                       # "exact" is a column only where the run has open-ended answers
                       + (' (exact: the share of open-ended answers equal to the reference)'
                          if any(row.get("exact") is not None for row in accuracy_table) else '')
                       + '.</p>' + _table_html(accuracy_table, "accuracy-table")))
    if rows := tables["prune"]:
        seeds = len({_seed_of(r) for r in rows if r["variant"] == "random"} - {None})
        spread = ("mean ± standard deviation over its " f"{seeds} seeds" if seeds > 1 else
                  "one seed, so no ± spread" if seeds == 1 else "no random baseline in this run")
        blocks.append(("pathway-table", "Effective pathways vs random pruning, per task",
                       '<p class="caption">Accuracy per task with the full model, with only the '
                       'circuit\'s effective pathways kept, and with as many edges per layer '
                       f'pruned at random ({spread}; the seeds column says how many each row '
                       'used); retained: the share of causal attention edges kept over all '
                       'layers.</p>' + _table_html(pathway_table(rows), "pathway-table")))
    if checkpoints:
        blocks.append(("checkpoint-table", "Direct vs through-the-question losses, per task",
                       _table_html(checkpoints, "checkpoint-table")))
    if tables["diagnosis"]:
        blocks += _diagnosis_blocks(tables["diagnosis"], tables["frames"])
    header = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in _header_rows(config, samples, run_dir))
    contents = "".join(f'<li><a href="#sec-{i}">{html.escape(t)}</a></li>'
                       for i, t, _ in blocks)
    body = "\n".join(f'<section id="sec-{i}"><h2>{html.escape(t)}</h2>\n{c}</section>'
                     for i, t, c in blocks)
    plotly_script, plotly_note = _plotly_script(plotly, path)
    title = html.escape(str(config.get("model", "")))

    def page(size_note: str) -> str:
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{REPORT_MARK}<title>mapflow-tl report: {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{plotly_script}
<style>{_CSS}</style>
</head><body>
<h1>mapflow-tl report</h1>
<table class="meta">{header}</table>
<p class="size">{size_note}</p>
<nav><ul>{contents}</ul></nav>
{body}
</body></html>"""

    draft = page("X" * 120)
    total = len(draft.encode("utf-8")) - 120
    script = len(plotly_script.encode())
    note = (f"This file: {total / 1e6:.2f} MB, {plotly_note}figures and thumbnails "
            f"{(total - script) / 1e6:.2f} MB).")
    text = page(note)
    if path.parent.resolve() == run_dir.resolve():
        record(run_dir, "run", [path.name])   # the run's own: --overwrite removes it
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path
