"""Knockout sweeps: many knockout configurations on the same input.

A sweep point is a :class:`KnockoutConfig` — a named curve (one blocked pathway), its edge set and
the layers it is blocked in (one window of a layer sweep, Map the Flow §2). :func:`sweep` returns
the last-position logits of every configuration.

``method="naive"`` runs one full forward per configuration, exactly as the paper's reference code
does; it is the reference the fast method is checked against.

``method="fast"`` (the default) recomputes only what a knockout can change. For a configuration
whose blocked layers start at layer s and whose first blocked query is position p:

- every layer before s computes exactly what the clean run computed, so the forward starts from
  the clean residual stream entering layer s (``start_at_layer=s``);
- under causal attention no position before p can see a cut edge, so in every layer their keys and
  values are the clean run's; they come from a key/value cache filled by one clean forward, and
  only positions p … pos−1 are recomputed. For a "→ last"
  knockout that is one position instead of the whole sequence;
- configurations that share (s, p) run as one batch whose size a memory budget bounds; each batch
  element carries its own edge mask and layers (:class:`BatchedKnockoutHook`). When few positions
  are recomputed, configurations with the same p but different s also share a batch, started at
  the earliest s: a layer call then costs mostly its fixed overhead, not its size.

An empty edge set (question → video under causal attention) changes nothing: it gets the clean
logits without a forward.

:func:`sweep_samples` sweeps several samples at once: one right-padded clean forward for all of
them, and batches that mix samples — configurations that recompute the same number of last
positions share a layer call, each reading its own sample's cached keys and values.

The recomputed cells run through :mod:`mapflow_tl.suffix_forward` (``suffix="lean"``, chosen
automatically): a plain-torch restatement of the backbone block with weights prepared once, the
clean run's rotated keys/values cached once and the knockout as an attention mask — no hooks, no
per-call weight copies. A sweep that carries hooks of its own (``fwd_hooks``, or hooks attached to
the model) runs them through the ``HookedTransformer`` instead (``suffix="hooked"``: the clean
run fills a TransformerLens key/value cache, suffix forwards start mid-stack with
``start_at_layer=s`` and ``past_kv_cache``, each batch element carries its own mask through
:class:`BatchedKnockoutHook`). Both give the naive method's logits up to rounding. On the
TransformerLens 4 bridge backend the lean path reads the bridge's HF weights through the same
``backbone_weights``; what would take the hooked path runs the naive method there (the bridge has
no TransformerLens key/value cache), with a warning once.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from .edges import Edges
from .errors import InputError
from .hooks import HookList, KnockoutHook, attn_scores_hook_name, check_hooks, knockout
from .layers import window
from .suffix_forward import (SDPA_MIN_QUERIES, backbone_weights, clean_forward, lean_unsupported,
                             residual_additions, rotary_tables, suffix_logits)

__all__ = [
    "KnockoutConfig",
    "BatchedKnockoutHook",
    "SweepGroup",
    "layer_sweep",
    "plan_sweep",
    "recomputed_cells",
    "sweep",
    "sweep_samples",
    "SWEEP_METHODS",
    "SUFFIX_FORWARDS",
]

if TYPE_CHECKING:  # TransformerLens is imported where the hooked path runs, not on import
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

SWEEP_METHODS = ("fast", "naive")
SUFFIX_FORWARDS = ("auto", "lean", "hooked")


@dataclass(frozen=True)
class KnockoutConfig:
    """One point of a sweep: block ``edges`` in ``layers``; ``curve`` and ``center`` label it.

    ``heads``: the attention heads the edges are blocked in (0-based query heads; a head-resolved
    sweep knocks out one at a time), ``None`` for all heads — the paper's knockout."""

    curve: str
    edges: Edges
    layers: tuple[int, ...]
    center: int | None = None
    heads: tuple[int, ...] | None = None
    #: A pathway's configuration (:meth:`from_pathway`): the edges blocked in each of
    #: ``layers``, in the same order; ``edges`` is then their union (what the fast method plans
    #: with: no position before its first query can change). ``None``: ``edges`` in every layer.
    per_layer: tuple[Edges, ...] | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError(f"knockout config {self.curve!r} (center {self.center}) has no layer")
        if self.per_layer is not None:
            if len(self.per_layer) != len(self.layers):
                raise InputError(f"knockout config {self.curve!r}: {len(self.per_layer)} "
                                 f"per-layer edge sets for {len(self.layers)} layers")
            if self.heads is not None:
                raise InputError(f"knockout config {self.curve!r}: per-layer edge sets block "
                                 f"all heads; a head-level pathway runs through its hooks")
        if self.heads is not None:
            heads = tuple(sorted({int(h) for h in self.heads}))
            if not heads or heads[0] < 0:
                raise InputError(f"knockout config {self.curve!r}: heads must be non-negative "
                                 f"head indices (None for all heads), got {self.heads!r}")
            object.__setattr__(self, "heads", heads)

    @property
    def start_layer(self) -> int:
        """The first layer the knockout touches: every earlier layer equals the clean run."""
        return min(self.layers)

    def layer_edges(self, layer: int) -> Edges:
        """The edges this configuration blocks in ``layer`` (one of its ``layers``)."""
        if self.per_layer is None:
            return self.edges
        return self.per_layer[self.layers.index(layer)]

    def hooks(self, n_layers: int | None = None) -> HookList:
        """The configuration as knockout hooks (what the naive method runs): ``edges`` in
        ``layers``, or each layer's own edge set."""
        if self.per_layer is None:
            return knockout(self.edges, self.layers, self.heads, n_layers=n_layers)
        shared: dict[int, KnockoutHook] = {}
        hooks: HookList = []
        for layer, edges in zip(self.layers, self.per_layer):
            knockout(edges, [layer], n_layers=n_layers)   # validates the layer
            hook = shared.setdefault(id(edges), KnockoutHook(edges))
            hooks.append((attn_scores_hook_name(layer), hook))
        return hooks

    @classmethod
    def from_pathway(cls, spec, curve: str, n_positions: int) -> "KnockoutConfig":
        """The configuration of an effective-pathway spec
        (:class:`~mapflow_tl.hooks.PathwaySpec`, Map the Flow Finding 4): in every layer the
        spec's blocked edges (:meth:`~mapflow_tl.hooks.PathwaySpec.blocked`), so that the engine
        evaluates a pathway — and batches many of them, of many samples — like a knockout
        window. A spec that blocks nothing gives a configuration equal to the clean run. A
        head-level spec (``keep(..., heads=)``) is refused: run its hooks."""
        if spec.head_rules:
            raise InputError(f"pathway {curve!r} keeps some edges in chosen heads only; the "
                             f"engine's pathway configurations block all heads: evaluate it "
                             f"with spec.hooks()")
        layers, per_layer = [], []
        for layer in range(spec.n_layers):
            edges = spec.blocked(layer)
            if edges.extent() and not edges.is_empty(n_positions):
                layers.append(layer)
                per_layer.append(edges)
        if not layers:
            return cls(curve, Edges.empty(), (0,), per_layer=(Edges.empty(),))
        union = Edges.union({id(e): e for e in per_layer}.values())
        return cls(curve, union, tuple(layers), per_layer=tuple(per_layer))


