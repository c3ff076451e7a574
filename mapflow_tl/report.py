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
- ``pathway-table`` (Finding 4): effective pathways vs random pruning.

Layers are numbered from 0 (``layer`` 0 is the first decoder block), as in every table; the
paper counts from 1. A pathway keeps its colour in every figure.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .errors import InputError
from .results import read_rows
from .runs import read_run_config
from .schema import PATHWAY_ORDER

__all__ = ["build_report", "curve_color", "bootstrap_band", "pathway_table", "FIGURE_IDS",
           "LAYER_NUMBERING"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]
FIGURE_IDS = ("flow-change", "flow-accuracy", "finding-1", "failure-diagnosis",
              "probability-trace", "keyword-frequency", "lens-overlay", "attention-maps",
              "pathway-table")
#: How the report numbers layers, stated in its header and on every layer axis.
LAYER_NUMBERING = ("Layers are numbered from 0: layer ℓ is decoder block ℓ (0 = the first), "
                   "as in the tables; the paper's figures count from 1 (paper layer = ℓ + 1).")
_LAYER_AXIS = "layer (0-based)"
# the option curves share a figure with the pathway curves (failure diagnosis): dark shades
# that no pathway uses
_TRUE_COLOR, _FALSE_COLOR = "#00441b", "#67000d"
# colour scales of the frame views: transparent at 0 so the frame shows through where the
# value is low (plotly.js' named scales differ from plotly.py's, so they are spelled out)
_LENS_SCALE = [[0, "rgba(8,48,107,0)"], [1, "rgba(8,48,107,0.6)"]]
_ATTENTION_SCALE = [[0, "rgba(255,255,178,0)"], [0.25, "rgba(254,204,92,0.5)"],
                    [0.5, "rgba(253,141,60,0.65)"], [0.75, "rgba(240,59,32,0.8)"],
                    [1, "rgba(189,0,38,0.92)"]]
_BOOTSTRAP_RESAMPLES = 2000
_BOOTSTRAP_SEED = 0
_MAX_FRAMES = 8        # frame columns in a frame-grounded figure (evenly spaced beyond that)
_MAX_LENS_LAYERS = 4   # layer rows in the lens figure
_MAX_FRAME_SAMPLES = 2  # samples drawn in the frame-grounded views
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_FONT = dict(family="Helvetica, Arial, sans-serif", size=12)


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


