"""``mapflow-tl eval``: the accuracy pass (the official ``--eval_only``), through the one run
orchestration (:class:`~mapflow_tl.cli.run.AnalysisRun`: resume, progress, rows).

Multiple-choice samples are answered by the clean run's letter and graded as the official code
grades them; open-ended samples (TVBench open-ended, VCGBench, or any set with ``--open-ended``)
are answered by greedy generation and their answers written in the format the benchmark's scorer
reads (:data:`SCORER_FORMATS`), beside the ``eval`` table. The accuracy per task is printed and
drawn by ``mapflow-tl report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from .run import AnalysisRun, add_run_arguments, positive_int

__all__ = ["register", "SCORER_FOLDER", "scorer_files"]

#: The folder of a run that holds the generated answers in the benchmarks' scorer formats.
SCORER_FOLDER = "scorer"


def _as_open_ended(sample: Any, *, open_ended: bool, answer_prompt: str | None,
                   question_prefix: str | None) -> Any:
    """The sample as ``eval`` asks it. A multiple-choice sample stays as it is unless
    ``open_ended``: then it is asked without its options, its reference the answer as named
    without options (SynthTV's ``named_answer``) or the true option's text. An open-ended
    question starts with ``question_prefix`` (default: the dataset's own, e.g. TVBench
    open-ended's official "Question: ") and its answer with ``answer_prompt`` (default: the
    dataset's own)."""
    if not getattr(sample, "open_ended", False):
        if not open_ended:
            return sample
        reference = (sample.metadata or {}).get("named_answer", sample.answer)
        sample = dataclasses.replace(sample, options=(), answer_index=None,
                                     reference=str(reference), answer_prompt=None)
    prefix = (sample.metadata or {}).get("question_prefix", "") if question_prefix is None \
        else question_prefix
    return dataclasses.replace(
        sample, question=prefix + sample.question,
        answer_prompt=sample.answer_prompt if answer_prompt is None else answer_prompt)


def _vcgbench_entries(rows: list[dict], samples: dict[str, Any]) -> dict[str, list[dict]]:
    """Video-ChatGPT's scorer input (quantitative_evaluation/evaluate_benchmark_*.py read
    ``--pred_path``): per task file, the annotation entries with the prediction added —
    ``{"Q", "A", "video_name", "pred"}``, consistency ``{"Q1", "Q2", "A", "video_name",
    "pred1", "pred2"}`` (one entry once both phrasings are answered)."""
    files: dict[str, list[dict]] = {}
    pairs: dict[tuple[str, Any], dict[int, str]] = {}
    for row in rows:
        sample = samples.get(row["sample"])
        if sample is None:
            continue
        name = sample.metadata.get("video_name", Path(sample.video).stem)
        if sample.task == "consistency_qa":
            pairs.setdefault((sample.task, sample.entry), {})[sample.metadata["phrasing"]] = \
                row["prediction"]
            continue
        files.setdefault(sample.task, []).append(
            {"Q": sample.question, "A": sample.reference, "video_name": name,
             "pred": row["prediction"]})
    by_entry = {(s.task, s.entry, s.metadata.get("phrasing")): s for s in samples.values()
                if s.task == "consistency_qa"}
    for (task, entry), answers in pairs.items():
        if set(answers) != {1, 2}:
            continue
        first, second = by_entry[(task, entry, 1)], by_entry[(task, entry, 2)]
        files.setdefault(task, []).append(
            {"Q1": first.question, "Q2": second.question, "A": first.reference,
             "video_name": first.metadata.get("video_name", Path(first.video).stem),
             "pred1": answers[1], "pred2": answers[2]})
    return files


def _result_list_entries(rows: list[dict], samples: dict[str, Any]) -> dict[str, list[dict]]:
    """The official Map-the-Flow evaluation's ``result_list`` entries (tasks/eval: ``{"pred",
    "gt", "question", "task_type", "video_path"}``), one file for the run, with the judge-free
    match of each answer (``exact``, ``contains``)."""
    entries = []
    for row in rows:
        sample = samples.get(row["sample"])
        if sample is None:
            continue
        entries.append({"pred": row["prediction"], "gt": row["truth"],
                        "question": sample.question, "task_type": sample.task,
                        "video_path": str(sample.video), "exact": row["exact"],
                        "contains": row["correct"]})
    return {"results": entries} if entries else {}


#: Dataset → how its generated answers are written for its scorer (file stem → entries).
SCORER_FORMATS = {"vcgbench": _vcgbench_entries}


def scorer_files(dataset: str, rows: list[dict], samples: list[Any]) -> dict[str, list[dict]]:
    """The generated answers of an ``eval`` table's open-ended rows in ``dataset``'s scorer
    format: file stem → JSON list (VCGBench: Video-ChatGPT's ``generic_qa`` /
    ``temporal_qa`` / ``consistency_qa`` prediction files; any other set: ``results``, the
    official Map-the-Flow ``result_list`` entries)."""
    by_id = {str(sample.id): sample for sample in samples}
    open_rows = [row for row in rows if row.get("kind") == "open"]
    return SCORER_FORMATS.get(dataset, _result_list_entries)(open_rows, by_id)


def _write_scorer_files(out: Path, files: dict[str, list[dict]]) -> list[str]:
    """Write ``out/scorer/<stem>.json`` atomically and list them in the run's manifest (the one
    write policy, :mod:`mapflow_tl.outputs`); files of an earlier run of ours are replaced."""
    from .. import outputs

    folder = out / SCORER_FOLDER
    names = []
    for stem, entries in files.items():
        folder.mkdir(exist_ok=True)
        path = folder / f"{stem}.json"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, path)
        names.append(f"{SCORER_FOLDER}/{stem}.json")
    if names:
        outputs.record(out, "run", names)
    return names


def print_summary(summary: list[dict], file=None) -> None:
    """The per-task accuracy table ``eval`` prints (to ``file``, default standard output)."""
    file = sys.stdout if file is None else file
    width = max([len(row["task"]) for row in summary] + [4])
    has_exact = any(row["exact"] is not None for row in summary)
    print(f"{'task':<{width}}  samples  accuracy" + ("  exact" if has_exact else ""), file=file)
    for row in summary:
        exact = "" if not has_exact else (
            f"  {row['exact']:5.1f}" if row["exact"] is not None else "      -")
        print(f"{row['task']:<{width}}  {row['samples']:>7}  {row['accuracy']:8.1f}{exact}",
              file=file)


def _eval(args: argparse.Namespace) -> int:
    from .. import analyses
    from ..metrics import DEFINITIONS, eval_summary
    from ..runs import read_table

    definitions = {**DEFINITIONS, "correct": args.correctness,
                   "open_ended_answer": f"greedy, at most {args.max_new_tokens} new tokens",
                   "open_ended_correct": "reference words contained (exact: equal), case, "
                                         "spacing and trailing punctuation ignored"}
    def ask(sample):
        return _as_open_ended(sample, open_ended=args.open_ended,
                              answer_prompt=args.answer_prompt,
                              question_prefix=args.question_prefix)

    run = AnalysisRun(args, "eval", config={"definitions": definitions},
                      sample_transform=ask)
    asked = {str(s.id): ask(s) for s in run.samples}
    references = {key: getattr(s, "reference", None) for key, s in asked.items()}
    for sample, x in run.each("eval", run.done(("eval",))):
        base, row = analyses.evaluate(run.vlm, x, reference=references.get(str(sample.id)),
                                      correctness=args.correctness,
                                      max_new_tokens=args.max_new_tokens)
        run.writer.write("eval", [row])
        run.mark_done(x, base)
    out = run.finish()
    if run.world.is_main:
        rows = read_table(out, "eval")
        summary = eval_summary(rows)
        print_summary(summary)
        samples = list(asked.values()) if not run.world.distributed else []
        if samples:
            written = _write_scorer_files(out, scorer_files(args.dataset, rows, samples))
            if written:
                print(f"eval: generated answers for the scorer in "
                      f"{', '.join(str(out / name) for name in written)}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..metrics import CORRECTNESS

    parser = subparsers.add_parser(
        "eval", help="accuracy per task (the official --eval_only); open-ended answers for "
                     "their scorer",
        description="Answer every sample once, without knockout: multiple-choice accuracy per "
                    "task graded as the official --eval_only does, and for open-ended sets "
                    "(tvbench-oe, vcgbench, or --open-ended) the greedy answers, matched "
                    "against the reference (contains / exact) and written in the format the "
                    "benchmark's scorer reads under OUT/scorer/.")
    add_run_arguments(parser, circuit=False)
    parser.add_argument("--correctness", default="official", choices=CORRECTNESS,
                        help="how a multiple-choice answer is graded (default official: the "
                             "decoded token equals the bare letter, lower-cased)")
    parser.add_argument("--open-ended", action="store_true",
                        help="ask multiple-choice samples without their options; the reference "
                             "is the answer as named without options (SynthTV) or the true "
                             "option's text")
    parser.add_argument("--answer-prompt", default=None, metavar="TEXT",
                        help="start the open-ended answers with TEXT (default: the dataset's "
                             "own, e.g. TVBench open-ended's per-task prompts, else none; "
                             "SynthTV models learnt 'Best option:(')")
    parser.add_argument("--question-prefix", default=None, metavar="TEXT",
                        help="put TEXT before every open-ended question (default: the "
                             "dataset's own: 'Question: ' for tvbench-oe, as the official "
                             "prompt, else none; SynthTV models learnt 'Question: ')")
    parser.add_argument("--max-new-tokens", type=positive_int, default=100,
                        help="longest open-ended answer in tokens (default %(default)s, the "
                             "official)")
    parser.set_defaults(handler=_eval)
