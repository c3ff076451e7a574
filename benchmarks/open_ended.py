"""Benchmark: the open-ended flow's knockout sweep, fast engine against one full forward per
configuration, on the shipped SynthTV model.

Each sample is asked open-ended in SynthTV's training format ("Question: …", answer after "Best
option:("), the model answers greedily once (``--max-new-tokens``), and then the same
``analyses.open_ended_flow`` sweep (circuits ``open-ended`` and ``open-ended-response``, every
window centre, anchors 1 … ``--n-anchors``) runs with ``method="fast"`` and ``method="naive"``
on that answer (``answer_ids``: the generation is not timed). The two methods alternate for
``--rounds`` rounds; the time of each is its median over rounds, wall clock and process CPU.

    python benchmarks/open_ended.py --threads 1 --samples 10 --rounds 3

Prints ONE JSON line: settings, ``fast_s``, ``naive_s``, ``speedup`` (naive / fast, wall),
``speedup_cpu``, ``configs`` (knockout configurations swept), ``max_abs_diff`` (probabilities,
fast vs naive) and ``generation_s`` (the answers, for scale).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10, help="samples (2 per task first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-anchors", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    from mapflow_tl import analyses
    from mapflow_tl.data.datasets import load_dataset
    from mapflow_tl.models import load_videollm

    torch.set_num_threads(args.threads)
    vlm = load_videollm("synthtv-video-ft", dtype=torch.float32)
    per_task = max(1, -(-args.samples // 5))
    samples = list(load_dataset("synthtv", None, None, per_task))[:args.samples]
    circuits = ["open-ended", "open-ended-response"]
    prepared, answers = [], []
    start = time.perf_counter()
    for sample in samples:
        x = vlm.prepare(analyses.open_ended_sample(sample, "Question: ", "Best option:("))
        ids, _ = vlm.generate(x, args.max_new_tokens)
        prepared.append(x)
        answers.append(ids.tolist())
    generation = time.perf_counter() - start

    def sweep(method):
        rows = []
        for x, ids in zip(prepared, answers):
            rows += analyses.open_ended_flow(vlm, x, circuits, n_anchors=args.n_anchors,
                                             method=method, answer_ids=ids)["rows"]
        return rows

    times = {"fast": [], "naive": []}
    cpu = {"fast": [], "naive": []}
    results = {}
    for round_ in range(args.rounds):
        for method in (("fast", "naive") if round_ % 2 == 0 else ("naive", "fast")):
            wall, process = time.perf_counter(), time.process_time()
            results[method] = sweep(method)
            times[method].append(time.perf_counter() - wall)
            cpu[method].append(time.process_time() - process)
    diff = max(abs(a["p"] - b["p"]) for a, b in zip(results["fast"], results["naive"]))
    fast, naive = statistics.median(times["fast"]), statistics.median(times["naive"])
    print(json.dumps({
        "model": "synthtv-video-ft", "samples": len(prepared), "rounds": args.rounds,
        "threads": args.threads, "n_anchors": args.n_anchors,
        "max_new_tokens": args.max_new_tokens, "configs": len(results["fast"]),
        "positions": [x.n_positions for x in prepared][:3],
        "fast_s": round(fast, 3), "naive_s": round(naive, 3),
        "speedup": round(naive / fast, 2),
        "speedup_cpu": round(statistics.median(cpu["naive"]) / statistics.median(cpu["fast"]), 2),
        "max_abs_diff": diff, "generation_s": round(generation, 3),
    }))


if __name__ == "__main__":
    main()
