"""The demo (README's main command): the paper's analyses on the SynthTV model organism.

On a fixed SynthTV evaluation subset it runs, on ``synthtv-video-ft``: the information-flow sweep
(cross-frame and video/question/last pathways), answer-probability tracing, the logit lens on
video tokens, attention from the question to the frames, and effective-pathway pruning against
random pruning; then the early-to-middle cross-frame knockout on both ``synthtv-video-ft`` and
the image-only ``synthtv-image`` (Map the Flow, Finding 1 in miniature). It prints a summary per
task and writes a run directory with ``report.html``.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm import tqdm

from . import analyses as A
from . import edges as E
from .circuits import load_circuit
from .commands import synthtv_samples
from .hooks import knockout
from .report import build_report
from .runs import RunWriter, check_interrupt

__all__ = ["run_demo", "crossframe_knockout_rows"]

VIDEO_MODEL, IMAGE_MODEL = "synthtv-video-ft", "synthtv-image"
FLOW_CIRCUITS = ("cross-frame", "vql-to-ql")
PATHWAY_CIRCUIT = "pathway-synthtv"


def crossframe_knockout_rows(vlm, x, model: str) -> list[dict[str, Any]]:
    """Answer of one sample with and without cross-frame attention in the early-to-middle layers
    (:func:`~mapflow_tl.analyses.early_to_middle_layers`: the first half of the model, as the
    paper's layers 1–16 of 32)."""
    layers = A.early_to_middle_layers(vlm.n_layers)
    rows = []
    for condition, hooks in (("base", []), ("cross-frame knockout",
                                            knockout(E.cross_frame(x.segments), layers))):
        probabilities = vlm.run_with_hooks(x, hooks)[0, -1].float().softmax(-1)
        token = int(probabilities.argmax())
        rows.append({**A._sample_fields(x), "model": model, "condition": condition,
                     "layers": layers, "token": token, "correct": token == x.answer_token})
    return rows


def _accuracy(rows, **where) -> float | None:
    chosen = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return 100 * mean(bool(r["correct"]) for r in chosen) if chosen else None


def run_demo(out: str | Path = "outputs/demo", *, per_task: int = 12, seed: int = 0,
             window_k: int = 3, lens_samples: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Run the demo; returns the summary (per task: ``base_acc``, ``crossframe_ko_acc``,
    ``pathway_acc``, ``pathway_retained``, ``random_acc``; and ``image_model_crossframe_ko_drop``,
    in accuracy points)."""
    from .models import load_videollm

    start = time.time()
    out = Path(out)
    if (out / "run.json").exists():
        for stale in out.glob("*.jsonl"):
            stale.unlink()
        (out / "run.json").unlink()
    samples = synthtv_samples(seed=seed, limit=per_task)
    writer = RunWriter(out, {"command": "demo", "model": VIDEO_MODEL, "image_model": IMAGE_MODEL,
                             "dataset": "synthtv", "limit": per_task, "seed": seed,
                             "window": window_k, "circuit": list(FLOW_CIRCUITS) +
                             [PATHWAY_CIRCUIT]})
    video = load_videollm(VIDEO_MODEL, device=device)
    image = load_videollm(IMAGE_MODEL, device=device)
    flows = [load_circuit(name) for name in FLOW_CIRCUITS]
    pathway = load_circuit(PATHWAY_CIRCUIT)
    crossframe_rows: list[dict[str, Any]] = []
    prune_rows: list[dict[str, Any]] = []
    for index, sample in enumerate(tqdm(samples, desc="demo", unit="sample")):
        check_interrupt()
        x = video.prepare(sample)
        base = A.base_prediction(video, x)
        writer.write("samples", [{**A._sample_fields(x), **base}])
        if base["base_correct"]:
            for circuit in flows:
                writer.write("flow", A.flow_sweep(video, x, circuit, k=window_k, base=base))
        writer.write("prob", A.probability_trace(video, x))
        if index < lens_samples:
            writer.write("lens", A.video_lens(video, x, k=3))
        if index == 0:
            writer.write("attention", A.attention_to_frames(video, x))
        rows = A.prune(video, x, pathway, seed=seed, base=base)
        writer.write("prune", rows)
        prune_rows += rows
        rows = crossframe_knockout_rows(video, x, VIDEO_MODEL)
        rows += crossframe_knockout_rows(image, image.prepare(sample), IMAGE_MODEL)
        writer.write("crossframe", rows)
        crossframe_rows += rows
    from .synthtv import generator as gen
    from .runs import read_table

    writer.write("keywords", A.keyword_frequency(read_table(out, "lens"), gen.SPATIAL_WORDS,
                                                 gen.TEMPORAL_WORDS))
    writer.finish()
    tasks = sorted({r["task"] for r in crossframe_rows})
    summary: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        pathway_rows = [r for r in prune_rows if r["task"] == task and r["variant"] == "pathway"]
        summary["tasks"][task] = {
            "base_acc": _accuracy(crossframe_rows, task=task, model=VIDEO_MODEL,
                                  condition="base"),
            "crossframe_ko_acc": _accuracy(crossframe_rows, task=task, model=VIDEO_MODEL,
                                           condition="cross-frame knockout"),
            "pathway_acc": _accuracy(prune_rows, task=task, variant="pathway"),
            "pathway_retained": 100 * mean(r["retained"] for r in pathway_rows),
            "random_acc": _accuracy(prune_rows, task=task, variant="random"),
            "image_base_acc": _accuracy(crossframe_rows, task=task, model=IMAGE_MODEL,
                                        condition="base"),
            "image_crossframe_ko_acc": _accuracy(crossframe_rows, task=task, model=IMAGE_MODEL,
                                                 condition="cross-frame knockout"),
        }
    video_drop = (_accuracy(crossframe_rows, model=VIDEO_MODEL, condition="base")
                  - _accuracy(crossframe_rows, model=VIDEO_MODEL, condition="cross-frame knockout"))
    image_drop = (_accuracy(crossframe_rows, model=IMAGE_MODEL, condition="base")
                  - _accuracy(crossframe_rows, model=IMAGE_MODEL, condition="cross-frame knockout"))
    summary.update(video_model_crossframe_ko_drop=video_drop,
                   image_model_crossframe_ko_drop=image_drop,
                   samples_per_task=per_task, report=str(build_report(out)),
                   seconds=round(time.time() - start, 1))
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
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

