"""The report: one self-contained ``report.html`` with the paper's figures, built from a run
directory's saved tables alone (``mapflow-tl report RUN_DIR`` never touches a model).

Figures (each present when its table is): % change of the predicted-answer probability vs layer
per blocked pathway, accuracy vs layer with the clean-accuracy line (Figs. 2–4), true vs false
option probability per layer (Finding 3), spatial vs temporal keyword frequency per layer and
logit-lens frame overlays (Finding 2), attention heatmaps over the frame grids baseline vs
cross-frame knockout, and the effective-pathway table (Finding 4). A pathway keeps its colour in
every figure.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .runs import read_run_config, read_table

__all__ = ["build_report", "curve_color", "FIGURE_IDS"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]
_KNOWN_CURVES = [
    "cross-frame", "video → question", "video → last", "question → last", "last → last",
    "non-option question → last", "true option → last", "false options → last",
    "video → non-option question", "non-option question → true option", "video → true option",
]
FIGURE_IDS = ("flow-change", "flow-accuracy", "probability-trace", "keyword-frequency",
              "lens-overlay", "attention-maps", "pathway-table")


def curve_color(curve: str) -> str:
    """A fixed colour per pathway, the same in every figure and every report."""
    if curve in _KNOWN_CURVES:
        return _PALETTE[_KNOWN_CURVES.index(curve) % len(_PALETTE)]
    return _PALETTE[sum(map(ord, curve)) % len(_PALETTE)]


def _by(rows, *keys):
    """Rows grouped by the values of ``keys`` (one key: the value itself, else a tuple)."""
    groups: dict[Any, list] = defaultdict(list)
    for row in rows:
        value = tuple(row[k] for k in keys)
        groups[value[0] if len(keys) == 1 else value].append(row)
    return groups


def _flow_figures(rows: list[dict[str, Any]]) -> list[tuple[str, str, go.Figure]]:
    figures = []
    change = go.Figure()
    for curve, curve_rows in sorted(_by(rows, "curve").items()):
        layers = _by(curve_rows, "layer")
        xs = sorted(layers)
        change.add_trace(go.Scatter(
            x=xs, y=[mean(r["change_pred"] for r in layers[x]) for x in xs], name=curve,
            mode="lines+markers", line=dict(color=curve_color(curve))))
    change.update_layout(xaxis_title="layer (window centre)",
                         yaxis_title="% change of p(predicted answer)")
    figures.append(("flow-change", "Relative change of the answer probability under knockout",
                    change))
    accuracy = go.Figure()
    graded = [r for r in rows if r.get("correct") is not None]
    if graded:
        samples = {r["sample"]: r["base_correct"] for r in graded}
        baseline = mean(bool(v) for v in samples.values())
        for curve, curve_rows in sorted(_by(graded, "curve").items()):
            layers = _by(curve_rows, "layer")
            xs = sorted(layers)
            accuracy.add_trace(go.Scatter(
                x=xs, y=[100 * mean(bool(r["correct"]) for r in layers[x]) for x in xs],
                name=curve, mode="lines+markers", line=dict(color=curve_color(curve))))
        accuracy.add_hline(y=100 * baseline, line_dash="dash", line_color="black",
                           annotation_text=f"no knockout {100 * baseline:.1f}%")
        accuracy.update_layout(xaxis_title="layer (window centre)", yaxis_title="accuracy (%)")
        figures.append(("flow-accuracy", "Accuracy under knockout", accuracy))
    return figures


def _probability_figure(rows):
    figure = go.Figure()
    for label, truth, color in (("true option", True, "#2ca02c"),
                                ("false options", False, "#d62728")):
        layers = _by([r for r in rows if bool(r["is_true"]) == truth], "layer")
        xs = sorted(layers)
        figure.add_trace(go.Scatter(x=xs,
                                    y=[mean(r["probability"] for r in layers[x]) for x in xs],
                                    name=label, mode="lines+markers", line=dict(color=color)))
    figure.update_layout(xaxis_title="layer", yaxis_title="probability at the last position")
    return ("probability-trace", "Answer probability per layer (logit lens)", figure)


def _keyword_figure(rows):
    figure = go.Figure()
    layers = _by(rows, "layer")
    xs = sorted(layers)
    for kind, color in (("spatial", "#1f77b4"), ("temporal", "#ff7f0e")):
        figure.add_trace(go.Scatter(
            x=xs,
            y=[100 * sum(r[kind] for r in layers[x]) / max(1, sum(r["positions"] for r in
                                                                   layers[x])) for x in xs],
            name=f"{kind} keywords", mode="lines+markers", line=dict(color=color)))
    figure.update_layout(xaxis_title="layer", yaxis_title="% of video tokens (top-1 lens token)")
    return ("keyword-frequency", "Spatial vs temporal concepts in video tokens", figure)


def _overlay_figure(rows):
    sample = rows[0]["sample"]
    rows = [r for r in rows if r["sample"] == sample]
    n_layers = max(r["layer"] for r in rows) + 1
    layers = sorted({0, n_layers // 2, n_layers - 1})
    frames = sorted({r["frame"] for r in rows})
    figure = make_subplots(rows=len(layers), cols=len(frames),
                           subplot_titles=[f"layer {l}, frame {t}" for l in layers for t in frames])
    for i, layer in enumerate(layers):
        for j, frame in enumerate(frames):
            cells = [r for r in rows if r["layer"] == layer and r["frame"] == frame]
            height, width = max(r["h"] for r in cells) + 1, max(r["w"] for r in cells) + 1
            z = [[0.0] * width for _ in range(height)]
            text = [[""] * width for _ in range(height)]
            for r in cells:
                z[r["h"]][r["w"]] = r["top_probs"][0]
                text[r["h"]][r["w"]] = r["top_tokens"][0]
            figure.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", showscale=False,
                                        colorscale="Blues"), row=i + 1, col=j + 1)
            figure.update_yaxes(autorange="reversed", row=i + 1, col=j + 1)
    figure.update_layout(height=260 * len(layers))
    return ("lens-overlay", f"Logit-lens top token per video token (sample {sample})", figure)


def _attention_figure(rows):
    sample = rows[0]["sample"]
    rows = [r for r in rows if r["sample"] == sample]
    n_layers = max(r["layer"] for r in rows) + 1
    layer = n_layers // 2
    conditions = sorted({r["condition"] for r in rows})
    frames = sorted({r["frame"] for r in rows})
    figure = make_subplots(rows=len(conditions), cols=len(frames),
                           subplot_titles=[f"{c}, frame {t}" for c in conditions for t in frames])
    for i, condition in enumerate(conditions):
        for j, frame in enumerate(frames):
            cells = [r for r in rows if r["condition"] == condition and r["frame"] == frame
                     and r["layer"] == layer]
            height, width = max(r["h"] for r in cells) + 1, max(r["w"] for r in cells) + 1
            z = [[0.0] * width for _ in range(height)]
            for r in cells:
                z[r["h"]][r["w"]] = r["attention"]
            figure.add_trace(go.Heatmap(z=z, coloraxis="coloraxis"), row=i + 1, col=j + 1)
            figure.update_yaxes(autorange="reversed", row=i + 1, col=j + 1)
    figure.update_layout(height=280 * len(conditions), coloraxis=dict(colorscale="Viridis"))
    return ("attention-maps", f"Attention from the question to the frames, layer {layer} "
                              f"(sample {sample})", figure)


def pathway_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and variant (full / pathway / random): accuracy and retained edges — the
    paper's Table 1 layout."""
    table = []
    for (task, variant), group in sorted(_by(rows, "task", "variant").items()):
        graded = [r for r in group if r["correct"] is not None]
        kept, total = sum(r["kept_edges"] for r in group), sum(r["total_edges"] for r in group)
        table.append({"task": task, "variant": variant, "samples": len(group),
                      "accuracy": 100 * mean(bool(r["correct"]) for r in graded) if graded
                      else None,
                      "retained": kept / total, "kept_edges": kept // len(group),
                      "total_edges": total // len(group)})
    return table


def _table_html(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = ""
    for row in rows:
        cells = []
        for c in columns:
            v = row[c]
            if c == "retained":
                v = f"{100 * v:.1f}%"
            elif isinstance(v, float):
                v = f"{v:.1f}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build ``report.html`` from a run directory's saved tables; returns its path."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    sections: list[tuple[str, str, str]] = []
    flow = read_table(run_dir, "flow")
    figures = _flow_figures(flow) if flow else []
    if rows := read_table(run_dir, "prob"):
        figures.append(_probability_figure(rows))
    if rows := read_table(run_dir, "keywords"):
        figures.append(_keyword_figure(rows))
    if rows := read_table(run_dir, "lens"):
        figures.append(_overlay_figure(rows))
    if rows := read_table(run_dir, "attention"):
        figures.append(_attention_figure(rows))
    for figure_id, title, figure in figures:
        figure.update_layout(template="plotly_white", margin=dict(t=30))
        sections.append((figure_id, title, figure.to_html(full_html=False,
                                                         include_plotlyjs=False,
                                                         div_id=figure_id)))
    if rows := read_table(run_dir, "prune"):
        sections.append(("pathway-table", "Effective pathways vs random pruning",
                         f'<div id="pathway-table">{_table_html(pathway_table(rows))}</div>'))
    if not sections:
        raise ValueError(f"{run_dir} holds no result tables to report")
    body = "\n".join(f'<section><h2>{html.escape(title)}</h2>\n{content}</section>'
                     for _, title, content in sections)
    summary = html.escape(json.dumps({k: config.get(k) for k in ("command", "model", "dataset",
                                                                   "circuit", "window", "seed")},
                                     default=str))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mapflow-tl report</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body>
<h1>mapflow-tl report</h1><p><code>{summary}</code></p>
{body}
</body></html>"""
    path = Path(out) if out is not None else run_dir / "report.html"
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path
