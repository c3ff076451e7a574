"""Activation patching between two runs over named segments, and its gradient approximation.

Activation patching (TransformerLens ``patching.py``; Meng et al. 2022, Wang et al. 2023) runs a
*target* prompt while writing, at some positions and one layer, the activation a *source* prompt
had there, and asks how far the answer moves toward the source's. Here the positions are named
segments — ``frame_3``, ``video``, ``question``, ``option_A``, ``last`` — mapped between the two
prompts through their :class:`~mapflow_tl.segments.SegmentMap` by
:func:`~mapflow_tl.counterfactuals.align` (frame tokens by grid cell, through a counterfactual's
frame correspondence; text by offset), so a counterfactual video whose prompt is longer or whose
frames are reordered patches what corresponds, never raw positions.

One generic sweep, :func:`patch_sweep`, covers segment × layer [× head]; the variation is data
(which activation, which segments, which layers). As the knockout engine does, it recomputes only
what a patch can change: the target's residual stream entering each layer is kept from one
clean forward, and a patch at layer l runs the backbone from layer l on (``start_at_layer``).

The metric is the logit difference between the two runs' answers at the last position,
``logit[source answer] − logit[target answer]``, and the normalised patching score
``(patched − target) / (source − target)`` of it: 0 where the patch changes nothing, 1 where it
moves the answer all the way to the source's.

:func:`attribution_patch` estimates every one of those patches at once to first order (Nanda
2023, "attribution patching"): ``(source − target activation) · ∂metric/∂activation``, from one
source forward, one target forward and one backward. :func:`rank_agreement` measures how well
the estimate ranks the patches the sweep computed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float

from .counterfactuals import align
from .errors import InputError
from .schema import check_row, sample_fields

__all__ = ["ACTIVATIONS", "activation_hook_name", "answer_tokens", "logit_diff", "patched_logits",
           "patch_sweep", "attribution_patch", "rank_agreement"]

#: Activations a patch can write: the residual stream entering a block, the attention and MLP
#: outputs of a block, and each head's attention-weighted values (``z``, patched per head).
ACTIVATIONS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
}


def activation_hook_name(activation: str, layer: int) -> str:
    """The TransformerLens hook point of ``activation`` (one of :data:`ACTIVATIONS`) in
    ``layer``."""
    if activation not in ACTIVATIONS:
        raise InputError(f"activation {activation!r} is not one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[activation].format(layer=layer)


@dataclass(frozen=True)
class _Unit:
    """One patch: a segment (or one position of it) and its (target, source) position pairs."""

    segment: str
    position: int | None
    pairs: tuple[tuple[int, int], ...]


def _units(target: Any, source: Any, segments: Sequence[str], frames: Mapping[int, int] | None,
           by_position: bool) -> list[_Unit]:
    if isinstance(segments, str):
        segments = [segments]
    units = []
    for name in segments:
        # frames that kept only some tokens are matched cell by cell through the coordinates
        # the adapter recorded (VideoLLaMA3's compressed frames)
        coords = (target.meta.get("kept_coords"), source.meta.get("kept_coords"))
        pairs = tuple(align(target.segments, source.segments, name, frames=frames,
                            coords=coords))
        if by_position:
            units += [_Unit(name, t, ((t, s),)) for t, s in pairs]
        else:
            units.append(_Unit(name, None, pairs))
    return units


def _layers(vlm: Any, layers: Iterable[int] | None) -> list[int]:
    n = vlm.n_layers
    chosen = list(range(n)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n]
    if bad:
        raise InputError(f"layers {bad} are outside the model's {n} layers (0..{n - 1})")
    return chosen


def _heads(vlm: Any, activation: str, heads: Iterable[int] | None) -> list[int | None]:
    if activation != "z":
        if heads is not None:
            raise InputError(f"heads apply to activation 'z' (per head), not {activation!r}")
        return [None]
    n = vlm.cfg.n_heads
    chosen = list(range(n)) if heads is None else [int(h) for h in heads]
    bad = [h for h in chosen if not 0 <= h < n]
    if bad:
        raise InputError(f"heads {bad} are outside the model's {n} heads (0..{n - 1})")
    return chosen


def answer_tokens(target: Any, source: Any, target_logits: torch.Tensor,
                  source_logits: torch.Tensor) -> tuple[int, int]:
    """``(target answer, source answer)``: the option letter each run ranks first at the last
    position. Where both runs pick the same option, the source's answer is its second choice, so
    that the logit difference still measures a move from one answer toward another."""
    def ranked(x: Any, logits: torch.Tensor) -> list[int]:
        ids = x.answer_ids.to(logits.device)
        order = logits[0, -1, ids].float().argsort(descending=True)
        return [int(ids[i]) for i in order]

    target_rank, source_rank = ranked(target, target_logits), ranked(source, source_logits)
    if source_rank[0] != target_rank[0]:
        return target_rank[0], source_rank[0]
    if len(source_rank) < 2:
        raise InputError("both runs answer the only option: there is no logit difference to "
                         "patch; give tokens=(target_token, source_token)")
    return target_rank[0], source_rank[1]


def logit_diff(logits: Float[torch.Tensor, "1 pos d_vocab"], tokens: tuple[int, int]
               ) -> torch.Tensor:
    """``logit[source token] − logit[target token]`` at the last position (a 0-d tensor)."""
    target_token, source_token = tokens
    last = logits[0, -1].float()
    return last[source_token] - last[target_token]


def _patch_hook(pairs: Sequence[tuple[int, int]], source_activation: torch.Tensor,
                head: int | None) -> Any:
    target_positions = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    source_positions = torch.tensor([s for _, s in pairs], dtype=torch.long)

    def patch(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        values = source_activation.to(activation.device, activation.dtype)
        where = target_positions.to(activation.device)
        taken = values[:, source_positions.to(activation.device)]
        activation = activation.clone()
        if head is None:
            activation[:, where] = taken
        else:
            activation[:, where, head] = taken[:, :, head]
        return activation

    return patch


def _finite(vlm: Any, x: Any, logits: torch.Tensor, run: str) -> None:
    """A run whose answer logits are NaN/inf stops here, naming where they first appear: a
    patching score made of them would be written as a number."""
    from .finite import require_finite

    require_finite(logits[0, -1], vlm.backbone, x.embeds, what=f"the logits of the {run} run",
                   sample=str(x.meta.get("id", "") or ""))


def _source_cache(vlm: Any, source: Any, names: list[str]) -> tuple[torch.Tensor, Any]:
    with torch.no_grad():
        logits, cache = vlm.run_with_cache(source, names_filter=names)
    _finite(vlm, source, logits, "source")
    return logits, cache


def patched_logits(vlm: Any, target: Any, source: Any, segments: str | Sequence[str], layer: int,
                   *, activation: str = "resid_pre", head: int | None = None,
                   frames: Mapping[int, int] | None = None
                   ) -> Float[torch.Tensor, "1 pos d_vocab"]:
    """The target's logits with ``activation`` of ``layer`` patched from the source over
    ``segments`` (names, :func:`~mapflow_tl.counterfactuals.align`; an empty list patches
    nothing), a full forward through :meth:`VideoLLM.run_with_hooks`. ``head`` picks one head of
    ``z``; ``frames`` is the frame correspondence (target input frame → source input frame)."""
    if activation == "z" and head is None:
        raise InputError("activation 'z' is patched per head: pass head=<index>")
    name = activation_hook_name(activation, _layers(vlm, [layer])[0])
    pairs = [pair for unit in _units(target, source, segments, frames, False)
             for pair in unit.pairs]
    _, cache = _source_cache(vlm, source, [name])
    with torch.no_grad():
        return vlm.run_with_hooks(target, [(name, _patch_hook(pairs, cache[name], head))])


def _row(target: Any, source: Any, method: str, activation: str, unit: _Unit, layer: int,
         head: int | None, tokens: tuple[int, int], target_diff: float, source_diff: float,
         patched_diff: float) -> dict[str, Any]:
    span = source_diff - target_diff
    row = {**sample_fields(target), "source": str(source.meta.get("id", "")), "method": method,
           "activation": activation, "segment": unit.segment, "position": unit.position,
           "layer": layer, "head": head, "positions": len(unit.pairs),
           "target_token": tokens[0], "source_token": tokens[1],
           "target_diff": target_diff, "source_diff": source_diff, "patched_diff": patched_diff,
           # undefined when the two runs' metric is the same: nothing to move toward
           "score": (patched_diff - target_diff) / span if span != 0 else None}
    check_row("patch", row)
    return row


def patch_sweep(vlm: Any, target: Any, source: Any, segments: str | Sequence[str],
                layers: Iterable[int] | None = None, *, activation: str = "resid_pre",
                heads: Iterable[int] | None = None, frames: Mapping[int, int] | None = None,
                tokens: tuple[int, int] | None = None, by_position: bool = False
                ) -> list[dict[str, Any]]:
    """Patch ``activation`` from ``source`` into ``target`` for every segment × layer [× head]:
    one ``patch`` row each (``schema.TABLES["patch"]``, ``method="patch"``).

    ``segments``: names as :func:`~mapflow_tl.counterfactuals.align` takes them (``frame_t``,
    ``video``, ``question``, ``option_A``, ``last``, ``all``); ``by_position`` patches each of
    their positions on its own. ``layers``: default all. ``heads``: for ``z``, default all.
    ``frames``: the frame correspondence (``Counterfactual.frame_map``); default frame t ↔ t.
    ``tokens``: ``(target answer, source answer)`` of the logit difference; default
    :func:`answer_tokens`. Only the layers from the patched one on are recomputed, from the
    target's residual stream kept by one clean forward.
    """
    layers, heads = _layers(vlm, layers), _heads(vlm, activation, heads)
    units = _units(target, source, segments, frames, by_position)
    names = [activation_hook_name(activation, layer) for layer in layers]
    source_logits, source_cache = _source_cache(vlm, source, names)
    # the target's forward comes last before the mid-stack starts: per-sample state a backbone
    # binds on entering block 0 (M-RoPE tables, DeepStack additions) must be the target's
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    with torch.no_grad():
        target_logits, target_cache = vlm.run_with_cache(target, names_filter=resid_names)
    _finite(vlm, target, target_logits, "target")
    tokens = tokens or answer_tokens(target, source, target_logits, source_logits)
    target_diff = float(logit_diff(target_logits, tokens))
    source_diff = float(logit_diff(source_logits, tokens))
    backbone, rows = vlm.backbone, []
    for layer, name, resid_name in zip(layers, names, resid_names):
        start = target_cache[resid_name]
        for unit in units:
            for head in heads:
                hook = _patch_hook(unit.pairs, source_cache[name], head)
                with torch.no_grad(), backbone.hooks(fwd_hooks=[(name, hook)]):
                    logits = backbone(start, start_at_layer=layer, return_type="logits")
                rows.append(_row(target, source, "patch", activation, unit, layer, head, tokens,
                                 target_diff, source_diff, float(logit_diff(logits, tokens))))
    return rows


def attribution_patch(vlm: Any, target: Any, source: Any, segments: str | Sequence[str],
                      layers: Iterable[int] | None = None, *, activation: str = "resid_pre",
                      heads: Iterable[int] | None = None,
                      frames: Mapping[int, int] | None = None,
                      tokens: tuple[int, int] | None = None, by_position: bool = False
                      ) -> list[dict[str, Any]]:
    """Attribution patching: the first-order estimate of every patch :func:`patch_sweep` would
    make, ``Σ_positions (source − target activation) · ∂metric/∂activation`` (summed over
    ``d_head`` for one head of ``z``), from one source forward, one target forward and one
    backward. Same arguments and rows as :func:`patch_sweep`, ``method="attribution"``,
    ``patched_diff`` = target + estimate."""
    layers, heads = _layers(vlm, layers), _heads(vlm, activation, heads)
    units = _units(target, source, segments, frames, by_position)
    names = [activation_hook_name(activation, layer) for layer in layers]
    source_logits, source_cache = _source_cache(vlm, source, names)
    activations: dict[str, torch.Tensor] = {}
    gradients: dict[str, torch.Tensor] = {}

    # keyed by the name asked for: a TransformerLens 4 bridge names its hook points canonically
    # (blocks.0.hook_in for blocks.0.hook_resid_pre)
    def keeper(name: str, into: dict[str, torch.Tensor]):
        def keep(value: torch.Tensor, hook: Any) -> None:
            into[name] = value.detach()
        return keep

    # a leaf that requires grad makes every activation of the forward differentiable, whatever
    # the backbone's parameters say (a loaded model may have them frozen)
    leaf = replace(target, embeds=target.embeds.detach().requires_grad_())
    with torch.enable_grad():
        target_logits = vlm.run_with_hooks(leaf, [(n, keeper(n, activations)) for n in names],
                                           [(n, keeper(n, gradients)) for n in names])
        _finite(vlm, target, target_logits.detach(), "target")
        tokens = tokens or answer_tokens(target, source, target_logits.detach(), source_logits)
        metric = logit_diff(target_logits, tokens)
        metric.backward()
    target_diff = float(metric.detach())
    source_diff = float(logit_diff(source_logits, tokens))
    rows = []
    for layer, name in zip(layers, names):
        delta_source, current, gradient = source_cache[name], activations[name], gradients[name]
        for unit in units:
            device = current.device
            where = torch.tensor([t for t, _ in unit.pairs], dtype=torch.long, device=device)
            taken = torch.tensor([s for _, s in unit.pairs], dtype=torch.long, device=device)
            delta = delta_source[0, taken].to(device).float() - current[0, where].float()
            product = delta * gradient[0, where].float()
            for head in heads:
                estimate = product[:, head].sum() if head is not None else product.sum()
                rows.append(_row(target, source, "attribution", activation, unit, layer, head,
                                 tokens, target_diff, source_diff,
                                 target_diff + float(estimate)))
    return rows


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n−1, tied values sharing their mean rank."""
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def rank_agreement(patch_rows: Sequence[Mapping[str, Any]],
                   attribution_rows: Sequence[Mapping[str, Any]]) -> float:
    """Spearman rank correlation between the patch effects (``patched_diff − target_diff``) of
    :func:`patch_sweep` rows and the :func:`attribution_patch` estimates of the same patches
    (matched by sample, source, activation, segment, position, layer and head)."""
    def key(row: Mapping[str, Any]) -> tuple:
        return (row["sample"], row["source"], row["activation"], row["segment"],
                row["position"], row["layer"], row["head"])

    estimates = {key(row): row["patched_diff"] - row["target_diff"] for row in attribution_rows}
    pairs = [(row["patched_diff"] - row["target_diff"], estimates[key(row)])
             for row in patch_rows if key(row) in estimates]
    if len(pairs) < 3:
        raise InputError(f"rank agreement needs at least 3 patches present in both tables, got "
                         f"{len(pairs)}")
    values = torch.tensor(pairs, dtype=torch.float64)
    real, estimated = _ranks(values[:, 0]), _ranks(values[:, 1])
    real, estimated = real - real.mean(), estimated - estimated.mean()
    denominator = (real.norm() * estimated.norm())
    return float((real * estimated).sum() / denominator) if denominator > 0 else float("nan")
