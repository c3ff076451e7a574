"""Where the fast sweep spends its time above the clean-forward ideal, pathway group by group.

On the paper-shaped random backbone of ``knockout_sweep.py`` (CPU, one thread, process CPU time,
medians): one clean HF SDPA forward (the ideal's unit) and the sweep's own lean clean forward,
then, per group of pathways (cross-frame; the question-side pathways; the "→ last" ones), the
fast sweep of that group less its clean forward, against the group's ideal (its recomputed cells
at the clean forward's cost per cell). Prints one JSON line.

    python benchmarks/ideal_breakdown.py --scale paper
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import knockout_sweep as ks
from mapflow_tl.engine import recomputed_cells, sweep
from mapflow_tl.suffix_forward import backbone_weights, clean_forward


def cpu_median(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="paper", choices=list(ks.SCALES))
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    torch.set_num_threads(1)
    args = argparse.Namespace(d_model=128, vocab=512, n_layers=32, device="cpu",
                              dtype="float32", seed=0, init_std=0.2, k=9, centers_stride=1)
    decoder, _, backbone, embeds, configs = ks.random_workload(args, options.scale)
    n, n_layers = embeds.shape[1], args.n_layers
    ks.set_attention(decoder, "sdpa")
    clean = cpu_median(lambda: ks.hf_clean(decoder, embeds), options.repeats)
    weights = backbone_weights(backbone)
    lean = cpu_median(lambda: clean_forward(weights, embeds, set(range(n_layers))),
                      options.repeats)
    curves = {config.curve for config in configs}
    groups = {"cross-frame": {"cross-frame"},
              "last": {curve for curve in curves if curve in ks.LAST_CURVES}}
    groups["question-side"] = curves - groups["cross-frame"] - groups["last"]
    out = {"n_positions": n, "hf_clean_forward_cpu_s": round(clean, 4),
           "lean_clean_forward_cpu_s": round(lean, 4), "groups": {}}
    for name, members in groups.items():
        chosen = [config for config in configs if config.curve in members]
        ideal = clean * recomputed_cells(chosen, n, n_layers) / (n_layers * n)
        sweep(backbone, embeds, chosen[:2])  # warm-up
        fast = cpu_median(lambda: sweep(backbone, embeds, chosen), options.repeats) - lean
        out["groups"][name] = {"configs": len(chosen), "ideal_cpu_s": round(ideal, 3),
                               "fast_minus_clean_cpu_s": round(fast, 3),
                               "ratio": round(fast / ideal, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
