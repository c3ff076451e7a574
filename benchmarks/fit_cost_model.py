"""Fit the sweep planner's cost model to the lean suffix forward's per-layer-call cost.

The planner (``mapflow_tl.engine._batches``) prices one layer of a batched suffix forward as
``layer_call + B × (Q × (1 + query_key × n) + key × n)`` in units of one recomputed position, for
B configurations of Q recomputed queries over n keys. This script times ``suffix_logits`` over a
grid of (B, Q, n) on the benchmark's random Llama-shaped backbone, fits ``seconds per layer = a +
b·B·Q + c·B·Q·n + e·B·n`` by least squares and prints ``layer_call = a / b``, ``query_key = c /
b`` and ``key = e / b`` (negative fits clipped to 0) as one JSON line.

    python benchmarks/fit_cost_model.py --threads 1
    python benchmarks/fit_cost_model.py --device cuda --d-model 4096 --dtype bfloat16

On CUDA the times are wall clock after a synchronize (process CPU time measures only the
launching thread there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knockout_sweep import random_workload  # noqa: E402

from mapflow_tl.suffix_forward import backbone_weights, clean_forward, suffix_logits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = argparse.Namespace(d_model=args.d_model, vocab=512, n_layers=32, seed=0,
                                  device=args.device, dtype=args.dtype, init_std=0.2, k=9)
    cuda = args.device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    rows = []
    for scale in ("small", "paper"):
        _, _, backbone, embeds, _ = random_workload(settings, scale)
        weights = backbone_weights(backbone)
        n = embeds.shape[1]
        start = 16  # 16 layers per call: per-layer time = time / 16
        clean = clean_forward(weights, embeds, {start})
        for batch, queries in itertools.product((1, 8, 32, 128), (1, 2, 4, 8, 32, 128)):
            if batch * queries > 4096:
                continue
            blocked = torch.zeros(batch, queries, n, dtype=torch.bool, device=args.device)
            blocked[:, :, 1] = True  # one blocked key: the mask path is exercised
            active = torch.ones(weights.n_layers, batch, dtype=torch.bool, device=args.device)
            suffix_logits(weights, clean, start, blocked, active)
            best = float("inf")
            for _ in range(args.repeats):
                began = clock()
                suffix_logits(weights, clean, start, blocked, active)
                best = min(best, clock() - began)
            rows.append((batch, queries, n, best / (weights.n_layers - start)))
    # relative residuals: each sample weighs the same whatever its size
    design = torch.tensor([[1.0 / t, b * q / t, b * q * n / t, b * n / t] for b, q, n, t in rows],
                          dtype=torch.float64)
    ones = torch.ones(len(rows), 1, dtype=torch.float64)
    a, b, c, e = torch.linalg.lstsq(design, ones).solution.flatten().tolist()
    print(json.dumps({"device": args.device, "dtype": args.dtype, "d_model": args.d_model,
                      "layer_call_s": a, "position_s": b, "query_key_s": c, "key_s": e,
                      "layer_call": round(max(a, 0) / b, 1),
                      "query_key": round(max(c, 0) / b, 5), "key": round(max(e, 0) / b, 5),
                      "samples": [dict(B=B, Q=Q, n=n, seconds_per_layer=t)
                                  for B, Q, n, t in rows]}))


if __name__ == "__main__":
    main()
