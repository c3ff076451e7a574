"""The paper's knockout metrics: relative change, correctness, accuracy, the pruning summary, and
the row-level failure diagnosis (verdicts, integration similarity, checkpoint shares).

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
from typing import Any, Iterable, Mapping, Sequence

from .errors import InputError
from .layers import integration_layers

__all__ = ["relative_change", "is_correct", "official_correct", "CORRECTNESS",
           "ACCURACY_OVER", "DEFINITIONS",
           "base_accuracy", "accuracy_by_layer", "prune_summary", "open_answer_match",
           "eval_summary", "VERDICTS", "INTEGRATION_CIRCUIT", "INTEGRATION_SIMILAR",
           "CHECKPOINT_CURVES", "integration_profiles", "diagnose", "checkpoint_shares"]

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


# ----------------------------------------------------------------------------- failure diagnosis
#: The verdict of a wrong sample (Map the Flow's failure analysis): Case 1, spurious cross-frame
#: interaction misled the video representation; Case 2, the model fell back to a static answer.
VERDICTS = ("Case 1", "Case 2", "both", "neither")

#: The circuit whose mid-late curves :func:`integration_profiles` reads.
INTEGRATION_CIRCUIT = "vql-to-ql"

#: A wrong sample's integration path "looks like the correct samples'" when the Pearson
#: correlation of its mid-late knockout profile with theirs reaches this (Cohen's "large").
INTEGRATION_SIMILAR = 0.5


def integration_profiles(flow: Iterable[dict[str, Any]], n_layers: int
                         ) -> dict[str, list[float | None]]:
    """Each sample's mid-late integration profile from ``flow`` rows of the
    :data:`INTEGRATION_CIRCUIT`: the relative change of its own predicted answer's probability
    (``change_pred``) with video → question knocked out at the window centres of
    :func:`~mapflow_tl.layers.integration_layers` ``["video → question"]``, followed by
    question → last at ``["question → last"]`` — how much each mid-late layer of the two
    integration paths carries the answer the model gave. Samples lacking a centre get None
    there."""
    windows = integration_layers(n_layers)
    values: dict[str, dict[tuple[str, int], float | None]] = {}
    for row in flow:
        if row.get("circuit") == INTEGRATION_CIRCUIT and row.get("curve") in windows:
            values.setdefault(row["sample"], {})[(row["curve"], row["layer"])] = \
                row["change_pred"]
    return {sample: [cells.get((curve, layer)) for curve, layers in windows.items()
                     for layer in layers]
            for sample, cells in values.items()}


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson's r, None when either vector is constant (r undefined)."""
    n = len(a)
    mean_a, mean_b = sum(a) / n, sum(b) / n
    da, db = [v - mean_a for v in a], [v - mean_b for v in b]
    norm = (sum(v * v for v in da) * sum(v * v for v in db)) ** 0.5
    return None if norm == 0 else sum(p * q for p, q in zip(da, db)) / norm