def layer_sweep(
    curves: Mapping[str, Edges],
    n_layers: int,
    *,
    k: int = 9,
    style: str = "center",
    centers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
) -> list[KnockoutConfig]:
    """One configuration per (curve, window centre): the paper's layer-wise knockout sweep.

    With ``heads``, one configuration per (curve, window centre, head), each blocking the curve's
    edges in that one head only: the head-resolved sweep."""
    centers = range(n_layers) if centers is None else list(centers)
    per_head = [None] if heads is None else [(int(h),) for h in heads]
    if not per_head:
        raise InputError("layer_sweep heads=[] sweeps nothing; pass None for all heads at once")
    return [
        KnockoutConfig(curve, edges, tuple(window(center, n_layers=n_layers, k=k, style=style)),
                       center, head)
        for curve, edges in curves.items()
        for center in centers
        for head in per_head
    ]


# ---------------------------------------------------------------------- planning
@dataclass(frozen=True)
class SweepGroup:
    """Configurations that share their first blocked layer and first blocked query position.

    They are recomputed together from ``start_layer`` on, for positions ``first_query …`` only.
    """

    start_layer: int
    first_query: int
    indices: tuple[int, ...]


def plan_sweep(
    configs: Sequence[KnockoutConfig], n_positions: int
) -> tuple[list[SweepGroup], list[int]]:
    """Group a sweep for the fast method: ``(groups, empty)``.

    Each group holds the indices of the configurations with one (first blocked layer s, first
    blocked query p); ``empty`` lists the configurations whose edge set has no causal edge over
    ``n_positions`` (they equal the clean run).
    """
    by_key: dict[tuple[int, int], list[int]] = {}
    empty: list[int] = []
    for index, config in enumerate(configs):
        first_query = config.edges.first_query(n_positions)
        if first_query is None:
            empty.append(index)
        else:
            by_key.setdefault((config.start_layer, first_query), []).append(index)
    groups = [SweepGroup(s, p, tuple(indices)) for (s, p), indices in sorted(by_key.items())]
    return groups, empty


def recomputed_cells(
    configs: Sequence[KnockoutConfig], n_positions: int, n_layers: int, *, method: str = "fast"
) -> int:
    """Number of (layer, position) cells a sweep recomputes.

    ``naive``: ``n_layers × n_positions`` per configuration. ``fast``: ``(n_layers − s) ×
    (n_positions − p)`` per configuration (first blocked layer s, first blocked query p), 0 for an
    empty edge set. The ratio naive / fast is the ideal speedup of the fast method.
    """
    if method not in SWEEP_METHODS:
        raise InputError(f"unknown sweep method {method!r}; choose one of {SWEEP_METHODS}")
    if method == "naive":
        return len(configs) * n_layers * n_positions
    groups, _ = plan_sweep(configs, n_positions)
    return sum(len(g.indices) * (n_layers - g.start_layer) * (n_positions - g.first_query)
               for g in groups)


