"""The paper's analyses over a loaded VideoLLM, producing tidy result rows.

Each analysis takes a :class:`~mapflow_tl.models.videollm.VideoLLM` and prepared samples
(:class:`~mapflow_tl.models.videollm.Prepared`) and yields plain dict rows — one row per sample ×
curve × layer (or the analysis' natural unit) — which :mod:`mapflow_tl.runs` writes to disk and
:mod:`mapflow_tl.report` plots. Definitions follow Map the Flow §2:

- predicted answer: the model's own next token at the last position (argmax over the vocabulary);
  ground truth: the true option's letter token; correct when they are equal;
- relative change: ``(p_knockout − p_base) / p_base × 100``, for the predicted and the ground-truth
  token; accuracy per layer: the fraction of samples whose knocked-out prediction is correct;
- sample modes: ``correct`` (only samples the model answers correctly, the paper's default),
  ``wrong``, ``all``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from . import edges as E
from .circuits import Circuit
from .edges import Edges
from .engine import layer_sweep, sweep
from .hooks import PathwaySpec, knockout
from .layers import early_to_middle_layers
from .lens import project, residual_stream
from .metrics import relative_change
from .schema import SAMPLE_MODES, sample_fields
from .models.videollm import Prepared, VideoLLM

__all__ = [
    "SAMPLE_MODES",
    "base_prediction",
    "select",
    "flow_sweep",
    "accuracy_by_layer",
    "probability_trace",
    "video_lens",
    "keyword_frequency",
    "prune",
    "attention_to_frames",
    "crossframe_knockout",
    "early_to_middle_layers",
]


def base_prediction(vlm: VideoLLM, x: Prepared) -> dict[str, Any]:
    """The clean run's answer: predicted token, its probability, the ground-truth probability."""
    probabilities = vlm.run_with_hooks(x)[0, -1].float().softmax(-1)
    predicted = int(probabilities.argmax())
    truth = x.answer_token
    return {
        "base_token": predicted,
        "base_p_pred": float(probabilities[predicted]),
        "base_p_true": None if truth is None else float(probabilities[truth]),
        "base_correct": None if truth is None else predicted == truth,
        "base_option": int(probabilities[x.answer_ids.to(probabilities.device)].argmax()),
    }


def select(base: dict[str, Any], mode: str) -> bool:
    """Whether a sample with this clean prediction takes part under ``mode``."""
    if mode not in SAMPLE_MODES:
        raise ValueError(f"sample mode must be one of {SAMPLE_MODES}, got {mode!r}")
    if mode == "all":
        return True
    if base["base_correct"] is None:
        raise ValueError("sample mode 'correct'/'wrong' needs samples with a known answer; "
                         "use mode='all'")
    return base["base_correct"] == (mode == "correct")


