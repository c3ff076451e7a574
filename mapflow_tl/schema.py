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
    # open-ended answers (circuits open-ended, open-ended-response)
    "video → response", "question → response", "response → response", "response → last",
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
    # Open-ended flow (analyses.open_ended_flow): one row per traced anchor × curve × window
    # centre. The answer is teacher-forced up to the anchor (anchor_order: 1 = its first
    # anchor; anchor_position: the anchor's first token in the answer, 0-based); p / base_p:
    # probability of the anchor's token at the position before it under the knockout / clean;
    # change: (p − base_p) / base_p × 100; token: the argmax under the knockout;
    # knockout_response: the answer generated with the knockout on (None unless asked for).
    "open_ended": SAMPLE_COLUMNS + ("circuit", "curve", "layer", "layers", "k", "style",
                                    "anchor_order", "anchor_text", "anchor_position",
                                    "anchor_token", "base_p", "p", "change", "token", "edges",
                                    "knockout_response"),
    # The clean greedy answer of an open-ended run, one row per sample: its token ids, decoded
    # text and the anchors found in it ([{"index", "n_tokens", "text"}]), traced or not.
    "answers": SAMPLE_COLUMNS + ("response", "response_ids", "anchors", "traced"),
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
    # Failure diagnosis (analyses.diagnosis_evidence): one row per wrongly answered sample, the
    # answer under cross-frame knockout in the early-to-middle layers and with the frames shuffled
    # and frozen.
    "diagnosis_evidence": SAMPLE_COLUMNS + (
        "base_token", "base_correct", "true_token", "crossframe_layers", "crossframe_token",
        "crossframe_correct", "shuffle_seed", "shuffled_token", "frozen_frame", "frozen_token",
        "base_text", "true_text", "crossframe_text", "shuffled_text", "frozen_text"),
    # The verdict per wrong sample (analyses.diagnose), derived from the whole run: Case 1 / Case 2
    # / both / neither with the evidence behind it and the integration-path similarity.
    "diagnosis": SAMPLE_COLUMNS + (
        "base_token", "true_token", "crossframe_token", "case1", "shuffled_token",
        "frozen_token", "task_mode_token", "task_mode_share", "same_shuffled", "same_frozen",
        "same_task_mode", "case2", "verdict", "integration_r", "integration_distance",
        "integration_like_correct", "reference_samples", "base_text", "true_text",
        "crossframe_text", "shuffled_text", "frozen_text", "task_mode_text"),
    # "Temporal keywords as checkpoints" (analyses.checkpoint_shares): per task, the direct and
    # the through-the-question losses of the true option's probability from vq-to-true-opt curves.
    "checkpoints": ("task", "samples", "direct_loss", "video_to_question_loss",
                    "question_to_option_loss", "indirect_loss", "direct_share",
                    "indirect_share"),
    # The accuracy pass (analyses.evaluate, `mapflow-tl eval`): one row per sample. kind
    # "choice": prediction = the argmax token decoded, option = the most probable option's
    # letter, truth = the true letter, correct = the official grading; kind "open": prediction =
    # the generated answer, truth = the reference answer, correct = it contains the reference's
    # words, exact = equal to it (None without a reference).
    "eval": SAMPLE_COLUMNS + ("kind", "prediction", "option", "truth", "correct", "exact",
                              "p_pred", "p_true"),
    # Pathway discovery (mapflow_tl.discovery): the trade-off curve, one row per variant
    # (method full / search / hand / random) and seed on a split ("eval": held out; "search":
    # the samples the search chose on), accuracy in %, edges summed over layers and samples.
    "discover": ("method", "step", "label", "seed", "split", "samples", "correct", "accuracy",
                 "kept_edges", "total_edges", "retained"),
    # The search's accepted steps (open_layers: JSON {edge type: [0-based layers]}), written as
    # they are accepted (what --resume goes on from); pass: 0-based pass over the types; cost so
    # far in evaluations (pathway × sample) and forward equivalents (recomputed cells). A search
    # its budget stopped ends with a closing row, complete false, repeating the kept pathway.
    "discover_path": ("search", "step", "pass", "edge_type", "change", "open_layers",
                      "search_accuracy",
                      "evaluations", "forwards", "complete"),
    # The flow curves a search started from (discover --start curves), on the search split:
    # per edge type and window centre, the mean relative change of p(the full model's answer)
    # over the search samples it answers correctly; needed: below -threshold.
    "discover_curves": ("edge_type", "center", "layers", "samples", "relative_change",
                        "needed"),
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