# ---------------------------------------------------------------------- the batched hook
class BatchedKnockoutHook:
    """``hook_attn_scores`` hook for a batch of knockout configurations in one layer.

    Batch element b has its own boolean ``[query, key]`` mask (the rows of its edge set for the
    recomputed query positions); ``active[b]`` says whether element b's configuration blocks this
    layer — an inactive element gets an all-False mask. Scores of masked (query, key) pairs are set
    to −∞ in all heads (Attention Knockout, Map the Flow §2), or, with ``heads`` ``[batch,
    head]``, in the heads element b marks.
    """

    def __init__(
        self,
        masks: Bool[torch.Tensor, "batch query key"],
        active: Bool[torch.Tensor, " batch"],
        heads: Bool[torch.Tensor, "batch head"] | None = None,
    ) -> None:
        if masks.dim() != 3 or active.shape != masks.shape[:1]:
            raise ValueError(f"masks must be [batch, query, key] and active [batch], got "
                             f"{tuple(masks.shape)} and {tuple(active.shape)}")
        if heads is not None and (heads.dim() != 2 or heads.shape[0] != masks.shape[0]):
            raise ValueError(f"heads must be [batch, head], got {tuple(heads.shape)}")
        self.masks = masks if bool(active.all()) else masks & active.to(masks.device)[:, None, None]
        self.heads = heads

    def __call__(
        self, scores: Float[torch.Tensor, "batch head query key"], hook
    ) -> Float[torch.Tensor, "batch head query key"]:
        expected = (self.masks.shape[0], self.masks.shape[1], self.masks.shape[2])
        got = (scores.shape[0], scores.shape[2], scores.shape[3])
        if got != expected:
            raise ValueError(f"{hook.name}: attention scores have [batch, query, key] = {got}, "
                             f"the batched knockout masks {expected}")
        if self.heads is None:
            return scores.masked_fill(self.masks[:, None].to(scores.device), float("-inf"))
        if self.heads.shape[1] != scores.shape[1]:
            raise ValueError(f"{hook.name}: {scores.shape[1]} heads, the head masks "
                             f"{self.heads.shape[1]}")
        blocked = self.masks[:, None] & self.heads[:, :, None, None].to(self.masks.device)
        return scores.masked_fill(blocked.to(scores.device), float("-inf"))

    def __repr__(self) -> str:
        return f"BatchedKnockoutHook(batch {self.masks.shape[0]}, {self.masks.shape[1]} queries)"


# ---------------------------------------------------------------------- the sweep
def sweep(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    configs: Sequence[KnockoutConfig],
    *,
    method: str = "fast",
    batch_budget_mb: float | None = None,
    max_batch: int | None = None,
    fwd_hooks: HookList | Sequence = (),
    suffix: str = "auto",
) -> Float[torch.Tensor, "config d_vocab"]:
    """Last-position logits of the model under each knockout configuration.

    Implements the layer-wise Attention Knockout sweep of Map the Flow §2: for each configuration
    the attention scores of its edges are set to −∞ in its layers and the answer is read at the
    last position. ``method="fast"`` (default) recomputes only the (layer, position) cells the
    knockout can change and batches configurations that share their first blocked layer and
    first blocked query (see the module docstring); ``method="naive"`` runs one full forward per
    configuration. Both give the same logits up to floating-point rounding.

    Fast-method memory: the clean run's residual stream (at the layers a batch starts from) and
    keys/values are kept; each batch is sized so that its estimated working memory stays within
    ``batch_budget_mb`` (default: the estimated working memory of one full forward less the kept
    clean state, at least a quarter of that working memory and ``BATCH_MIN_MB``, so that a sweep
    needs about what one clean forward with a key/value cache needs), and at most ``max_batch``
    configurations.
    Configurations with the same first blocked query but different first blocked layers may share
    a batch starting at the earliest of those layers when that is estimated to be cheaper (few
    recomputed positions: the fixed cost of a layer call dominates).

    ``suffix`` picks how the fast method recomputes: ``"lean"`` runs the recomputed layers through
    :mod:`mapflow_tl.suffix_forward` (a plain-torch restatement of the backbone block: packed
    weights, the clean run's rotated keys/values cached once, no hooks), ``"hooked"`` through the
    ``HookedTransformer`` with knockout hooks, ``"auto"`` (default) the lean one unless the sweep
    carries hooks of its own — ``fwd_hooks``, or hooks attached to the model's hook points — or
    the model is one the lean forward does not restate; then it says why, once, and runs hooked.
    ``fwd_hooks`` are applied in every configuration's forward (in the fast method they see the
    clean forward and the suffix forwards, so they must act per position, as knockout hooks do).

    :func:`sweep_samples` runs the sweeps of several samples together.
    """
    if embeds.dim() != 3 or embeds.shape[0] != 1 or embeds.shape[-1] != model.cfg.d_model:
        raise InputError(f"sweep runs one sample: embeds must be [1, pos, {model.cfg.d_model}], "
                         f"got {tuple(embeds.shape)}; sweep_samples runs several")
    return sweep_samples(model, [embeds], [configs], method=method,
                         batch_budget_mb=batch_budget_mb, max_batch=max_batch,
                         fwd_hooks=fwd_hooks, suffix=suffix)[0]


