"""Analysis commands: flow, prob, lens, prune, attention, crossframe, patch, diagnose, report,
circuits.

Each analysis command is a per-sample step over an :class:`~mapflow_tl.cli.run.AnalysisRun`,
which owns loading, resuming, progress and writing; the step calls one function of
:mod:`mapflow_tl.analyses`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..layers import (WINDOW_STYLES, covers_every_layer, default_window_size,
                      early_to_middle_layers, integration_layers, layer_range, window_rule)
from ..schema import SAMPLE_MODES
from .run import AnalysisRun, add_run_arguments, circuit_config, positive_int

__all__ = ["register"]


def _definitions(**changes) -> dict:
    """What a command computes, recorded in run.json's ``definitions``: the defaults
    (:data:`mapflow_tl.metrics.DEFINITIONS`, the official code's) with the command's choices."""
    from ..metrics import DEFINITIONS

    return {**DEFINITIONS, **changes}


def _sweep_check(args: argparse.Namespace, definitions: dict | None = None):
    """A check of ``--sweep-range`` and ``--window`` against the loaded model's depth; records
    the window size and how it was chosen in ``definitions`` (run.json), which only the loaded
    model's depth decides."""
    def check(vlm) -> None:
        n_layers = vlm.n_layers
        if definitions is not None:
            definitions["window"] = window_rule(n_layers, args.window)
        if args.window is not None and args.style == "center" \
                and covers_every_layer(args.window, n_layers):
            raise InputError(f"--window {args.window} covers all {n_layers} layers of this model, "
                             f"so every window centre knocks out the same layers and the flow "
                             f"curves are flat; use --window {default_window_size(n_layers)} "
                             f"(the default at this depth) or leave it out")
        if args.sweep_range is not None:
            first, stop = args.sweep_range
            if not 0 <= first < stop <= n_layers:
                raise InputError(f"--sweep-range {first} {stop}: window centres run from START "
                                 f"to END-1 (0-based) and must lie in [0, {n_layers}) of this "
                                 f"{n_layers}-layer model, with START < END")
    return check


def _selected(run: AnalysisRun, table: str | tuple[str, ...], mode: str, correctness: str):
    """This rank's prepared samples with their clean prediction, for those ``mode`` selects;
    every sample gets its ``samples`` row (the completion marker, written after its rows), so
    accuracies can count all evaluated samples."""
    for chunk in _selected_chunks(run, table, mode, correctness, 1):
        yield chunk[0]


def _selected_chunks(run: AnalysisRun, table: str | tuple[str, ...], mode: str, correctness: str,
                     size: int):
    """:func:`_selected` in lists of up to ``size`` selected samples, for analyses that compute
    several samples together. The ``samples`` rows (completion markers, with the number of rows
    each sample got in ``table``) of a list's samples are written when the next list is asked
    for, i.e. after the caller wrote their rows: an interrupted run redoes at most the list it
    was computing, and a resume redoes every sample whose rows are no longer all there."""
    from .. import analyses

    done = run.done((table,) if isinstance(table, str) else table)
    pending: list = []

    def hand_over():
        yield list(pending)
        run.mark_all_done([(x, base, True) for x, base in pending])
        pending.clear()

    for x in run.prepared("samples", done):
        base = analyses.base_prediction(run.vlm, x, correctness=correctness)
        if analyses.select(base, mode):
            pending.append((x, base))
            if len(pending) == size:
                yield from hand_over()
        else:
            run.mark_done(x, base, selected=False)
    if pending:
        yield from hand_over()


def _flow(args: argparse.Namespace) -> int:
    from .. import analyses
    from ..circuits import PAPER_FLOW_CIRCUITS, load_circuit
    from ..runs import read_table

    if args.open_ended:
        return _open_ended_flow(args)
    _refuse_open_ended_options(args)
    circuits = [load_circuit(name, args.circuit_dir or ())
                for name in (args.circuit or PAPER_FLOW_CIRCUITS)]
    definitions = _definitions(correct=args.correctness, accuracy=args.accuracy,
                               sample_mode=args.mode)
    run = AnalysisRun(args, "flow", config={"definitions": definitions,
                                            **circuit_config(circuits)},
                      check=_sweep_check(args, definitions), circuits=circuits)
    vlm, writer = run.vlm, run.writer
    k = args.window or default_window_size(vlm.n_layers)
    centers = None if args.sweep_range is None else range(*args.sweep_range)
    for chunk in _selected_chunks(run, "flow", args.mode, args.correctness, args.sample_batch):
        for rows in analyses.flow_sweeps(vlm, [x for x, _ in chunk], circuits, k=k,
                                         style=args.style, centers=centers, method=args.method,
                                         bases=[base for _, base in chunk],
                                         correctness=args.correctness):
            writer.write("flow", rows)
    out = run.finish()
    if run.world.is_main:
        # "temporal keywords as checkpoints": derived whenever the vq-to-true-opt curves ran
        checkpoints = analyses.checkpoint_shares(read_table(out, "flow"))
        if checkpoints:
            run.write_derived(out, {"checkpoints": checkpoints})
        samples = read_table(out, "samples")
        selected = sum(bool(r["selected"]) for r in samples)
        graded = [r for r in samples if r.get("base_correct") is not None]
        accuracy = (f", base accuracy {100 * analyses.base_accuracy(graded):.1f}% "
                    f"({len(graded)} samples)" if graded else "")
        print(f"flow: {selected}/{len(run.order)} samples in mode {args.mode!r}, window "
              f"k={k}{accuracy}")
    return 0


#: ``flow --open-ended`` options and their defaults (left out of a multiple-choice run).
_OPEN_ENDED_OPTIONS = {"anchors": "content", "anchor_words": None, "n_anchors": 3,
                       "max_new_tokens": 256, "question_prefix": None, "answer_prompt": None,
                       "knockout_generation": 0}


def _refuse_open_ended_options(args: argparse.Namespace) -> None:
    """A multiple-choice flow given an open-ended option is refused in one line (the option
    would silently do nothing); the options stay out of its run.json."""
    given = [name for name, default in _OPEN_ENDED_OPTIONS.items()
             if getattr(args, name) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(f"{flags} apply to open-ended flows only; add --open-ended")
    for name in (*_OPEN_ENDED_OPTIONS, "open_ended"):
        delattr(args, name)


def _open_ended_flow(args: argparse.Namespace) -> int:
    """``flow --open-ended``: information flow into the model's own answer
    (:func:`mapflow_tl.analyses.open_ended_flow`) through the same run orchestration as
    ``flow``: each sample is asked without its options, answers greedily, and the flow into its
    anchor words is swept; ``samples`` marks the ones traced (enough anchors), ``answers`` holds
    every answer, ``open_ended`` the rows."""
    from .. import analyses
    from ..circuits import load_circuit

    if args.mode != "correct":
        raise InputError("--mode selects by the answer's correctness, which an open-ended "
                         "answer does not have; leave it out with --open-ended (samples are "
                         "traced when their answer has enough anchors, as officially)")
    if args.accuracy != "all-samples" or args.correctness != "official":
        raise InputError("--accuracy and --correctness grade answer letters; an open-ended "
                         "flow has none: leave them out with --open-ended")
    # they select and grade nothing here: kept out of run.json
    del args.mode, args.accuracy, args.correctness
    if args.anchors == "words" and not args.anchor_words:
        raise InputError("--anchors words needs --anchor-words WORD [WORD ...]")
    if args.anchor_words and args.anchors != "words":
        raise InputError("--anchor-words is read with --anchors words")
    if args.anchors == "verbs":   # spaCy and its model, before anything is written
        from ..anchors import spacy_pipeline

        spacy_pipeline()
    if args.knockout_generation < 0:
        raise InputError(f"--knockout-generation {args.knockout_generation}: give a number of "
                         f"tokens, or 0 for off")
    circuits = [load_circuit(name, args.circuit_dir or ())
                for name in (args.circuit or ("open-ended",))]

    def check_sample(vlm, x) -> None:
        # the circuits read an answer's spans: build them on this prompt with a stand-in
        # three-token answer (one earlier anchor) before anything is written
        n = x.n_positions
        segments = x.segments.with_response(3, anchors=[("anchor_1", n, n + 1)])
        for circuit in circuits:
            circuit.build(segments, vlm.n_layers)

    definitions = _definitions(sample_mode=f"open-ended: answers with at least "
                                           f"{args.n_anchors} anchors",
                               anchors=args.anchors)
    run = AnalysisRun(args, "flow", config={"definitions": definitions,
                                            **circuit_config(circuits)},
                      check=_sweep_check(args, definitions), check_sample=check_sample,
                      sample_transform=lambda sample: analyses.open_ended_sample(
                          sample, args.question_prefix, args.answer_prompt))
    vlm, writer = run.vlm, run.writer
    k = args.window or default_window_size(vlm.n_layers)
    centers = None if args.sweep_range is None else range(*args.sweep_range)
    done = run.done(("open_ended", "answers"))
    for x in run.prepared("samples", done):
        result = analyses.open_ended_flow(
            vlm, x, circuits, anchors=args.anchors, words=args.anchor_words,
            n_anchors=args.n_anchors, max_new_tokens=args.max_new_tokens,
            k=k, style=args.style, centers=centers,
            method=args.method, knockout_generation=args.knockout_generation)
        writer.write("answers", [result["answer"]])
        writer.write("open_ended", result["rows"])
        run.mark_done(x, result["base"], selected=result["selected"])
    out = run.finish()
    if run.world.is_main:
        from ..runs import read_table

        samples = read_table(out, "samples")
        traced = sum(bool(r["selected"]) for r in samples)
        print(f"flow --open-ended: {traced}/{len(run.order)} answers traced (at least "
              f"{args.n_anchors} {args.anchors} anchors), window k={k}")
    return 0


def _heads(args: argparse.Namespace) -> int:
    """Head-resolved knockout maps (:func:`mapflow_tl.analyses.head_sweeps`), through the same
    run orchestration and sample selection as ``flow``."""
    from .. import analyses
    from ..circuits import PAPER_FLOW_CIRCUITS, load_circuit

    circuits = [load_circuit(name, args.circuit_dir or ())
                for name in (args.circuit or PAPER_FLOW_CIRCUITS)]
    definitions = _definitions(correct=args.correctness, sample_mode=args.mode)
    sweep_check = _sweep_check(args, definitions)

    def check(vlm) -> None:
        sweep_check(vlm)
        n_heads = vlm.backbone.cfg.n_heads
        bad = [h for h in args.heads or () if not 0 <= h < n_heads]
        if bad:
            raise InputError(f"--heads {bad}: this model has {n_heads} attention heads per "
                             f"layer (0-based: 0 … {n_heads - 1}); leave --heads out for all")

    run = AnalysisRun(args, "heads", config={"definitions": definitions,
                                             **circuit_config(circuits)},
                      check=check, circuits=circuits)
    vlm, writer = run.vlm, run.writer
    centers = None if args.sweep_range is None else range(*args.sweep_range)
    for chunk in _selected_chunks(run, "heads", args.mode, args.correctness, args.sample_batch):
        for rows in analyses.head_sweeps(vlm, [x for x, _ in chunk], circuits, k=args.window,
                                         centers=centers, heads=args.heads, method=args.method,
                                         bases=[base for _, base in chunk],
                                         correctness=args.correctness):
            writer.write("heads", rows)
    run.finish()
    if run.world.is_main:
        print(f"heads: window k={args.window}, {vlm.backbone.cfg.n_heads} heads per layer")
    return 0


def _prob(args: argparse.Namespace) -> int:
    from .. import analyses

    definitions = _definitions(correct=args.correctness, sample_mode=args.mode,
                               trace_norm=args.norm, trace_top_k=args.top_k)
    run = AnalysisRun(args, "prob", config={"definitions": definitions})
    for x, base in _selected(run, "prob", args.mode, args.correctness):
        run.writer.write("prob", analyses.probability_trace(run.vlm, x, norm=args.norm,
                                                     top_k=args.top_k, base=base))
    run.finish()
    return 0


def _lens(args: argparse.Namespace) -> int:
    from .. import analyses
    from ..keywords import keyword_lists
    from ..results import frame_thumbnails
    from ..runs import read_table

    spatial, temporal = keyword_lists(args.keywords)
    definitions = _definitions(correct=args.correctness, sample_mode=args.mode,
                               lens_kept=args.top_k, keyword_bin=args.bin_size)
    run = AnalysisRun(args, "lens", config={"definitions": definitions})
    for x, _ in _selected(run, ("lens", "frames"), args.mode, args.correctness):
        rows = analyses.video_lens(run.vlm, x, k=args.top_k)
        # thumbnails only beside rows: a sample whose analysis stops leaves nothing behind
        run.writer.write("frames", frame_thumbnails(x))
        run.writer.write("lens", rows)
    out = run.finish()
    if run.world.is_main:
        rows = read_table(out, "lens")
        tokenizer = run.vlm.tokenizer
        counts = analyses.keyword_counts(rows, spatial, temporal, tokenizer=tokenizer)
        run.write_derived(out, {
            "keywords": analyses.keyword_frequency(rows, spatial, temporal, tokenizer=tokenizer),
            "keyword_counts": counts,
            "keyword_bins": analyses.keyword_bins(counts, size=args.bin_size)})
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .. import analyses
    from ..circuits import load_circuit
    from ..metrics import prune_summary
    from ..runs import read_table

    if args.circuit and len(args.circuit) > 1:
        raise InputError(f"prune compares one pathway circuit with random pruning, got "
                         f"{len(args.circuit)} ({', '.join(args.circuit)}): run prune once per "
                         f"circuit, each with its own --out")
    circuit = load_circuit((args.circuit or ["pathway-synthtv"])[0], args.circuit_dir or ())
    definitions = _definitions(correct=args.correctness, random_baseline=args.random_baseline,
                               random_seeds=list(args.random_seeds))
    ratio = analyses.random_ratio(circuit, args.random_ratio)
    if args.random_baseline == "per-layer-matched":
        definitions["random_ratio"] = "per-layer counts of the pathway"
    elif ratio is None:
        definitions["random_ratio"] = ("each sample's blocked fraction" + (
            "" if args.random_ratio == "per-sample" else f" ({circuit.name} carries no paper "
                                                         f"ratio)"))
    else:
        definitions["random_ratio"] = (f"{ratio} (--random-ratio)" if args.random_ratio
                                       is not None else f"{ratio} (the paper's, {circuit.name})")
    run = AnalysisRun(args, "prune", config={"definitions": definitions,
                                             **circuit_config([circuit])}, circuits=[circuit])
    for x in run.prepared("prune", run.done(("prune",))):
        base = analyses.base_prediction(run.vlm, x, correctness=args.correctness)
        run.writer.write("prune", analyses.prune(run.vlm, x, circuit, seeds=args.random_seeds,
                                          baseline=args.random_baseline,
                                          ratio=args.random_ratio, base=base,
                                          correctness=args.correctness))
        run.mark_done(x, base)
    out = run.finish()
    if run.world.is_main:
        for row in prune_summary(read_table(out, "prune")):
            spread = "" if row["accuracy_sd"] is None else f" ± {row['accuracy_sd']:.1f}"
            accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.1f}{spread}"
            print(f"{row['task']:<24} {row['variant']:<8} accuracy {accuracy}% over "
                  f"{row['samples']} samples, {row['seeds']} seed(s); "
                  f"{100 * row['retained']:.1f}% of edges kept")
    return 0


def _ratio(text: str) -> float | str:
    if text == "per-sample":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or per-sample, got "
                                         f"{text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _add_correctness(parser: argparse.ArgumentParser) -> None:
    from ..metrics import CORRECTNESS

    parser.add_argument("--correctness", default="official", choices=CORRECTNESS,
                        help="official (default): the decoded token equals the bare letter, "
                             "lower-cased in the clean run, case-sensitive under knockout, no "
                             "space stripped; decoded-letter: ignoring case and spaces in both "
                             "runs; token-id: exactly the letter's token")


def _attention(args: argparse.Namespace) -> int:
    from .. import analyses

    from ..results import frame_thumbnails

    queries = args.query or (["question"] if args.view == "per-word" else ["question", "last"])
    definitions = _definitions(attention_queries=queries, attention_view=args.view)
    if args.view == "mean":
        definitions.update(attention_layers="every layer",
                           attention_knockout="cross-frame in the early-to-middle half",
                           attention_scale="attention weight")

    def check_queries(vlm, x) -> None:   # a query the prompt cannot answer, before writing
        for query in queries:
            analyses.attention_queries(vlm, x, query)

    run = AnalysisRun(args, "attention", config={"definitions": definitions},
                      check_sample=check_queries)
    for x in run.prepared("attention", run.done(("attention", "frames"))):
        rows = [row for query in queries
                for row in analyses.attention_to_frames(run.vlm, x, query, view=args.view)]
        # thumbnails only beside rows: a sample whose analysis stops leaves nothing behind
        run.writer.write("frames", frame_thumbnails(x))
        run.writer.write("attention", rows)
        run.mark_done(x, analyses.base_prediction(run.vlm, x))
    run.finish()
    return 0


def _layer_list(text: str) -> tuple[int, int]:
    """argparse type for ``--layers FIRST-LAST``: 0-based blocks, inclusive (``0-15``), or the
    paper's 1-based range written as it writes it (``L1-16``, the same blocks). Returned as the
    paper's 1-based bounds, which :func:`~mapflow_tl.layers.layer_range` reads."""
    paper = text[:1] in ("L", "l")
    first, sep, last = (text[1:] if paper else text).replace("–", "-").partition("-")
    try:
        bounds = (int(first), int(last if sep else first))
        if not paper:
            if bounds[0] < 0:
                raise ValueError
            bounds = (bounds[0] + 1, bounds[1] + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, 0-based blocks (e.g. 0-15) or "
                                         f"the paper's L1-16, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected FIRST <= LAST, got {text!r}")
    return bounds


def _crossframe(args: argparse.Namespace) -> int:
    """Finding 1 on any checkpoint: each sample's answer with and without cross-frame attention
    in the early-to-middle layers, for ``--model`` and (optionally) a ``--compare-model`` such as
    the image-only twin; the report draws both side by side per task."""
    import torch

    from .. import analyses
    from ..models import load_videollm
    from ..runs import read_table

    loaded: dict[str, object] = {}

    def check(vlm) -> None:   # the second model loads here: a bad one is refused before writing
        if args.layers is not None:
            layer_range(*args.layers, vlm.n_layers, circuit="--layers")
        if args.compare_model:
            loaded["other"] = load_videollm(args.compare_model, dtype=getattr(torch, args.dtype),
                                            device=vlm.backbone.cfg.device,
                                            backend=vlm.backend)
            if args.layers:
                layer_range(*args.layers, loaded["other"].n_layers, circuit="--layers")

    definitions = _definitions(correct=args.correctness,
                               crossframe_layers="--layers" if args.layers else
                               "early-to-middle half (the paper's L1-16 of 32, scaled)")
    run = AnalysisRun(args, "crossframe", check=check, config={
        "definitions": definitions, "compare_model": args.compare_model,
        "image_model": args.compare_model, "layers": args.layers})
    vlm, writer = run.vlm, run.writer
    layers = (list(layer_range(*args.layers, vlm.n_layers)) if args.layers
              else early_to_middle_layers(vlm.n_layers))
    other = loaded.get("other")
    done = run.done(("crossframe",))
    for sample, x in run.each("samples", done):
        rows = analyses.crossframe_knockout(vlm, x, layers, model=args.model,
                                     correctness=args.correctness)
        if other is not None:
            other_layers = (list(layer_range(*args.layers, other.n_layers)) if args.layers
                            else early_to_middle_layers(other.n_layers))
            rows += analyses.crossframe_knockout(other, other.prepare(sample), other_layers,
                                          model=args.compare_model, correctness=args.correctness)
        writer.write("crossframe", rows)
        run.mark_done(x, analyses.base_prediction(vlm, x, correctness=args.correctness))
    out = run.finish()
    if run.world.is_main:
        rows = read_table(out, "crossframe")
        for model in dict.fromkeys(r["model"] for r in rows):
            for condition in ("base", "cross-frame knockout"):
                graded = [bool(r["correct"]) for r in rows if r["model"] == model
                          and r["condition"] == condition and r["correct"] is not None]
                if graded:
                    print(f"{model}: {condition}: {100 * sum(graded) / len(graded):.1f} % of "
                          f"{len(graded)}")
        # the report draws Finding 1 per task (the closing line says how)
    return 0


def _patch(args: argparse.Namespace) -> int:
    """Frame attribution by activation patching: each frame, the question and the last position
    patched from a counterfactual of the video into the video, layer by layer
    (:func:`mapflow_tl.analyses.counterfactual_patching`), with the attribution-patching estimate
    of the same patches and their rank agreement."""
    from .. import analyses
    from ..patching import rank_agreement
    from ..results import frame_thumbnails
    from ..runs import read_table

    frame = args.frame[0] if len(args.frame) == 1 else tuple(args.frame)
    definitions = _definitions(
        patch_counterfactual=args.counterfactual, patch_frame=args.frame,
        patch_activation=args.activation, patch_align_frames=args.align_frames,
        patch_metric="logit[source answer] - logit[target answer] at the last position; score "
                     "(patched - target) / (source - target)",
        patch_attribution=not args.no_attribution)
    run = AnalysisRun(args, "patch", config={"definitions": definitions})
    for sample, x in run.each("samples", run.done(("patch", "frames"))):
        rows = analyses.counterfactual_patching(
            run.vlm, sample, x, args.counterfactual, activation=args.activation,
            align_frames=args.align_frames, seed=args.seed, frame=frame,
            attribution=not args.no_attribution)
        # the frames the report draws the scores over ("which frames matter"), beside the rows
        run.writer.write("frames", frame_thumbnails(x))
        run.writer.write("patch", rows)
        run.mark_done(x, analyses.base_prediction(run.vlm, x))
    out = run.finish()
    if run.world.is_main:
        rows = read_table(out, "patch")
        real = [r for r in rows if r["method"] == "patch"]
        estimated = [r for r in rows if r["method"] == "attribution"]
        if len(real) >= 3 and estimated:
            print(f"patch: {len(real)} patches; attribution patching ranks them with Spearman "
                  f"rho {rank_agreement(real, estimated):.3f}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    """Failure diagnosis: for every sample the mid-late integration curves (the
    ``vql-to-ql`` flow rows at :func:`~mapflow_tl.layers.integration_layers`), for every wrong
    one the evidence of the paper's two failure mechanisms
    (:func:`mapflow_tl.analyses.diagnosis_evidence`) and its frames; at the end the verdict
    table (:func:`mapflow_tl.analyses.diagnose`), which needs the whole run (the task's most
    frequent answer, the correct samples' mean curve) and is derived again on every resume."""
    from .. import analyses
    from ..circuits import load_circuit
    from ..results import frame_thumbnails
    from ..runs import read_table

    circuit = load_circuit(analyses.INTEGRATION_CIRCUIT)
    definitions = _definitions(
        correct=args.correctness, sample_mode="all",
        diagnose_case1="cross-frame knockout in " + (
            "--layers" if args.layers else "the early-to-middle half (the paper's L1-16 of 32, "
                                           "scaled)") + " gives a correct answer",
        diagnose_case2="the shuffled and the frozen video give the same answer token, or the "
                       "answer is the task's most frequent over the run's samples",
        diagnose_shuffle_seed=args.shuffle_seed, diagnose_frozen_frame=args.frozen_frame,
        diagnose_integration=f"Pearson r of change_pred (video → question, question → last at "
                             f"integration_layers) with the task's correct samples' mean >= "
                             f"{analyses.INTEGRATION_SIMILAR}")
    check_window = _sweep_check(args, definitions)

    def check(vlm) -> None:
        check_window(vlm)
        if args.layers is not None:
            layer_range(*args.layers, vlm.n_layers, circuit="--layers")

    def check_frames(vlm, x) -> None:   # refused on the first sample, before writing
        if x.frames is None:
            raise InputError(f"diagnose: sample {x.meta.get('id', '')!r} carries no frames to "
                             f"shuffle or freeze; this model's adapter does not record them")
        if not 0 <= args.frozen_frame < len(x.frames):
            raise InputError(f"--frozen-frame {args.frozen_frame}: the model sees "
                             f"{len(x.frames)} frames (0 … {len(x.frames) - 1})")

    run = AnalysisRun(args, "diagnose", config={"definitions": definitions,
                                                **circuit_config([circuit])},
                      check=check, circuits=[circuit], check_sample=check_frames)
    vlm, writer = run.vlm, run.writer
    n_layers = vlm.n_layers
    k = args.window or default_window_size(n_layers)
    centers = sorted({l for ls in integration_layers(n_layers).values() for l in ls})
    layers = (list(layer_range(*args.layers, n_layers)) if args.layers
              else early_to_middle_layers(n_layers))
    tables = ("flow", "diagnosis_evidence", "frames")
    for sample, x in run.each("samples", run.done(tables)):
        base = analyses.base_prediction(vlm, x, correctness=args.correctness)
        rows = analyses.flow_sweep(vlm, x, circuit, k=k, centers=centers, method=args.method,
                                   base=base, correctness=args.correctness)
        if base["base_correct"] is False:
            evidence = analyses.diagnosis_evidence(
                vlm, sample, x, base=base, layers=layers, seed=args.shuffle_seed,
                frozen_frame=args.frozen_frame, correctness=args.correctness)
            # the verdict links to the frames the model saw
            writer.write("frames", frame_thumbnails(x))
            writer.write("diagnosis_evidence", [evidence])
        writer.write("flow", rows)
        run.mark_done(x, base)
    out = run.finish()
    if run.world.is_main:
        rows = analyses.diagnose(read_table(out, "samples"),
                                 read_table(out, "diagnosis_evidence"),
                                 read_table(out, "flow"), n_layers)
        run.write_derived(out, {"diagnosis": rows})
        for task in dict.fromkeys(r["task"] for r in rows):
            counts = {v: sum(r["verdict"] == v for r in rows if r["task"] == task)
                      for v in analyses.VERDICTS}
            print(f"diagnose: {task}: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
        if not rows:
            print("diagnose: no sample was answered wrongly: nothing to diagnose")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report import build_report

    path = build_report(args.run_dir, args.output, plotly=args.plotly)
    print(f"report written to {path}")
    return 0


def _circuits(args: argparse.Namespace) -> int:
    from ..circuits import list_circuits

    errors: list[str] = []
    circuits = list_circuits(args.dir or (), errors=errors)
    width = max((len(name) for name in circuits), default=0)
    for name, circuit in sorted(circuits.items()):
        print(f"{name:<{width}}  {circuit.kind:<7}  {circuit.description}")
    if not circuits:
        print("no circuits found")
    for error in errors:         # a broken file is named, and the others are still listed
        print(f"mapflow-tl circuits: skipped: {error}", file=sys.stderr)
    return 1 if errors else 0


_MODE_HELP = ("samples the analysis uses: those answered correctly (the paper's default), the "
              "wrong ones or all (default %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    flow = subparsers.add_parser("flow", help="attention-knockout information-flow sweep")
    add_run_arguments(flow)
    flow.add_argument("--window", type=positive_int, default=None,
                      help="window size k (default: the official 9 on models with >= 18 "
                           "layers; below, the paper's 9 of 32 scaled to the depth, odd: 3 on "
                           "SynthTV's 8)")
    flow.add_argument("--style", default="center", choices=WINDOW_STYLES)
    flow.add_argument("--mode", default="correct", choices=SAMPLE_MODES,
                      help=_MODE_HELP)
    flow.add_argument("--sweep-range", type=int, nargs=2, default=None, metavar=("START", "END"),
                      help="window centres START … END-1 (0-based, END exclusive, as the "
                           "official --sweep_range; default every layer)")
    flow.add_argument("--accuracy", default="all-samples", choices=("all-samples", "selected"),
                      help="accuracy under knockout over every evaluated sample (official, "
                           "default) or over the selected ones only")
    _add_correctness(flow)
    flow.add_argument("--method", default="fast", choices=("fast", "naive"),
                      help="sweep engine (default %(default)s)")
    flow.add_argument("--sample-batch", type=positive_int, default=8, metavar="N",
                      help="sweep up to N samples together: they share clean forwards and "
                           "layer calls (fewer where memory is short) and their rows are written "
                           "together, so an interrupted run redoes at most N (default "
                           "%(default)s; --open-ended sweeps one answer's anchors together)")
    group = flow.add_argument_group(
        "open-ended answers", "trace the flow into the model's own answer (the official "
        "information_flow_analysis_open_ended.py): each sample is asked without its options, the "
        "model answers greedily, and the probability of each anchor word given the answer before "
        "it is measured under each knockout (default circuit: open-ended)")
    group.add_argument("--open-ended", action="store_true",
                       help="sweep the flow into the generated answer")
    group.add_argument("--anchors", default="content", choices=("content", "words", "verbs"),
                       help="anchor words: first tokens of content words (default), the words "
                            "of --anchor-words, or the verbs spaCy's en_core_web_lg tags "
                            "(official; needs spaCy and that model installed)")
    group.add_argument("--anchor-words", nargs="+", default=None, metavar="WORD",
                       help="the words that are anchors, with --anchors words")
    group.add_argument("--n-anchors", type=positive_int, default=3, metavar="N",
                       help="trace anchors 1 … N of each answer; answers with fewer are not "
                            "traced (official: 3)")
    group.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N",
                       help="longest answer generated (official: 256)")
    group.add_argument("--question-prefix", default=None, metavar="TEXT",
                       help="text before the question (SynthTV's open-ended training prompt: "
                            "'Question: '; default: the dataset's own, none officially)")
    group.add_argument("--answer-prompt", default=None, metavar="TEXT",
                       help="text the assistant's turn starts with, before the answer "
                            "(SynthTV: 'Best option:('; default: the dataset's own, none "
                            "officially)")
    group.add_argument("--knockout-generation", type=int, default=0, metavar="N",
                       help="also generate N tokens with each knockout on and record the text "
                            "(the official variant, 100 tokens; one generation per window: "
                            "slow; default 0: off)")
    flow.set_defaults(handler=_flow)

    heads = subparsers.add_parser(
        "heads", help="head-resolved knockout: a layer × head map of each pathway")
    add_run_arguments(heads)
    heads.add_argument("--window", type=positive_int, default=1,
                       help="window size k: each head's knockout spans k layers centred on the "
                            "map's layer (default %(default)s: the layer alone)")
    heads.add_argument("--heads", type=int, nargs="+", default=None, metavar="H",
                       help="0-based heads to map (default: every head)")
    heads.add_argument("--mode", default="correct", choices=SAMPLE_MODES, help=_MODE_HELP)
    heads.add_argument("--sweep-range", type=int, nargs=2, default=None,
                       metavar=("START", "END"),
                       help="layers START … END-1 (0-based, END exclusive; default every layer)")
    _add_correctness(heads)
    heads.add_argument("--method", default="fast", choices=("fast", "naive"),
                       help="sweep engine (default %(default)s)")
    heads.add_argument("--sample-batch", type=positive_int, default=8, metavar="N",
                       help="sweep up to N samples together (default %(default)s)")
    heads.set_defaults(handler=_heads, style="center")

    prob = subparsers.add_parser("prob", help="answer-probability tracing (logit lens, last "
                                              "position)")
    add_run_arguments(prob, circuit=False)
    prob.add_argument("--mode", default="correct", choices=SAMPLE_MODES,
                      help=_MODE_HELP)
    prob.add_argument("--norm", action="store_true",
                      help="apply the final norm at intermediate layers too (official: off)")
    prob.add_argument("--top-k", type=positive_int, default=10,
                      help="top tokens recorded per layer (default %(default)s)")
    _add_correctness(prob)
    prob.set_defaults(handler=_prob)

    lens = subparsers.add_parser("lens", help="logit lens on video tokens, keyword frequency")
    add_run_arguments(lens, circuit=False)
    lens.add_argument("--mode", default="correct", choices=SAMPLE_MODES,
                      help=_MODE_HELP)
    lens.add_argument("--top-k", type=positive_int, default=5,
                      help="lens tokens kept per position (default %(default)s; top-1 counted)")
    lens.add_argument("--keywords", default="synthtv",
                      help="action-sequence (the paper's lists), synthtv (default) or a JSON "
                           'file {"spatial": [...], "temporal": [...]}')
    lens.add_argument("--bin-size", type=positive_int, default=5,
                      help="layers per keyword bin (default %(default)s)")
    _add_correctness(lens)
    lens.set_defaults(handler=_lens)

    prune = subparsers.add_parser("prune", help="effective-pathway pruning vs random pruning")
    add_run_arguments(prune)
    prune.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2],
                       metavar="SEED", help="one random baseline per seed (default 0 1 2)")
    prune.add_argument("--random-baseline", default="official-uniform",
                       choices=("official-uniform", "per-layer-matched"),
                       help="official-uniform: int(ratio·n(n+1)/2) edges in every layer "
                            "(default); per-layer-matched: as many per layer as the pathway")
    prune.add_argument("--random-ratio", type=_ratio, default=None,
                       help="official-uniform's ratio: a number in [0, 1], or per-sample (each "
                            "sample's own blocked fraction); default: the paper's ratio the "
                            "circuit carries (0.58 / 0.63 / 0.6 / 0.42), per-sample for a "
                            "circuit without one")
    _add_correctness(prune)
    prune.set_defaults(handler=_prune)

    attention = subparsers.add_parser("attention", help="attention from the question to the "
                                                        "frames, baseline vs cross-frame knockout")
    add_run_arguments(attention, circuit=False)
    attention.add_argument("--view", default="per-word", choices=("per-word", "mean"),
                           help="per-word (official, default): a map per query token, layers "
                                "11-20 of 32 scaled to the depth, log10(5e-5 + a), cross-frame "
                                "knockout in every layer; mean: the mean over the query "
                                "positions, every layer, knockout in the early-to-middle half")
    attention.add_argument("--query", action="append", default=None,
                           help="where attention is read from: question, last, word:WORD (a "
                                "question word) — repeatable (default: question; with --view "
                                "mean, question and last)")
    attention.set_defaults(handler=_attention)

    crossframe = subparsers.add_parser(
        "crossframe", help="Finding 1: accuracy with and without cross-frame attention in the "
                           "early-to-middle layers, for a model and optionally its image-only twin")
    add_run_arguments(crossframe, circuit=False)
    crossframe.add_argument("--compare-model", default=None,
                            help="a second model run on the same samples, e.g. the image-only "
                                 "twin (drawn beside the first in the report)")
    crossframe.add_argument("--layers", type=_layer_list, default=None, metavar="FIRST-LAST",
                            help="knocked-out blocks, 0-based and inclusive (0-15), or the "
                                 "paper's 1-based range as L1-16 (default: the first half, the "
                                 "paper's L1-16 of 32)")
    _add_correctness(crossframe)
    crossframe.set_defaults(handler=_crossframe)

    patch = subparsers.add_parser(
        "patch", help="frame attribution: activation patching from a counterfactual video "
                      "(reversed, shuffled, ...) into the video, per frame and layer, with "
                      "attribution patching beside it")
    add_run_arguments(patch, circuit=False)
    patch.add_argument("--counterfactual", default="reverse",
                       choices=("reverse", "shuffle", "freeze", "drop", "duplicate", "swap"),
                       help="the frame edit the source run sees (default %(default)s; shuffle "
                            "is seeded with --seed)")
    patch.add_argument("--frame", type=int, nargs="+", default=[0], metavar="T",
                       help="the frame freeze, drop and duplicate act on; two frames for swap "
                            "(default 0)")
    patch.add_argument("--activation", default="resid_pre",
                       choices=("resid_pre", "attn_out", "mlp_out", "z"),
                       help="what is patched: the residual stream entering a block (default), "
                            "the attention or MLP output, or each head's z")
    patch.add_argument("--align-frames", default="slot", choices=("slot", "content"),
                       help="slot (default): frame t of the edit into frame t; content: into the "
                            "frame showing the same image")
    patch.add_argument("--no-attribution", action="store_true",
                       help="skip the attribution-patching estimate")
    patch.set_defaults(handler=_patch)

    diagnose = subparsers.add_parser(
        "diagnose", help="failure diagnosis: a verdict per wrongly answered sample (Case 1: "
                         "cross-frame interaction misled it; Case 2: a static answer) with the "
                         "evidence behind it")
    add_run_arguments(diagnose, circuit=False)
    diagnose.add_argument("--layers", type=_layer_list, default=None, metavar="FIRST-LAST",
                          help="blocks of the Case-1 cross-frame knockout, 0-based and inclusive "
                               "(0-15) or the paper's L1-16 (default: the early-to-middle half)")
    diagnose.add_argument("--shuffle-seed", type=int, default=0,
                          help="seed of the frame shuffle (default %(default)s)")
    diagnose.add_argument("--frozen-frame", type=int, default=0, metavar="T",
                          help="the frame the frozen video repeats (default %(default)s: the "
                               "first)")
    diagnose.add_argument("--window", type=positive_int, default=None,
                          help="window size k of the integration curves (as flow's: the "
                               "official 9, or the paper's 9 of 32 scaled below 18 layers)")
    _add_correctness(diagnose)
    diagnose.add_argument("--method", default="fast", choices=("fast", "naive"),
                          help="sweep engine (default %(default)s)")
    diagnose.set_defaults(handler=_diagnose, style="center", sweep_range=None)

    report = subparsers.add_parser("report", help="build report.html from a run directory")
    report.add_argument("run_dir")
    report.add_argument("--output", default=None,
                        help="an .html file (default: RUN_DIR/report.html); never a run's table "
                             "or a file that is not a mapflow-tl report")
    report.add_argument("--plotly", default="inline", metavar="inline|cdn|PATH",
                        help="how the page gets plotly.js: inline (default: embedded, ~4.8 MB, "
                             "offline), cdn (linked from cdn.plot.ly), or PATH to a .js file "
                             "(written there if missing, linked relative to the report)")
    report.set_defaults(handler=_report)

    circuits = subparsers.add_parser("circuits", help="list the available circuits")
    circuits.add_argument("--dir", action="append", default=None,
                          help="extra folder of circuit files")
    circuits.set_defaults(handler=_circuits)
