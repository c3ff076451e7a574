"""Benchmark: sweeping several samples together (``sweep_samples``) against one at a time, and
against the Hugging Face model with explicit 4D masks, in one process.

Peers, all on the same weights and the same samples:

- ``hf_sdpa``: the HF model with SDPA attention, one full forward per configuration with its
  additive mask in the knocked-out layers (what a user of the paper's method runs); it runs a
  fixed stride of each sample's configurations (round r starts at offset r·stride/rounds) and
  its time is scaled to all configurations;
- ``one_at_a_time``: ``sweep_samples(..., max_samples=1)`` — each sample's fast sweep on its own
  (every circuit of a sample in one sweep, as ``flow`` runs it);
- ``together``: ``sweep_samples`` with its default grouping (samples sorted by length, groups
  bounded by memory and ``--max-samples``).

Workloads: ``synthtv`` — the shipped SynthTV model, the first ``--samples`` samples of the built-in
dataset (66–70 positions), the cross-frame and vql-to-ql circuits with the CLI's default window;
``small`` / ``paper`` — the random Llama-shaped backbone of ``knockout_sweep.py`` (32 layers)
with the paper's four targets, its samples differing in question and option lengths (≈190 or
≈1250 positions).

Each round runs every path once, in an order that rotates between rounds. Wall and process-CPU
seconds are reported.

    python benchmarks/sample_batching.py --threads 1 --scale synthtv --samples 16 --rounds 3
    python benchmarks/sample_batching.py --threads 1 --scale small --samples 8

Prints ONE JSON line: per path the seconds for all samples, ``together_vs_one_at_a_time``,
``together_vs_hf_sdpa`` (wall and CPU), ``ideal_speedup`` (full-forward cells over recomputed
cells, all samples) with ``together_over_ideal`` (wall time over HF SDPA's ÷ the ideal
speedup), ``max_abs_diff_vs_one_at_a_time`` and ``max_abs_diff_vs_hf_sdpa`` (probabilities),
``argmax_equal``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knockout_sweep import (SCALES, SYNTHTV, Clock, LayerMasks,  # noqa: E402
                            hf_sweep, paper_curves, random_workload, set_attention,
                            share_rotary_tables)

from mapflow_tl.engine import layer_sweep, recomputed_cells, sweep_samples  # noqa: E402
from mapflow_tl.segments import SegmentMap  # noqa: E402


def synthtv_samples(args):
    """The SynthTV model's HF text decoder, its backbone, and the first samples' embeddings and
    flow configurations (cross-frame and vql-to-ql, the CLI's default window)."""
    from transformers import LlavaNextVideoForConditionalGeneration

    import mapflow_tl as mf
    from mapflow_tl.layers import default_window_size
    from mapflow_tl.models import load_videollm

    vlm = load_videollm(SYNTHTV, device=args.device)
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(
        vlm.adapter.path, dtype=torch.float32, attn_implementation="sdpa").eval().to(args.device)
    share_rotary_tables(vlm.backbone, hf.model.language_model)
    circuits = [mf.load_circuit("cross-frame"), mf.load_circuit("vql-to-ql")]
    k = default_window_size(vlm.n_layers)
    embeds, configs = [], []
    for index, sample in enumerate(mf.load_dataset("synthtv")):
        if index == args.samples:
            break
        x = vlm.prepare(sample)
        embeds.append(x.embeds)
        configs.append([config for circuit in circuits for config in layer_sweep(
            circuit.build_curves(x.segments, vlm.n_layers), vlm.n_layers, k=k)])
    return hf.model.language_model, hf.lm_head, vlm.backbone, embeds, configs


def random_samples(args, scale: str):
    """The random backbone of knockout_sweep.py and ``--samples`` layouts of its scale whose
    question and options are 0–7 tokens longer, with random embeddings."""
    decoder, lm_head, backbone, _, _ = random_workload(args, scale)
    generator = torch.Generator().manual_seed(args.seed + 2)
    embeds, configs = [], []
    for index in range(args.samples):
        layout = dict(SCALES[scale])
        layout["question"] += index % 5
        layout["options"] = [length + (index * 3 + j) % 3 for j, length in
                             enumerate(layout["options"])]
        seg = SegmentMap.sequential(true_option=1, **layout)
        embeds.append(torch.randn(1, seg.n_positions, args.d_model, generator=generator)
                      .to(args.device, getattr(torch, args.dtype)))
        configs.append(layer_sweep(paper_curves(seg), args.n_layers, k=args.k))
    return decoder, lm_head, backbone, embeds, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="synthtv", choices=("synthtv", "small", "paper"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stride", type=int, default=8,
                        help="HF peer: every STRIDE-th configuration of each sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=32)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--init-std", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder, lm_head, backbone, embeds, configs = (
        synthtv_samples(args) if args.scale == "synthtv" else random_samples(args, args.scale))
    masks = LayerMasks(decoder)
    set_attention(decoder, "sdpa")
    clock = Clock(args.device)
    rounds = min(args.rounds, args.stride)
    n_configs = sum(len(c) for c in configs)
    hf_ran, hf_logits = 0, {}
    results: dict[str, list[torch.Tensor]] = {}

    def run(path: str, r: int) -> None:
        nonlocal hf_ran
        if path == "hf_sdpa":
            offset = r * args.stride // rounds
            with clock.time(path):
                for sample, (e, sample_configs) in enumerate(zip(embeds, configs)):
                    indices = list(range(offset, len(sample_configs), args.stride))
                    out = hf_sweep(decoder, lm_head, masks, e, [sample_configs[i] for i in indices])
                    hf_logits.update({(sample, i): row.float().cpu()
                                      for i, row in zip(indices, out)})
                    hf_ran += len(indices)
            return
        with clock.time(path):
            out = sweep_samples(backbone, embeds, configs,
                                max_samples=1 if path == "one_at_a_time" else args.max_samples)
        results[path] = [logits.float().cpu() for logits in out]

    for path in ("one_at_a_time", "together"):  # untimed warm-up
        run(path, 0)
    clock.wall.clear(), clock.cpu.clear()
    paths = ["hf_sdpa", "one_at_a_time", "together"]
    for r in range(rounds):
        for path in paths[r % 3:] + paths[:r % 3]:
            run(path, r)
    masks.remove()

    out: dict = {"scale": args.scale, "samples": len(embeds), "configs": n_configs,
                 "lengths": sorted({e.shape[1] for e in embeds}), "rounds": rounds,
                 "threads": args.threads, "device": args.device, "dtype": args.dtype,
                 "torch": torch.__version__, "machine": platform.machine(),
                 "hf_configs_timed": hf_ran, "hf_stride": args.stride}
    for cpu in (False, True):
        times = clock.cpu if cpu else clock.wall
        suffix = "_cpu_s" if cpu else "_s"
        hf = times["hf_sdpa"] / hf_ran * n_configs
        one, together = times["one_at_a_time"] / rounds, times["together"] / rounds
        out.update({f"hf_sdpa{suffix}": round(hf, 3), f"one_at_a_time{suffix}": round(one, 3),
                    f"together{suffix}": round(together, 3),
                    f"together_vs_one_at_a_time{'_cpu' if cpu else ''}": round(one / together, 2),
                    f"together_vs_hf_sdpa{'_cpu' if cpu else ''}": round(hf / together, 2),
                    f"one_at_a_time_vs_hf_sdpa{'_cpu' if cpu else ''}": round(hf / one, 2)})
    n_layers = backbone.cfg.n_layers
    cells = [(recomputed_cells(c, e.shape[1], n_layers, method="naive"),
              recomputed_cells(c, e.shape[1], n_layers)) for e, c in zip(embeds, configs)]
    ideal = sum(naive for naive, _ in cells) / sum(fast for _, fast in cells)
    out["ideal_speedup"] = round(ideal, 2)
    # the ideal-cells bound: HF SDPA's time divided by the ideal speedup
    out["together_over_ideal"] = round(out["together_s"] / (out["hf_sdpa_s"] / ideal), 3)
    out["one_at_a_time_over_ideal"] = round(out["one_at_a_time_s"] / (out["hf_sdpa_s"] / ideal),
                                            3)
    together_p = [logits.softmax(-1) for logits in results["together"]]
    alone_p = [logits.softmax(-1) for logits in results["one_at_a_time"]]
    out["max_abs_diff_vs_one_at_a_time"] = max(float((a - b).abs().max())
                                               for a, b in zip(together_p, alone_p))
    hf_p = {key: logits.softmax(-1) for key, logits in hf_logits.items()}
    out["max_abs_diff_vs_hf_sdpa"] = max(float((together_p[s][i] - p).abs().max())
                                         for (s, i), p in hf_p.items())
    out["argmax_equal"] = all(torch.equal(a.argmax(-1), b.argmax(-1))
                              for a, b in zip(together_p, alone_p)) and all(
        int(together_p[s][i].argmax()) == int(p.argmax()) for (s, i), p in hf_p.items())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