def sweep_samples(
    model: HookedTransformer,
    embeds: Sequence[Float[torch.Tensor, "1 _ d_model"]],
    configs: Sequence[Sequence[KnockoutConfig]],
    *,
    method: str = "fast",
    batch_budget_mb: float | None = None,
    max_batch: int | None = None,
    fwd_hooks: HookList | Sequence = (),
    suffix: str = "auto",
    max_samples: int | None = None,
) -> list[Float[torch.Tensor, "config d_vocab"]]:
    """The knockout sweeps of several samples: ``sweep(model, embeds[i], configs[i])`` for each
    i, computed together.

    Same definition, options and results (up to rounding) as :func:`sweep`; what changes is the
    cost. On the lean path the samples' clean forwards run as one right-padded batch, and
    configurations of different samples that recompute the same number of last positions share
    their layer calls (each reads its own sample's cached keys and values; different lengths are
    laid out end-aligned with the padding masked), so the fixed cost of a layer call — which
    dominates "→ last" curves and small models — is paid once for many samples. Samples are
    grouped by length, at most ``max_samples`` at a time (default: as many as keep the groups'
    kept clean state within the memory one sample's sweep may use for its batches; at least one).
    The hooked path runs the samples one at a time.
    """
    if method not in SWEEP_METHODS:
        raise InputError(f"unknown sweep method {method!r}; choose one of {SWEEP_METHODS}")
    if suffix not in SUFFIX_FORWARDS:
        raise InputError(f"unknown suffix forward {suffix!r}; choose one of {SUFFIX_FORWARDS}")
    embeds, configs = list(embeds), [list(c) for c in configs]
    if len(embeds) != len(configs):
        raise InputError(f"sweep_samples needs one configuration list per sample, got "
                         f"{len(embeds)} samples and {len(configs)} lists")
    for index, sample in enumerate(embeds):
        if sample.dim() != 3 or sample.shape[0] != 1 or sample.shape[-1] != model.cfg.d_model:
            raise InputError(f"sample {index}: embeds must be [1, pos, {model.cfg.d_model}], "
                             f"got {tuple(sample.shape)}")
    for name, value in (("max_batch", max_batch), ("max_samples", max_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(f"{name} must be a positive int or None, got {value!r}")
    if batch_budget_mb is not None and not batch_budget_mb > 0:
        raise InputError(f"batch_budget_mb must be positive or None, got {batch_budget_mb!r}")
    n_layers = model.cfg.n_layers
    for sample_configs in configs:
        for config in sample_configs:
            knockout(config.edges, config.layers, n_layers=n_layers)  # validates the layers
            if config.heads is not None and config.heads[-1] >= model.cfg.n_heads:
                raise InputError(f"knockout config {config.curve!r}: heads {list(config.heads)} "
                                 f"outside the model's {model.cfg.n_heads} heads (0-based)")
    user_hooks: HookList = list(fwd_hooks)
    check_hooks(model, user_hooks)
    from .models.bridge import is_bridge

    if is_bridge(model) and method == "fast":
        # TransformerLens 4's bridge has no TransformerLens key/value cache to start a hooked
        # suffix forward from: what would run on the hooked path runs through the bridge with
        # hooks, one full forward per configuration (the naive method)
        reason = "suffix='hooked' was asked for" if suffix == "hooked" \
            else _lean_refusal(model, user_hooks)
        if reason is not None:
            if suffix == "lean":
                raise InputError(f"the lean suffix forward cannot run this sweep: {reason}; use "
                                 f"suffix='auto'")
            _warn_once(f"knockout sweep runs the naive method on the bridge backend (one full "
                       f"forward per configuration): {reason}")
            method = "naive"
    if method == "naive":
        from .models.backbone import run_from_embeds

        results = []
        for sample, sample_configs in zip(embeds, configs):
            rows = [run_from_embeds(model, sample, fwd_hooks=config.hooks(n_layers)
                                    + user_hooks, grad=False)[0, -1]
                for config in sample_configs]
            results.append(torch.stack(rows) if rows else _no_logits(model))
        return results
    lean = suffix != "hooked"
    if lean:
        reason = _lean_refusal(model, user_hooks)
        if reason is not None:
            if suffix == "lean":
                raise InputError(f"the lean suffix forward cannot run this sweep: {reason}; use "
                                 f"suffix='auto' or 'hooked'")
            _warn_once(f"knockout sweep runs on the hooked path (slower): {reason}")
            lean = False
    results: list[torch.Tensor] = [_no_logits(model)] * len(embeds)
    with torch.no_grad():
        if not lean:
            for index, (sample, sample_configs) in enumerate(zip(embeds, configs)):
                if sample_configs:
                    results[index] = _fast_sweep_hooked(model, sample, sample_configs,
                                                        batch_budget_mb, max_batch, user_hooks)
            return results
        busy = [index for index, sample_configs in enumerate(configs) if sample_configs]
        for chunk in _sample_chunks(model, [embeds[i].shape[1] for i in busy], max_samples):
            chunk = [busy[i] for i in chunk]
            for index, logits in zip(chunk, _fast_sweep_lean(
                    model, [embeds[i] for i in chunk], [configs[i] for i in chunk],
                    batch_budget_mb, max_batch)):
                results[index] = logits
    return results


def _no_logits(model: HookedTransformer) -> torch.Tensor:
    return torch.empty(0, model.cfg.d_vocab, device=model.cfg.device, dtype=model.cfg.dtype)


def _last_logits(model: HookedTransformer, residual: torch.Tensor) -> torch.Tensor:
    """The model's head (final norm, unembedding, soft cap) at the last position only."""
    from transformer_lens.utilities import apply_softcap

    residual = residual[:, -1:]
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    logits = model.unembed(residual)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)[:, 0]


def _itemsize(model: HookedTransformer) -> int:
    return torch.empty(0, dtype=model.cfg.dtype).element_size()


def _working_bytes_per_config(model: HookedTransformer, n_queries: int, n_keys: int,
                              per_head_mask: bool = False) -> int:
    """Estimated peak working memory of one batch element of a suffix forward (one layer).

    Attention scores with their masked, softmaxed copies (≈5 × heads × queries × keys), the keys
    and values concatenated with the cache, rotated and repeated to all heads (≈8 × keys ×
    heads × d_head), and the residual/MLP activations of the recomputed queries.
    ``per_head_mask``: head-resolved configurations' boolean knockout mask is per head (one
    byte × heads × queries × keys).
    """
    cfg = model.cfg
    d_attn = cfg.n_heads * cfg.d_head
    elements = (5 * cfg.n_heads * n_queries * n_keys + 8 * n_keys * d_attn
                + n_queries * (4 * (cfg.d_mlp or 0) + 8 * cfg.d_model))
    mask = cfg.n_heads * n_queries * n_keys if per_head_mask else 0
    return elements * _itemsize(model) + mask


def _lean_working_bytes_per_config(model: HookedTransformer, n_queries: int, n_keys: int,
                                   per_head_mask: bool = False) -> int:
    """Estimated peak working memory of one batch element of a lean suffix forward (one layer).

    Few queries (batch-folded attention): the scores, their mask, softmax and the prefix part of
    the pattern (≈4 × heads × queries × keys) — no copy of the cached keys. Many queries (SDPA):
    the cached keys/values concatenated with the element's own (2 × keys × kv width), the
    additive mask and SDPA's own scores (≈3 × heads × queries × keys at most). Plus the
    residual/MLP activations of the recomputed queries. ``per_head_mask``: a batch with
    head-resolved configurations has its masks per head — the additive one (heads × queries ×
    keys) and the boolean one it is built from."""
    cfg = model.cfg
    d_kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    attention = 4 * cfg.n_heads * n_queries * n_keys
    if n_queries >= SDPA_MIN_QUERIES:
        attention = 2 * n_keys * d_kv + 3 * cfg.n_heads * n_queries * n_keys
    elements = attention + n_queries * (4 * (cfg.d_mlp or 0) + 8 * cfg.d_model
                                        + 3 * cfg.n_heads * cfg.d_head)
    if not per_head_mask:
        return elements * _itemsize(model)
    per_head = cfg.n_heads * n_queries * n_keys
    return (elements + per_head) * _itemsize(model) + per_head


@dataclass(frozen=True)
class _CostModel:
    """Cost of one layer of a batched suffix forward, in units of "one recomputed position": a
    fixed cost per layer call (Python, kernel launches) and, per batch element, its Q recomputed
    positions, each with ``query_key`` × the number of keys n (its attention row), plus ``key``
    × n (per-element handling of the cached keys): ``layer_call + B·(Q·(1 + query_key·n) +
    key·n)``."""

    layer_call: float
    key: float
    query_key: float = 0.0


# Hooked path, calibrated on CPU (d_model 128, 194 positions: ≈0.7 ms per call, ≈14 µs per
# position; TransformerLens concatenates the cached keys/values and rotates all keys again per
# element, so a key costs ≈ 1/4 position).
_HOOKED_COSTS = _CostModel(layer_call=48, key=1 / 4)
# Lean path (mapflow_tl.suffix_forward), fitted by benchmarks/fit_cost_model.py on CPU (d_model
# 128, 32 layers, 194 and 1257 positions, --threads 1): ≈0.69 ms per layer call, ≈8.6 µs per
# position, ≈0.015 µs per (query, key) pair and ≈0.009 µs per key per element. A layer call costs
# as much as ~80 positions: "→ last" configurations (one query each) share one batch from the
# earliest first blocked layer; configurations with many queries keep their own.
_LEAN_COSTS = _CostModel(layer_call=80, key=0.001, query_key=0.0018)


@dataclass(frozen=True)
class _Batch:
    """Configurations recomputed together: from ``start_layer`` on, each one's last
    ``n_queries`` positions; ``members`` are (sample, configuration index) pairs."""

    start_layer: int
    n_queries: int
    members: tuple[tuple[int, int], ...]


def _batches(
    plans: Sequence[tuple[Sequence[SweepGroup], int]],
    n_layers: int,
    n_keys: int,
    batch_size,
    costs: _CostModel = _HOOKED_COSTS,
) -> list[_Batch]:
    """Split the configurations of one or more samples into batches.

    ``plans`` holds each sample's groups (:func:`plan_sweep`) and its length. Configurations
    that recompute the same number Q of last positions — across samples too — are sorted by
    first blocked layer and cut into consecutive runs (at most ``batch_size(Q)`` long); a run
    starts at the first blocked layer of its earliest member. The cut minimises the estimated
    cost Σ over runs of layers run × (fixed cost per layer call + per-element cost × run length)
    by dynamic programming (n keys: the longest sample's); with a large fixed cost and few
    recomputed positions runs span several first blocked layers and samples, with many
    recomputed positions they are the (s, p) groups of the method.
    """
    by_queries: dict[int, list[tuple[int, int, int]]] = {}
    for sample, (groups, n_positions) in enumerate(plans):
        for group in groups:
            by_queries.setdefault(n_positions - group.first_query, []).extend(
                (group.start_layer, sample, index) for index in group.indices)
    batches: list[_Batch] = []
    for n_queries, members in sorted(by_queries.items()):
        members.sort()
        size = batch_size(n_queries)
        per_element = (n_queries * (1 + costs.query_key * n_keys) + costs.key * n_keys)
        count = len(members)
        best = [0.0] + [float("inf")] * count
        cut = [0] * (count + 1)
        for j in range(1, count + 1):
            for i in range(max(0, j - size), j):
                cost = best[i] + (n_layers - members[i][0]) * (
                    costs.layer_call + (j - i) * per_element)
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        j = count
        runs = []
        while j:
            runs.append(members[cut[j]:j])
            j = cut[j]
        for run in reversed(runs):
            batches.append(_Batch(run[0][0], n_queries,
                                  tuple(sorted((sample, index) for _, sample, index in run))))
    return batches


_HOOK_LEVELS = itertools.count(1_000_000)


@contextmanager
def _attached(model: HookedTransformer, hooks: HookList):
    """Attach hooks for one forward and remove exactly those afterwards (exceptions included).

    Cheaper than ``run_with_hooks``, which resets every hook point of the model per call — a cost
    that dominates a sweep of many small suffix forwards.
    """
    check_hooks(model, hooks)
    level = next(_HOOK_LEVELS)
    points = []
    try:
        for name, fn in hooks:
            point = model.hook_dict[name]
            point.add_hook(fn, level=level)
            points.append(point)
        yield
    finally:
        for point in points:
            point.remove_hooks("fwd", level=level)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _hooked_points(model: HookedTransformer) -> list[str]:
    """Names of the model's hook points that carry forward hooks (attached by the user: the
    engine's own hooks are attached only during its forwards)."""
    return [name for name, point in model.hook_dict.items() if point.fwd_hooks]


def _lean_refusal(model: HookedTransformer, user_hooks: HookList) -> str | None:
    """Why this sweep cannot run the lean suffix forward, or ``None``."""
    if user_hooks:
        names = sorted({name for name, _ in user_hooks})
        return f"the sweep carries hooks on {names[:3]}{' …' if len(names) > 3 else ''}"
    attached = _hooked_points(model)
    if attached:
        return (f"the model has hooks attached on {attached[:3]}"
                f"{' …' if len(attached) > 3 else ''} (remove them with model.reset_hooks())")
    unsupported = lean_unsupported(model)
    if unsupported is not None:
        return f"it does not restate {unsupported}"
    return None


def _ensure_rotary(model: HookedTransformer, embeds: torch.Tensor) -> None:
    """Make the attention layers hold this sample's rotary tables before they are read.

    Backbones with per-sample positions (M-RoPE, :class:`~mapflow_tl.models.backbone.
    RotaryPositions`) install and check a sample's tables when a forward enters block 0, and
    TransformerLens extends short tables in the layer that needs them; one block-0 forward of
    the hooked model does both (its output is not used)."""
    n = embeds.shape[1]
    prepare = getattr(getattr(model, "mapflow_rotary_tables", None), "prepare", None)
    if prepare is not None:  # a TransformerLens 4 bridge: HF's own tables for this sample
        prepare(embeds)
        return
    per_sample = bool(model.blocks[0]._forward_pre_hooks)
    if per_sample or model.blocks[0].attn.rotary_cos.shape[0] < n:
        model(embeds, start_at_layer=0, stop_at_layer=1)
    short = [index for index, block in enumerate(model.blocks)
             if block.attn.rotary_cos.shape[0] < n]
    for index in short:
        model.blocks[index].attn._extend_rotary_embeddings(n)


def _kept_bytes(model: HookedTransformer, n_positions: int) -> int:
    """What the fast method keeps of one sample's clean run: the residual stream at every layer
    at most, and the keys and values."""
    cfg = model.cfg
    d_kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    return cfg.n_layers * n_positions * (cfg.d_model + 2 * d_kv) * _itemsize(model)


def _default_budget(model: HookedTransformer, n_positions: int) -> float:
    """Default working memory of a sweep's batches, in bytes: one full forward's working memory
    less what the fast method keeps of the clean run — but never below a quarter of that working
    memory, which the kept state can exceed, nor below ``BATCH_MIN_MB`` (a small model's whole
    forward needs less than a batch's fixed costs)."""
    full = _working_bytes_per_config(model, n_positions, n_positions)
    return max(full - _kept_bytes(model, n_positions), full / 4, BATCH_MIN_MB * 2**20)


#: A sweep's batches may always use this much working memory (MiB).
BATCH_MIN_MB = 64
#: Samples swept together may keep this much clean state (MiB) even where a fifth of the
#: weights is less (small models: their whole state is a few MB).
GROUP_MIN_MB = 256


def _sample_chunks(model: HookedTransformer, lengths: Sequence[int],
                   max_samples: int | None) -> list[list[int]]:
    """Indices of samples swept together: sorted by length (little padding), each group's kept
    clean state within a fifth of the weights' memory or ``GROUP_MIN_MB``, whichever is larger
    (a 7B backbone: two samples of ~1250 positions), and at most ``max_samples`` samples; at
    least one sample per group."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    allowed = max(weights / 5, GROUP_MIN_MB * 2**20)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks: list[list[int]] = []
    for index in order:
        if chunks:
            chunk = chunks[-1]
            longest = max(lengths[index], lengths[chunk[-1]])
            fits = (len(chunk) + 1) * _kept_bytes(model, longest) <= allowed
            if fits and (max_samples is None or len(chunk) < max_samples):
                chunk.append(index)
                continue
        chunks.append([index])
    return chunks


def _batch_sizer(model: HookedTransformer, n_positions: int, batch_budget_mb: float | None,
                 max_batch: int | None, working):
    budget = _default_budget(model, n_positions) if batch_budget_mb is None \
        else batch_budget_mb * 2**20

    def batch_size(n_queries: int) -> int:
        size = max(1, int(budget // working(model, n_queries, n_positions)))
        return size if max_batch is None else min(size, max_batch)

    return batch_size


def _edge_rows(n_positions: int):
    """``rows(config, first_query, device, layer=None)``: the blocked rows ``first_query …`` of
    a configuration's dense edge mask (of its edges in ``layer`` for a per-layer
    configuration), one mask per distinct edge set."""
    masks: dict[int, torch.Tensor] = {}

    def rows(config: KnockoutConfig, first_query: int, device,
             layer: int | None = None) -> torch.Tensor:
        edges = config.edges if layer is None else config.layer_edges(layer)
        mask = masks.get(id(edges))
        if mask is None:
            # KnockoutHook.mask validates (no query loses every key) exactly as the naive path.
            mask = KnockoutHook(edges).mask(n_positions, device)
            masks[id(edges)] = mask
        return mask[first_query:]

    return rows


def _head_masks(configs: Sequence[KnockoutConfig], n_heads: int,
                device) -> torch.Tensor | None:
    """``[batch, head]``: the heads each configuration blocks its edges in; ``None`` when every
    configuration blocks all heads (the mask then stays one ``[query, key]`` per element)."""
    if all(config.heads is None for config in configs):
        return None
    masks = torch.zeros(len(configs), n_heads, dtype=torch.bool, device=device)
    for row, config in enumerate(configs):
        masks[row, slice(None) if config.heads is None else list(config.heads)] = True
    return masks


def _split_on_oom(run_batch, start_layer: int, n_queries: int,
                  members: tuple[tuple[int, int], ...]) -> None:
    """Run a batch; out of memory, run its halves instead (recursively)."""
    try:
        run_batch(start_layer, n_queries, members)
    except torch.OutOfMemoryError:
        if len(members) == 1:
            raise
        half = len(members) // 2
        logger.warning("out of memory on a batch of %d knockout configurations; halving it "
                       "to %d and %d and continuing", len(members), half, len(members) - half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _split_on_oom(run_batch, start_layer, n_queries, members[:half])
        _split_on_oom(run_batch, start_layer, n_queries, members[half:])


def _fast_sweep_lean(
    model: HookedTransformer,
    embeds: Sequence[torch.Tensor],
    configs: Sequence[Sequence[KnockoutConfig]],
    batch_budget_mb: float | None,
    max_batch: int | None,
) -> list[torch.Tensor]:
    """The fast method on the lean suffix forward for a group of samples swept together."""
    n_layers = model.cfg.n_layers
    lengths = [sample.shape[1] for sample in embeds]
    n_keys = max(lengths)
    plans = [(plan_sweep(sample_configs, n)[0], n) for sample_configs, n in zip(configs, lengths)]
    per_head = any(config.heads is not None for sample in configs for config in sample)
    batch_size = _batch_sizer(model, n_keys, batch_budget_mb, max_batch,
                              partial(_lean_working_bytes_per_config, per_head_mask=per_head))
    batches = _batches(plans, n_layers, n_keys, batch_size, _LEAN_COSTS)
    embeds = [sample.to(model.cfg.device, model.cfg.dtype) for sample in embeds]
    rotary, additions = [], []
    for sample in embeds:  # each sample's rotary tables (per-sample M-RoPE) as installed for it,
        _ensure_rotary(model, sample)  # and its residual additions (DeepStack)
        rotary.append(rotary_tables(model))
        additions.append(residual_additions(model))
    weights = backbone_weights(model)
    clean = clean_forward(weights, embeds, {batch.start_layer for batch in batches},
                          rotary=rotary, additions=additions)
    rows = [_edge_rows(n) for n in lengths]
    plans: dict = {}  # the segmented attention's plans per edge set, reused across batches
    results = [[clean.logits[sample]] * len(sample_configs)
               for sample, sample_configs in enumerate(configs)]
    device = embeds[0].device

    def run_batch(s: int, n_queries: int, members: tuple[tuple[int, int], ...]) -> None:
        chunk = [(sample, configs[sample][index]) for sample, index in members]
        blocked = [rows[sample](config, lengths[sample] - n_queries, device)
                   for sample, config in chunk]
        active = torch.tensor([[layer in config.layers for _, config in chunk]
                               for layer in range(n_layers)], device=device)
        heads = _head_masks([config for _, config in chunk], model.cfg.n_heads, device)
        options = {} if heads is None else {"heads": heads}
        if any(config.per_layer is not None for _, config in chunk):
            # pathways: each layer its own rows (an inactive element's are never read)
            options["layer_blocked"] = {
                layer: [rows[sample](config, lengths[sample] - n_queries, device, layer)
                        if config.per_layer is not None and layer in config.layers
                        else blocked[row] for row, (sample, config) in enumerate(chunk)]
                for layer in range(s, n_layers) if bool(active[layer].any())}
        logits = suffix_logits(weights, clean, s, blocked, active,
                               [sample for sample, _ in chunk], plans=plans, **options)
        for row, (sample, index) in enumerate(members):
            results[sample][index] = logits[row]

    for batch in batches:
        _split_on_oom(run_batch, batch.start_layer, batch.n_queries, batch.members)
    return [torch.stack(sample_results) for sample_results in results]


def _fast_sweep_hooked(
    model: HookedTransformer,
    embeds: torch.Tensor,
    configs: Sequence[KnockoutConfig],
    batch_budget_mb: float | None,
    max_batch: int | None,
    user_hooks: HookList,
) -> torch.Tensor:
    """The fast method through the ``HookedTransformer`` for one sample: one clean forward fills
    a TransformerLens key/value cache (keys before rotary, as TransformerLens caches them) and
    keeps the residual stream entering each layer some batch starts from; each batch then runs
    from its first blocked layer with :class:`BatchedKnockoutHook` and the user's hooks."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    n_layers, n_positions = model.cfg.n_layers, embeds.shape[1]
    groups, _ = plan_sweep(configs, n_positions)
    per_head = any(config.heads is not None for config in configs)
    batch_size = _batch_sizer(model, n_positions, batch_budget_mb, max_batch,
                              partial(_working_bytes_per_config, per_head_mask=per_head))
    batches = _batches([(groups, n_positions)], n_layers, n_positions, batch_size,
                       _HOOKED_COSTS)
    embeds = embeds.to(model.cfg.device, model.cfg.dtype)
    rows = _edge_rows(n_positions)
    clean_resid: dict[int, torch.Tensor] = {}

    def keep_resid(activation: torch.Tensor, hook) -> None:
        clean_resid[hook.layer()] = activation.detach()

    clean_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    start_layers = sorted({batch.start_layer for batch in batches})
    with _attached(model, [(f"blocks.{layer}.hook_resid_pre", keep_resid)
                           for layer in start_layers] + user_hooks):
        residual = model(embeds, start_at_layer=0, stop_at_layer=n_layers,
                         past_kv_cache=clean_cache)
    clean_logits = _last_logits(model, residual)[0]
    del residual
    results: list[torch.Tensor] = [clean_logits] * len(configs)

    def run_batch(s: int, n_queries: int, members: tuple[tuple[int, int], ...]) -> None:
        size, p = len(members), n_positions - n_queries
        chunk = [configs[index] for _, index in members]
        # Fresh frozen entries per batch: views of the clean prefix, never appended to.
        cache = TransformerLensKeyValueCache(
            entries=[
                TransformerLensKeyValueCacheEntry(
                    past_keys=entry.past_keys[:, :p].expand(size, -1, -1, -1),
                    past_values=entry.past_values[:, :p].expand(size, -1, -1, -1),
                    frozen=True,
                )
                for entry in clean_cache.entries
            ],
            previous_attention_mask=torch.ones(
                size, p, dtype=torch.int, device=clean_cache.previous_attention_mask.device),
            frozen=True,
        )
        start = clean_resid[s][:, p:]
        batch_masks = torch.stack([rows(config, p, start.device) for config in chunk])
        head_masks = _head_masks(chunk, model.cfg.n_heads, start.device)
        per_layer = any(config.per_layer is not None for config in chunk)
        hooks: HookList = []
        for layer in range(s, n_layers):
            active = torch.tensor([layer in config.layers for config in chunk])
            if bool(active.any()):
                masks = batch_masks if not per_layer else torch.stack([
                    rows(config, p, start.device, layer) if layer in config.layers
                    else batch_masks[row] for row, config in enumerate(chunk)])
                hooks.append((attn_scores_hook_name(layer),
                              BatchedKnockoutHook(masks, active, head_masks)))
        with _attached(model, hooks + user_hooks):
            residual = model(start.repeat(size, 1, 1), start_at_layer=s, stop_at_layer=n_layers,
                             past_kv_cache=cache)
        logits = _last_logits(model, residual)
        del residual, cache
        for row, (_, index) in enumerate(members):
            results[index] = logits[row]

    for batch in batches:
        _split_on_oom(run_batch, batch.start_layer, batch.n_queries, batch.members)
    return torch.stack(results)
