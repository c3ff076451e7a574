"""``mapflow-tl demo`` (the README's first command): the paper's analyses on the SynthTV model
organism.

On a fixed SynthTV evaluation subset it runs, on ``synthtv-video-ft``: the information-flow sweep
(cross-frame and video/question/last pathways), answer-probability tracing, the logit lens on
video tokens, attention from the question to the frames, and effective-pathway pruning against
random pruning; then the early-to-middle cross-frame knockout on both ``synthtv-video-ft`` and the
image-only ``synthtv-image`` (Map the Flow, Finding 1 in miniature). It runs through the same
orchestration as every analysis command (:class:`~mapflow_tl.cli.run.AnalysisRun`: resumable,
never overwriting a folder it did not write), prints a summary per task computed from the saved
tables, and writes ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean
from typing import Any

from .run import positive_int

__all__ = ["register", "run_demo", "summarise"]

VIDEO_MODEL, IMAGE_MODEL = "synthtv-video-ft", "synthtv-image"
FLOW_CIRCUITS = ("cross-frame", "vql-to-ql")
PATHWAY_CIRCUIT = "pathway-synthtv"
DEMO_TABLES = ("flow", "prob", "lens", "attention", "prune", "crossframe", "frames")


def run_demo(out: str | Path = "outputs/demo", *, per_task: int = 12, seed: int = 0,
             window_k: int = 3, lens_samples: int = 2, device: str = "cpu",
             threads: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run the demo into ``out`` (continuing a demo run already there); returns the summary of
    :func:`summarise`."""
    from .. import analyses
    from ..circuits import load_circuit
    from ..models import load_videollm
    from ..report import build_report
    from ..results import frame_thumbnails
    from ..runs import CONFIG_FILE, read_table
    from ..synthtv import generator as gen
    from .run import AnalysisRun, circuit_config

    start = time.time()
    out = Path(out)
    args = argparse.Namespace(
        model=VIDEO_MODEL, dataset="synthtv", data_root=None, task=None, limit=per_task,
        out=str(out), device=device, dtype="float32", seed=seed, threads=threads,
        resume=(out / CONFIG_FILE).is_file() and not overwrite, strict=False,
        overwrite=overwrite)
    flows = [load_circuit(name) for name in FLOW_CIRCUITS]
    pathway = load_circuit(PATHWAY_CIRCUIT)
    run = AnalysisRun(args, "demo", config={
        "image_model": IMAGE_MODEL, "window": window_k, "lens_samples": lens_samples,
        "circuit": list(FLOW_CIRCUITS) + [PATHWAY_CIRCUIT], **circuit_config(flows + [pathway])})
    video, writer = run.vlm, run.writer
    image = load_videollm(IMAGE_MODEL, device=run.device, backend=video.backend)
    done = run.done(DEMO_TABLES)   # samples whose rows are all there; the rest is redone
    position = {str(getattr(sample, "id", "")): i for i, sample in enumerate(run.samples)}
    for sample, x in run.each("samples", done):
        index = position[str(getattr(sample, "id", ""))]
        base = analyses.base_prediction(video, x)
        # every sample's flow: the report's curves use the correct ones, as the paper does, and
        # its failure diagnosis sets the wrong ones beside them
        writer.write("flow", analyses.flow_sweeps(video, [x], flows, k=window_k,
                                                  bases=[base])[0])
        writer.write("prob", analyses.probability_trace(video, x))
        if index < lens_samples:
            writer.write("frames", frame_thumbnails(x))
            writer.write("lens", analyses.video_lens(video, x, k=3))
        if index == 0:
            writer.write("attention", analyses.attention_to_frames(video, x)
                         + analyses.attention_to_frames(video, x, "last"))
        writer.write("prune", analyses.prune(video, x, pathway, seeds=(seed,), base=base))
        writer.write("crossframe", analyses.crossframe_knockout(video, x, model=VIDEO_MODEL)
                     + analyses.crossframe_knockout(image, image.prepare(sample),
                                                    model=IMAGE_MODEL))
        run.mark_done(x, base)
    out = run.finish()
    run.write_derived(out, {"keywords": analyses.keyword_frequency(
        read_table(out, "lens"), gen.SPATIAL_WORDS, gen.TEMPORAL_WORDS, tokenizer=video.tokenizer)})
    summary = summarise(out)
    summary.update(samples_per_task=per_task, report=str(build_report(out)),
                   seconds=round(time.time() - start, 1))
    return summary


