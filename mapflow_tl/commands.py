"""Analysis subcommands of ``mapflow-tl``: flow, prob, lens, prune, attention, report, circuits.

Every analysis command loads a model and a dataset, loops over samples with a progress bar, and
writes tidy tables plus the resolved configuration to ``--out`` (see :mod:`mapflow_tl.runs`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from . import analyses as A
from .circuits import list_circuits, load_circuit
from .hooks import WINDOW_STYLES
from .distributed import shard, world
from .runs import SHARDS_DIR, RunWriter, check_interrupt, merge_shards, read_table

__all__ = ["register", "load_samples", "DTYPES"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

def synthtv_samples(seed: int = 0, tasks: list[str] | None = None, limit: int | None = None,
                    cache: str | Path | None = None) -> list[Any]:
    """The fixed SynthTV evaluation set: generated deterministically from the held-out evaluation
    seed (plus ``seed``), written once in TVBench's format to a cache folder and read back with
    the TVBench loader — exactly what a downloaded benchmark goes through. ``limit`` is the
    number of questions per task (default 20); ``tasks`` defaults to the temporal tasks."""
    from .data.benchmarks import load_dataset
    from .synthtv import generator as gen
    from .synthtv.evaluate import EVAL_SEED

    tasks = list(tasks or gen.TEMPORAL_TASKS)
    unknown = sorted(set(tasks) - set(gen.ALL_TASKS))
    if unknown:
        raise ValueError(f"unknown SynthTV task(s) {unknown}; tasks: {list(gen.ALL_TASKS)}")
    per_task = limit or 20
    root = Path(cache or Path.home() / ".cache" / "mapflow-tl" / "synthtv")
    items = gen.generate(tasks, per_task, EVAL_SEED + seed)
    # The folder is named after the items' content too, so a changed generator (a new question
    # format, other colours) never reads a stale cache written by an earlier version.
    folder = root / (f"seed{EVAL_SEED + seed}-n{per_task}-{'-'.join(sorted(tasks))}-"
                     f"{_fingerprint(items)}")
    if not (folder / "complete").is_file():
        gen.write_benchmark(folder, items)
        (folder / "complete").write_text("ok\n")
    return list(load_dataset("tvbench", folder, tasks))


def _fingerprint(items_by_task: dict[str, list[Any]]) -> str:
    """12 hex digits of SHA-256 over every item's TVBench entry and rendered frames."""
    import hashlib

    digest = hashlib.sha256()
    for task in sorted(items_by_task):
        for item in items_by_task[task]:
            digest.update(json.dumps(item.to_tvbench(), sort_keys=True).encode())
            digest.update(item.frames.tobytes())
    return digest.hexdigest()[:12]


#: Dataset names resolved without a data root: name → function(seed, tasks, limit) → samples.
BUILTIN_DATASETS: dict[str, Callable[..., list[Any]]] = {"synthtv": synthtv_samples}


