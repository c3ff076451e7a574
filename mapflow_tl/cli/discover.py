"""``mapflow-tl discover``: search a pathway, write it as a circuit file, draw its trade-off curve.

The command runs through the one orchestration (:class:`~mapflow_tl.cli.run.AnalysisRun`:
loading, the run folder, skipped samples); the search is :func:`mapflow_tl.discovery.discover`.
Unlike the per-sample analyses it is one search over all samples: its accepted steps are
written to ``discover_path`` as they are accepted, and ``--resume`` (same configuration, checked
by run.json) goes on from the last one after checking the table's rows and re-measuring that
step's accuracy (:func:`mapflow_tl.discovery.discover`), to the pathway the uninterrupted search
finds.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from ..errors import InputError
from .run import AnalysisRun, add_run_arguments, circuit_config, positive_int

__all__ = ["register"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value}")
    return value


def _circuit_name(args: argparse.Namespace) -> str:
    if args.name is not None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", args.name):
            raise InputError(f"--name {args.name!r}: a circuit name is lower-case letters, "
                             f"digits, '.', '-' and '_' (e.g. discovered-synthtv)")
        return args.name
    stem = re.sub(r"[^a-z0-9._-]+", "-", str(args.model).rstrip("/").split("/")[-1].lower())
    return f"discovered-{stem.strip('-') or 'model'}"


def _discover(args: argparse.Namespace) -> int:
    import torch

    from .. import analyses, discovery
    from ..circuits import load_circuit
    from ..metrics import DEFINITIONS

    if args.search_fraction <= 0.0:
        raise InputError("--search-fraction must be above 0 so that the search has samples")
    name = _circuit_name(args)
    hands = [load_circuit(c, args.circuit_dir or ()) for c in args.circuit or ()]
    not_pathways = [c.name for c in hands if c.kind != "pathway"]
    if not_pathways:
        raise InputError(f"--circuit {not_pathways}: discover compares pathway circuits "
                         f"(pathway-synthtv, pathway-llava-next-7b, …); these are flow circuits")
    definitions = {**DEFINITIONS, "correct": args.correctness,
                   "search": "greedy shrinking of each edge type's layer range "
                             "(mapflow_tl.discovery)",
                   "search_targets": args.targets, "search_epsilon_points": 100 * args.epsilon,
                   "search_order": args.order or "most edges per layer first",
                   "search_start": args.start,
                   "search_passes": args.passes, "search_budget_evaluations": args.budget,
                   "split_rule": discovery.SPLIT_RULE,
                   "search_fraction": args.search_fraction, "split_seed": args.split_seed,
                   "random_baseline": "official-uniform at each pathway's blocked fraction, "
                                      "drawn per sample and seed",
                   "random_seeds": list(args.random_seeds),
                   "per_sample": args.per_sample,
                   "per_sample_budget_evaluations": args.sample_budget}
    if args.start == "curves":
        definitions.update({
            "search_start_curves": "per edge type, the layer sweep (window centred on each layer) "
                                   "on the search samples the full model answers correctly: mean "
                                   "relative change of p(its answer); start range = hull of the "
                                   "windows below -threshold (mapflow_tl.discovery.curve_ranges)",
            "search_curve_window": args.curve_window or "default for the depth",
            "search_curve_threshold": args.curve_threshold})
    run = AnalysisRun(args, "discover", config={"definitions": definitions,
                                                **circuit_config(hands)}, circuits=hands)
    from ..runs import read_table

    resume_path = None
    if args.resume:
        if read_table(run.writer.out, "discover"):
            raise InputError(f"{args.out} holds a finished discover run (its trade-off curve is "
                             f"written); nothing to resume: rerun it with --overwrite to search "
                             f"again")
        # the accepted steps the interrupted run wrote: checked, then the search goes on
        resume_path = read_table(run.writer.out, "discover_path") or None
    xs, bases = [], []
    for x in run.prepared("samples", set()):
        xs.append(x)
        bases.append(analyses.base_prediction(run.vlm, x, correctness=args.correctness))
    if not xs:
        raise InputError("no sample could be prepared; see skipped.jsonl in --out")
    started, started_cpu = time.perf_counter(), time.process_time()
    found = discovery.discover(
        run.vlm, xs, bases, correctness=args.correctness, targets=args.targets,
        epsilon=args.epsilon, order=args.order, passes=args.passes, budget=args.budget,
        search_fraction=args.search_fraction, split_seed=args.split_seed, hands=hands,
        seeds=args.random_seeds, per_sample=args.per_sample, sample_budget=args.sample_budget,
        method=args.method, start=args.start, curve_window=args.curve_window,
        curve_threshold=args.curve_threshold, resume_path=resume_path,
        record_path=lambda row: run.writer.write("discover_path", [row]),
        progress=lambda line: print(f"discover: {line}", file=sys.stderr, flush=True))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    result, split = found["result"], found["split"]
    writer = run.writer
    for table, rows in found["tables"].items():
        # discover_path was written step by step, as the search accepted them
        if table != "discover_path" and (rows or table != "discover_curves"):
            writer.write(table, rows)
    run.mark_all_done([(x, base, True) for x, base in zip(xs, bases)])

    eval_rows = {(r["method"], r["step"], r["seed"]): r for r in found["tables"]["discover"]
                 if r["split"] == "eval"}
    final_step = result.steps[-1]["step"]
    final = eval_rows.get(("search", final_step, None)) or eval_rows[("full", 0, None)]
    full = eval_rows[("full", 0, None)]
    search_ids = sorted(s for s, where in split.items() if where == "search")
    eval_ids = sorted(s for s, where in split.items() if where == "eval")
    cost = {"evaluations": result.evaluations, "forward_equivalents": result.forwards,
            "complete": result.complete, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "threads": torch.get_num_threads(), "start": result.start}
    if found["curves"]:
        # the curves the start came from are part of what the search cost
        cost.update(curve_evaluations=found["curves"]["evaluations"],
                    curve_forward_equivalents=found["curves"]["forwards"],
                    curve_window=found["curves"]["window"],
                    curve_start_search_accuracy=None if result.start_accuracy is None
                    else 100 * result.start_accuracy)
    curve_note = ("" if not found["curves"] else
                  f" Started from the flow curves of the search split (window "
                  f"{found['curves']['window']}, a window needed when it lowers p(answer) by "
                  f"more than {100 * args.curve_threshold:g} %): start "
                  f"{'accepted' if result.start == 'curves' else 'refused, so from scratch'}; "
                  f"the curves cost {found['curves']['evaluations']} evaluations, "
                  f"{found['curves']['forwards']:.1f} forward equivalents.")
    provenance = (
        f"Pathway discovered by mapflow-tl discover (mapflow_tl.discovery) — not hand-written.\n\n"
        f"Model {args.model}, dataset {args.dataset}"
        + (f" (tasks {', '.join(args.task)})" if args.task else "")
        + f", {run.vlm.n_layers} layers. Search: greedy shrinking of each edge type's layer "
        f"range ({args.targets} edge types, order {', '.join(result.order)}; close a type "
        f"everywhere, else shrink its range one layer at a time from either end), a step kept "
        f"when accuracy on the search split stays within epsilon = {100 * args.epsilon:g} "
        f"points of the full model's ({100 * result.full_accuracy:.1f} %), at most "
        f"{args.passes} pass(es), budget {args.budget or 'unbounded'} evaluations"
        f"{'' if result.complete else ' (SPENT: the search stopped early)'}.\n"
        f"Splits by sample id ({discovery.SPLIT_RULE}; fraction {args.search_fraction}, seed "
        f"{args.split_seed}): {len(search_ids)} search and {len(eval_ids)} held-out samples; "
        f"the id lists are in the run's run.json ({args.out}).\n"
        f"Held out: {final['accuracy']:.1f} % accuracy ({final['correct']}/{final['samples']}) "
        f"with {100 * final['retained']:.1f} % of the edges kept (summed over layers and "
        f"samples), full model {full['accuracy']:.1f} %.\n"
        f"Cost: {result.evaluations} evaluations (pathway × sample), "
        f"{result.forwards:.1f} forward equivalents on the fast engine.{curve_note}")
    open_layers = result.open_layers()
    description = (f"discovered pathway of {args.model}: "
                   + "; ".join(f"{t} {_ranges(layers)}" for t, layers in open_layers.items())
                   + f" ({100 * final['retained']:.1f} % of edges, held-out accuracy "
                     f"{final['accuracy']:.1f} %)")
    source = discovery.circuit_source(name, description, provenance, run.vlm.n_layers,
                                      args.targets, open_layers)
    path = writer.write_text(f"circuits/{name.replace('-', '_')}.py", source)
    writer.record_config({"discover": {
        "search_samples": search_ids, "eval_samples": eval_ids, "circuit": name,
        "circuit_file": str(path.relative_to(writer.out)), "cost": cost,
        "held_out": {"full_accuracy": full["accuracy"], "pathway_accuracy": final["accuracy"],
                     "retained": final["retained"]}}})
    out = run.finish()
    if run.world.is_main:
        print(f"discover: {len(search_ids)} search / {len(eval_ids)} held-out samples; "
              f"{result.evaluations} evaluations ({result.forwards:.1f} forward equivalents) "
              f"in {seconds:.1f} s ({cpu_seconds:.1f} s of CPU)"
              + ("" if result.complete else "; budget SPENT"))
        if found["curves"]:
            print(f"start {result.start}: the flow curves cost "
                  f"{found['curves']['evaluations']} more evaluations "
                  f"({found['curves']['forwards']:.1f} forward equivalents)")
        for t, layers in open_layers.items():
            print(f"  {t:<32} {_ranges(layers)}")
        print(f"held out: full {full['accuracy']:.1f} %, discovered {final['accuracy']:.1f} % "
              f"with {100 * final['retained']:.1f} % of edges kept")
        for row in found["tables"]["discover"]:
            if row["split"] == "eval" and row["method"] == "hand":
                randoms = [r["accuracy"] for r in found["tables"]["discover"]
                           if r["method"] == "random" and r["label"] == f"random at {row['label']}"]
                mean = sum(randoms) / len(randoms) if randoms else float("nan")
                print(f"  {row['label']}: {row['accuracy']:.1f} % with "
                      f"{100 * row['retained']:.1f} % kept; random at its fraction "
                      f"{mean:.1f} % (mean of {len(randoms)} seeds)")
        varied = [v for v in discovery.variability(found["tables"]["discover_samples"])
                  if v["differ"] > 0]
        if found["tables"]["discover_samples"]:
            n = len({r["sample"] for r in found["tables"]["discover_samples"]})
            print(f"per-sample pathways ({n} samples) differ from the per-task one in "
                  f"{len(varied)} (edge type, layer) cells:")
            for v in sorted(varied, key=lambda v: -v["differ"])[:10]:
                print(f"  {v['edge_type']:<32} layer {v['layer']}: {100 * v['differ']:.0f} % "
                      f"of samples (task pathway {'open' if v['task_open'] else 'closed'}, "
                      f"open in {v['sample_open']}/{v['samples']})")
        print(f"circuit written to {path}; use it with --circuit {path} or --circuit-dir "
              f"{path.parent} --circuit {name}", file=sys.stderr)
    del out
    return 0


def _ranges(layers) -> str:
    layers = list(layers)
    if not layers:
        return "closed"
    return f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else f"{layers[0]}"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..metrics import CORRECTNESS

    discover = subparsers.add_parser(
        "discover", help="search the smallest effective pathway (layers per edge type) that "
                         "keeps accuracy within epsilon, write it as a circuit file")
    add_run_arguments(discover)
    discover.add_argument("--epsilon", type=_fraction, default=0.02,
                          help="accepted accuracy drop on the search split, as a fraction "
                               "(default %(default)s: 2 points)")
    discover.add_argument("--budget", type=positive_int, default=None, metavar="N",
                          help="at most N evaluations (one pathway on one sample) for the "
                               "per-task search; it stops cleanly and records it (default: "
                               "unbounded)")
    discover.add_argument("--targets", default="coarse", choices=("coarse", "fine"),
                          help="edge types: coarse (cross-frame, video→video within frames, "
                               "video→question, question→question, question→last, video→last, "
                               "last→last) or fine (question split at its options)")
    discover.add_argument("--order", nargs="+", default=None, metavar="TYPE",
                          help="edge types in the order the search visits them (default: most "
                               "edges per layer first)")
    discover.add_argument("--start", default="scratch", choices=("scratch", "curves"),
                          help="scratch: every edge type open in every layer; curves: each "
                               "type's range from its flow curve on the search split (the "
                               "windows whose knockout costs more than --curve-threshold), "
                               "checked, then shrunk (default %(default)s)")
    discover.add_argument("--curve-window", type=positive_int, default=None, metavar="K",
                          help="knockout window of the curves for --start curves (default: "
                               "the flow default for the model's depth)")
    discover.add_argument("--curve-threshold", type=_fraction, default=0.05,
                          help="relative drop of p(answer) that marks a window as needed, for "
                               "--start curves (default %(default)s: 5 %%)")
    discover.add_argument("--passes", type=positive_int, default=2,
                          help="passes over the edge types (default %(default)s)")
    discover.add_argument("--search-fraction", type=_fraction, default=0.5,
                          help="share of samples (by a hash of their id) the search uses; the "
                               "rest are held out (default %(default)s)")
    discover.add_argument("--split-seed", type=int, default=0,
                          help="seed of the id hash that splits the samples (default 0)")
    discover.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2],
                          metavar="SEED", help="random baselines per trade-off point "
                                               "(default 0 1 2)")
    discover.add_argument("--per-sample", type=int, default=0, metavar="N",
                          help="also search a pathway per held-out sample for N samples the "
                               "full model answers correctly (default 0: none)")
    discover.add_argument("--sample-budget", type=positive_int, default=200, metavar="N",
                          help="evaluations per per-sample search (default %(default)s)")
    discover.add_argument("--name", default=None,
                          help="the circuit's name (without it: discovered-<model folder>)")
    discover.add_argument("--correctness", default="official", choices=CORRECTNESS,
                          help="how an answer is graded (default %(default)s, as prune)")
    discover.add_argument("--method", default="fast", choices=("fast", "naive"),
                          help="sweep engine (default %(default)s)")
    discover.set_defaults(handler=_discover)
