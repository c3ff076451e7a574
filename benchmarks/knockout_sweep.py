"""Benchmark: fast knockout sweep (``sweep(method="fast")``) against one forward per configuration.

A paper-shaped random Llama backbone — 32 layers, 8 frames of video tokens, question, three
options, last token — runs the paper's four information-flow targets (11 pathways: cross-frame;
video → question / last, question → last, last → last; non-option question / true option / false
options → last; video → non-option question, non-option question → true option, video → true
option) over every window centre (k = 9), once per method. Each method runs in its own child
process so that its peak memory is its own. Prints ONE JSON line.

    python benchmarks/knockout_sweep.py                      # small scale, CPU, a minute or two
    python benchmarks/knockout_sweep.py --scale paper        # 8×12×12 video tokens, 1257 positions
    python benchmarks/knockout_sweep.py --device cuda --d-model 4096 --dtype bfloat16 --scale paper

Fields: naive_s, fast_s, speedup (all configurations, wall clock), last_naive_s, last_fast_s,
last_speedup (the "→ last" curves alone), naive_cpu_s, fast_cpu_s, cpu_speedup,
last_cpu_speedup (process CPU time: robust when other jobs share the cores), ideal_speedup /
last_ideal_speedup (ratio of recomputed (layer, position) cells, naive over fast), max_abs_diff
(probabilities, fast vs naive), argmax_equal, peak_rss_mb per path (naive, fast, clean = one clean forward filling the key/value
cache, run_with_cache = TransformerLens' full activation cache) and base_rss_mb (model built, no
forward yet). On CUDA, peak_cuda_mb per path too. Each path first runs one configuration untimed
(warm-up). The "→ last" and the other curves are timed as two sweeps, so the fast path's total
includes two clean forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from mapflow_tl import edges as E
from mapflow_tl.engine import layer_sweep, recomputed_cells, sweep
from mapflow_tl.models.backbone import hooked_config_from_hf
from mapflow_tl.segments import SegmentMap

SCALES = {
    # frames: 8 frames of (H, W) tokens; text lengths around them (≈100 text tokens at paper scale)
    "small": dict(frames=[(4, 4)] * 8, system=20, after_video=4, question=16, options=[5, 5, 5],
                  between_options=2, before_last=6, d_model=128),
    "paper": dict(frames=[(12, 12)] * 8, system=35, after_video=5, question=30, options=[6, 6, 6],
                  between_options=3, before_last=10, d_model=128),
}
LAST_CURVES = ("video → last", "question → last", "last → last", "non-option question → last",
               "true option → last", "false options → last")


def segments(scale: str) -> SegmentMap:
    layout = {key: value for key, value in SCALES[scale].items() if key != "d_model"}
    return SegmentMap.sequential(true_option=1, **layout)


FLOW_CIRCUITS = ("cross-frame", "vql-to-ql", "question-and-options-to-last", "vq-to-true-opt")


def curves(seg: SegmentMap) -> dict[str, E.Edges]:
    """The paper's four information-flow targets: the curves of the four circuits in circuits/."""
    from mapflow_tl.circuits import load_circuit

    return {name: edges for circuit in FLOW_CIRCUITS
            for name, edges in load_circuit(circuit).build_curves(seg, 0).items()}


