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

The recomputed cells run through :mod:`mapflow_tl.suffix_forward` (``suffix="lean"``, chosen
automatically): a plain-torch restatement of the backbone block with weights prepared once, the
clean run's rotated keys/values cached once and the knockout as an attention mask — no hooks, no
per-call weight copies. A sweep that carries hooks of its own (``fwd_hooks``, or hooks attached to
the model) runs them through the ``HookedTransformer`` instead (``suffix="hooked"``: the clean
run fills a TransformerLens key/value cache, suffix forwards start mid-stack with
``start_at_layer=s`` and ``past_kv_cache``, each batch element carries its own mask through
:class:`BatchedKnockoutHook`). Both give the naive method's logits up to rounding.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from .edges import Edges
from .errors import InputError
from .hooks import HookList, KnockoutHook, attn_scores_hook_name, check_hooks, knockout
from .layers import window
from .suffix_forward import (SDPA_MIN_QUERIES, backbone_weights, clean_forward, lean_unsupported,
                             suffix_logits)

__all__ = [
    "KnockoutConfig",
    "BatchedKnockoutHook",
    "SweepGroup",
    "layer_sweep",
    "plan_sweep",
    "recomputed_cells",
    "sweep",
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
    """One point of a sweep: block ``edges`` in ``layers``; ``curve`` and ``center`` label it."""

    curve: str
    edges: Edges
    layers: tuple[int, ...]
    center: int | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError(f"knockout config {self.curve!r} (center {self.center}) has no layer")

    @property
    def start_layer(self) -> int:
        """The first layer the knockout touches: every earlier layer equals the clean run."""
        return min(self.layers)


def layer_sweep(
    curves: Mapping[str, Edges],
    n_layers: int,
    *,
    k: int = 9,
    style: str = "center",
    centers: Iterable[int] | None = None,
) -> list[KnockoutConfig]:
    """One configuration per (curve, window centre): the paper's layer-wise knockout sweep."""
    centers = range(n_layers) if centers is None else list(centers)
    return [
        KnockoutConfig(curve, edges, tuple(window(center, n_layers=n_layers, k=k, style=style)),
                       center)
        for curve, edges in curves.items()
        for center in centers
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
    to −∞ in all heads (Attention Knockout, Map the Flow §2).
    """

    def __init__(
        self,
        masks: Bool[torch.Tensor, "batch query key"],
        active: Bool[torch.Tensor, " batch"],
    ) -> None:
        if masks.dim() != 3 or active.shape != masks.shape[:1]:
            raise ValueError(f"masks must be [batch, query, key] and active [batch], got "
                             f"{tuple(masks.shape)} and {tuple(active.shape)}")
        self.masks = masks if bool(active.all()) else masks & active.to(masks.device)[:, None, None]

    def __call__(
        self, scores: Float[torch.Tensor, "batch head query key"], hook
    ) -> Float[torch.Tensor, "batch head query key"]:
        expected = (self.masks.shape[0], self.masks.shape[1], self.masks.shape[2])
        got = (scores.shape[0], scores.shape[2], scores.shape[3])
        if got != expected:
            raise ValueError(f"{hook.name}: attention scores have [batch, query, key] = {got}, "
                             f"the batched knockout masks {expected}")
        return scores.masked_fill(self.masks[:, None].to(scores.device), float("-inf"))

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
    clean state, at least a quarter of the weights' memory, so that a sweep needs about what one
    clean forward with a key/value cache needs), and at most ``max_batch`` configurations.
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
    """
    if method not in SWEEP_METHODS:
        raise InputError(f"unknown sweep method {method!r}; choose one of {SWEEP_METHODS}")
    if suffix not in SUFFIX_FORWARDS:
        raise InputError(f"unknown suffix forward {suffix!r}; choose one of {SUFFIX_FORWARDS}")
    if embeds.dim() != 3 or embeds.shape[0] != 1 or embeds.shape[-1] != model.cfg.d_model:
        raise InputError(f"sweep runs one sample: embeds must be [1, pos, {model.cfg.d_model}], "
                         f"got {tuple(embeds.shape)}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise InputError(f"max_batch must be a positive int or None, got {max_batch!r}")
    if batch_budget_mb is not None and not batch_budget_mb > 0:
        raise InputError(f"batch_budget_mb must be positive or None, got {batch_budget_mb!r}")
    n_layers = model.cfg.n_layers
    for config in configs:
        knockout(config.edges, config.layers, n_layers=n_layers)  # validates the layers
    if not configs:
        return torch.empty(0, model.cfg.d_vocab, device=model.cfg.device, dtype=model.cfg.dtype)
    user_hooks: HookList = list(fwd_hooks)
    check_hooks(model, user_hooks)
    if method == "naive":
        from .models.backbone import run_from_embeds

        rows = []
        for config in configs:
            hooks = knockout(config.edges, config.layers, n_layers=n_layers) + user_hooks
            rows.append(run_from_embeds(model, embeds, fwd_hooks=hooks)[0, -1])
        return torch.stack(rows)
    lean = suffix != "hooked"
    if lean:
        reason = _lean_refusal(model, embeds.shape[1], user_hooks)
        if reason is not None:
            if suffix == "lean":
                raise InputError(f"the lean suffix forward cannot run this sweep: {reason}; use "
                                 f"suffix='auto' or 'hooked'")
            _warn_once(f"knockout sweep runs on the hooked path (slower): {reason}")
            lean = False
    with torch.no_grad():
        return _fast_sweep(model, embeds, configs, batch_budget_mb, max_batch, user_hooks, lean)


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


def _working_bytes_per_config(model: HookedTransformer, n_queries: int, n_keys: int) -> int:
    """Estimated peak working memory of one batch element of a suffix forward (one layer).

    Attention scores with their masked, softmaxed copies (≈5 × heads × queries × keys), the keys
    and values concatenated with the cache, rotated and repeated to all heads (≈8 × keys ×
    heads × d_head), and the residual/MLP activations of the recomputed queries.
    """
    cfg = model.cfg
    d_attn = cfg.n_heads * cfg.d_head
    elements = (5 * cfg.n_heads * n_queries * n_keys + 8 * n_keys * d_attn
                + n_queries * (4 * (cfg.d_mlp or 0) + 8 * cfg.d_model))
    return elements * _itemsize(model)


def _lean_working_bytes_per_config(model: HookedTransformer, n_queries: int, n_keys: int) -> int:
    """Estimated peak working memory of one batch element of a lean suffix forward (one layer).

    Few queries (batch-folded attention): the scores, their mask, softmax and the prefix part of
    the pattern (≈4 × heads × queries × keys) — no copy of the cached keys. Many queries (SDPA):
    the cached keys/values concatenated with the element's own (2 × keys × kv width), the
    additive mask and SDPA's own scores (≈3 × heads × queries × keys at most). Plus the
    residual/MLP activations of the recomputed queries."""
    cfg = model.cfg
    d_kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    attention = 4 * cfg.n_heads * n_queries * n_keys
    if n_queries >= SDPA_MIN_QUERIES:
        attention = 2 * n_keys * d_kv + 3 * cfg.n_heads * n_queries * n_keys
    elements = attention + n_queries * (4 * (cfg.d_mlp or 0) + 8 * cfg.d_model
                                        + 3 * cfg.n_heads * cfg.d_head)
    return elements * _itemsize(model)


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
    start_layer: int
    first_query: int
    indices: tuple[int, ...]


def _batches(
    configs: Sequence[KnockoutConfig],
    groups: Sequence[SweepGroup],
    n_layers: int,
    n_positions: int,
    batch_size,
    costs: _CostModel = _HOOKED_COSTS,
) -> list[_Batch]:
    """Split the configurations of each first blocked query p into batches.

    Configurations sorted by first blocked layer are cut into consecutive runs (at most
    ``batch_size(n_queries)`` long); a run starts at the first blocked layer of its earliest
    member. The cut minimises the estimated cost Σ over runs of layers run × (fixed cost per
    layer call + per-element cost × run length) by dynamic programming; with a large fixed cost
    and few recomputed positions runs span several first blocked layers, with many recomputed
    positions they are the (s, p) groups of the method.
    """
    by_query: dict[int, list[tuple[int, int]]] = {}
    for group in groups:
        by_query.setdefault(group.first_query, []).extend(
            (group.start_layer, index) for index in group.indices)
    batches: list[_Batch] = []
    for p, members in sorted(by_query.items()):
        members.sort()
        n_queries = n_positions - p
        size = batch_size(n_queries)
        per_element = (n_queries * (1 + costs.query_key * n_positions)
                       + costs.key * n_positions)
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
            batches.append(_Batch(run[0][0], p, tuple(index for _, index in run)))
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


def _lean_refusal(model: HookedTransformer, n_positions: int, user_hooks: HookList) -> str | None:
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
    per_sample = bool(model.blocks[0]._forward_pre_hooks)
    if per_sample or model.blocks[0].attn.rotary_cos.shape[0] < n:
        model(embeds, start_at_layer=0, stop_at_layer=1)
    short = [index for index, block in enumerate(model.blocks)
             if block.attn.rotary_cos.shape[0] < n]
    for index in short:
        model.blocks[index].attn._extend_rotary_embeddings(n)


def _fast_sweep(
    model: HookedTransformer,
    embeds: torch.Tensor,
    configs: Sequence[KnockoutConfig],
    batch_budget_mb: float | None,
    max_batch: int | None,
    user_hooks: HookList,
    lean: bool,
) -> torch.Tensor:
    n_layers, n_positions = model.cfg.n_layers, embeds.shape[1]
    groups, _ = plan_sweep(configs, n_positions)
    if batch_budget_mb is not None:
        budget = batch_budget_mb * 2**20
    else:
        # One full forward's working memory less what the fast method keeps of the clean run
        # (residual stream at every layer at most, keys and values) — but never below a quarter
        # of that working memory or of the weights, which small models' kept state can exceed.
        cfg = model.cfg
        d_kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
        kept = n_layers * n_positions * (cfg.d_model + 2 * d_kv) * _itemsize(model)
        full = _working_bytes_per_config(model, n_positions, n_positions)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        budget = max(full - kept, full / 4, weights / 4)

    working = _lean_working_bytes_per_config if lean else _working_bytes_per_config

    def batch_size(n_queries: int) -> int:
        size = max(1, int(budget // working(model, n_queries, n_positions)))
        return size if max_batch is None else min(size, max_batch)

    costs = _LEAN_COSTS if lean else _HOOKED_COSTS
    batches = _batches(configs, groups, n_layers, n_positions, batch_size, costs)
    start_layers = sorted({batch.start_layer for batch in batches})
    embeds = embeds.to(model.cfg.device, model.cfg.dtype)
    masks: dict[int, torch.Tensor] = {}  # one dense mask per distinct edge set

    def rows(config: KnockoutConfig, first_query: int, device) -> torch.Tensor:
        mask = masks.get(id(config.edges))
        if mask is None:
            # KnockoutHook.mask validates (no query loses every key) exactly as the naive path.
            mask = KnockoutHook(config.edges).mask(n_positions, device)
            masks[id(config.edges)] = mask
        return mask[first_query:]

    if lean:
        _ensure_rotary(model, embeds)
        weights = backbone_weights(model)
        clean = clean_forward(weights, embeds, set(start_layers))
        results: list[torch.Tensor] = [clean.logits] * len(configs)

        def run_batch(s: int, p: int, indices: tuple[int, ...]) -> None:
            chunk = [configs[i] for i in indices]
            blocked = torch.stack([rows(config, p, embeds.device) for config in chunk])
            active = torch.tensor([[layer in config.layers for config in chunk]
                                   for layer in range(n_layers)], device=embeds.device)
            logits = suffix_logits(weights, clean, s, p, blocked, active)
            for row, index in enumerate(indices):
                results[index] = logits[row]
    else:
        results, run_batch = _hooked_runner(model, embeds, configs, start_layers, rows,
                                            user_hooks)

    def run_or_split(s: int, p: int, indices: tuple[int, ...]) -> None:
        try:
            run_batch(s, p, indices)
        except torch.OutOfMemoryError:
            if len(indices) == 1:
                raise
            half = len(indices) // 2
            logger.warning("out of memory on a batch of %d knockout configurations; halving it "
                           "to %d and %d and continuing", len(indices), half,
                           len(indices) - half)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            run_or_split(s, p, indices[:half])
            run_or_split(s, p, indices[half:])

    for batch in batches:
        run_or_split(batch.start_layer, batch.first_query, batch.indices)
    return torch.stack(results)


def _hooked_runner(model, embeds, configs, start_layers, rows, user_hooks):
    """The hooked suffix forward: ``(results, run_batch)`` after one clean forward that fills a
    TransformerLens key/value cache (keys before rotary, as TransformerLens caches them) and keeps
    the residual stream entering each layer some batch starts from."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    n_layers = model.cfg.n_layers
    clean_resid: dict[int, torch.Tensor] = {}

    def keep_resid(activation: torch.Tensor, hook) -> None:
        clean_resid[hook.layer()] = activation.detach()

    clean_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with _attached(model, [(f"blocks.{layer}.hook_resid_pre", keep_resid)
                           for layer in start_layers] + user_hooks):
        residual = model(embeds, start_at_layer=0, stop_at_layer=n_layers,
                         past_kv_cache=clean_cache)
    clean_logits = _last_logits(model, residual)[0]
    del residual
    results: list[torch.Tensor] = [clean_logits] * len(configs)

    def run_batch(s: int, p: int, indices: tuple[int, ...]) -> None:
        size = len(indices)
        chunk = [configs[i] for i in indices]
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
        hooks: HookList = []
        for layer in range(s, n_layers):
            active = torch.tensor([layer in config.layers for config in chunk])
            if bool(active.any()):
                hooks.append((attn_scores_hook_name(layer),
                              BatchedKnockoutHook(batch_masks, active)))
        with _attached(model, hooks + user_hooks):
            residual = model(start.repeat(size, 1, 1), start_at_layer=s, stop_at_layer=n_layers,
                             past_kv_cache=cache)
        logits = _last_logits(model, residual)
        del residual, cache
        for row, index in enumerate(indices):
            results[index] = logits[row]

    return results, run_batch
