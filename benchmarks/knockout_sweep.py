"""Benchmark: the knockout sweep against the method users actually run, in one process.

Peers, all on the same weights and the same input embeddings:

- ``hf_eager``: the Hugging Face model with eager attention, one full forward per configuration,
  the configuration's additive ``[1, 1, pos, pos]`` mask (causal + −∞ on its blocked edges) in
  its knocked-out layers only; every other layer keeps the mask HF builds itself — the paper's
  official method, in the form a user writes it;
- ``hf_sdpa``: the same with SDPA attention (what a modern user runs; the layers without a
  knockout get no mask and run SDPA's causal kernel);
- ``naive``: ``sweep(method="naive")``, one HookedTransformer forward per configuration;
- ``fast``: ``sweep(method="fast")``, the default (the lean suffix forward of
  :mod:`mapflow_tl.suffix_forward`);
- ``hf_clean``: one clean HF SDPA forward (no mask), timed in every round;
- ``ideal``: the sweep's recomputed (layer, position) cells at the cost of a cell of that clean
  forward: clean time × recomputed cells / (layers × positions).

The workload: the paper's four information-flow targets (11 pathways) over every window centre
(k = 9; ``--centers-stride`` keeps every n-th centre, for every path; ``--last-all-centers``
keeps every centre of the "→ last" curves, timed as a sweep of their own) of a random Llama-shaped
backbone with 32 layers and 8, 32 or 64 frames of video tokens (``small``: 8×4×4 video tokens,
194 positions; ``paper``: 8×12×12, 1257 positions; ``long32``: 32×12×12, 4713 positions;
``long64``: 64×12×12, 9321 positions), or the shipped SynthTV model's vql-to-ql circuit on one
generated sample (``synthtv``). The long scales run only the ``--long-peers`` (HF SDPA).

Interleaving: the run is cut into ``--rounds`` rounds; in each round every path runs once, in an
order that rotates from round to round, so that load from other jobs on a shared machine falls on
all paths alike. The full-forward peers (whose cost per configuration does not depend on the
configuration) run a fixed stride of the configurations: round r runs configurations
``r·stride/rounds, … + stride, …``; their sweep time is the mean time per configuration × the
number of configurations. The fast path runs the whole sweep in every round (and the "→ last"
curves as a sweep of their own); its time is the mean over rounds. Times are wall clock, with
process CPU time beside them (robust when other jobs share the cores).

Memory: each of the fast sweep, a clean forward filling a TransformerLens key/value cache
(``clean_tl``), a clean HF SDPA forward filling its cache (``clean_hf``) and one HF SDPA
knockout forward (``hf_knockout``) runs once more in a child process of its own; the peak
resident memory while it runs (sampled every 0.5 ms) minus the memory just before it (the loaded
model), or the peak CUDA memory minus the allocated memory before, is its working memory.

    python benchmarks/knockout_sweep.py --threads 1 --scale paper --rounds 2 --stride 32
    python benchmarks/knockout_sweep.py --threads 1 --scale long32 --rounds 1 --stride 32 \
        --no-float64
    python benchmarks/knockout_sweep.py --threads 1 --scale long64 --rounds 1 --stride 32 \
        --centers-stride 4 --last-all-centers --no-float64
    python benchmarks/knockout_sweep.py --device cuda --d-model 4096 --dtype bfloat16 --scale paper

Prints ONE JSON line: the settings, and per scale ``speedup_vs_<peer>`` (and ``cpu_…``),
``ideal_s``, ``fast_over_ideal`` (``_cpu``), ``ideal_speedup_vs_<peer>``,
``last_speedup_vs_<peer>``, ``max_abs_diff`` (probabilities, fast vs the HF references over the
configurations they ran), ``argmax_equal``, the times (``*_s``, ``*_cpu_s``), ``peak_mb``,
``working_mb`` and the working-memory ratios ``fast_working_over_{clean_tl,clean_hf,
hf_knockout}``, and, on CPU below the long scales, ``float64_max_abs_diff_vs_naive`` /
``_vs_hf_sdpa``: the fast sweep against the naive sweep and HF SDPA, all in float64, on every
``--float64-stride``-th configuration. All paths use the HF model's rotary tables
(``share_rotary_tables``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from mapflow_tl import edges as E
from mapflow_tl.engine import layer_sweep, recomputed_cells, sweep
from mapflow_tl.segments import SegmentMap

SCALES = {
    # frames: 8 frames of (H, W) tokens; text lengths around them (≈100 text tokens at paper scale)
    "small": dict(frames=[(4, 4)] * 8, system=20, after_video=4, question=16, options=[5, 5, 5],
                  between_options=2, before_last=6),
    "paper": dict(frames=[(12, 12)] * 8, system=35, after_video=5, question=30, options=[6, 6, 6],
                  between_options=3, before_last=10),
    # long videos: 32 and 64 frames of 12×12 tokens (≈ 4,700 and ≈ 9,300 positions)
    "long32": dict(frames=[(12, 12)] * 32, system=35, after_video=5, question=30,
                   options=[6, 6, 6], between_options=3, before_last=10),
    "long64": dict(frames=[(12, 12)] * 64, system=35, after_video=5, question=30,
                   options=[6, 6, 6], between_options=3, before_last=10),
}
LAST_CURVES = ("video → last", "question → last", "last → last", "non-option question → last",
               "true option → last", "false options → last")
LONG_SCALES = ("long32", "long64")
FLOW_CIRCUITS = ("cross-frame", "vql-to-ql", "question-and-options-to-last", "vq-to-true-opt")
SYNTHTV = "synthtv-video-ft"


# ---------------------------------------------------------------------- workloads
def paper_curves(seg: SegmentMap) -> dict[str, E.Edges]:
    """The paper's four information-flow targets: the curves of the four circuits."""
    from mapflow_tl.circuits import load_circuit

    return {name: edges for circuit in FLOW_CIRCUITS
            for name, edges in load_circuit(circuit).build_curves(seg, 0).items()}