def load_samples(dataset: str, data_root: str | None, tasks: list[str] | None,
                 limit: int | None, seed: int = 0, *, strict: bool = False
                 ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Samples of a dataset — a built-in one (``synthtv``, generated deterministically and cached)
    or a benchmark read from ``data_root`` — and the entries skipped as malformed (with file,
    field and reason; a strict load raises at the first instead). ``limit`` caps the samples per
    task."""
    if dataset in BUILTIN_DATASETS and data_root is None:
        return BUILTIN_DATASETS[dataset](seed=seed, tasks=tasks, limit=limit), []
    if data_root is None:
        raise ValueError(f"--dataset {dataset} needs --data-root (the folder the benchmark was "
                         f"downloaded to)")
    from .data.benchmarks import load_dataset

    loaded = load_dataset(dataset, data_root, tasks, limit, strict=strict)
    return list(loaded), [skipped.to_dict() for skipped in loaded.skipped]


def _common(parser: argparse.ArgumentParser, *, circuit: bool = True) -> None:
    parser.add_argument("--model", default="synthtv-video-ft",
                        help="built-in name, local checkpoint directory or cached hub id")
    parser.add_argument("--dataset", default="synthtv")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--task", action="append", default=None,
                        help="task to run (repeatable; default: all)")
    parser.add_argument("--limit", type=int, default=None, help="samples per task at most")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in the same --out")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad sample instead of recording it as skipped")
    if circuit:
        parser.add_argument("--circuit", action="append", default=None,
                            help="circuit name or .py file (repeatable)")


class _Run:
    """One analysis run: the model, this process' samples and the writer of its results.

    Under a launcher with several processes (``torchrun``, ``accelerate launch``) each rank takes
    every ``size``-th sample, writes to ``OUT/shards/rank-NNN`` and, at :meth:`finish`, rank 0
    merges the shards into ``OUT`` in sample order (see :mod:`mapflow_tl.distributed`).
    """

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        from .models import load_videollm

        self.args, self.world = args, world()
        self.vlm = load_videollm(args.model, dtype=DTYPES[args.dtype],
                                 device=self.world.device(args.device))
        samples, skipped = load_samples(args.dataset, args.data_root, args.task, args.limit,
                                        args.seed, strict=args.strict)
        self.order = [str(getattr(sample, "id", "")) for sample in samples]
        self.samples = shard(samples, self.world)
        self.config = {key: value for key, value in vars(args).items()
                       if key not in ("handler", "resume", "out", "device", "strict")}
        self.config.update(command=command, model_family=self.vlm.family,
                           n_layers=self.vlm.n_layers, n_samples=len(samples),
                           world_size=self.world.size)
        out = Path(args.out)
        if self.world.distributed:
            out = out / SHARDS_DIR / f"rank-{self.world.rank:03d}"
        self.writer = RunWriter(out, self.config, resume=args.resume)
        (self.writer.out / "skipped.jsonl").unlink(missing_ok=True)
        if self.world.is_main:
            self.writer.write("skipped", skipped)

    def prepared(self, table: str, done: set[tuple] | None = None) -> Iterable[Any]:
        """This rank's prepared samples with a progress bar, skipping those already in
        ``table`` (or in ``done``). A sample that cannot be prepared (unreadable video, prompt
        that cannot be placed) is recorded in the ``skipped`` table with its reason, unless
        ``--strict``."""
        done = self.writer.completed(table, "sample") if done is None else done
        samples = tqdm(self.samples, desc=f"{self.config['command']}"
                       + (f" [rank {self.world.rank}]" if self.world.distributed else ""),
                       unit="sample", dynamic_ncols=True, position=self.world.rank)
        for sample in samples:
            check_interrupt()
            sample_id = str(getattr(sample, "id", ""))
            if RunWriter.key({"sample": sample_id}, "sample") in done:
                continue
            try:
                prepared = self.vlm.prepare(sample)
            except ValueError as error:
                if self.args.strict:
                    raise
                self.writer.write("skipped", [{
                    "sample": sample_id, "file": str(getattr(sample, "video", "")),
                    "field": getattr(error, "field", None), "reason": str(error)}])
                continue
            yield prepared

    def finish(self) -> Path:
        """Close the tables; with several ranks, wait for all and merge on rank 0. Returns the
        run directory holding the complete tables (on rank 0)."""
        self.writer.finish()
        out = Path(self.args.out)
        if self.world.distributed:
            self.world.barrier()
            if self.world.is_main:
                RunWriter(out, self.config, resume=True)
                merge_shards(out, self.order)
            self.world.barrier()
            self.world.close()
        if self.world.is_main:
            _summarise_skipped(out)
        return out


def _summarise_skipped(out: Path) -> None:
    skipped = read_table(out, "skipped")
    if skipped:
        print(f"{len(skipped)} sample(s) skipped; reasons in {out / 'skipped.jsonl'}:",
              file=sys.stderr)
        for row in skipped[:5]:
            print(f"  {row.get('sample') or row.get('file')}: {row['reason']}", file=sys.stderr)


def _flow(args: argparse.Namespace) -> int:
    run = _Run(args, "flow")
    vlm, writer = run.vlm, run.writer
    circuits = [load_circuit(name) for name in (args.circuit or ["cross-frame", "vql-to-ql"])]
    # A sample is done once its "samples" row exists; its flow rows are written just before it,
    # so flow rows of a sample without one are a crash's leftovers and are dropped.
    done = writer.completed("samples", "sample")
    writer.retain("flow", "sample", done)
    for x in run.prepared("samples", done):
        base = A.base_prediction(vlm, x)
        if A.select(base, args.mode):
            rows = [row for circuit in circuits for row in A.flow_sweep(
                vlm, x, circuit, k=args.window, style=args.style, method=args.method, base=base)]
            writer.write("flow", rows)
        writer.write("samples", [{**A._sample_fields(x), **base,
                                  "selected": A.select(base, args.mode)}])
    out = run.finish()
    if run.world.is_main:
        selected = sum(bool(r["selected"]) for r in read_table(out, "samples"))
        print(f"flow: {selected}/{len(run.order)} samples in mode {args.mode!r}; tables in {out}")
    return 0


def _prob(args: argparse.Namespace) -> int:
    run = _Run(args, "prob")
    for x in run.prepared("prob"):
        run.writer.write("prob", A.probability_trace(run.vlm, x))
    run.finish()
    return 0


def _keywords(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.keywords:
        path = Path(args.keywords)
        try:
            words = json.loads(path.read_text())
            return list(words["spatial"]), list(words["temporal"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"--keywords {path}: expected a JSON file "
                             f'{{"spatial": [...], "temporal": [...]}} ({error})') from None
    from .synthtv import generator as gen

    return list(gen.SPATIAL_WORDS), list(gen.TEMPORAL_WORDS)


def _lens(args: argparse.Namespace) -> int:
    spatial, temporal = _keywords(args)
    run = _Run(args, "lens")
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
    circuit = load_circuit((args.circuit or ["pathway-synthtv"])[0])
    run = _Run(args, "prune")
    for x in run.prepared("prune"):
        run.writer.write("prune", A.prune(run.vlm, x, circuit, seed=args.seed))
    out = run.finish()
    if run.world.is_main:
        from .report import pathway_table

        for row in pathway_table(read_table(out, "prune")):
            print(row)
    return 0


def _attention(args: argparse.Namespace) -> int:
    run = _Run(args, "attention")
    for x in run.prepared("attention"):
        run.writer.write("attention", A.attention_to_frames(run.vlm, x))
    run.finish()
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.run_dir, args.output)
    print(f"report written to {path}")
    return 0


def _circuits(args: argparse.Namespace) -> int:
    circuits = list_circuits(args.dir or ())
    width = max(len(name) for name in circuits)
    for name, circuit in sorted(circuits.items()):
        print(f"{name:<{width}}  {circuit.kind:<7}  {circuit.description}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    flow = subparsers.add_parser("flow", help="attention-knockout information-flow sweep")
    _common(flow)
    flow.add_argument("--window", type=int, default=9, help="window size k (default 9)")
    flow.add_argument("--style", default="center", choices=WINDOW_STYLES)
    flow.add_argument("--mode", default="correct", choices=A.SAMPLE_MODES)
    flow.add_argument("--method", default="fast", help="sweep engine: fast or naive")
    flow.set_defaults(handler=_flow)

    prob = subparsers.add_parser("prob", help="answer-probability tracing (logit lens, last "
                                              "position)")
    _common(prob, circuit=False)
    prob.set_defaults(handler=_prob)

    lens = subparsers.add_parser("lens", help="logit lens on video tokens, keyword frequency")
    _common(lens, circuit=False)
    lens.add_argument("--top-k", type=int, default=5)
    lens.add_argument("--keywords", default=None,
                      help='JSON file {"spatial": [...], "temporal": [...]} (default: SynthTV)')
    lens.set_defaults(handler=_lens)

    prune = subparsers.add_parser("prune", help="effective-pathway pruning vs random pruning")
    _common(prune)
    prune.set_defaults(handler=_prune)

    attention = subparsers.add_parser("attention", help="attention from the question to the "
                                                        "frames, baseline vs cross-frame knockout")
    _common(attention, circuit=False)
    attention.set_defaults(handler=_attention)

    report = subparsers.add_parser("report", help="build report.html from a run directory")
    report.add_argument("run_dir")
    report.add_argument("--output", default=None, help="default: RUN_DIR/report.html")
    report.set_defaults(handler=_report)

    circuits = subparsers.add_parser("circuits", help="list the available circuits")
    circuits.add_argument("--dir", action="append", default=None,
                          help="extra folder of circuit files")
    circuits.set_defaults(handler=_circuits)
