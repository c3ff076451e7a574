"""The result tables' schema: table names, their columns, the sample modes and the pathway names.

Analyses produce rows with exactly these columns, the run writer stores them, the report and
``load_run`` read them. Everything that more than one module needs to agree on is declared here
once (and a test checks that every analysis' rows carry exactly their table's columns).
Plain Python: the command line reads it without importing torch.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["SAMPLE_MODES", "PATHWAY_ORDER", "TABLES", "SAMPLE_COLUMNS", "BASE_COLUMNS",
           "sample_fields", "check_row"]

#: Which samples a knockout analysis uses: those the model answers correctly (the paper's
#: default), the wrong ones, or all.
SAMPLE_MODES = ("correct", "wrong", "all")

#: The paper's pathways in a fixed order: a pathway keeps its colour in every figure.
PATHWAY_ORDER = (
    "cross-frame", "video → question", "video → last", "question → last", "last → last",
    "non-option question → last", "true option → last", "false options → last",
    "video → non-option question", "non-option question → true option", "video → true option",
)

#: Columns identifying the sample a row belongs to.
SAMPLE_COLUMNS = ("sample", "task")

#: The clean run's answer, repeated on every knockout row so a row reads on its own.
BASE_COLUMNS = ("base_token", "base_p_pred", "base_p_true", "base_correct", "base_option")

#: Table name → its columns, in order.
TABLES: dict[str, tuple[str, ...]] = {
    # row_counts: the sample's completion marker, JSON text {"table" or "table/circuit": rows}
    # that --resume checks the tables against (mapflow_tl.runs.RunWriter.verified).
    "samples": SAMPLE_COLUMNS + BASE_COLUMNS + ("selected", "row_counts"),
    "flow": SAMPLE_COLUMNS + ("circuit", "curve", "layer", "layers", "k", "style")
    + BASE_COLUMNS + ("p_pred", "p_true", "change_pred", "change_true", "token", "option",
                      "correct", "edges"),
    # Head-resolved knockout (analyses.head_sweep): one row per curve × window centre × head;
    # the curve's edges are blocked in that one head only, in ``layers``.
    "heads": SAMPLE_COLUMNS + ("circuit", "curve", "layer", "layers", "head") + BASE_COLUMNS
    + ("p_pred", "p_true", "change_pred", "change_true", "token", "correct"),
    "prob": SAMPLE_COLUMNS + ("layer", "option", "token", "is_true", "probability", "p_pred",
                              "top_ids", "top_tokens", "top_probs"),
    "lens": SAMPLE_COLUMNS + ("layer", "position", "frame", "h", "w", "top_ids", "top_tokens",
                              "top_probs"),
    "keywords": ("layer", "spatial", "temporal", "positions"),
    "keyword_counts": ("group", "keyword", "words", "layer", "count"),
    "keyword_bins": ("group", "keyword", "bin", "first_layer", "last_layer", "count"),
    "prune": SAMPLE_COLUMNS + ("circuit", "variant", "seed", "baseline", "token", "correct",
                               "p_true", "kept_edges", "total_edges", "retained"),
    "attention": SAMPLE_COLUMNS + ("query", "condition", "layer", "position", "frame", "h",
                                   "w", "attention"),
    "crossframe": SAMPLE_COLUMNS + ("model", "condition", "layers", "token", "correct"),
    # One row per token frame of a sample: its thumbnail (``image``, a data: URI) and token grid,
    # drawn under the lens and attention grids of the report (mapflow_tl.results documents it).
    "frames": SAMPLE_COLUMNS + ("frame", "source_frame", "grid_h", "grid_w", "coords", "width",
                                "height", "image"),
    # Activation patching (mapflow_tl.patching): one row per segment [position] × layer [× head];
    # method "patch" (a real patch) or "attribution" (its gradient estimate); source: the sample
    # patched from; *_diff: logit[source_token] − logit[target_token] at the last position;
    # score: (patched − target) / (source − target), None when source and target are equal.
    "patch": SAMPLE_COLUMNS + ("source", "method", "activation", "segment", "position", "layer",
                               "head", "positions", "target_token", "source_token",
                               "target_diff", "source_diff", "patched_diff", "score"),
    # Pathway discovery (mapflow_tl.discovery): the trade-off curve, one row per variant
    # (method full / search / hand / random) and seed on a split ("eval": held out; "search":
    # the samples the search chose on), accuracy in %, edges summed over layers and samples.
    "discover": ("method", "step", "label", "seed", "split", "samples", "correct", "accuracy",
                 "kept_edges", "total_edges", "retained"),
    # The search's accepted steps (open_layers: JSON {edge type: [0-based layers]}); cost so far
    # in evaluations (pathway × sample) and forward equivalents (recomputed cells).
    "discover_path": ("search", "step", "edge_type", "change", "open_layers", "search_accuracy",
                      "evaluations", "forwards", "complete"),
    # Per-sample adaptive pathways against the per-task one: one row per sample × type × layer.
    "discover_samples": SAMPLE_COLUMNS + ("edge_type", "layer", "task_open", "sample_open",
                                          "sample_retained", "evaluations", "complete"),
    # stage: "load" (an entry the loader left out) or "prepare" (a sample that could not be
    # prepared); index: the entry in its annotation file; file: the file at fault.
    "skipped": ("sample", "task", "file", "index", "field", "reason", "stage"),
}


def sample_fields(x: Any) -> dict[str, Any]:
    """The sample columns of a row about prepared sample ``x`` (its id and task)."""
    meta = getattr(x, "meta", {}) or {}
    return {"sample": meta.get("id", ""), "task": meta.get("task", "")}


def check_row(table: str, row: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the columns when ``row`` does not have exactly the columns of
    ``table``."""
    expected = TABLES[table]
    if tuple(row) != expected and set(row) != set(expected):
        missing = [c for c in expected if c not in row]
        extra = [c for c in row if c not in expected]
        raise ValueError(f"a {table!r} row has columns missing {missing} and extra {extra}; "
                         f"declare them in mapflow_tl/schema.py")