def flow_sweep(
    vlm: VideoLLM,
    x: Prepared,
    circuit: Circuit,
    *,
    k: int = 9,
    style: str = "center",
    method: str = "fast",
    base: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Information-flow sweep of one sample (Map the Flow §2): for each curve of ``circuit`` and
    each window centre, knock the curve's edges out in the window and record base and
    knocked-out probabilities of the predicted and ground-truth tokens, their relative change
    ×100 and the new answer. One row per curve × layer."""
    base = base or base_prediction(vlm, x)
    n_layers = vlm.n_layers
    curves = circuit.build_curves(x.segments, n_layers)
    configs = layer_sweep(curves, n_layers, k=k, style=style)
    probabilities = sweep(vlm.backbone, x.embeds, configs, method=method).float().softmax(-1)
    truth = x.answer_token
    option_ids = x.answer_ids.to(probabilities.device)
    rows = []
    for config, p in zip(configs, probabilities):
        token = int(p.argmax())
        p_pred = float(p[base["base_token"]])
        p_true = None if truth is None else float(p[truth])
        rows.append({
            **sample_fields(x), "circuit": circuit.name, "curve": config.curve,
            "layer": config.center, "layers": list(config.layers), "k": k, "style": style,
            **base,
            "p_pred": p_pred, "p_true": p_true,
            "change_pred": relative_change(p_pred, base["base_p_pred"]),
            "change_true": None if truth is None or not base["base_p_true"]
            else relative_change(p_true, base["base_p_true"]),
            "token": token, "option": int(p[option_ids].argmax()),
            "correct": None if truth is None else token == truth,
            "edges": config.edges.count(x.n_positions),
        })
    return rows


def accuracy_by_layer(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Accuracy per (curve, layer) over flow-sweep rows: the fraction of knocked-out
    predictions that equal the ground truth."""
    totals: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        if row["correct"] is None:
            continue
        entry = totals.setdefault((row["curve"], row["layer"]), [0, 0])
        entry[0] += bool(row["correct"])
        entry[1] += 1
    return {key: hits / count for key, (hits, count) in totals.items()}


def probability_trace(vlm: VideoLLM, x: Prepared) -> list[dict[str, Any]]:
    """Answer-probability tracing (Finding 3): logit lens at the last position per layer, the
    probability of every option's letter, marked true or false. One row per layer × option."""
    residual = residual_stream(vlm.backbone, x.embeds, [x.n_positions - 1])[:, 0]
    probabilities = project(vlm.backbone, residual).float().softmax(-1)
    probabilities = probabilities[:, x.answer_ids.to(probabilities.device)]
    rows = []
    for layer in range(vlm.n_layers):
        for option, p in enumerate(probabilities[layer].tolist()):
            rows.append({**sample_fields(x), "layer": layer, "option": option,
                         "is_true": x.answer == option, "probability": p})
    return rows


def _normalise(token: str) -> str:
    return token.replace("▁", " ").replace("Ġ", " ").strip().lower()


def video_lens(vlm: VideoLLM, x: Prepared, *, k: int = 5, norm: bool = False,
               matrix: str = "embed") -> list[dict[str, Any]]:
    """Logit Lens on video tokens (Finding 2): the top-k tokens of every video position in every
    layer — by default the paper's lens, the input embedding matrix without the final norm.
    One row per layer × video position."""
    seg = x.segments
    positions = [p for frame in seg.frames for p in frame.positions]
    if not positions:
        raise ValueError("this sample has no video frames to read with the lens")
    stream = residual_stream(vlm.backbone, x.embeds, positions)
    rows = []
    for layer in range(vlm.n_layers):
        logits = project(vlm.backbone, stream[layer], norm=norm, matrix=matrix)
        top = logits.float().softmax(-1).topk(k, dim=-1)
        for index, position in enumerate(positions):
            t, h, w = seg.frame_of(position)
            ids = top.indices[index].tolist()
            rows.append({**sample_fields(x), "layer": layer, "position": position, "frame": t,
                         "h": h, "w": w, "top_ids": ids,
                         "top_tokens": [_normalise(s) for s in
                                        vlm.tokenizer.convert_ids_to_tokens(ids)],
                         "top_probs": top.values[index].tolist()})
    return rows


def keyword_frequency(rows: Iterable[dict[str, Any]], spatial: Sequence[str],
                      temporal: Sequence[str], *, top: int = 1) -> list[dict[str, Any]]:
    """Per layer: how many video positions have a spatial / temporal keyword among their
    ``top`` lens tokens (Finding 2's keyword count), over all rows given."""
    spatial_set = {w.lower() for w in spatial}
    temporal_set = {w.lower() for w in temporal}
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        entry = counts.setdefault(row["layer"], {"spatial": 0, "temporal": 0, "positions": 0})
        tokens = row["top_tokens"][:top]
        entry["spatial"] += any(t in spatial_set for t in tokens)
        entry["temporal"] += any(t in temporal_set for t in tokens)
        entry["positions"] += 1
    return [{"layer": layer, **entry} for layer, entry in sorted(counts.items())]


def video_region(x: Prepared) -> Edges:
    """The random baseline's region: causal edges among positions from the video start to the
    last token (Map the Flow §2)."""
    seg = x.segments
    start = seg.video.start if seg.video is not None else 0
    positions = range(start, x.n_positions)
    return Edges(src=positions, dst=positions, name="video start → last")


def prune(vlm: VideoLLM, x: Prepared, circuit: Circuit, *, seed: int = 0,
          base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Effective-pathway pruning (Finding 4) of one sample: the answer of the full model, of the
    circuit's pathway spec and of a random pruning that blocks as many edges per layer, with the
    edge accounting (kept / total over all layers). One row per variant."""
    base = base or base_prediction(vlm, x)
    spec = circuit.build_pathway(x.segments, vlm.n_layers)
    n = x.n_positions
    variants: list[tuple[str, PathwaySpec | None]] = [
        ("full", None), ("pathway", spec),
        ("random", spec.random_like(video_region(x), n, seed=seed)),
    ]
    truth = x.answer_token
    rows = []
    for variant, variant_spec in variants:
        hooks = [] if variant_spec is None else variant_spec.hooks()
        probabilities = vlm.run_with_hooks(x, hooks)[0, -1].float().softmax(-1)
        token = int(probabilities.argmax())
        kept, total = (variant_spec.edge_accounting(n) if variant_spec is not None
                       else (vlm.n_layers * E.causal_edge_count(n),) * 2)
        rows.append({**sample_fields(x), "circuit": circuit.name, "variant": variant,
                     "seed": seed if variant == "random" else None, "token": token,
                     "correct": None if truth is None else token == truth,
                     "p_true": None if truth is None else float(probabilities[truth]),
                     "kept_edges": kept, "total_edges": total, "retained": kept / total})
    return rows


def attention_to_frames(
    vlm: VideoLLM,
    x: Prepared,
    queries: Sequence[int] | None = None,
    *,
    knockout_layers: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Attention from chosen query positions (default: the question without options) to every
    video token, averaged over heads and queries, per layer — for the clean model and under
    cross-frame knockout in ``knockout_layers`` (default: the early-to-middle half). One row per
    condition × layer × video position, with the token's (frame, h, w)."""
    seg = x.segments
    if queries is None:
        if seg.question is None:
            raise ValueError("no queries given and the sample has no 'question' segment")
        queries = list(seg.question.positions)
    queries = list(queries)
    if not queries or min(queries) < 0 or max(queries) >= x.n_positions:
        raise ValueError(f"attention queries must lie in [0, {x.n_positions}), got {queries}")
    video = [p for frame in seg.frames for p in frame.positions]
    layers = early_to_middle_layers(vlm.n_layers) if knockout_layers is None else knockout_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(vlm.n_layers)]
    rows = []
    for condition, hooks in (("baseline", []),
                             ("cross-frame knockout", knockout(E.cross_frame(seg), layers))):
        store: dict[str, torch.Tensor] = {}

        def keep(pattern, hook, store=store):
            store[hook.name] = pattern[0][:, queries][:, :, video].float().mean(dim=(0, 1))

        vlm.run_with_hooks(x, hooks + [(name, keep) for name in names], return_type=None)
        for layer, name in enumerate(names):
            for position, weight in zip(video, store[name].tolist()):
                t, h, w = seg.frame_of(position)
                rows.append({**sample_fields(x), "condition": condition, "layer": layer,
                             "position": position, "frame": t, "h": h, "w": w,
                             "attention": weight})
    return rows


def crossframe_knockout(vlm: VideoLLM, x: Prepared, layers: Sequence[int] | None = None, *,
                        model: str = "") -> list[dict[str, Any]]:
    """Finding 1 for one sample: the answer with and without cross-frame attention (every frame's
    tokens blocked from the tokens of earlier frames) in ``layers`` (default: the early-to-middle
    half, :func:`~mapflow_tl.layers.early_to_middle_layers`, as the paper's layers 1–16 of 32).
    One row per condition ("base", "cross-frame knockout"); ``model`` labels the rows."""
    layers = early_to_middle_layers(vlm.n_layers) if layers is None else list(layers)
    rows = []
    for condition, hooks in (("base", []), ("cross-frame knockout",
                                            knockout(E.cross_frame(x.segments), layers))):
        probabilities = vlm.run_with_hooks(x, hooks)[0, -1].float().softmax(-1)
        token = int(probabilities.argmax())
        rows.append({**sample_fields(x), "model": model, "condition": condition,
                     "layers": list(layers), "token": token,
                     "correct": None if x.answer is None else token == x.answer_token})
    return rows