def _accuracy(rows, **where) -> float | None:
    chosen = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return 100 * mean(bool(r["correct"]) for r in chosen) if chosen else None


def summarise(run_dir: str | Path) -> dict[str, Any]:
    """The demo's figures from its saved tables, per task: ``base_acc``, ``crossframe_ko_acc``,
    ``pathway_acc``, ``pathway_retained``, ``random_acc``, ``image_base_acc``,
    ``image_crossframe_ko_acc``; and the cross-frame knockout drop of each model, in accuracy
    points."""
    from ..runs import read_table

    crossframe, prune = read_table(run_dir, "crossframe"), read_table(run_dir, "prune")
    summary: dict[str, Any] = {"tasks": {}}
    for task in sorted({r["task"] for r in crossframe}):
        pathway_rows = [r for r in prune if r["task"] == task and r["variant"] == "pathway"]
        summary["tasks"][task] = {
            "base_acc": _accuracy(crossframe, task=task, model=VIDEO_MODEL, condition="base"),
            "crossframe_ko_acc": _accuracy(crossframe, task=task, model=VIDEO_MODEL,
                                           condition="cross-frame knockout"),
            "pathway_acc": _accuracy(prune, task=task, variant="pathway"),
            "pathway_retained": (100 * mean(r["retained"] for r in pathway_rows)
                                 if pathway_rows else None),
            "random_acc": _accuracy(prune, task=task, variant="random"),
            "image_base_acc": _accuracy(crossframe, task=task, model=IMAGE_MODEL,
                                        condition="base"),
            "image_crossframe_ko_acc": _accuracy(crossframe, task=task, model=IMAGE_MODEL,
                                                 condition="cross-frame knockout"),
        }
    for model, key in ((VIDEO_MODEL, "video_model_crossframe_ko_drop"),
                       (IMAGE_MODEL, "image_model_crossframe_ko_drop")):
        base = _accuracy(crossframe, model=model, condition="base")
        cut = _accuracy(crossframe, model=model, condition="cross-frame knockout")
        summary[key] = None if base is None or cut is None else base - cut
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    columns = [("base_acc", "base"), ("crossframe_ko_acc", "cross-frame KO"),
               ("pathway_acc", "pathway"), ("pathway_retained", "kept edges"),
               ("random_acc", "random pruning"), ("image_base_acc", "image model"),
               ("image_crossframe_ko_acc", "image + KO")]
    print(f"\nSynthTV, {summary['samples_per_task']} questions per task "
          f"(accuracy %, cross-frame knockout in the early-to-middle layers)")
    print(f"{'task':<18}" + "".join(f"{title:>16}" for _, title in columns))
    for task, row in summary["tasks"].items():
        cells = "".join(f"{row[key]:>16.1f}" if row[key] is not None else f"{'–':>16}"
                        for key, _ in columns)
        print(f"{task:<18}{cells}")
    print(f"\ncross-frame knockout drop: video-ft {summary['video_model_crossframe_ko_drop']:.1f} "
          f"points, image-only {summary['image_model_crossframe_ko_drop']:.1f} points")
    print(f"report: {summary['report']}  ({summary['seconds']} s)")


def _demo(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, per_task=args.per_task, seed=args.seed, device=args.device,
                       threads=args.threads, overwrite=args.overwrite)
    print_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="the paper's analyses on the SynthTV models, with a "
                                              "summary table and report.html")
    demo.add_argument("--out", default="outputs/demo",
                      help="run directory (default %(default)s; a demo run already there is "
                           "continued)")
    demo.add_argument("--per-task", type=positive_int, default=12,
                      help="questions per SynthTV task")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--backend", default="auto", choices=("auto", "hooked", "bridge"),
                      help="TransformerLens backend: hooked (transformer-lens 3.9), bridge (4.x) "
                           "or auto (default: the installed one)")
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="CPU threads for torch (default: chosen for the model's size)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace a demo run of another configuration in --out")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(handler=_demo)