def build_model(args, n_positions: int):
    """A random Llama-shaped HookedTransformer (32 heads of 128 at 7B width, no GQA: Vicuna)."""
    from transformers import LlamaConfig
    from transformer_lens import HookedTransformer

    d_model = args.d_model
    n_heads = max(4, d_model // 128)
    d_head = d_model // n_heads
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=d_model,
                         intermediate_size=int(round(d_model * 11008 / 4096)),
                         num_hidden_layers=args.n_layers, num_attention_heads=n_heads,
                         head_dim=d_head, max_position_embeddings=max(2048, n_positions))
    dtype = getattr(torch, args.dtype)
    cfg = hooked_config_from_hf(config, dtype=dtype, device=args.device)
    torch.manual_seed(args.seed)
    model = HookedTransformer(cfg, move_to_device=False)
    # Fill the weights where they will live: a 7B-shaped bf16 fill on one CPU core takes ~4 min
    # per child process (measured on the H200 machine), on the GPU well under a second.
    # torch.manual_seed seeds every device, so each child still builds the same weights.
    model.to(args.device, print_details=False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".w"):  # RMSNorm weights
                parameter.fill_(1.0)
            elif ".b_" in name or name.startswith("unembed.b"):
                parameter.zero_()
            else:
                parameter.normal_(0.0, args.init_std / (d_model / 128) ** 0.5)
    return model.eval()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def child(args) -> None:
    """Run one path and write its timings, memory and logits."""
    torch.set_num_threads(args.threads)
    seg = segments(args.scale)
    model = build_model(args, seg.n_positions)
    generator = torch.Generator().manual_seed(args.seed + 1)
    embeds = torch.randn(1, seg.n_positions, args.d_model, generator=generator)
    embeds = embeds.to(args.device, model.cfg.dtype)
    configs = layer_sweep(curves(seg), args.n_layers, k=args.k)
    last = [c for c in configs if c.curve in LAST_CURVES]
    other = [c for c in configs if c.curve not in LAST_CURVES]
    cuda = args.device.startswith("cuda")
    out: dict = {"base_rss_mb": peak_rss_mb()}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def timed(fn, key):
        if cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        out[key] = time.perf_counter() - start
        out[key.replace("_s", "_cpu_s")] = time.process_time() - start_cpu
        return result

    if args.path in ("naive", "fast"):
        # Untimed warm-up (allocator, kernel selection): one configuration through the same path.
        sweep(model, embeds, configs[:1], method=args.path)
        last_logits = timed(lambda: sweep(model, embeds, last, method=args.path), "last_s")
        other_logits = timed(lambda: sweep(model, embeds, other, method=args.path), "other_s")
        order = {id(c): i for i, c in enumerate(last + other)}
        logits = torch.cat([last_logits, other_logits])
        logits = logits[[order[id(c)] for c in configs]]
        torch.save(logits.float().cpu(), args.logits_out)
    elif args.path == "clean":
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        with torch.inference_mode():
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
            logits = timed(lambda: model(embeds, start_at_layer=0, past_kv_cache=cache),
                           "clean_s")
        torch.save(logits[0, -1:].float().cpu(), args.logits_out)
    else:  # TransformerLens' full activation cache
        with torch.inference_mode():
            timed(lambda: model.run_with_cache(embeds, start_at_layer=0), "clean_s")
    out["peak_rss_mb"] = peak_rss_mb()
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=None,
                        help="model width (default 128; 4096 = 7B)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--n-layers", type=int, default=32)
    parser.add_argument("--k", type=int, default=9, help="window size (paper: 9)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--init-std", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--logits-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.d_model is None:
        args.d_model = SCALES[args.scale]["d_model"]
    if args.path is not None:
        child(args)
        return

    seg = segments(args.scale)
    configs = layer_sweep(curves(seg), args.n_layers, k=args.k)
    last = [c for c in configs if c.curve in LAST_CURVES]
    n, layers = seg.n_positions, args.n_layers
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in ("clean", "run_with_cache", "fast", "naive"):
            logits_out = os.path.join(folder, f"{path}.pt")
            command = [sys.executable, __file__, *sys.argv[1:], "--path", path,
                       "--logits-out", logits_out, "--d-model", str(args.d_model),
                       "--threads", str(args.threads)]
            finished = subprocess.run(command, check=True, capture_output=True, text=True)
            results[path] = json.loads(finished.stdout.strip().splitlines()[-1])
            if path in ("fast", "naive", "clean"):
                results[path]["logits"] = torch.load(logits_out)
    fast, naive = results["fast"], results["naive"]
    fast_p, naive_p = fast["logits"].softmax(-1), naive["logits"].softmax(-1)
    naive_s, fast_s = naive["last_s"] + naive["other_s"], fast["last_s"] + fast["other_s"]
    naive_cpu = naive["last_cpu_s"] + naive["other_cpu_s"]
    fast_cpu = fast["last_cpu_s"] + fast["other_cpu_s"]
    report = {
        "scale": args.scale, "device": args.device, "dtype": args.dtype, "d_model": args.d_model,
        "n_layers": layers, "n_positions": n, "n_configs": len(configs), "threads": args.threads,
        "naive_s": round(naive_s, 3), "fast_s": round(fast_s, 3),
        "speedup": round(naive_s / fast_s, 2),
        "ideal_speedup": round(recomputed_cells(configs, n, layers, method="naive")
                               / recomputed_cells(configs, n, layers), 2),
        "last_naive_s": round(naive["last_s"], 3), "last_fast_s": round(fast["last_s"], 3),
        "last_speedup": round(naive["last_s"] / fast["last_s"], 2),
        "last_ideal_speedup": round(recomputed_cells(last, n, layers, method="naive")
                                    / recomputed_cells(last, n, layers), 2),
        # process CPU time: robust to other jobs sharing the cores (wall time is not)
        "naive_cpu_s": round(naive_cpu, 3), "fast_cpu_s": round(fast_cpu, 3),
        "cpu_speedup": round(naive_cpu / fast_cpu, 2),
        "last_cpu_speedup": round(naive["last_cpu_s"] / fast["last_cpu_s"], 2),
        "max_abs_diff": float((fast_p - naive_p).abs().max()),
        "argmax_equal": bool(torch.equal(fast_p.argmax(-1), naive_p.argmax(-1))),
        # how far the knockouts move the probabilities at all (a check is vacuous at 0)
        "max_knockout_effect": float(
            (naive_p - results["clean"]["logits"].softmax(-1)).abs().max()),
        "peak_rss_mb": {path: round(results[path]["peak_rss_mb"], 1) for path in results},
        "base_rss_mb": round(results["clean"]["base_rss_mb"], 1),
        "fast_peak_over_clean": round(results["fast"]["peak_rss_mb"]
                                      / results["clean"]["peak_rss_mb"], 3),
        "fast_peak_over_run_with_cache": round(results["fast"]["peak_rss_mb"]
                                               / results["run_with_cache"]["peak_rss_mb"], 3),
        "clean_forward_s": round(results["clean"]["clean_s"], 3),
    }
    if args.device.startswith("cuda"):
        report["peak_cuda_mb"] = {path: round(results[path]["peak_cuda_mb"], 1)
                                  for path in results}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
