"""Analysis commands: flow, prob, lens, prune, attention, report, circuits.

Each analysis command is a per-sample step over an :class:`~mapflow_tl.cli.run.AnalysisRun`,
which owns loading, resuming, progress and writing; the step calls one function of
:mod:`mapflow_tl.analyses`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..layers import WINDOW_STYLES
from ..schema import SAMPLE_MODES
from .run import AnalysisRun, add_run_arguments, positive_int

__all__ = ["register"]


def _flow(args: argparse.Namespace) -> int:
    from .. import analyses as A
    from ..circuits import load_circuit
    from ..layers import default_window_size
    from ..runs import read_table
    from ..schema import sample_fields

    circuits = [load_circuit(name) for name in (args.circuit or ["cross-frame", "vql-to-ql"])]
    run = AnalysisRun(args, "flow")
    vlm, writer = run.vlm, run.writer
    k = args.window or default_window_size(vlm.n_layers)
    # A sample is done once its "samples" row exists; its flow rows are written just before it,
    # so flow rows of a sample without one are a crash's leftovers and are dropped.
    done = writer.completed("samples", "sample")
    writer.retain("flow", "sample", done)
    for x in run.prepared("samples", done):
        base = A.base_prediction(vlm, x)
        selected = A.select(base, args.mode)
        if selected:
            writer.write("flow", [row for circuit in circuits for row in A.flow_sweep(
                vlm, x, circuit, k=k, style=args.style, method=args.method, base=base)])
        writer.write("samples", [{**sample_fields(x), **base, "selected": selected}])
    out = run.finish()
    if run.world.is_main:
        selected = sum(bool(r["selected"]) for r in read_table(out, "samples"))
        print(f"flow: {selected}/{len(run.order)} samples in mode {args.mode!r}, window k={k}; "
              f"tables in {out}")
    return 0


def _prob(args: argparse.Namespace) -> int:
    from .. import analyses as A

    run = AnalysisRun(args, "prob")
    for x in run.prepared("prob"):
        run.writer.write("prob", A.probability_trace(run.vlm, x))
    run.finish()
    return 0


def _keywords(path: str | None) -> tuple[list[str], list[str]]:
    if path:
        try:
            words = json.loads(Path(path).read_text())
            return list(words["spatial"]), list(words["temporal"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"--keywords {path}: expected a JSON file "
                             f'{{"spatial": [...], "temporal": [...]}} ({error})') from None
    from ..synthtv import generator as gen

    return list(gen.SPATIAL_WORDS), list(gen.TEMPORAL_WORDS)


def _lens(args: argparse.Namespace) -> int:
    from .. import analyses as A
    from ..runs import RunWriter, read_table

    spatial, temporal = _keywords(args.keywords)
    run = AnalysisRun(args, "lens")
    for x in run.prepared("lens"):
        run.writer.write("lens", A.video_lens(run.vlm, x, k=args.top_k))
    out = run.finish()
    if run.world.is_main:
        (out / "keywords.jsonl").unlink(missing_ok=True)
        keywords = RunWriter(out, run.config, resume=True)
        keywords.write("keywords", A.keyword_frequency(read_table(out, "lens"), spatial,
                                                       temporal))
        keywords.finish()
    return 0


def _prune(args: argparse.Namespace) -> int:
    from .. import analyses as A
    from ..circuits import load_circuit
    from ..report import pathway_table
    from ..runs import read_table

    circuit = load_circuit((args.circuit or ["pathway-synthtv"])[0])
    run = AnalysisRun(args, "prune")
    for x in run.prepared("prune"):
        run.writer.write("prune", A.prune(run.vlm, x, circuit, seed=args.seed))
    out = run.finish()
    if run.world.is_main:
        for row in pathway_table(read_table(out, "prune")):
            print(row)
    return 0


def _attention(args: argparse.Namespace) -> int:
    from .. import analyses as A

    run = AnalysisRun(args, "attention")
    for x in run.prepared("attention"):
        run.writer.write("attention", A.attention_to_frames(run.vlm, x))
    run.finish()
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..report import build_report

    path = build_report(args.run_dir, args.output)
    print(f"report written to {path}")
    return 0


def _circuits(args: argparse.Namespace) -> int:
    from ..circuits import list_circuits

    circuits = list_circuits(args.dir or ())
    width = max((len(name) for name in circuits), default=0)
    for name, circuit in sorted(circuits.items()):
        print(f"{name:<{width}}  {circuit.kind:<7}  {circuit.description}")
    if not circuits:
        print("no circuits found")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    flow = subparsers.add_parser("flow", help="attention-knockout information-flow sweep")
    add_run_arguments(flow)
    flow.add_argument("--window", type=positive_int, default=None,
                      help="window size k (default: the paper's 9 of 32 layers scaled to the "
                           "model's depth, odd)")
    flow.add_argument("--style", default="center", choices=WINDOW_STYLES)
    flow.add_argument("--mode", default="correct", choices=SAMPLE_MODES)
    flow.add_argument("--method", default="fast", choices=("fast", "naive"),
                      help="sweep engine (default %(default)s)")
    flow.set_defaults(handler=_flow)

    prob = subparsers.add_parser("prob", help="answer-probability tracing (logit lens, last "
                                              "position)")
    add_run_arguments(prob, circuit=False)
    prob.set_defaults(handler=_prob)

    lens = subparsers.add_parser("lens", help="logit lens on video tokens, keyword frequency")
    add_run_arguments(lens, circuit=False)
    lens.add_argument("--top-k", type=positive_int, default=5)
    lens.add_argument("--keywords", default=None,
                      help='JSON file {"spatial": [...], "temporal": [...]} (default: SynthTV)')
    lens.set_defaults(handler=_lens)

    prune = subparsers.add_parser("prune", help="effective-pathway pruning vs random pruning")
    add_run_arguments(prune)
    prune.set_defaults(handler=_prune)

    attention = subparsers.add_parser("attention", help="attention from the question to the "
                                                        "frames, baseline vs cross-frame knockout")
    add_run_arguments(attention, circuit=False)
    attention.set_defaults(handler=_attention)

    report = subparsers.add_parser("report", help="build report.html from a run directory")
    report.add_argument("run_dir")
    report.add_argument("--output", default=None, help="default: RUN_DIR/report.html")
    report.set_defaults(handler=_report)

    circuits = subparsers.add_parser("circuits", help="list the available circuits")
    circuits.add_argument("--dir", action="append", default=None,
                          help="extra folder of circuit files")
    circuits.set_defaults(handler=_circuits)