def _add_curve(figure, xs, values, *, name, color, row, col, showlegend, hover_unit=""):
    """One curve: the mean over samples (line) and its 95 % bootstrap band (filled)."""
    centre, low, high = bootstrap_band(values)
    n = values.shape[0]
    keep = ~np.isnan(centre)
    xs_kept = [x for x, k in zip(xs, keep) if k]
    figure.add_trace(go.Scatter(
        x=xs_kept + xs_kept[::-1], y=list(high[keep]) + list(low[keep])[::-1],
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


def _panels(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The all-task panel first, then one per task (only the all-task one when there is one
    task)."""
    tasks = _by(rows, "task")
    panels = [("all tasks", rows)]
    if len(tasks) > 1:
        panels += sorted(tasks.items(), key=lambda item: str(item[0]))
    return panels


def _n_label(rows: list[dict]) -> str:
    return f"n = {len({r['sample'] for r in rows})}"


def _curve_panels(rows, curves, value, *, y_title, hover_unit="", baseline=None,
                  height_per_row=300):
    """Panels (all tasks, then each task) of curves over layers, with bootstrap bands.

    ``curves``: ``[(name, color, row filter)]``; ``value(row)`` the plotted number;
    ``baseline(task_rows, task) -> (y, label) | None`` a dashed reference line per panel."""
    panels = _panels(rows)
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
        for name, color, keep in curves:
            chosen = [r for r in task_rows if keep(r)]
            if not chosen:
                continue
            _add_curve(figure, xs, _matrix(chosen, value, xs), name=name, color=color,
                       row=row + 1, col=col + 1, showlegend=i == 0, hover_unit=hover_unit)
        if lines[i] is not None:
            figure.add_hline(y=lines[i][0], line_dash="dash", line_color="#444", line_width=1,
                             row=row + 1, col=col + 1)
    _integer_layer_axes(figure, xs)
    figure.update_yaxes(title_text=y_title, col=1)
    figure.update_xaxes(title_text=_LAYER_AXIS, row=n_rows)
    # a reference line's label makes the first row's titles two lines high: lift the legend
    two_line = any(line is not None for line in lines[:n_cols])
    figure.update_layout(height=height_per_row * n_rows + 80,
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
    window = ("one layer at a time" if k == [1] else
              f"a window of {k[0]} consecutive layers centred on each layer (cut at the model's "
              f"ends)" if len(k) == 1 else "the run's layer windows")
    sections = []
    change = _curve_panels(rows, curves, lambda r: r.get("change_pred"),
                           y_title="% change of p(predicted answer)", hover_unit=" %")
    sections.append(("flow-change", "Relative change of the answer probability under knockout",
                     f"Each curve blocks one pathway's attention edges in {window}; the value is "
                     f"(p<sub>knockout</sub> − p<sub>base</sub>) / p<sub>base</sub> × 100 for the "
                     f"token the model predicts without knockout. Line: mean over samples; "
                     f"band: 95 % bootstrap interval over samples; n: samples per panel. "
                     f"Samples: {chosen}.", change))
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
            caption + " (mean and 95 % bootstrap interval over samples; n per panel). Dashed: "
            "the model's accuracy without knockout over all samples it was evaluated on, the "
            "reference the drops compare to.", accuracy))
    return sections


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
            "each layer; mean over samples with 95 % bootstrap bands; n per panel.", figure)


def _keyword_section(rows):
    figure = go.Figure()
    layers = _by(rows, "layer")
    xs = sorted(layers)
    positions = [sum(r["positions"] for r in layers[x]) for x in xs]
    for kind, color in (("spatial", "#1f77b4"), ("temporal", "#ff7f0e")):
        counts = [sum(r[kind] for r in layers[x]) for x in xs]
        figure.add_trace(go.Scatter(
            x=xs, y=[100 * c / max(1, p) for c, p in zip(counts, positions)],
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
            f"per layer, over the {n} video tokens read per layer (all lens samples together).",
            figure)


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
                labels.append(f"{column}<br>n = {n}")
                if not chosen:
                    ys.append(None), lows.append(0), highs.append(0)
                    continue
                values = _matrix([{**r, "layer": 0} for r in chosen],
                                 lambda r: 100.0 * bool(r["correct"]), [0])
                centre, low, high = bootstrap_band(values)
                ys.append(float(centre[0]))
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
    figure.update_layout(barmode="group", height=440, margin=dict(t=50, b=90),
                         legend=dict(x=1.01, y=1, xanchor="left", yanchor="top"))
    layers = ", ".join(_layer_span(l) for l in knockout_layers) or "the run's layers"
    return ("finding-1", "Finding 1: cross-frame knockout, video-fine-tuned vs image-only model",
            f"Accuracy per task without knockout and with every frame's tokens blocked from "
            f"attending to earlier frames in layers {layers} (the early-to-middle half). "
            f"Error bars: 95 % bootstrap interval over samples; n: samples per task. A model that "
            f"needs cross-frame interaction for a task loses accuracy there; a model that reads "
            f"each frame alone does not.", figure)


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
            for name, color, keep in curves:
                chosen = [r for r in chosen_rows if keep(r)]
                if chosen:
                    _add_curve(figure, xs, _matrix(chosen, value, xs), name=name, color=color,
                               row=i + 1, col=j + 1, showlegend=j == 0)
        figure.update_yaxes(title_text=y_title, row=i + 1, col=1)
        figure.update_yaxes(matches=f"y{2 * i + 1}" if i else "y", row=i + 1, col=2)
        _integer_layer_axes(figure, xs)
    figure.update_xaxes(title_text=_LAYER_AXIS, row=len(parts))
    figure.update_layout(height=330 * len(parts) + 60, margin=dict(t=100),
                         legend=dict(orientation="h", y=1.0 + 0.2 / len(parts), x=0))
    return ("failure-diagnosis", "Failure diagnosis: correct vs wrong samples",
            "The same curves for samples the model answers correctly (left) and wrongly (right) "
            "without knockout, side by side on one scale: where the flow or the answer's "
            "emergence differs is where the wrong answers go astray. Mean and 95 % bootstrap "
            "bands over samples; n per panel. " + " ".join(notes), figure)


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
    hundred heatmaps; the frame views need none of it."""

    def __init__(self, n_rows: int, frame_ids: Sequence[int], grids: dict, row_titles):
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

    def _x(self, col: int) -> float:
        return col * (self.width_share + self.h_space)

    def _y(self, row: int) -> float:  # row 0 on top
        return 1 - row * (self.height_share + self.v_space) - self.height_share

    def draw(self, grid: "_FrameGrid", z, text, hover, *, row: int, col: int, coloraxis: str,
             opacity: float, visible: bool = True, show_text: bool = True) -> None:
        """One frame cell (0-based row, col): the thumbnail (if any) under the token grid's
        heatmap, on axes with integer row / column ticks and the frame's aspect ratio.
        ``hover``: a text per cell, or one plotly.js hover template for all cells (smaller)."""
        number = row * self.n_cols + col + 1
        suffix = "" if number == 1 else str(number)
        hovering = (dict(hovertemplate=hover) if isinstance(hover, str)
                    else dict(hovertext=hover, hoverinfo="text"))
        trace = dict(type="heatmap", z=z, **hovering, coloraxis=coloraxis, opacity=opacity,
                     xgap=0 if grid.image else 0.5, ygap=0 if grid.image else 0.5,
                     xaxis=f"x{suffix}", yaxis=f"y{suffix}", visible=visible)
        if show_text and text is not None:
            trace.update(text=text, texttemplate="%{text}",
                         textfont=dict(size=9, color="white", shadow="0px 0px 2px black"))
        self.data.append(trace)
        if grid.image and visible:
            self.layout["images"].append(dict(
                source=grid.image, xref=f"x{suffix}", yref=f"y{suffix}", x=-0.5, y=-0.5,
                sizex=grid.width, sizey=grid.height, sizing="stretch", layer="below",
                xanchor="left", yanchor="top"))
        if f"xaxis{suffix}" in self.layout:
            return
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
            f"colour: its probability), drawn on the token's cell of its frame's own grid over "
            f"the frame itself; rows are layers {', '.join(map(str, layers))} "
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
            visibility, maxima = [], []
            for layer in layers:
                for i, condition in enumerate(conditions):
                    for j, t in enumerate(frame_ids):
                        z, _, _ = _grid_matrix(
                            grids[t], cells.get((condition, t, layer), []),
                            lambda r: float(f"{r['attention']:.4g}"), lambda r: "",
                            lambda r: "")
                        tips = (f"row %{{y}}, column %{{x}}<br>layer {layer}: attention "
                                f"%{{z:.4g}}<extra>{html.escape(condition)}</extra>")
                        figure.draw(grids[t], z, None, tips, row=i, col=j,
                                    coloraxis="coloraxis", opacity=1.0,
                                    visible=layer == active, show_text=False)
                        visibility.append(layer)
                maxima.append(max((r["attention"] for c in conditions for t in frame_ids
                                   for r in cells.get((c, t, layer), [])), default=1.0))
            # images were added once per cell (the visible layer's pass); keep one copy each
            steps = [dict(method="update", label=str(layer),
                          args=[{"visible": [v == layer for v in visibility]},
                                {"coloraxis.cmax": maxima[k]}])
                     for k, layer in enumerate(layers)]
            figure.layout.update(
                coloraxis=dict(colorscale=_ATTENTION_SCALE, cmin=0,
                               cmax=maxima[layers.index(active)],
                               colorbar=dict(title=dict(text="attention<br>weight", side="top"),
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
                f"Attention weight from the query ({query_text}; mean over heads and query "
                f"positions) to each video token, on the token's cell over its frame. Rows: "
                f"{' vs '.join(html.escape(c) for c in conditions)}"
                + (" (cross-frame edges blocked in the early-to-middle layers)" if knockout
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
nav ul{columns:2;font-size:0.92em;padding-left:20px}
.size{color:#666;font-size:0.85em}
"""


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build ``report.html`` (or ``out``) from a run folder's saved tables; returns its path.

    One self-contained HTML file: plotly.js and any frame thumbnails are embedded, nothing is
    fetched when it is opened. Raises ``ValueError`` when the folder holds no result table."""
    from .outputs import REPORT_MARK, check_file_target, record

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    # the one write policy: never over a run's tables, run.json or a file that is not a report
    path = check_file_target(Path(out) if out is not None else run_dir / "report.html")
    tables = {name: read_rows(run_dir, name) for name in
              ("samples", "flow", "prob", "keywords", "crossframe", "lens", "attention",
               "prune", "frames")}
    samples, flow, prob = tables["samples"], tables["flow"], tables["prob"]
    sections: list[tuple[str, str, str, Any]] = []
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
    if samples and not any(r.get("selected", True) for r in samples):
        mode = (config.get("definitions") or {}).get("sample_mode") or config.get("mode")
        sections.insert(0, ("no-selected-samples", "No sample was selected",
                            f"All {len(samples)} evaluated samples are in the samples table, "
                            f"but none matched the sample mode {mode!r}, so no knockout was run; "
                            f"run again with another --mode (e.g. all) to sweep them.", None))
    if not sections and not tables["prune"]:
        raise InputError(f"{run_dir} holds no result tables to report (flow, prob, keywords, "
                         f"crossframe, lens, attention or prune); run an analysis into it first")
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
    if rows := tables["prune"]:
        blocks.append(("pathway-table", "Effective pathways vs random pruning",
                       '<p class="caption">Accuracy per task with the full model, with only the '
                       'circuit\'s effective pathways kept, and with as many edges per layer '
                       'pruned at random (mean ± standard deviation over the random seeds); '
                       'retained: the share of causal attention edges kept over all layers.</p>'
                       + _table_html(pathway_table(rows), "pathway-table")))
    header = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in _header_rows(config, samples, run_dir))
    contents = "".join(f'<li><a href="#sec-{i}">{html.escape(t)}</a></li>'
                       for i, t, _ in blocks)
    body = "\n".join(f'<section id="sec-{i}"><h2>{html.escape(t)}</h2>\n{c}</section>'
                     for i, t, c in blocks)
    plotly_js = get_plotlyjs()
    title = html.escape(str(config.get("model", "")))

    def page(size_note: str) -> str:
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{REPORT_MARK}<title>mapflow-tl report: {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script type="text/javascript">{plotly_js}</script>
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
    note = (f"This file: {total / 1e6:.2f} MB, self-contained and offline (plotly.js "
            f"{len(plotly_js.encode()) / 1e6:.2f} MB, figures and thumbnails "
            f"{(total - len(plotly_js.encode())) / 1e6:.2f} MB).")
    text = page(note)
    if path.parent.resolve() == run_dir.resolve():
        record(run_dir, "run", [path.name])   # the run's own: --overwrite removes it
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path