def random_workload(args, scale: str):
    """A random Llama-shaped HF model (32 heads of 128 at 7B width, no GQA: Vicuna), its
    HookedTransformer, input embeddings and the sweep's configurations."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mapflow_tl.models.backbone import hooked_from_hf

    seg = SegmentMap.sequential(true_option=1, **SCALES[scale])
    n = seg.n_positions
    d_model = args.d_model
    n_heads = max(4, d_model // 128)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=d_model,
                         intermediate_size=int(round(d_model * 11008 / 4096)),
                         num_hidden_layers=args.n_layers, num_attention_heads=n_heads,
                         head_dim=d_model // n_heads, max_position_embeddings=max(2048, n),
                         attn_implementation="sdpa")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    # Built and filled where it will run: a 7B-shaped fill on one CPU core takes minutes.
    with torch.device(args.device):
        hf = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, args.init_std / (d_model / 128) ** 0.5)
    backbone = hooked_from_hf(hf.model, hf.lm_head, hf.config, dtype=dtype, device=args.device)
    share_rotary_tables(backbone, hf.model)
    generator = torch.Generator().manual_seed(args.seed + 1)
    embeds = torch.randn(1, n, d_model, generator=generator).to(args.device, dtype)
    centers = range(0, args.n_layers, args.centers_stride) if args.centers_stride > 1 else None
    configs = layer_sweep(paper_curves(seg), args.n_layers, k=args.k, centers=centers)
    return hf.model, hf.lm_head, backbone, embeds, configs


def synthtv_workload(args):
    """The shipped SynthTV model: its backbone, one generated sample's embeddings, the vql-to-ql
    flow sweep (the CLI's default window for its 8 layers, 3), and the HF text decoder loaded
    from its checkpoint."""
    from transformers import LlavaNextVideoForConditionalGeneration

    from mapflow_tl.circuits import load_circuit
    from mapflow_tl.layers import default_window_size
    from mapflow_tl.models import VideoSample, load_videollm
    from mapflow_tl.synthtv import generator as gen

    vlm = load_videollm(SYNTHTV, device=args.device)
    item = gen.make_item("moving_direction", 1000, 0)
    x = vlm.prepare(VideoSample(item.frames, item.question, item.candidates,
                                answer=item.answer_index))
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(
        vlm.adapter.path, dtype=torch.float32, attn_implementation="sdpa").eval().to(args.device)
    share_rotary_tables(vlm.backbone, hf.model.language_model)
    curves = load_circuit("vql-to-ql").build_curves(x.segments, vlm.n_layers)
    configs = layer_sweep(curves, vlm.n_layers, k=default_window_size(vlm.n_layers))
    return hf.model.language_model, hf.lm_head, vlm.backbone, x.embeds, configs


def share_rotary_tables(backbone, decoder) -> None:
    """Give the backbone the HF model's own rotary (cos, sin) tables, so that every path runs on
    the same weights *and* the same positions. TransformerLens computes its tables in float64,
    HF its angles in float32: at 1257 positions the tables differ by ~1e-5, which over 32
    layers of this random model moves probabilities by ~2e-5 whatever the sweep method."""
    from mapflow_tl.models.backbone import _install_hf_rotary

    _install_hf_rotary(backbone, decoder)


# ---------------------------------------------------------------------- the HF peers
class LayerMasks:
    """Forward pre-hooks that give decoder layer l the mask ``masks[l]`` and leave every other
    layer the mask the HF model builds itself — what a user of the official method writes: a 4D
    mask only in the knocked-out layers. (With SDPA and no padding the model builds no mask at
    all, so the other layers run SDPA's causal kernel; an explicit causal mask in every layer
    made the peer ≈ 1.2× slower at 1,257 positions.)"""

    def __init__(self, decoder) -> None:
        self.masks: dict[int, torch.Tensor] = {}
        self.handles = [layer.register_forward_pre_hook(self._swap(index), with_kwargs=True)
                        for index, layer in enumerate(decoder.layers)]

    def _swap(self, index: int):
        def swap(module, args, kwargs):
            if index in self.masks:
                kwargs["attention_mask"] = self.masks[index]
            return args, kwargs
        return swap

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def set_attention(decoder, implementation: str) -> None:
    decoder.set_attn_implementation(implementation)
    assert decoder.config._attn_implementation == implementation


def knockout_mask(config, n: int, dtype, device) -> torch.Tensor:
    """The official method's additive ``[1, 1, pos, pos]`` mask: causal and −∞ on the blocked
    edges."""
    minimum = torch.finfo(dtype).min
    blocked = config.edges.dense(n).to(device) | torch.ones(n, n, dtype=torch.bool,
                                                             device=device).triu(1)
    return torch.zeros(n, n, dtype=dtype, device=device).masked_fill_(blocked, minimum)[None, None]


@torch.no_grad()
def hf_sweep(decoder, lm_head, masks: LayerMasks, embeds, configs) -> torch.Tensor:
    """Last-position logits: one full HF forward per configuration, its additive mask in its
    knocked-out layers only."""
    n = embeds.shape[1]
    rows = []
    for config in configs:
        knocked = knockout_mask(config, n, embeds.dtype, embeds.device)
        masks.masks = {layer: knocked for layer in config.layers}
        hidden = decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
        del knocked
        masks.masks = {}
        rows.append(lm_head(hidden)[0])
    return torch.stack(rows)


@torch.no_grad()
def hf_clean(decoder, embeds) -> None:
    """One clean HF forward (no mask: SDPA's causal kernel), the unit of the ideal bound."""
    decoder(inputs_embeds=embeds, use_cache=False)


# ---------------------------------------------------------------------- timing
class Clock:
    """Wall and process-CPU seconds per path, summed over rounds."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def time(self, key: str):
        if self.cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - wall
        self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - cpu


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS(threading.Thread):
    """Samples resident memory every half millisecond while a path runs (torch kernels release
    the GIL): the peak of *that* phase, which ``ru_maxrss`` cannot give once building the model
    has set a higher mark."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = rss_mb(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.0005)

    def __enter__(self) -> "PeakRSS":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.join()
        self.peak = max(self.peak, rss_mb())


def memory_child(args, scale: str, path: str) -> dict:
    """Peak memory of one path in a fresh process (see :func:`run_memory_child`)."""
    command = [sys.executable, __file__, "--memory-child", path, "--scale", scale,
               "--device", args.device, "--dtype", args.dtype, "--d-model", str(args.d_model),
               "--n-layers", str(args.n_layers), "--k", str(args.k), "--vocab", str(args.vocab),
               "--threads", str(args.threads), "--seed", str(args.seed),
               "--centers-stride", str(args.centers_stride)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


MEMORY_PATHS = ("fast", "clean_tl", "clean_hf", "hf_knockout")


def _release_freed_memory() -> None:
    """Give memory freed while building the model back to the system (glibc keeps it
    otherwise), so that the baseline is what the loaded model holds."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_memory_child(args) -> None:
    """One path in this fresh process, after the model is loaded: ``fast`` (the whole sweep),
    ``clean_tl`` (one HookedTransformer forward filling a TransformerLens key/value cache — what
    the fast path starts from), ``clean_hf`` (one HF SDPA forward filling its ``DynamicCache``)
    or ``hf_knockout`` (one HF SDPA forward with a 4D mask in the knocked-out layers of the
    first configuration — every configuration costs a full forward the same). Prints the peak
    resident memory while the path runs and the baseline just before (the loaded model): their
    difference is the working memory the path adds."""
    torch.set_num_threads(args.threads)
    scale = args.scale[0]
    decoder, lm_head, backbone, embeds, configs = (
        synthtv_workload(args) if scale == "synthtv" else random_workload(args, scale))
    path = args.memory_child
    if path not in ("clean_hf", "hf_knockout"):
        del decoder, lm_head
    gc.collect()
    _release_freed_memory()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    base = rss_mb()
    with torch.inference_mode(), PeakRSS() as peak:
        if path == "fast":
            sweep(backbone, embeds, configs)
        elif path == "clean_tl":
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            cache = TransformerLensKeyValueCache.init_cache(backbone.cfg, backbone.cfg.device, 1)
            backbone(embeds, start_at_layer=0, past_kv_cache=cache)
        elif path == "clean_hf":
            set_attention(decoder, "sdpa")
            decoder(inputs_embeds=embeds, use_cache=True)
        else:
            set_attention(decoder, "sdpa")
            masks = LayerMasks(decoder)
            hf_sweep(decoder, lm_head, masks, embeds, configs[:1])
    out = {"peak_rss_mb": peak.peak, "base_rss_mb": base}
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["base_cuda_mb"] = base_cuda / 2**20
    print(json.dumps(out))


def run_scale(args, scale: str) -> dict:
    decoder, lm_head, backbone, embeds, configs = (
        synthtv_workload(args) if scale == "synthtv" else random_workload(args, scale))
    n, n_layers = embeds.shape[1], backbone.cfg.n_layers
    last = [c for c in configs if c.curve in LAST_CURVES]
    if args.last_all_centers and scale != "synthtv":
        # the "→ last" curves at every window centre (cheap on the fast path) while the rest of
        # the sweep keeps every --centers-stride-th; the full-forward peers' "→ last" time is
        # their mean time per configuration (the same for every configuration) × this count
        seg = SegmentMap.sequential(true_option=1, **SCALES[scale])
        last = [c for c in layer_sweep(paper_curves(seg), n_layers, k=args.k)
                if c.curve in LAST_CURVES]
    stride = args.stride_small if scale in ("small", "synthtv") else args.stride
    rounds = min(args.rounds, stride)
    peers = list(args.peers) if scale not in LONG_SCALES else list(args.long_peers)
    masks = LayerMasks(decoder)
    clock = Clock(args.device)
    ran: dict[str, list[int]] = {peer: [] for peer in peers}
    logits: dict[str, dict[int, torch.Tensor]] = {path: {} for path in ran}
    fast_logits = None

    def full_forward_peer(path: str, indices: list[int]) -> None:
        chunk = [configs[i] for i in indices]
        if path == "naive":
            with clock.time(path):
                out = sweep(backbone, embeds, chunk, method="naive")
        else:
            set_attention(decoder, path.removeprefix("hf_"))
            with clock.time(path):
                out = hf_sweep(decoder, lm_head, masks, embeds, chunk)
        ran[path] += indices
        logits[path].update({i: row.float().cpu() for i, row in zip(indices, out)})

    def clean_forwards(count: int) -> None:
        set_attention(decoder, "sdpa")
        for _ in range(count):
            with clock.time("hf_clean"):
                hf_clean(decoder, embeds)

    # Untimed warm-up of every path (allocator, kernel choice, weight preparation).
    for path in ran:
        full_forward_peer(path, [0])
        ran[path].clear()
    clean_forwards(1)
    sweep(backbone, embeds, configs[:2])
    clock.wall.clear(), clock.cpu.clear()

    paths = [*peers, "hf_clean", "fast"]
    for r in range(rounds):
        offset = r * stride // rounds
        indices = list(range(offset, len(configs), stride))
        for path in paths[r % len(paths):] + paths[:r % len(paths)]:
            if path == "fast":
                with clock.time("fast"):
                    out = sweep(backbone, embeds, configs)
                with clock.time("fast_last"):
                    sweep(backbone, embeds, last)
                fast_logits = out.float().cpu()
                del out
            elif path == "hf_clean":
                clean_forwards(args.clean_repeats)
            else:
                full_forward_peer(path, indices)
    masks.remove()

    def per_sweep(path: str, count: int, cpu: bool = False) -> float:
        total = (clock.cpu if cpu else clock.wall)[path]
        return total / len(ran[path]) * count

    result: dict = {"n_positions": n, "n_layers": n_layers, "n_configs": len(configs),
                    "n_last_configs": len(last), "rounds": rounds,
                    "peer_configs_timed": len(ran[peers[0]]) if peers else 0,
                    "peer_stride": stride, "peers": peers}
    fast_cells = recomputed_cells(configs, n, n_layers)
    forward_cells = n_layers * n
    last_cells = recomputed_cells(last, n, n_layers) if last else 0
    for cpu in (False, True):
        suffix = "_cpu_s" if cpu else "_s"
        times = clock.cpu if cpu else clock.wall
        fast = times["fast"] / rounds
        fast_last = times["fast_last"] / rounds
        for path in ran:
            result[f"{path}{suffix}"] = round(per_sweep(path, len(configs), cpu), 3)
            result[f"{path}_last{suffix}"] = round(per_sweep(path, len(last), cpu), 3)
        result[f"fast{suffix}"] = round(fast, 3)
        result[f"fast_last{suffix}"] = round(fast_last, 3)
        clean = times["hf_clean"] / (rounds * args.clean_repeats)
        result[f"hf_clean_forward{suffix}"] = round(clean, 4)
        # The ideal: the recomputed (layer, position) cells of the sweep, each at the cost of a
        # cell of one *clean* forward (HF SDPA, its causal kernel, no mask).
        result[f"ideal{suffix}"] = round(clean * fast_cells / forward_cells, 3)
        result[f"fast_over_ideal{'_cpu' if cpu else ''}"] = round(
            fast / (clean * fast_cells / forward_cells), 3)
        if last:
            result[f"ideal_last{suffix}"] = round(clean * last_cells / forward_cells, 4)
            result[f"fast_last_over_ideal{'_cpu' if cpu else ''}"] = round(
                fast_last / (clean * last_cells / forward_cells), 3)
    result["cells_speedup"] = round(len(configs) * forward_cells / fast_cells, 2)
    if last:
        result["last_cells_speedup"] = round(len(last) * forward_cells / last_cells, 2)
    for peer in ran:
        for cpu in (False, True):
            prefix, suffix = ("cpu_", "_cpu_s") if cpu else ("", "_s")
            result[f"{prefix}speedup_vs_{peer}"] = round(
                result[f"{peer}{suffix}"] / result[f"fast{suffix}"], 2)
            result[f"{prefix}ideal_speedup_vs_{peer}"] = round(
                result[f"{peer}{suffix}"] / result[f"ideal{suffix}"], 2)
            if last:
                result[f"{prefix}last_speedup_vs_{peer}"] = round(
                    result[f"{peer}_last{suffix}"] / result[f"fast_last{suffix}"], 2)

    fast_p = fast_logits.softmax(-1)
    differences, argmax_equal = {}, True
    for peer in ran:
        indices = sorted(logits[peer])
        peer_p = torch.stack([logits[peer][i] for i in indices]).softmax(-1)
        differences[peer] = float((fast_p[indices] - peer_p).abs().max())
        argmax_equal &= bool(torch.equal(fast_p[indices].argmax(-1), peer_p.argmax(-1)))
    hf_peers = [peer for peer in ("hf_eager", "hf_sdpa") if peer in ran]
    if hf_peers:
        result["max_abs_diff"] = max(differences[peer] for peer in hf_peers)
    if "hf_eager" in ran and "hf_sdpa" in ran:
        # float32 rounding between two exact implementations of this model, for scale
        indices = sorted(logits["hf_sdpa"])
        eager_p = torch.stack([logits["hf_eager"][i] for i in indices]).softmax(-1)
        sdpa_p = torch.stack([logits["hf_sdpa"][i] for i in indices]).softmax(-1)
        result["hf_eager_vs_hf_sdpa_max_abs_diff"] = float((eager_p - sdpa_p).abs().max())
    result["max_abs_diff_by_peer"] = differences
    result["argmax_equal"] = argmax_equal
    # how far the knockouts move the probabilities at all (a check is vacuous at 0)
    if ran:
        indices = sorted(logits[peers[0]])
        with torch.no_grad():
            clean_p = backbone(embeds, start_at_layer=0)[0, -1].float().softmax(-1).cpu()
        result["max_knockout_effect"] = float((fast_p[indices] - clean_p).abs().max())
    if not args.no_float64 and not args.device.startswith("cuda") and scale not in LONG_SCALES:
        result.update(float64_check(decoder, lm_head, backbone, embeds,
                                    configs[::args.float64_stride]))
    del decoder, lm_head, backbone, embeds, configs, last, logits
    gc.collect()
    if not args.no_memory:
        key = "cuda_mb" if args.device.startswith("cuda") else "rss_mb"
        peak, working = {}, {}
        for path in MEMORY_PATHS:
            measured = memory_child(args, scale, path)
            peak[path] = round(measured[f"peak_{key}"], 1)
            working[path] = round(measured[f"peak_{key}"] - measured[f"base_{key}"], 1)
        result["peak_mb"] = peak
        result["working_mb"] = working
        result["fast_peak_over_clean"] = round(peak["fast"] / peak["clean_tl"], 3)
        for other in ("clean_tl", "clean_hf", "hf_knockout"):
            result[f"fast_working_over_{other}"] = round(working["fast"] / working[other], 3)
    return result


def float64_check(decoder, lm_head, backbone, embeds, configs) -> dict[str, float]:
    """Max |Δp| of the fast sweep in float64 against the naive sweep (one HookedTransformer
    forward per configuration) and against HF SDPA with 4D masks, all in float64.

    Against the naive sweep: float64 rounding (~1e-13) if the fast path computes exactly the
    backbone. HF casts to float32 inside its RMSNorm and rotary embedding (and eager attention's
    softmax) whatever the model's dtype, so against HF the difference stays at float32 rounding.
    """
    import copy

    decoder, lm_head = copy.deepcopy(decoder).double(), copy.deepcopy(lm_head).double()
    backbone = copy.deepcopy(backbone).to(torch.float64, print_details=False)
    embeds = embeds.double()
    masks = LayerMasks(decoder)
    set_attention(decoder, "sdpa")
    hf = hf_sweep(decoder, lm_head, masks, embeds, configs).softmax(-1)
    masks.remove()
    fast = sweep(backbone, embeds, configs).softmax(-1)
    naive = sweep(backbone, embeds, configs, method="naive").softmax(-1)
    return {"float64_max_abs_diff_vs_naive": float((fast - naive).abs().max()),
            "float64_max_abs_diff_vs_hf_sdpa": float((fast - hf).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", nargs="+", choices=[*SCALES, "synthtv"], default=["small"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=128, help="model width (4096 = 7B)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--n-layers", type=int, default=32)
    parser.add_argument("--k", type=int, default=9, help="window size (paper and CLI: 9)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--init-std", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--stride", type=int, default=16,
                        help="full-forward peers run every stride-th configuration (paper scale)")
    parser.add_argument("--stride-small", type=int, default=4,
                        help="the same at the small and SynthTV scales")
    parser.add_argument("--peers", nargs="*", default=["hf_eager", "hf_sdpa", "naive"],
                        choices=["hf_eager", "hf_sdpa", "naive"],
                        help="full-forward peers at the small, paper and SynthTV scales")
    parser.add_argument("--long-peers", nargs="*", default=["hf_sdpa"],
                        choices=["hf_eager", "hf_sdpa", "naive"],
                        help="full-forward peers at the long scales")
    parser.add_argument("--centers-stride", type=int, default=1,
                        help="every path sweeps every n-th window centre only (1: all; a "
                             "cheaper long-scale run, every ratio on the same subset)")
    parser.add_argument("--last-all-centers", action="store_true",
                        help="the \"→ last\" curves at every window centre whatever "
                             "--centers-stride (their full-forward peers' time is the mean time "
                             "per configuration × their count)")
    parser.add_argument("--clean-repeats", type=int, default=2,
                        help="clean HF forwards per round (the ideal bound's unit)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--no-float64", action="store_true",
                        help="skip the float64 exactness check (CPU only)")
    parser.add_argument("--float64-stride", type=int, default=32,
                        help="the float64 check runs every n-th configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        run_memory_child(args)
        return
    import transformers

    report = {"device": args.device, "dtype": args.dtype, "d_model": args.d_model,
              "centers_stride": args.centers_stride, "last_all_centers": args.last_all_centers, "argv": sys.argv[1:],
              "threads": args.threads, "k": args.k, "torch": torch.__version__,
              "transformers": transformers.__version__, "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "scales": {}}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    for scale in args.scale:
        report["scales"][scale] = run_scale(args, scale)
    line = json.dumps(report)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
