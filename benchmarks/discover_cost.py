"""Benchmark: the cost of a per-sample pathway search at the paper's shape (issue 32).

Two measurements, both on random Llama-shaped backbones (benchmarks/knockout_sweep.py's
``random_workload`` recipe) with the paper's prompt layout (8 frames of 12×12 video tokens,
1257 positions):

1. ``counts``: per-sample searches (:func:`mapflow_tl.discovery.search_together`, coarse edge
   types, ε irrelevant for one sample: it must keep its answer) on a 32-layer backbone of width
   ``--count-d-model`` (default 128), each sample's "answer" being its own clean argmax. Reports
   the evaluations (pathway × sample) and forward equivalents (cells the fast engine recomputes
   over those of a full forward) each search took, and its wall time at that width. How many
   steps a search accepts depends on the model: these are a random backbone's counts.
2. ``width``: the seconds one forward equivalent of pathway evaluation costs at 7B width
   (``--d-model`` 4096, 32 heads of 128, MLP 11008) on ``--width-layers`` layers (default 1: a
   7B-wide layer fills a CPU), measured by sweeping ``--width-configs`` pathway configurations
   (the pathway shape of the paper, random baselines) of one sample with the fast engine.

The estimate of a per-sample search at 7B shape is then counts' forward equivalents × the
width's seconds per forward equivalent per layer × 32 — an extrapolation, labelled as one.

    python benchmarks/discover_cost.py --threads 2 --out benchmarks/results/cpu_discover_cost.json

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knockout_sweep import SCALES, share_rotary_tables  # noqa: E402

from mapflow_tl import discovery  # noqa: E402
from mapflow_tl.engine import KnockoutConfig, recomputed_cells, sweep  # noqa: E402
from mapflow_tl.segments import SegmentMap  # noqa: E402


def backbone(d_model: int, n_layers: int, n_positions: int, seed: int, init_std: float = 0.2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mapflow_tl.models.backbone import hooked_from_hf

    n_heads = max(4, d_model // 128)
    config = LlamaConfig(vocab_size=512, hidden_size=d_model,
                         intermediate_size=int(round(d_model * 11008 / 4096)),
                         num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         head_dim=d_model // n_heads,
                         max_position_embeddings=max(2048, n_positions),
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, init_std / (d_model / 128) ** 0.5)
    model = hooked_from_hf(hf.model, hf.lm_head, hf.config)
    share_rotary_tables(model, hf.model)
    del hf
    return model


def counts(args, seg: SegmentMap) -> dict:
    n = seg.n_positions
    model = backbone(args.count_d_model, 32, n, args.seed)
    samples = []
    for index in range(args.samples):
        generator = torch.Generator().manual_seed(args.seed + 1 + index)
        embeds = torch.randn(1, n, args.count_d_model, generator=generator)
        from mapflow_tl.models.backbone import run_from_embeds

        answer = int(run_from_embeds(model, embeds, grad=False)[0, -1].argmax())
        samples.append(discovery.SearchSample(f"s{index}", embeds, seg, True,
                                              lambda token, answer=answer: token == answer))
    started = time.perf_counter()
    results = discovery.search_together(model, [[s] for s in samples],
                                        budget=args.sample_budget)
    seconds = time.perf_counter() - started
    return {"d_model": args.count_d_model, "n_layers": 32, "n_positions": n,
            "samples": args.samples, "budget_per_sample": args.sample_budget,
            "evaluations": [r.evaluations for r in results],
            "forward_equivalents": [round(r.forwards, 2) for r in results],
            "complete": [r.complete for r in results],
            "accepted_steps": [len(r.steps) - 1 for r in results],
            "retained_layers": [sum(map(len, r.open_layers().values())) for r in results],
            "wall_s_all_samples_together": round(seconds, 2)}


def width(args, seg: SegmentMap) -> dict:
    n = seg.n_positions
    model = backbone(args.d_model, args.width_layers, n, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 100)
    embeds = torch.randn(1, n, args.d_model, generator=generator)
    L = args.width_layers
    types = discovery.edge_types(seg)
    # the paper's shape: the three kept pathways open, everything else closed
    specs = [discovery.pathway_from_layers(seg, L, {
        name: (list(range(L)) if name in ("cross-frame", "video → question", "question → last")
               else []) for name in types})]
    region = type(types["cross-frame"])(src=range(seg.video.start, n),
                                        dst=range(seg.video.start, n))
    specs += [specs[0].random_like(region, n, seed, sample="s0")
              for seed in range(args.width_configs - 1)]
    configs = [KnockoutConfig.from_pathway(spec, f"p{i}", n) for i, spec in enumerate(specs)]
    cells = recomputed_cells(configs, n, L) / (L * n)
    sweep(model, embeds, configs[:1])  # warm-up: packed weights, rotary tables
    started = time.perf_counter()
    sweep(model, embeds, configs)
    seconds = time.perf_counter() - started
    from mapflow_tl.models.backbone import run_from_embeds

    started = time.perf_counter()
    run_from_embeds(model, embeds, grad=False)
    clean = time.perf_counter() - started
    return {"d_model": args.d_model, "n_layers": L, "n_positions": n,
            "configs": len(configs), "forward_equivalents": round(cells, 3),
            "sweep_s": round(seconds, 2), "clean_forward_s": round(clean, 2),
            "s_per_forward_equivalent_per_layer": round(seconds / cells / L, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--sample-budget", type=int, default=400)
    parser.add_argument("--count-d-model", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--width-layers", type=int, default=1)
    parser.add_argument("--width-configs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=(), choices=("counts", "width"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seg = SegmentMap.sequential(true_option=1, **SCALES["paper"])
    report = {"device": "cpu", "threads": args.threads, "torch": torch.__version__,
              "machine": platform.machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if "counts" not in args.skip:
        report["counts"] = counts(args, seg)
    if "width" not in args.skip:
        report["width"] = width(args, seg)
    if "counts" in report and "width" in report:
        per_layer = report["width"]["s_per_forward_equivalent_per_layer"]
        report["estimate_7b_per_sample_s"] = [round(f * per_layer * 32, 1)
                                              for f in report["counts"]["forward_equivalents"]]
        report["estimate_note"] = ("extrapolated: counts' forward equivalents (32 layers, width "
                                   f"{args.count_d_model}) × measured s per forward equivalent "
                                   f"per layer at width {args.d_model} on {args.width_layers} "
                                   f"layer(s) × 32 layers, CPU, {args.threads} threads")
    line = json.dumps(report)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