def _task_modes(samples: Sequence[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """Per task: the answer (clean predicted token) the model gives most often over the run's
    evaluated samples of that task, ties to the smallest token id, and its share."""
    counts: dict[str, dict[int, int]] = {}
    for row in samples:
        per_task = counts.setdefault(row["task"], {})
        per_task[row["base_token"]] = per_task.get(row["base_token"], 0) + 1
    return {task: (min(c, key=lambda t: (-c[t], t)), max(c.values()) / sum(c.values()))
            for task, c in counts.items()}


def diagnose(samples: Iterable[dict[str, Any]], evidence: Iterable[dict[str, Any]],
             flow: Iterable[dict[str, Any]], n_layers: int, *,
             similar: float = INTEGRATION_SIMILAR) -> list[dict[str, Any]]:
    """The failure verdict of every wrongly answered sample (``diagnosis`` table), from a run's
    rows: ``samples`` (every evaluated sample's clean answer), ``evidence``
    (:func:`mapflow_tl.analyses.diagnosis_evidence` of the wrong ones) and ``flow`` (the
    :data:`INTEGRATION_CIRCUIT` rows of correct and wrong samples). Columns:

    - ``case1`` = ``crossframe_correct``: blocking cross-frame attention in the early-to-middle
      layers flips the answer to the truth;
    - ``same_shuffled`` / ``same_frozen``: the shuffled / frozen video gives the same answer
      token; ``same_task_mode``: the answer is the task's most frequent one (``task_mode_token``
      over the run's own evaluated samples of the task, its share ``task_mode_share``);
      ``case2`` = (``same_shuffled`` and ``same_frozen``) or ``same_task_mode``: the answer
      needs neither the frames' order nor their motion, or it is the task's prior;
    - ``verdict``: "both", "Case 1", "Case 2" or "neither" (:data:`VERDICTS`);
    - ``integration_r``: Pearson correlation of the sample's mid-late integration profile
      (:func:`integration_profiles`) with the mean profile of the task's correctly answered
      samples (``reference_samples`` of them), ``integration_distance`` the root-mean-square
      difference (percentage points), ``integration_like_correct`` = r ≥ ``similar`` (None
      where either profile is missing, incomplete or constant). A description beside the
      verdict, not part of it;
    - the tokens decoded (``*_text``, as the evidence rows carry them; ``task_mode_text`` when
      some evidence row of the run decoded that token, else None).

    Rows in the order of ``evidence``."""
    samples = list(samples)
    modes = _task_modes(samples)
    profiles = integration_profiles(flow, n_layers)
    reference: dict[str, list[float] | None] = {}
    counted: dict[str, int] = {}
    for task in modes:
        correct = [profiles[r["sample"]] for r in samples
                   if r["task"] == task and r["base_correct"] is True
                   and r["sample"] in profiles and None not in profiles[r["sample"]]]
        counted[task] = len(correct)
        reference[task] = ([sum(column) / len(correct) for column in zip(*correct)]
                           if correct else None)
    evidence = list(evidence)
    # the decoded tokens the evidence rows carry, to spell the task's most frequent answer
    spelled = {row[f"{name}_token"]: row[f"{name}_text"] for row in evidence
               for name in ("base", "true", "crossframe", "shuffled", "frozen")
               if row.get(f"{name}_text") is not None}
    rows = []
    for row in evidence:
        task = row["task"]
        mode_token, mode_share = modes.get(task, (None, None))
        same_shuffled = row["shuffled_token"] == row["base_token"]
        same_frozen = row["frozen_token"] == row["base_token"]
        same_mode = mode_token == row["base_token"]
        case1 = bool(row["crossframe_correct"])
        case2 = (same_shuffled and same_frozen) or same_mode
        verdict = ("both" if case1 and case2 else "Case 1" if case1 else
                   "Case 2" if case2 else "neither")
        profile, mean = profiles.get(row["sample"]), reference.get(task)
        r = distance = None
        if profile is not None and mean is not None and None not in profile:
            r = _pearson(profile, mean)
            distance = (sum((p - q) ** 2 for p, q in zip(profile, mean)) / len(mean)) ** 0.5
        rows.append({
            "sample": row["sample"], "task": task, "base_token": row["base_token"],
            "true_token": row["true_token"], "crossframe_token": row["crossframe_token"],
            "case1": case1, "shuffled_token": row["shuffled_token"],
            "frozen_token": row["frozen_token"], "task_mode_token": mode_token,
            "task_mode_share": mode_share, "same_shuffled": same_shuffled,
            "same_frozen": same_frozen, "same_task_mode": same_mode, "case2": case2,
            "verdict": verdict, "integration_r": r, "integration_distance": distance,
            "integration_like_correct": None if r is None else r >= similar,
            "reference_samples": counted.get(task, 0),
            **{f"{name}_text": row.get(f"{name}_text")
               for name in ("base", "true", "crossframe", "shuffled", "frozen")},
            "task_mode_text": spelled.get(mode_token)})
    return rows


#: The curves of the ``vq-to-true-opt`` circuit that :func:`checkpoint_shares` reads.
CHECKPOINT_CURVES = {"direct": "video → true option",
                     "to question": "video → non-option question",
                     "question to option": "non-option question → true option"}


def checkpoint_shares(flow: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's "temporal keywords as checkpoints" as a measurement, per task, from the
    ``vq-to-true-opt`` flow rows (``checkpoints`` table). For each of its three curves, the
    *loss* is the largest drop of the true option's probability over the window centres,
    ``max(0, −min_l mean_samples change_true(l))`` in percent (mean over the task's samples at
    each centre); then

    - ``direct_loss`` = loss(video → true option);
    - ``indirect_loss`` = min(loss(video → non-option question), loss(non-option question →
      true option)): a route of two links in series carries no more than its weaker link;
    - ``direct_share`` = direct / (direct + indirect), ``indirect_share`` = 1 − direct_share
      (None when both losses are 0).

    One row per task with all three curves, tasks in order of appearance."""
    sums: dict[str, dict[str, dict[int, list[float]]]] = {}
    samples: dict[str, set] = {}
    wanted = set(CHECKPOINT_CURVES.values())
    for row in flow:
        if row.get("curve") in wanted and row.get("change_true") is not None:
            cell = sums.setdefault(row["task"], {}).setdefault(row["curve"], {})
            cell.setdefault(row["layer"], []).append(row["change_true"])
            samples.setdefault(row["task"], set()).add(row["sample"])
    out = []
    for task, curves in sums.items():
        if set(curves) != wanted:
            continue
        loss = {curve: max(0.0, -min(sum(v) / len(v) for v in by_layer.values()))
                for curve, by_layer in curves.items()}
        direct = loss[CHECKPOINT_CURVES["direct"]]
        indirect = min(loss[CHECKPOINT_CURVES["to question"]],
                       loss[CHECKPOINT_CURVES["question to option"]])
        total = direct + indirect
        out.append({"task": task, "samples": len(samples[task]),
                    "direct_loss": direct,
                    "video_to_question_loss": loss[CHECKPOINT_CURVES["to question"]],
                    "question_to_option_loss": loss[CHECKPOINT_CURVES["question to option"]],
                    "indirect_loss": indirect,
                    "direct_share": direct / total if total else None,
                    "indirect_share": indirect / total if total else None})
    return out


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
