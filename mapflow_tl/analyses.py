"""The paper's analyses over a loaded VideoLLM, producing tidy result rows.

Each analysis takes a :class:`~mapflow_tl.models.videollm.VideoLLM` and a prepared sample
(:class:`~mapflow_tl.models.videollm.Prepared`), ``(vlm, x)``, and returns plain dict rows — one
row per sample × curve × layer (or the analysis' natural unit), with exactly the columns of its
table in :mod:`mapflow_tl.schema` — which :mod:`mapflow_tl.runs` writes and :mod:`mapflow_tl.report`
plots. Definitions follow the official Map-the-Flow code by default (docs/paper_parity.md gives
each with its official file:line and the option for the other behaviour):

- predicted answer: the argmax over the full vocabulary at the last position; ground-truth
  token: the true option's letter as the model emits it after the prompt (``x.answer_token``);
- correct (``correctness="official"``): the decoded predicted token against the true option's
  bare letter as the official code compares them — lower-cased in the clean run, case-sensitive
  under knockout, no whitespace stripped (SentencePiece's "▁A" counts, byte-level " A" does
  not); ``"decoded-letter"``: ignoring case and surrounding whitespace in both runs;
  ``"token-id"``: the exact letter token;
- relative change: ``(p_knockout − p_base) / p_base × 100`` under the full-vocabulary softmax, for
  the predicted token and for the ground-truth token (each divided by its own base probability);
- accuracy under knockout: hits over all evaluated samples (:func:`accuracy_by_layer`);
- sample modes: ``correct`` (the paper's default), ``wrong``, ``all``.

The analyses measure; they never need gradients, so each runs under ``torch.no_grad()``
whatever the caller's mode (the model's own methods, ``vlm(x)``, ``run_with_hooks``,
``run_with_cache``, let gradients flow as TransformerLens does).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from . import edges
from .circuits import Circuit, load_circuit
from .edges import Edges
from .engine import KnockoutConfig, layer_sweep, sweep_samples
from .errors import InputError
from .finite import require_finite
from .hooks import RANDOM_BASELINES, PathwaySpec, knockout
from .keywords import reduce_keywords
from .layers import (attention_map_layers, check_layer, default_window_size,
                     early_to_middle_layers)
from .lens import answer_probability_trace, iter_logit_lens, top_tokens
from .metrics import (CORRECTNESS, INTEGRATION_CIRCUIT, INTEGRATION_SIMILAR, VERDICTS,
                      accuracy_by_layer, base_accuracy, checkpoint_shares, diagnose,
                      integration_profiles, is_correct, official_correct, relative_change)
from .schema import SAMPLE_MODES, sample_fields
from .models.prompt import option_label
from .models.videollm import Prepared, VideoLLM

__all__ = [
    "SAMPLE_MODES",
    "CORRECTNESS",
    "base_prediction",
    "grade",
    "select",
    "flow_sweep",
    "flow_sweeps",
    "head_sweep",
    "head_sweeps",
    "accuracy_by_layer",
    "base_accuracy",
    "probability_trace",
    "video_lens",
    "keyword_frequency",
    "keyword_counts",
    "keyword_bins",
    "video_region",
    "random_ratio",
    "prune",
    "attention_to_frames",
    "attention_queries",
    "ATTENTION_VIEWS",
    "crossframe_knockout",
    "early_to_middle_layers",
    "open_ended_sample",
    "open_ended_flow",
    "VERDICTS",
    "diagnosis_evidence",
    "integration_profiles",
    "diagnose",
    "checkpoint_shares",
    "evaluate",
    "MAX_NEW_TOKENS",
]

#: The clean run inside a sweep: an empty edge set gets the clean logits without a forward.
_CLEAN = KnockoutConfig("clean", Edges.empty(), (0,))


def _decode(vlm: VideoLLM, token: int) -> str:
    """One token decoded on its own (as the official code decodes the argmax)."""
    return vlm.tokenizer.decode([int(token)])


def grade(vlm: VideoLLM, x: Prepared, token: int, correctness: str = "official", *,
          knockout: bool = False) -> bool | None:
    """Whether predicted ``token`` answers ``x`` correctly (None without a known answer), in
    the clean run or, with ``knockout=True``, under a knockout:

    - ``"official"`` (default): the token decoded on its own against the true option's bare
      letter ("A", as the official ``example["answer"][1]``), lower-cased in the clean run and
      case-sensitive under knockout, no whitespace stripped
      (:func:`~mapflow_tl.metrics.official_correct`);
    - ``"decoded-letter"``: the decoded token against the letter ignoring case and surrounding
      whitespace, in both runs;
    - ``"token-id"``: exactly the ground-truth token."""
    if correctness not in CORRECTNESS:
        raise InputError(f"correctness must be one of {CORRECTNESS}, got {correctness!r}")
    truth = x.answer_token
    if truth is None:
        return None
    if correctness == "token-id":
        return int(token) == truth
    if correctness == "official":
        return official_correct(_decode(vlm, token), option_label(x.answer), knockout=knockout)
    return is_correct(_decode(vlm, token), _decode(vlm, truth))


def _last_probabilities(vlm: VideoLLM, x: Prepared, hooks=(), *,
                        what: str = "the clean forward") -> torch.Tensor:
    """Full-vocabulary probabilities at the last position of a forward with ``hooks``; a NaN or
    inf logit stops here, naming where it first appears (:func:`~mapflow_tl.finite.require_finite`),
    instead of becoming an argmax of token 0 and a NaN probability."""
    hooks = list(hooks)
    logits = vlm.run_with_hooks(x, hooks)[0, -1]
    require_finite(logits, vlm.backbone, x.embeds, hooks, what=f"the logits of {what}",
                   sample=_sample_id(x))
    return logits.float().softmax(-1)


def _sample_id(x: Prepared) -> str:
    return str(x.meta.get("id", "") or "")


@torch.no_grad()
def base_prediction(vlm: VideoLLM, x: Prepared, *,
                    correctness: str = "official") -> dict[str, Any]:
    """The clean run's answer (the ``BASE_COLUMNS``): predicted token (argmax over the full
    vocabulary at the last position), its probability, the ground-truth token's probability,
    whether it is correct (see :func:`grade`) and the most probable option."""
    if not len(x.answer_ids):
        raise InputError(f"sample {x.meta.get('id', '')!r} has no options (an open-ended "
                         f"prompt): the analyses read the option letters' probabilities; give "
                         f"the sample its options")
    probabilities = _last_probabilities(vlm, x)
    predicted = int(probabilities.argmax())
    truth = x.answer_token
    return {
        "base_token": predicted,
        "base_p_pred": float(probabilities[predicted]),
        "base_p_true": None if truth is None else float(probabilities[truth]),
        "base_correct": grade(vlm, x, predicted, correctness),
        "base_option": int(probabilities[x.answer_ids.to(probabilities.device)].argmax()),
    }


def select(base: dict[str, Any], mode: str) -> bool:
    """Whether a sample with this clean prediction takes part under ``mode``."""
    if mode not in SAMPLE_MODES:
        raise InputError(f"sample mode must be one of {SAMPLE_MODES}, got {mode!r}")
    if mode == "all":
        return True
    if base["base_correct"] is None:
        raise InputError("sample mode 'correct'/'wrong' needs samples with a known answer; "
                         "use mode='all'")
    return base["base_correct"] == (mode == "correct")


def _change(p: float | None, base: float | None) -> float | None:
    """Relative change, None where the base probability is 0 or unknown (official divides by
    a bf16 probability that can be 0.0)."""
    if p is None or not base:
        return None
    return relative_change(base=base, knockout=p)


def flow_sweep(
    vlm: VideoLLM,
    x: Prepared,
    circuit: Circuit | str,
    *,
    k: int | None = None,
    style: str = "center",
    centers: Iterable[int] | None = None,
    method: str = "fast",
    base: dict[str, Any] | None = None,
    correctness: str = "official",
) -> list[dict[str, Any]]:
    """Information-flow sweep of one sample (Map the Flow §2): for each curve of ``circuit`` and
    each window centre (``centers``, default every layer), knock the curve's edges out in the
    window of ``k`` layers (default :func:`~mapflow_tl.layers.default_window_size`) and record
    the knocked-out probabilities of the clean run's predicted token and of the ground-truth
    token, their relative change ×100 (each against its own clean probability), and the new
    answer with its correctness. One row per curve × centre (``flow`` table). ``circuit`` is a
    :class:`~mapflow_tl.circuits.Circuit` or its name (``"cross-frame"``) or file.
    :func:`flow_sweeps` runs several samples and circuits at once."""
    return flow_sweeps(vlm, [x], [circuit], k=k, style=style, centers=centers, method=method,
                       bases=None if base is None else [base], correctness=correctness)[0]


@torch.no_grad()
def flow_sweeps(
    vlm: VideoLLM,
    xs: Sequence[Prepared],
    circuits: Sequence[Circuit | str] | Circuit | str,
    *,
    k: int | None = None,
    style: str = "center",
    centers: Iterable[int] | None = None,
    method: str = "fast",
    bases: Sequence[dict[str, Any] | None] | None = None,
    correctness: str = "official",
    max_samples: int | None = None,
) -> list[list[dict[str, Any]]]:
    """:func:`flow_sweep` of every sample in ``xs`` under every circuit: the rows of each sample
    (its circuits' rows in order), computed as one knockout sweep
    (:func:`~mapflow_tl.engine.sweep_samples`), so that the samples and circuits share the clean
    forwards and layer calls; at most ``max_samples`` samples share them at a time. Circuits
    may be given by name."""
    k = default_window_size(vlm.n_layers) if k is None else k
    swept = _sweep_circuits(vlm, xs, circuits, "flow_sweeps", k=k, style=style, centers=centers,
                            heads=None, method=method, bases=bases, correctness=correctness,
                            max_samples=max_samples)
    return [_flow_rows(vlm, x, sample, probabilities, k, style, base, correctness)
            for x, sample, probabilities, base in swept]


def _sweep_circuits(vlm: VideoLLM, xs: Sequence[Prepared],
                    circuits: Sequence[Circuit | str] | Circuit | str, caller: str, *, k: int,
                    style: str, centers: Iterable[int] | None, heads: list[int] | None,
                    method: str, bases: Sequence[dict[str, Any] | None] | None,
                    correctness: str, max_samples: int | None) -> list[tuple]:
    """The one knockout sweep behind :func:`flow_sweeps` and :func:`head_sweeps`: every
    circuit's curves of every sample as window (× head) configurations, swept together by the
    engine; per sample ``(x, [(circuit name, config)], probabilities [config, d_vocab], base)``.
    Non-finite logits stop here, naming where they appear."""
    circuits = _circuits(circuits)
    if isinstance(xs, Prepared):
        one = caller.removesuffix("s")
        raise InputError(f"{caller} takes a list of prepared samples; for one use "
                         f"{one}(vlm, x, circuit)")
    n_layers = vlm.n_layers
    centers = None if centers is None else list(centers)
    bases = [None] * len(xs) if bases is None else list(bases)
    if len(bases) != len(xs):
        raise InputError(f"{caller} needs one base per sample, got {len(bases)} for "
                         f"{len(xs)} samples")
    bases = [base or base_prediction(vlm, x, correctness=correctness)
             for x, base in zip(xs, bases)]
    labelled = [[(circuit.name, config) for circuit in circuits
                 for config in layer_sweep(circuit.build_curves(x.segments, n_layers), n_layers,
                                           k=k, style=style, centers=centers, heads=heads)]
                for x in xs]
    logits = sweep_samples(vlm.backbone, [x.embeds for x in xs],
                           [[config for _, config in sample] for sample in labelled],
                           method=method, max_samples=max_samples)
    for x, sample, sample_logits in zip(xs, labelled, logits):
        _require_finite_sweep(vlm, x, sample, sample_logits)
    return [(x, sample, sample_logits.float().softmax(-1), base)
            for x, sample, sample_logits, base in zip(xs, labelled, logits, bases)]


def _require_finite_sweep(vlm: VideoLLM, x: Prepared, labelled,
                          logits: torch.Tensor) -> None:
    """Stop at a sweep whose logits hold NaN or inf, naming the first such configuration and
    where its forward first goes non-finite (rerun alone, the clean forward first: a NaN
    checkpoint is named as such, not as a knockout's effect)."""
    bad = ~torch.isfinite(logits).all(dim=-1)
    if not bool(bad.any()):
        return
    circuit, config = labelled[int(bad.nonzero()[0])]
    hooks = config.hooks(vlm.n_layers)
    clean = vlm.run_with_hooks(x)[0, -1]
    require_finite(clean, vlm.backbone, x.embeds, (), what="the logits of the clean forward",
                   sample=_sample_id(x))
    what = (f"the logits of the knockout sweep's configuration {circuit!r} curve "
            f"{config.curve!r} in layers {list(config.layers)}"
            + ("" if config.heads is None else f" heads {list(config.heads)}"))
    rerun = vlm.run_with_hooks(x, hooks)[0, -1]
    require_finite(rerun, vlm.backbone, x.embeds, hooks, what=what, sample=_sample_id(x))
    # the rerun alone is finite: the sweep's batched forward was not
    require_finite(logits, vlm.backbone, x.embeds, hooks, what=what + " (batched in the sweep)",
                   sample=_sample_id(x))


def head_sweep(
    vlm: VideoLLM,
    x: Prepared,
    circuit: Circuit | str,
    *,
    k: int = 1,
    centers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    method: str = "fast",
    base: dict[str, Any] | None = None,
    correctness: str = "official",
) -> list[dict[str, Any]]:
    """Head-resolved knockout sweep of one sample: for each curve of ``circuit``, each window
    centre (``centers``, default every layer) and each attention head (``heads``, default all),
    knock the curve's edges out in the window of ``k`` layers (default 1: the layer alone) in
    that one head and record what :func:`flow_sweep` records — the knocked-out probabilities of
    the clean run's predicted and of the ground-truth token, their relative change ×100, the new
    answer and its correctness. One row per curve × centre × head (``heads`` table): a layer ×
    head map per pathway of which heads carry it. :func:`head_sweeps` runs several samples."""
    return head_sweeps(vlm, [x], [circuit], k=k, centers=centers, heads=heads, method=method,
                       bases=None if base is None else [base], correctness=correctness)[0]


@torch.no_grad()
def head_sweeps(
    vlm: VideoLLM,
    xs: Sequence[Prepared],
    circuits: Sequence[Circuit | str] | Circuit | str,
    *,
    k: int = 1,
    centers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    method: str = "fast",
    bases: Sequence[dict[str, Any] | None] | None = None,
    correctness: str = "official",
    max_samples: int | None = None,
) -> list[list[dict[str, Any]]]:
    """:func:`head_sweep` of every sample in ``xs`` under every circuit, computed as one knockout
    sweep (:func:`~mapflow_tl.engine.sweep_samples`): each head's configurations share the clean
    forwards and layer calls with the other heads' (each batch element carries its own head)."""
    n_heads = vlm.backbone.cfg.n_heads
    heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad or not heads:
        raise InputError(f"heads {bad or heads} are not heads of this model: give 0-based head "
                         f"indices below {n_heads}, or None for every head")
    swept = _sweep_circuits(vlm, xs, circuits, "head_sweeps", k=k, style="center",
                            centers=centers, heads=heads, method=method, bases=bases,
                            correctness=correctness, max_samples=max_samples)
    out = []
    for x, sample, probabilities, base in swept:
        rows = []
        for row, (circuit, config) in zip(
                _flow_rows(vlm, x, sample, probabilities, k, "center", base, correctness),
                sample):
            rows.append({
                **sample_fields(x), "circuit": row["circuit"], "curve": row["curve"],
                "layer": row["layer"], "layers": row["layers"], "head": config.heads[0],
                **base, **{column: row[column] for column in (
                    "p_pred", "p_true", "change_pred", "change_true", "token", "correct")}})
        out.append(rows)
    return out


def _circuits(circuits: Sequence[Circuit | str] | Circuit | str) -> list[Circuit]:
    """Circuits as objects: a name or file is loaded (:func:`~mapflow_tl.circuits.load_circuit`);
    one circuit alone is a list of one."""
    if isinstance(circuits, (str, Circuit)):
        circuits = [circuits]
    return [load_circuit(c) if isinstance(c, str) else c for c in circuits]


def _flow_rows(vlm: VideoLLM, x: Prepared, labelled, probabilities: torch.Tensor, k: int,
               style: str, base: dict[str, Any], correctness: str) -> list[dict[str, Any]]:
    """The ``flow`` rows of one sample from its configurations' knocked-out probabilities."""
    truth = x.answer_token
    option_ids = x.answer_ids.to(probabilities.device)
    rows = []
    for (circuit, config), p in zip(labelled, probabilities):
        token = int(p.argmax())
        p_pred = float(p[base["base_token"]])
        p_true = None if truth is None else float(p[truth])
        rows.append({
            **sample_fields(x), "circuit": circuit, "curve": config.curve,
            "layer": config.center, "layers": list(config.layers), "k": k, "style": style,
            **base,
            "p_pred": p_pred, "p_true": p_true,
            "change_pred": _change(p_pred, base["base_p_pred"]),
            "change_true": _change(p_true, base["base_p_true"]),
            "token": token, "option": int(p[option_ids].argmax()),
            "correct": grade(vlm, x, token, correctness, knockout=True),
            "edges": config.edges.count(x.n_positions),
        })
    return rows


@torch.no_grad()
def probability_trace(vlm: VideoLLM, x: Prepared, *, norm: bool = False, top_k: int = 10,
                      base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Answer-probability tracing (Finding 3) through
    :func:`~mapflow_tl.lens.answer_probability_trace`: at the last position, per layer, the
    probability of every option's letter (``is_true`` marks the ground truth's), of the clean
    run's predicted token (``p_pred``), and the layer's ``top_k`` tokens. Official defaults:
    block outputs through ``W_U`` without the final norm at intermediate layers, the last layer
    the model's own output. One row per layer × option (``prob`` table)."""
    base = base or base_prediction(vlm, x)
    n_options = len(x.answer_ids)
    ids = torch.cat([x.answer_ids.cpu(), torch.tensor([base["base_token"]])])
    trace = answer_probability_trace(vlm, x, ids, norm=norm, top_k=top_k)
    rows = []
    for layer in range(vlm.n_layers):
        top_ids = trace.top_ids[layer].tolist()
        top = {"top_ids": top_ids, "top_tokens": [_decode(vlm, i) for i in top_ids],
               "top_probs": trace.top_probabilities[layer].tolist()}
        p_pred = float(trace.probabilities[layer, n_options])
        for option in range(n_options):
            rows.append({**sample_fields(x), "layer": layer, "option": option,
                         "token": int(x.answer_ids[option]), "is_true": x.answer == option,
                         "probability": float(trace.probabilities[layer, option]),
                         "p_pred": p_pred, **top})
    return rows


@torch.no_grad()
def video_lens(vlm: VideoLLM, x: Prepared, *, k: int = 5, read: str = "input",
               norm: bool = False, matrix: str = "embed", final_output: bool = True,
               fwd_hooks=()) -> list[dict[str, Any]]:
    """Logit Lens on video tokens (Finding 2): the ``k`` most probable tokens (full-vocabulary
    softmax, via :func:`~mapflow_tl.lens.top_tokens`) of every video position in every layer.

    Official defaults: "layer i" is the **input** of block i for i = 0 … L−2 (layer 0 = the
    embeddings) and the last entry the normed final output; the input embedding matrix, no
    norm; top-5 kept (of the official top-10, the same five), top-1 counted by
    :func:`keyword_frequency`. ``read="output"``, ``norm=True``, ``matrix="unembed"`` give
    other lenses. One row per layer × video position (``lens`` table); ``top_tokens`` are the
    tokens decoded one by one."""
    seg = x.segments
    positions = [p for frame in seg.frames for p in frame.positions]
    if not positions:
        raise InputError("this sample has no video frames to read with the lens")
    decoded: dict[int, str] = {}  # 1152 positions × 32 layers × k decodes: each id once

    def decode(token: int) -> str:
        if token not in decoded:
            decoded[token] = _decode(vlm, token)
        return decoded[token]

    rows = []
    for layer, logits in iter_logit_lens(vlm, x, positions, read=read, norm=norm,
                                         final_output=final_output, matrix=matrix,
                                         fwd_hooks=fwd_hooks):
        require_finite(logits, vlm.backbone, x.embeds, list(fwd_hooks),
                       what=f"the video-token lens logits at layer {layer}", sample=_sample_id(x))
        probabilities, ids = top_tokens(logits, k=k)
        for index, position in enumerate(positions):
            t, h, w = seg.frame_of(position)
            top_ids = ids[index].tolist()
            rows.append({**sample_fields(x), "layer": layer, "position": position, "frame": t,
                         "h": h, "w": w, "top_ids": top_ids,
                         "top_tokens": [decode(i) for i in top_ids],
                         "top_probs": probabilities[index].tolist()})
    return rows


def _reduced_groups(tokenizer: Any, spatial: Sequence[str],
                    temporal: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    return {"spatial": reduce_keywords(tokenizer, spatial),
            "temporal": reduce_keywords(tokenizer, temporal)}


def keyword_counts(rows: Iterable[dict[str, Any]], spatial: Sequence[str],
                   temporal: Sequence[str], *, tokenizer: Any) -> list[dict[str, Any]]:
    """Per keyword and layer: how many video positions (over all ``video_lens`` rows given) have
    the keyword as their top-1 lens token (Finding 2, official matching: the keyword reduced to
    its first sub-token by ``tokenizer``, compared exactly and case-sensitively with the decoded
    top-1 token, surrounding whitespace ignored). One row per (group, reduced keyword, layer)
    (``keyword_counts`` table)."""
    groups = _reduced_groups(tokenizer, spatial, temporal)
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        top1 = row["top_tokens"][0].strip()
        per_layer = counts.setdefault(row["layer"], {})
        per_layer[top1] = per_layer.get(top1, 0) + 1
    out = []
    for group, reduced in groups.items():
        for token, words in reduced.items():
            for layer in sorted(counts):
                out.append({"group": group, "keyword": token, "words": words, "layer": layer,
                            "count": counts[layer].get(token, 0)})
    return out


def keyword_bins(counts: Iterable[dict[str, Any]], *, size: int = 5) -> list[dict[str, Any]]:
    """:func:`keyword_counts` summed over bins of ``size`` layers: 0-based layers
    ``[i, i + size)`` labelled ``"i–j"`` with the layers it holds (0-based, as every layer
    number the library shows; the paper's figure labels the first bin "1–5"), the last bin cut
    at the model's depth. Five layers per bin, as the paper's labels say (the official plotting code sums six,
    ``.loc[kw, i:i+5]`` being inclusive — not reproduced). One row per (group, keyword, bin)
    (``keyword_bins`` table)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"bin size must be a whole number of layers ≥ 1, got {size!r}")
    bins: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in counts:
        first = row["layer"] // size * size
        entry = bins.setdefault((row["group"], row["keyword"], first), {
            "group": row["group"], "keyword": row["keyword"], "first_layer": first,
            "last_layer": first, "count": 0})
        entry["last_layer"] = max(entry["last_layer"], row["layer"])
        entry["count"] += row["count"]
    out = []
    for entry in bins.values():
        out.append({"group": entry["group"], "keyword": entry["keyword"],
                    "bin": f"{entry['first_layer']}–{entry['last_layer']}",
                    "first_layer": entry["first_layer"], "last_layer": entry["last_layer"],
                    "count": entry["count"]})
    return out


def keyword_frequency(rows: Iterable[dict[str, Any]], spatial: Sequence[str],
                      temporal: Sequence[str], *, tokenizer: Any) -> list[dict[str, Any]]:
    """Per layer: how many video positions have a spatial / temporal keyword as their top-1
    lens token (the matching of :func:`keyword_counts`), and how many positions were read. One
    row per layer (``keywords`` table)."""
    groups = _reduced_groups(tokenizer, spatial, temporal)
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        entry = counts.setdefault(row["layer"], {"spatial": 0, "temporal": 0, "positions": 0})
        top1 = row["top_tokens"][0].strip()
        entry["spatial"] += top1 in groups["spatial"]
        entry["temporal"] += top1 in groups["temporal"]
        entry["positions"] += 1
    return [{"layer": layer, **entry} for layer, entry in sorted(counts.items())]


def video_region(x: Prepared) -> Edges:
    """The random baseline's region: causal edges among positions from the video start through
    the last token, included (official: query and key both ≥ the video start)."""
    seg = x.segments
    start = seg.video.start if seg.video is not None else 0
    positions = range(start, x.n_positions)
    return Edges(src=positions, dst=positions, name="video start → last")


def random_ratio(circuit: Circuit, ratio: float | str | None = None) -> float | None:
    """The random baseline's ratio for ``circuit``: ``ratio`` when it is a number; by default
    (None) the paper's ratio the pathway circuit carries (its ``RANDOM_RATIO``, the official
    ``--random_block_ratio``: 0.58 / 0.63 / 0.6 / 0.42), or, for a circuit without one, None —
    each sample's own blocked fraction; ``"per-sample"`` asks for that fraction always."""
    if ratio is None:
        return circuit.random_ratio
    if ratio == "per-sample":
        return None
    if isinstance(ratio, str):
        raise InputError(f"random ratio must be a number in [0, 1], 'per-sample' or None (the "
                         f"circuit's), got {ratio!r}")
    return ratio


@torch.no_grad()
def prune(vlm: VideoLLM, x: Prepared, circuit: Circuit | str, *, seeds: Sequence[int] = (0, 1, 2),
          baseline: str = "official-uniform", ratio: float | str | None = None,
          base: dict[str, Any] | None = None,
          correctness: str = "official") -> list[dict[str, Any]]:
    """Effective-pathway pruning (Finding 4) of one sample: the answer of the full model, of the
    circuit's pathway spec and of the random-pruning baseline once per seed in ``seeds``
    (:meth:`~mapflow_tl.hooks.PathwaySpec.random_like`: ``baseline="official-uniform"`` blocks
    ``int(ratio × n(n+1)/2)`` edges in every layer, ``ratio`` by :func:`random_ratio`: the
    paper's ratio of the circuit, else the fraction the pathway blocks on this sample;
    ``"per-layer-matched"`` as many per layer as the pathway), drawn in :func:`video_region`
    afresh for every sample (the generator keyed by seed and sample id), with the edge
    accounting (kept / total over all layers). One row per variant and seed (``prune`` table);
    report the random rows as mean ± sd over seeds
    (:func:`~mapflow_tl.metrics.prune_summary`)."""
    [circuit] = _circuits(circuit)
    if baseline not in RANDOM_BASELINES:
        raise InputError(f"random baseline must be one of {RANDOM_BASELINES}, got {baseline!r}")
    seeds = list(seeds)
    if not seeds:
        raise InputError("prune needs at least one random seed (e.g. seeds=(0, 1, 2))")
    # per-layer-matched copies the pathway's counts: no ratio applies to it
    ratio = random_ratio(circuit, ratio) if baseline == "official-uniform" else (
        None if ratio in (None, "per-sample") else ratio)
    base = base or base_prediction(vlm, x, correctness=correctness)
    spec = circuit.build_pathway(x.segments, vlm.n_layers)
    n = x.n_positions
    region = video_region(x)
    sample = str(sample_fields(x)["sample"])
    variants: list[tuple[str, int | None, PathwaySpec | None]] = [
        ("full", None, None), ("pathway", None, spec)]
    variants += [("random", seed, spec.random_like(region, n, seed, baseline=baseline,
                                                   ratio=ratio, sample=sample))
                 for seed in seeds]
    truth = x.answer_token
    rows = []
    for variant, seed, variant_spec in variants:
        hooks = [] if variant_spec is None else variant_spec.hooks()
        probabilities = _last_probabilities(
            vlm, x, hooks, what=f"the {variant} variant" + ("" if seed is None else
                                                           f" (seed {seed})"))
        token = int(probabilities.argmax())
        kept, total = (variant_spec.edge_accounting(n) if variant_spec is not None
                       else (vlm.n_layers * edges.causal_edge_count(n),) * 2)
        rows.append({**sample_fields(x), "circuit": circuit.name, "variant": variant,
                     "seed": seed, "baseline": baseline if variant == "random" else None,
                     "token": token,
                     "correct": grade(vlm, x, token, correctness, knockout=variant != "full"),
                     "p_true": None if truth is None else float(probabilities[truth]),
                     "kept_edges": kept, "total_edges": total, "retained": kept / total})
    return rows


def attention_queries(vlm: VideoLLM, x: Prepared,
                      query: str | Sequence[int] = "question") -> tuple[str, list[int]]:
    """The query positions an attention map reads, and their label: ``"question"`` (the
    question without options), ``"last"`` (the last token, where the answer is read out),
    ``"word:<text>"`` (the question's tokens that spell ``<text>``, e.g. ``"word:first"``), or
    explicit positions."""
    seg = x.segments
    if not isinstance(query, str):
        positions = list(query)
        label = f"positions {positions[0]}…{positions[-1]}" if positions else "positions"
    elif query == "question":
        if seg.question is None:
            raise InputError("query 'question': the sample has no 'question' segment")
        positions, label = list(seg.question.positions), "question"
    elif query == "last":
        positions, label = [x.n_positions - 1], "last token"
    elif query.startswith("word:") and query[5:].strip():
        word = query[5:].strip()
        if seg.question is None:
            raise InputError(f"query {query!r}: the sample has no 'question' segment")
        ids = x.input_ids[0].tolist()
        spelled = {p: vlm.tokenizer.decode([ids[p]]).replace("▁", " ").strip().lower()
                   for p in seg.question.positions}
        positions = [p for p, text in spelled.items() if text and text == word.lower()]
        if not positions:
            raise InputError(f"query {query!r}: no token of the question spells {word!r}; its "
                             f"tokens: {[t for t in spelled.values() if t]}")
        label = f"'{word}'"
    else:
        raise InputError(f"query must be 'question', 'last', 'word:<text>' or positions, got "
                         f"{query!r}")
    if not positions or min(positions) < 0 or max(positions) >= x.n_positions:
        raise InputError(f"attention queries must lie in [0, {x.n_positions}), got {positions}")
    return label, positions


#: The attention figures: the official one (a map per question word, layers 11–20 of 32 scaled,
#: cross-frame knockout in every layer) and ours (the mean over the query positions, every
#: layer, knockout in the early-to-middle half).
ATTENTION_VIEWS = ("per-word", "mean")

#: Tokens the official figure never draws: ``if op in " /()ABCD.?": continue``
#: (analysis/attention_visualization.py:471) — a substring test, so the empty string, the option
#: letters, brackets and punctuation.
OFFICIAL_SKIPPED_QUERIES = " /()ABCD.?"


@torch.no_grad()
def attention_to_frames(
    vlm: VideoLLM,
    x: Prepared,
    queries: str | Sequence[int] = "question",
    *,
    view: str = "per-word",
    layers: Sequence[int] | None = None,
    knockout_layers: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Attention (mean over heads) from chosen query positions (:func:`attention_queries`: the
    question without options by default, the last token, a question word or explicit positions)
    to every video token, for the clean model and under cross-frame knockout. One row per
    condition × query × layer × video position, with the token's (frame, h, w).

    ``view="per-word"`` (official, analysis/attention_visualization.py:300-311, 323-348,
    468-517): one map per query token, labelled ``'word' @position``; for ``"question"`` the
    tokens the official figure skips (:data:`OFFICIAL_SKIPPED_QUERIES`) are left out; layers
    default to the official 0-based 10 … 19 of 32 scaled to the depth
    (:func:`~mapflow_tl.layers.attention_map_layers`); cross-frame knockout in **every**
    layer. The figure draws ``log10(5e-5 + attention)`` (official ``normalize_attention``);
    rows keep the attention itself. ``view="mean"``: one map averaged over the query positions,
    every layer, knockout in the early-to-middle half. ``layers`` and ``knockout_layers``
    override either view's choice."""
    if view not in ATTENTION_VIEWS:
        raise InputError(f"attention view must be one of {ATTENTION_VIEWS}, got {view!r}")
    seg = x.segments
    n_layers = vlm.n_layers
    label, positions = attention_queries(vlm, x, queries)
    if view == "per-word":
        ids = x.input_ids[0].tolist()
        groups = []
        for position in positions:
            text = vlm.tokenizer.decode([ids[position]]).replace("▁", " ").strip()
            if isinstance(queries, str) and queries == "question" \
                    and (not text or text in OFFICIAL_SKIPPED_QUERIES):
                continue
            groups.append((f"'{text}' @{position}", [positions.index(position)]))
        if not groups:
            raise InputError(f"query {queries!r}: every token is one the official figure skips "
                             f"({OFFICIAL_SKIPPED_QUERIES!r}); name a word with word:<text>")
        default_layers = attention_map_layers(n_layers)
        default_knockout = list(range(n_layers))
    else:
        groups = [(label, list(range(len(positions))))]
        default_layers = list(range(n_layers))
        default_knockout = early_to_middle_layers(n_layers)
    layers = default_layers if layers is None else [check_layer(l, n_layers) for l in layers]
    knocked = default_knockout if knockout_layers is None else list(knockout_layers)
    video = [p for frame in seg.frames for p in frame.positions]
    names = {f"blocks.{l}.attn.hook_pattern": l for l in layers}
    rows = []
    for condition, hooks in (("baseline", []),
                             ("cross-frame knockout", knockout(edges.cross_frame(seg), knocked))):
        store: dict[str, torch.Tensor] = {}

        def keep(pattern, hook, store=store):
            store[hook.name] = pattern[0][:, positions][:, :, video].float().mean(dim=0)

        def keep_output(residual, hook, store=store):
            store["output"] = residual

        # TransformerLens turns NaN attention patterns into 0 (its guard for fully masked rows),
        # so the patterns would look finite: the final residual stream carries any NaN instead
        vlm.run_with_hooks(x, hooks + [(name, keep) for name in names]
                           + [(f"blocks.{n_layers - 1}.hook_resid_post", keep_output)],
                           return_type=None)
        require_finite(store.pop("output"), vlm.backbone, x.embeds, hooks,
                       what=f"the values of the residual stream of the {condition} forward",
                       sample=_sample_id(x))
        for query, rows_of_query in groups:
            for name, layer in names.items():
                weights = store[name][rows_of_query].mean(dim=0).tolist()
                for position, weight in zip(video, weights):
                    t, h, w = seg.frame_of(position)
                    rows.append({**sample_fields(x), "query": query, "condition": condition,
                                 "layer": layer, "position": position, "frame": t, "h": h,
                                 "w": w, "attention": weight})
    return rows


@torch.no_grad()
def crossframe_knockout(vlm: VideoLLM, x: Prepared, layers: Sequence[int] | None = None, *,
                        model: str = "",
                        correctness: str = "official") -> list[dict[str, Any]]:
    """Finding 1 for one sample: the answer with and without cross-frame attention (every frame's
    tokens blocked from the tokens of earlier frames) in ``layers`` (default: the early-to-middle
    half, :func:`~mapflow_tl.layers.early_to_middle_layers`, as the paper's layers 1–16 of 32).
    One row per condition ("base", "cross-frame knockout"); ``model`` labels the rows."""
    layers = early_to_middle_layers(vlm.n_layers) if layers is None else list(layers)
    rows = []
    for condition, hooks in (("base", []), ("cross-frame knockout",
                                            knockout(edges.cross_frame(x.segments), layers))):
        probabilities = _last_probabilities(vlm, x, hooks, what=f"the {condition} forward")
        token = int(probabilities.argmax())
        rows.append({**sample_fields(x), "model": model, "condition": condition,
                     "layers": list(layers), "token": token,
                     "correct": grade(vlm, x, token, correctness,
                                      knockout=condition != "base")})
    return rows


def counterfactual_patching(vlm: VideoLLM, sample: Any, x: Prepared, kind: str = "reverse", *,
                            activation: str = "resid_pre", layers: Sequence[int] | None = None,
                            segments: Sequence[str] | None = None, align_frames: str = "slot",
                            seed: int = 0, frame: int | Sequence[int] = 0, other: Any = None,
                            attribution: bool = True) -> list[dict[str, Any]]:
    """Frame attribution for one sample: each frame's (and the question's, the last position's)
    contribution to the answer, patched from a counterfactual of the video into the video as the
    model saw it, in every layer — ``patch`` rows of :func:`mapflow_tl.patching.patch_sweep`,
    followed by the same patches estimated by attribution patching (``attribution``).

    The target is the sample with the frames the model sampled (``x.frames``), the source its
    :func:`~mapflow_tl.counterfactuals.counterfactual` ``kind`` (``seed``, ``frame``, ``other`` as
    there). ``align_frames``: ``"slot"`` patches frame t of the edit into frame t (what the
    edited clip shows at that moment; needs the same frame count), ``"content"`` into the frame
    showing the same image (``Counterfactual.frame_map``). ``segments`` default: every frame
    with a counterpart, the question and the last position.
    """
    from dataclasses import replace as replaced

    from .counterfactuals import align, counterfactual
    from .models.videollm import as_video_sample
    from .patching import attribution_patch, patch_sweep

    if x.frames is None:
        raise InputError(f"sample {_sample_id(x)!r}: the prepared input carries no frames to "
                         f"edit; prepare it with a model adapter that records them")
    if align_frames not in ("slot", "content"):
        raise InputError(f"align_frames {align_frames!r} is not 'slot' or 'content'")
    # the edit keeps the subtitle text chosen for the clean frames: only the video differs
    edit = counterfactual(replaced(as_video_sample(sample), video=x.frames,
                                   subtitles=x.meta.get("subtitles")), kind, seed=seed,
                          frame=frame, other=other)
    target, source = vlm.prepare(edit.original), vlm.prepare(edit.sample)
    frames = None if align_frames == "slot" else edit.frame_map("to_counterfactual")
    if segments is None:
        segments = []
        for name in [f.name for f in target.segments.frames] + ["question", "last"]:
            try:
                align(target.segments, source.segments, name, frames=frames,
                      coords=(target.meta.get("kept_coords"), source.meta.get("kept_coords")))
            except InputError:
                continue    # a frame with no counterpart (dropped, from another video)
            segments.append(name)
    options = dict(layers=layers, activation=activation, frames=frames)
    rows = patch_sweep(vlm, target, source, segments, **options)
    if attribution:
        rows += attribution_patch(vlm, target, source, segments, **options)
    return rows


# ----------------------------------------------------------------------------- failure diagnosis
@torch.no_grad()
def diagnosis_evidence(vlm: VideoLLM, sample: Any, x: Prepared, *,
                       base: dict[str, Any] | None = None, layers: Sequence[int] | None = None,
                       seed: int = 0, frozen_frame: int = 0,
                       correctness: str = "official") -> dict[str, Any]:
    """The per-sample evidence for the paper's two failure mechanisms (one
    ``diagnosis_evidence`` row), computed from the sample alone:

    - Case 1 (spurious cross-frame interaction): the answer (argmax over the full vocabulary at
      the last position) with every frame's tokens blocked from earlier frames' tokens in
      ``layers`` (default the early-to-middle half,
      :func:`~mapflow_tl.layers.early_to_middle_layers`, the knockout of
      :func:`crossframe_knockout`) — ``crossframe_token`` and whether it answers correctly
      (``crossframe_correct``, :func:`grade` under knockout);
    - Case 2 (a static answer): the answer with the frames the model saw (``x.frames``)
      shuffled (:func:`~mapflow_tl.counterfactuals.counterfactual` ``"shuffle"``, ``seed``) and
      frozen at frame ``frozen_frame`` (every frame replaced by that one: the single-frame
      video, the same number of frames so that every model takes it) — ``shuffled_token``,
      ``frozen_token``.

    Each token also decoded on its own (``base_text``, ``true_text``, ``crossframe_text``,
    ``shuffled_text``, ``frozen_text``), for the report.

    The task-level evidence (the task's most frequent answer) and the verdict are
    :func:`diagnose`'s, from every sample's row."""
    from dataclasses import replace as replaced

    from .counterfactuals import counterfactual
    from .models.videollm import as_video_sample

    if x.frames is None:
        raise InputError(f"sample {_sample_id(x)!r}: the prepared input carries no frames to "
                         f"shuffle or freeze; prepare it with a model adapter that records them")
    base = base or base_prediction(vlm, x, correctness=correctness)
    layers = early_to_middle_layers(vlm.n_layers) if layers is None else list(layers)
    knocked = _last_probabilities(vlm, x, knockout(edges.cross_frame(x.segments), layers),
                                  what="the cross-frame knockout forward")
    crossframe_token = int(knocked.argmax())
    video = replaced(as_video_sample(sample), video=x.frames, subtitles=x.meta.get("subtitles"))
    edited = {}
    for kind in ("shuffle", "freeze"):
        edit = counterfactual(video, kind, seed=seed, frame=frozen_frame)
        probabilities = _last_probabilities(vlm, vlm.prepare(edit.sample),
                                            what=f"the {kind}d video's forward")
        edited[kind] = int(probabilities.argmax())
    tokens = {"base": base["base_token"], "true": x.answer_token,
              "crossframe": crossframe_token, "shuffled": edited["shuffle"],
              "frozen": edited["freeze"]}
    return {**sample_fields(x), "base_token": base["base_token"],
            "base_correct": base["base_correct"], "true_token": x.answer_token,
            "crossframe_layers": list(layers), "crossframe_token": crossframe_token,
            "crossframe_correct": grade(vlm, x, crossframe_token, correctness, knockout=True),
            "shuffle_seed": seed, "shuffled_token": edited["shuffle"],
            "frozen_frame": frozen_frame, "frozen_token": edited["freeze"],
            **{f"{name}_text": None if token is None else _decode(vlm, token)
               for name, token in tokens.items()}}


#: The official open-ended generation's length (analysis/causal_intervention_tools.py
#: ``generate_from_input``, tasks/eval/vcgbench ``max_new_tokens=100``).
MAX_NEW_TOKENS = 100

#: ``base_prediction``'s columns of a sample asked open-endedly: no letter is read.
_NO_BASE = dict.fromkeys(("base_token", "base_p_pred", "base_p_true", "base_correct",
                          "base_option"))


@torch.no_grad()
def evaluate(vlm: VideoLLM, x: Prepared, *, reference: str | None = None,
             correctness: str = "official", base: dict[str, Any] | None = None,
             max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sample's answer for the accuracy pass (the official ``--eval_only``):
    ``(base, row)`` — the ``samples`` table's clean-run columns and the ``eval`` table's row.

    - A multiple-choice prompt: the clean run's answer (:func:`base_prediction`: the argmax over
      the full vocabulary at the last position, graded by ``correctness``, the official rule by
      default: ``acc_base += answer.lower() == gt.lower()``); ``prediction`` is that token
      decoded, ``option`` the letter of the most probable option, ``truth`` the true letter,
      ``p_pred`` / ``p_true`` their probabilities.
    - An open-ended prompt (no options): the greedy answer, at most ``max_new_tokens`` tokens
      (``vlm.generate``), decoded without special tokens; ``truth`` is ``reference``,
      ``correct`` whether the reference's words appear in the answer and ``exact`` whether the
      two are equal (:func:`~mapflow_tl.metrics.open_answer_match`; None without a reference).
    """
    from .metrics import open_answer_match

    fields = sample_fields(x)
    if len(x.answer_ids):
        base = base_prediction(vlm, x, correctness=correctness) if base is None else base
        truth = None if x.answer is None else option_label(x.answer)
        return base, {**fields, "kind": "choice",
                      "prediction": _decode(vlm, base["base_token"]),
                      "option": option_label(base["base_option"]), "truth": truth,
                      "correct": base["base_correct"], "exact": None,
                      "p_pred": base["base_p_pred"], "p_true": base["base_p_true"]}
    tokens, _ = vlm.generate(x, max_new_tokens=max_new_tokens)
    text = vlm.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True).strip()
    exact, contains = (None, None) if reference is None else open_answer_match(text, reference)
    return dict(_NO_BASE), {**fields, "kind": "open", "prediction": text, "option": None,
                            "truth": reference, "correct": contains, "exact": exact,
                            "p_pred": None, "p_true": None}


# ---------------------------------------------------------------------- open-ended answers
#: The official open-ended script's generation lengths: the answer (``max_new_tokens=256``,
#: analysis/information_flow_analysis_open_ended.py) and each generation under a knockout
#: (``--max_new_tokens``, default 100).
OPEN_ENDED_MAX_NEW_TOKENS = 256
KNOCKOUT_GENERATION_TOKENS = 100
#: Anchors the official script traces (``--generation_anchor_order`` 1, 2, 3; a sample needs at
#: least three).
OPEN_ENDED_ANCHORS = 3


def open_ended_sample(sample: Any, question_prefix: str | None = None,
                      answer_prompt: str | None = None) -> Any:
    """The open-ended question of a (multiple-choice) sample: no options, no answer index, the
    question text after ``question_prefix`` and the answer after ``answer_prompt`` (the
    assistant's turn starts with it). None keeps the dataset's own (a loader's
    ``metadata["question_prefix"]``, e.g. TVBench open-ended's official "Question: ", and
    ``answer_prompt``; none otherwise). SynthTV's open-ended training
    prompt is ``question_prefix="Question: ", answer_prompt="Best option:("``; the official
    VCGBench prompt is the question alone."""
    from dataclasses import replace

    from .models.videollm import as_video_sample

    if question_prefix is None:
        question_prefix = (getattr(sample, "metadata", None) or {}).get("question_prefix", "")
    video_sample = as_video_sample(sample)
    return replace(video_sample, options=(), answer=None,
                   question=question_prefix + video_sample.question,
                   answer_prompt=(video_sample.answer_prompt if answer_prompt is None
                                  else answer_prompt))


@torch.no_grad()
def open_ended_flow(
    vlm: VideoLLM,
    x: Prepared,
    circuits: Sequence[Circuit | str] | Circuit | str,
    *,
    anchors: str = "content",
    words: Sequence[str] | None = None,
    n_anchors: int = OPEN_ENDED_ANCHORS,
    min_anchors: int | None = None,
    max_new_tokens: int = OPEN_ENDED_MAX_NEW_TOKENS,
    k: int | None = None,
    style: str = "center",
    centers: Iterable[int] | None = None,
    method: str = "fast",
    knockout_generation: int = 0,
    answer_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Information flow into an open-ended answer (Map the Flow appendix; the official
    ``information_flow_analysis_open_ended.py``).

    1. The model answers the open-ended prompt ``x`` (:func:`open_ended_sample` prepared)
       greedily, at most ``max_new_tokens`` tokens (:meth:`VideoLLM.generate`).
    2. Anchors are found in the answer (:func:`mapflow_tl.anchors.find_anchors`: ``anchors``
       ``"content"``, ``"words"`` with ``words``, or the official ``"verbs"``); a sample with
       fewer than ``min_anchors`` (default ``n_anchors``; official 3) is not traced.
    3. For the n-th anchor (n = 1 … ``n_anchors``) the answer is teacher-forced up to the
       anchor's first token: the sequence is prompt + answer[:j], its last position the token
       before the anchor, ``response`` the answer tokens before that, earlier anchors named
       spans in it (:meth:`VideoLLM.extend`). Anchors at answer position j < 2 (empty
       "non-last response") and anchors the teacher-forced clean run does not predict (argmax
       ≠ anchor token) are skipped, as officially.
    4. Each curve of ``circuits`` (``open-ended`` is the official target "vqrl-to-qrl") is
       knocked out in each window (``k``, ``style``, ``centers`` as :func:`flow_sweep`); all
       anchors' configurations run as one engine sweep (:func:`~mapflow_tl.engine.sweep_samples`:
       each teacher-forced sequence's clean keys/values are computed once and only the rows a
       knockout can change are recomputed). Metric: p = softmax(logits at the last position)
       [anchor token], relative change (p − p_clean) / p_clean × 100.
    ``answer_ids``: trace this answer instead of generating one (a reference answer, a
    counterfactual one); it is not the model's own, so no anchor is skipped for not being the
    clean argmax.

    5. ``knockout_generation`` > 0: the official variant that also generates that many tokens
       with the knockout on (:func:`~mapflow_tl.hooks.knockout_during_generation`) and
       records the text (one generation per configuration: slow).

    Returns ``{"base": the samples-table columns (base_token: the answer's first token),
    "selected": traced or not, "answer": the answers row, "rows": the open_ended rows}``.
    """
    from .anchors import find_anchors
    from .hooks import knockout_during_generation

    circuits = _circuits(circuits)
    for circuit in circuits:
        if circuit.curves is None:
            raise InputError(f"circuit {circuit.name!r} is a pathway circuit; open-ended flow "
                             f"sweeps information-flow circuits (open-ended, ...)")
    if isinstance(n_anchors, bool) or not isinstance(n_anchors, int) or n_anchors < 1:
        raise InputError(f"n_anchors must be a positive int, got {n_anchors!r}")
    min_anchors = n_anchors if min_anchors is None else min_anchors
    n_layers = vlm.n_layers
    k = default_window_size(n_layers) if k is None else k
    centers = None if centers is None else list(centers)
    tokenizer = vlm.tokenizer
    if answer_ids is None:
        response, step_logits = vlm.generate(x, max_new_tokens)
        require_finite(step_logits, vlm.backbone, x.embeds, (), what="the logits of the answer",
                       sample=_sample_id(x))
        response_ids = response.tolist()
        first = step_logits[0].float().softmax(-1)
    else:
        response_ids = [int(i) for i in answer_ids]
        if not response_ids:
            raise InputError("answer_ids is empty: give the answer's token ids, or None to "
                             "generate the answer")
        first = _last_probabilities(vlm, x)
    base = {"base_token": response_ids[0], "base_p_pred": float(first[response_ids[0]]),
            "base_p_true": None, "base_correct": None, "base_option": None}
    found = find_anchors(tokenizer, response_ids, anchors, words=words)
    answer = {**sample_fields(x), "response": tokenizer.decode(response_ids),
              "response_ids": response_ids,
              "anchors": [{"index": a.index, "n_tokens": a.n_tokens, "text": a.text}
                          for a in found],
              "traced": []}
    selected = len(found) >= min_anchors
    if not selected:
        return {"base": base, "selected": False, "answer": answer, "rows": []}
    prompt_length = x.n_positions
    traced, sequences, labelled = [], [], []
    for order, anchor in enumerate(found[:n_anchors], start=1):
        j = anchor.index
        if j < 2:
            continue    # official: an empty "non-last response" skips the sample's anchor
        last = prompt_length + j - 1
        spans = [(f"anchor_{m}", prompt_length + a.index,
                  min(prompt_length + a.index + a.n_tokens, last))
                 for m, a in enumerate(found, start=1) if a.index < j - 1]
        x_anchor = vlm.extend(x, response_ids[:j], anchors=spans)
        configs = [(None, _CLEAN)]
        for circuit in circuits:
            curves = circuit.build_curves(x_anchor.segments, n_layers)
            configs += [(circuit.name, config) for config in
                        layer_sweep(curves, n_layers, k=k, style=style, centers=centers)]
        traced.append((order, anchor))
        sequences.append(x_anchor)
        labelled.append(configs)
    logits = sweep_samples(vlm.backbone, [s.embeds for s in sequences],
                           [[config for _, config in configs] for configs in labelled],
                           method=method)
    rows = []
    for (order, anchor), x_anchor, configs, sample_logits in zip(traced, sequences, labelled,
                                                                 logits):
        _require_finite_sweep(vlm, x_anchor, configs, sample_logits)
        probabilities = sample_logits.float().softmax(-1)
        token = response_ids[anchor.index]
        clean = probabilities[0]
        if answer_ids is None and int(clean.argmax()) != token:
            continue    # official: the teacher-forced clean run must predict the anchor
        answer["traced"].append(order)
        base_p = float(clean[token])
        for (circuit, config), p in zip(configs[1:], probabilities[1:]):
            generated = None
            if knockout_generation:
                hooks = knockout_during_generation(config.edges, config.layers,
                                                   x_anchor.n_positions, n_layers=n_layers)
                ids, _ = vlm.generate(x_anchor, knockout_generation, fwd_hooks=hooks)
                generated = tokenizer.decode(ids.tolist())
            rows.append({
                **sample_fields(x), "circuit": circuit, "curve": config.curve,
                "layer": config.center, "layers": list(config.layers), "k": k, "style": style,
                "anchor_order": order, "anchor_text": anchor.text,
                "anchor_position": anchor.index, "anchor_token": token,
                "base_p": base_p, "p": float(p[token]), "change": _change(float(p[token]), base_p),
                "token": int(p.argmax()), "edges": config.edges.count(x_anchor.n_positions),
                "knockout_response": generated,
            })
    return {"base": base, "selected": True, "answer": answer, "rows": rows}
