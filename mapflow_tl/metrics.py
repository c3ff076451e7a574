"""The paper's knockout metrics: relative change, correctness, accuracy, the pruning summary.

Plain Python (no torch import), so the report and the command line can use the same
definitions without loading a model. Definitions (Map the Flow §2, official code
byminji/map-the-flow @566f3ed; docs/paper_parity.md has the file:line of each):

- relative change: ``(p_knockout − p_base) / p_base × 100`` of one token's probability under the
  full-vocabulary softmax at the last position;
- correct (``"official"``, default): the argmax token decoded on its own, compared with the
  true option's bare letter exactly as the official code does — lower-cased in the clean run
  (``decode([argmax]).lower() == letter.lower()``), case-sensitive under knockout
  (``letter == decode([new])``); SentencePiece's ``"▁A"`` decodes to ``"A"`` and counts, a
  byte-level BPE's ``" A"`` keeps its space and does not;
- accuracy under knockout: hits over **all evaluated samples** (those that took part and those
  the sample mode left out), so a knockout without effect gives exactly the base accuracy, which
  is the reference line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, stdev
from typing import Any, Iterable, Mapping

from .errors import InputError

__all__ = ["relative_change", "is_correct", "official_correct", "CORRECTNESS",
           "ACCURACY_OVER", "DEFINITIONS",
           "base_accuracy", "accuracy_by_layer", "prune_summary", "open_answer_match",
           "eval_summary"]

#: How a prediction is graded: the decoded token against the bare letter as the official code
#: compares them ("official": exact string, lower-cased only in the clean run); the decoded
#: token ignoring case and surrounding whitespace in every run ("decoded-letter": one rule for
#: every tokenizer and both runs); or the exact token id of the letter as the prompt continues
#: ("token-id": "▁A" after "(" is wrong).
CORRECTNESS = ("official", "decoded-letter", "token-id")

#: Accuracy's denominator: every evaluated sample (official), or only the samples the sample
#: mode selected (the per-mode view: 100 % without knockout in "correct" mode by construction).
ACCURACY_OVER = ("all-samples", "selected")


#: The definitions the analyses use by default (the official code's, docs/paper_parity.md), as
#: recorded in a run's ``run.json`` under ``definitions``; a command overrides what it changes.
DEFINITIONS: dict[str, object] = {
    "correct": "official",
    "true_token": "letter-after-prompt",
    "softmax": "full-vocabulary, last position",
    "relative_change": "(p_knockout - p_base) / p_base * 100, own base",
    "accuracy": "all-samples",
    "sample_mode": "correct",
    "random_baseline": "official-uniform",
    "random_ratio": "the circuit's paper ratio, else each sample's blocked fraction",
    "random_draw": "fresh per sample: generator keyed by (seed, sample id)",
    "random_region": "query and key >= video start, last token included",
    "trace_read": "block output",
    "trace_matrix": "unembed",
    "trace_norm": False,
    "trace_last_layer": "normed model output",
    "lens_read": "block input (layer 0 = embeddings), last = normed output",
    "lens_matrix": "embed",
    "lens_norm": False,
    "keyword_match": "first sub-token, exact, case-sensitive, top-1",
    "keyword_bin": 5,
    "attention_heads": "mean over heads",
    "attention_view": "per-word",
    "attention_layers": "official 11-20 of 32 (1-based), scaled to the depth",
    "attention_knockout": "cross-frame in every layer",
    "attention_scale": "log10(5e-5 + attention)",
    "crossframe_layers": "early-to-middle half (first n_layers // 2)",
}


def relative_change(*, base, knockout):
    """Relative change of probability in percent (Map the Flow §2, "Metric"):
    ``(knockout − base) / base × 100``. Keyword-only, because the two are easy to swap and the
    swap silently flips signs. Works on floats and on tensors of any shape (elementwise).

    A base probability of exactly 0 has no relative change: a number gives ``None`` (the
    official code divides by a bf16 probability that can underflow to 0.0, bug 14); a tensor,
    which cannot hold None, gives NaN at those elements."""
    if hasattr(base, "where"):  # a tensor: NaN where the base is 0, never ±inf
        return (knockout - base) / base.where(base != 0, float("nan")) * 100.0
    if base == 0:
        return None
    return (knockout - base) / base * 100.0


def official_correct(predicted: str, letter: str, *, knockout: bool) -> bool:
    """The official grading of a decoded prediction against the true option's bare letter
    (byminji/map-the-flow @566f3ed): the clean run compares lower-cased strings
    (information_flow_analysis.py:222, 229), a knockout compares them case-sensitively
    (information_flow_analysis.py:438, effective_pathway_analysis.py:396). No whitespace is
    stripped: decoding one SentencePiece token drops its "▁", so "▁A" counts, while a byte-level
    BPE decodes " A" with its space, which does not. ``knockout`` says which of the two runs
    is graded (the case rules differ there, official bug 1 in docs/paper_parity.md)."""
    if not letter.strip():
        raise InputError(f"the true option's letter is empty ({letter!r}): cannot grade")
    if knockout:
        return predicted == letter
    return predicted.lower() == letter.lower()


def is_correct(predicted: str, letter: str) -> bool:
    """Whether a decoded prediction is the option ``letter`` under ``"decoded-letter"``: equal
    ignoring case and surrounding whitespace, in the clean run and under knockout alike (one
    rule for every tokenizer: Qwen's " A" counts as SentencePiece's "▁A" does; the official
    rule is :func:`official_correct`)."""
    if not letter.strip():
        raise InputError(f"the true option's letter is empty ({letter!r}): cannot grade")
    return predicted.strip().lower() == letter.strip().lower()


def base_accuracy(samples: Iterable[Mapping[str, Any]]) -> float:
    """Base accuracy (fraction) over ``samples`` rows (the ``samples`` table: ``base_correct``),
    every evaluated sample counted; samples without a known answer are left out."""
    graded = [bool(r["base_correct"]) for r in samples if r.get("base_correct") is not None]
    if not graded:
        raise InputError("no sample with a known answer: base accuracy is undefined")
    return sum(graded) / len(graded)


def accuracy_by_layer(
    rows: Iterable[Mapping[str, Any]],
    samples: Iterable[Mapping[str, Any]] | None = None,
    *,
    over: str = "all-samples",
) -> dict[tuple[str, int], float]:
    """Accuracy (fraction) per ``(curve, layer)`` of flow-sweep ``rows``.

    ``over="all-samples"`` (official): knocked-out predictions that are correct, over every
    evaluated sample in ``samples`` (the ``samples`` table, with a known answer), including those
    the sample mode did not select — so, in "correct" mode, a knockout without effect gives the
    base accuracy (:func:`base_accuracy`). ``over="selected"``: over the samples that have rows
    for that (curve, layer) (the per-mode view). Rows and samples should come from one task (or
    one pool) — filter first for per-task curves.
    """
    if over not in ACCURACY_OVER:
        raise InputError(f"accuracy over must be one of {ACCURACY_OVER}, got {over!r}")
    rows = list(rows)
    hits: dict[tuple[str, int], int] = defaultdict(int)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for row in rows:
        if row["correct"] is None:
            continue
        key = (row["curve"], row["layer"])
        hits[key] += bool(row["correct"])
        counts[key] += 1
    if over == "selected":
        return {key: hits[key] / counts[key] for key in counts}
    if samples is None:
        raise InputError("accuracy over all samples needs the samples table (every evaluated "
                         "sample, selected or not); pass samples=, or over='selected'")
    evaluated = {r["sample"] for r in samples if r.get("base_correct") is not None}
    if not evaluated:
        raise InputError("no evaluated sample with a known answer in samples")
    rowless = {r["sample"] for r in rows if r["correct"] is not None} - evaluated
    if rowless:
        raise InputError(f"flow rows of samples missing from the samples table: "
                         f"{sorted(rowless)[:3]}; pass the samples table of the same run")
    return {key: hits[key] / len(evaluated) for key in counts}


def prune_summary(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task and variant of ``prune`` rows: accuracy (%) and retained edges; for the random
    baseline the mean ± sample standard deviation over its seeds (each seed's accuracy over the
    task's samples first), as the paper's Table 1 should be read with several seeds."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["variant"])].append(row)
    table = []
    for (task, variant), group in sorted(groups.items()):
        by_seed: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
        for row in group:
            seed = row.get("seed")
            # rows that went through pandas carry NaN for "no seed" (full model, pathway)
            by_seed[None if isinstance(seed, float) and math.isnan(seed) else seed].append(row)
        accuracies = []
        for seed_rows in by_seed.values():
            graded = [bool(r["correct"]) for r in seed_rows if r["correct"] is not None]
            if graded:
                accuracies.append(100 * sum(graded) / len(graded))
        kept = sum(r["kept_edges"] for r in group)
        total = sum(r["total_edges"] for r in group)
        table.append({
            "task": task, "variant": variant,
            "samples": len({r["sample"] for r in group}), "seeds": len(by_seed),
            "accuracy": mean(accuracies) if accuracies else None,
            "accuracy_sd": stdev(accuracies) if len(accuracies) > 1 else None,
            "retained": kept / total if total else None,
        })
    return table


def _normal_answer(text: str) -> str:
    """An answer as the open-ended match compares it: case folded, runs of whitespace one space,
    surrounding spaces and trailing sentence punctuation dropped."""
    return " ".join(str(text).split()).casefold().rstrip(".!?,;:").strip()


def open_answer_match(prediction: str, reference: str) -> tuple[bool, bool]:
    """``(exact, contains)`` of a generated answer against a short reference answer (a named
    answer: "left", "three", "kitchen to the garden"): equal, and the reference appearing in the
    prediction as whole words, both after :func:`_normal_answer` (case, spacing, trailing
    punctuation ignored). A judge-free score for short named answers; long free-text answers
    (VCGBench) need their benchmark's judge."""
    ref_words, pred_words = _words(reference), _words(prediction)
    if not ref_words:
        return False, False
    exact = _normal_answer(prediction) == _normal_answer(reference)
    n = len(ref_words)
    contains = any(pred_words[i:i + n] == ref_words for i in range(len(pred_words) - n + 1))
    return exact, contains


def _words(text: str) -> list[str]:
    """Case-folded words of ``text``: runs of letters and digits ("hat/cap" → hat, cap)."""
    return "".join(ch if ch.isalnum() else " " for ch in str(text).casefold()).split()


def eval_summary(rows: Iterable[dict]) -> list[dict]:
    """Accuracy per task and over all samples of an ``eval`` table: ``{"task", "samples",
    "accuracy"}`` (% of rows with ``correct``; rows without a grade left out) and, where the
    task has open-ended rows, ``"exact"`` (% exact matches). Tasks in first-appearance order,
    then ``"all"``."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("correct") is not None:
            groups.setdefault(str(row.get("task", "")), []).append(row)
    every = [row for group in groups.values() for row in group]
    summary = []
    for task, group in [*groups.items(), *([("all", every)] if every else [])]:
        entry = {"task": task, "samples": len(group),
                 "accuracy": 100 * sum(bool(r["correct"]) for r in group) / len(group)}
        exact = [bool(r["exact"]) for r in group if r.get("exact") is not None]
        entry["exact"] = 100 * sum(exact) / len(exact) if exact else None
        summary.append(entry)
    return summary
