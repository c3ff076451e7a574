"""Composable TransformerLens hooks: attention knockout, pathway pruning, random baselines, capture.

Every intervention is a plain TransformerLens hook list ``[(hook_name, fn), ...]``: pass it to
``HookedTransformer.run_with_hooks(..., fwd_hooks=hooks)`` or ``VideoLLM.run_with_hooks``. Lists
concatenate with ``+``; two knockouts on the same hook point both apply, in either order, because
each one only ever lowers scores to −∞.

Attention Knockout (Map the Flow §2, after Geva et al. 2023): to cut the flow from source positions
S to destination positions D in layer l, set the pre-softmax attention score of every query in D to
every key in S to −∞, in all heads (or the chosen ones).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from .edges import Edges, causal_edge_count
from .errors import InputError
from .layers import check_layer

__all__ = [
    "HookList",
    "attn_scores_hook_name",
    "knockout",
    "knockout_during_generation",
    "KnockoutHook",
    "PathwaySpec",
    "random_knockout",
    "RANDOM_BASELINES",
    "random_baseline_counts",
    "random_draw_seed",
    "capture",
    "check_hooks",
]

HookList = list[tuple[str, Callable]]


def attn_scores_hook_name(layer: int) -> str:
    """Name of the pre-softmax attention-score hook of a layer: ``[batch, head, query, key]``."""
    return f"blocks.{layer}.attn.hook_attn_scores"


class KnockoutHook:
    """Hook function for ``hook_attn_scores`` that sets the scores of an edge set to −∞.

    Holds one boolean ``[query, key]`` matrix per sequence length and device, shared by every layer
    and head it is attached to — never a dense float mask per head and layer. Works on suffix
    forwards with a key/value cache: when the hook sees q queries over k keys, the queries are the
    last q positions ``k - q … k - 1``.
    """

    def __init__(self, edges: Edges, heads: Sequence[int] | None = None) -> None:
        self.edges = edges
        self.heads = None if heads is None else sorted({int(h) for h in heads})
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def mask(self, n_keys: int, device: torch.device) -> Bool[torch.Tensor, "query key"]:
        key = (n_keys, torch.device(device))
        mask = self._masks.get(key)
        if mask is None:
            dense = self.edges.dense(n_keys)
            fully_blocked = dense.sum(dim=1) == torch.arange(1, n_keys + 1)
            if bool(fully_blocked.any()):
                query = int(fully_blocked.nonzero()[0])
                raise InputError(
                    f"edges {self.edges.name!r} block every key of query position {query}: its "
                    f"attention would be undefined; keep at least one key (e.g. the first token)"
                )
            mask = dense.to(device)
            self._masks[key] = mask
        return mask

    def __call__(
        self, scores: Float[torch.Tensor, "batch head query key"], hook
    ) -> Float[torch.Tensor, "batch head query key"]:
        n_queries, n_keys = scores.shape[-2], scores.shape[-1]
        rows = self.mask(n_keys, scores.device)[n_keys - n_queries:]
        if self.heads is None:
            return scores.masked_fill(rows, float("-inf"))
        n_heads = scores.shape[1]
        if self.heads[-1] >= n_heads or self.heads[0] < 0:
            raise InputError(f"heads {self.heads} outside [0, {n_heads}) at {hook.name}")
        head_mask = torch.zeros(n_heads, dtype=torch.bool, device=scores.device)
        head_mask[self.heads] = True
        return scores.masked_fill(rows & head_mask[:, None, None], float("-inf"))

    def __repr__(self) -> str:
        heads = "all heads" if self.heads is None else f"heads {self.heads}"
        return f"KnockoutHook({self.edges.name}, {heads})"


class _OtherHeadsKnockout(KnockoutHook):
    """Knockout of ``edges`` in every head except ``kept`` (a head-level pathway's open layers):
    the complement is taken when the scores show the model's head count."""

    def __init__(self, edges: Edges, kept: Sequence[int]) -> None:
        super().__init__(edges)
        self.kept = tuple(kept)

    def __call__(self, scores, hook):
        n_heads = scores.shape[1]
        if self.kept[-1] >= n_heads:
            raise InputError(f"pathway keeps heads {list(self.kept)} of {self.edges.name!r}, "
                             f"but {hook.name} has {n_heads} heads (0-based)")
        self.heads = [h for h in range(n_heads) if h not in self.kept]
        return super().__call__(scores, hook) if self.heads else scores

    def __repr__(self) -> str:
        return f"KnockoutHook({self.edges.name}, all heads but {list(self.kept)})"


def knockout(
    edges: Edges,
    layers: int | Iterable[int],
    heads: Sequence[int] | None = None,
    *,
    n_layers: int | None = None,
) -> HookList:
    """Attention Knockout of ``edges`` in ``layers`` (all heads unless ``heads`` is given).

    Map the Flow §2: the attention score of every query in the edge set's destination to every key
    in its source is set to −∞ before the softmax. ``layers`` are 0-based block indices, one int
    or several. Returns a hook list on ``blocks.{l}.attn.hook_attn_scores``; pass ``n_layers`` to
    validate the layers here rather than when the hooks are attached.
    """
    if not isinstance(edges, Edges):
        raise InputError(f"knockout needs an Edges object, got {type(edges).__name__}")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise InputError(f"knockout layers must be an int or a list of ints (0-based), got "
                         f"{layers!r}") from None
    if not layers:
        raise InputError("knockout needs at least one layer (got an empty layer list)")
    for layer in layers:
        if n_layers is not None:
            check_layer(layer, n_layers)
        elif isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise InputError(f"layer must be a non-negative int, got {layer!r}")
    if heads is not None and len(heads) == 0:
        raise InputError("heads=[] would knock out nothing; pass None for all heads")
    hook = KnockoutHook(edges, heads)
    return [(attn_scores_hook_name(layer), hook) for layer in sorted(set(layers))]


class _GenerationKnockoutHook(KnockoutHook):
    """Knockout of ``edges`` over a prompt of ``n_positions`` positions that keeps acting while
    tokens are generated after it: a generated token's query blocks the keys the prompt's last
    position blocks, and every generated key stays open — the official open-ended script's mask
    for decoding steps (``new_mask[..., 0, :k] = mask[..., -1, :k]``, zeros beyond k;
    analysis/causal_intervention_tools.py, ``_set_block_attn_hooks``)."""

    def __init__(self, edges: Edges, n_positions: int, heads: Sequence[int] | None = None
                 ) -> None:
        super().__init__(edges, heads)
        self.n_positions = n_positions

    def mask(self, n_keys: int, device: torch.device) -> Bool[torch.Tensor, "query key"]:
        n = self.n_positions
        if n_keys <= n:
            return super().mask(n_keys, device)
        key = (n_keys, torch.device(device))
        mask = self._masks.get(key)
        if mask is None:
            prompt = super().mask(n, device)
            mask = torch.zeros(n_keys, n_keys, dtype=torch.bool, device=device)
            mask[:n, :n] = prompt
            mask[n:, :n] = prompt[n - 1]
            self._masks[key] = mask
        return mask

    def __repr__(self) -> str:
        return f"GenerationKnockoutHook({self.edges.name}, prompt of {self.n_positions})"


def knockout_during_generation(
    edges: Edges,
    layers: int | Iterable[int],
    n_positions: int,
    heads: Sequence[int] | None = None,
    *,
    n_layers: int | None = None,
) -> HookList:
    """:func:`knockout` of ``edges`` over a prompt of ``n_positions`` positions that stays on
    while an answer is generated after it (``VideoLLM.generate(x, fwd_hooks=...)``): each
    generated token's query blocks what the prompt's last position blocks, generated keys stay
    open (the official open-ended script's knockout during generation)."""
    hooks = knockout(edges, layers, heads, n_layers=n_layers)
    hook = _GenerationKnockoutHook(edges, n_positions, heads)
    return [(name, hook) for name, _ in hooks]


@dataclass
class PathwaySpec:
    """Effective-pathway pruning (Map the Flow, Finding 4): which edges are blocked in which layer.

    Build it from rules: :meth:`keep` leaves an edge set open only in the given layers (it is
    blocked everywhere else), :meth:`block` closes it in the given layers. The edges blocked in a
    layer are the union over all rules. The paper's 7B spec, in 0-based layers::

        spec = (PathwaySpec(32)
                .keep(cross_frame(seg), range(5, 15))
                .keep(video_to_question(seg), range(5, 20))
                .keep(question_to_last(seg), range(15, 25))
                .block(video_to_last(seg) | last_to_last(seg), range(32))
                .block(video_to_video(seg), range(20, 32))
                .block(question_to_question(seg), range(25, 32)))
    """

    n_layers: int
    rules: list[tuple[Edges, frozenset[int], str]] = field(default_factory=list)
    #: Head-level keeps: (edges, layers they stay open in, the only heads they stay open in).
    head_rules: list[tuple[Edges, frozenset[int], tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) \
                or self.n_layers <= 0:
            raise InputError(f"n_layers must be a positive int, got {self.n_layers!r}")
        self._blocked_cache: dict[int, Edges] | None = None

    def _layers(self, layers: Iterable[int]) -> frozenset[int]:
        return frozenset(check_layer(layer, self.n_layers) for layer in layers)

    def keep(self, edges: Edges, layers: Iterable[int],
             heads: Sequence[int] | None = None) -> "PathwaySpec":
        """Keep ``edges`` open only in ``layers``; block them in every other layer.

        ``heads`` (0-based): a head-level pathway — in ``layers`` the edges stay open only in
        these heads and are blocked in every other head. Edge accounting counts (query, key)
        pairs per layer, as the paper does: a pair open in some head counts as kept."""
        open_layers = self._layers(layers)
        blocked = frozenset(range(self.n_layers)) - open_layers
        description = f"keep {edges.name} in {_ranges(open_layers)}"
        if heads is not None:
            kept = tuple(sorted({int(h) for h in heads}))
            if not kept or kept[0] < 0:
                raise InputError(f"keep {edges.name!r}: heads must be non-negative head indices "
                                 f"(None keeps every head), got {heads!r}")
            self.head_rules.append((edges, open_layers, kept))
            description += f", heads {', '.join(map(str, kept))} only"
        self.rules.append((edges, blocked, description))
        self._blocked_cache = None
        return self

    def block(self, edges: Edges, layers: Iterable[int]) -> "PathwaySpec":
        """Block ``edges`` in ``layers``."""
        blocked = self._layers(layers)
        self.rules.append((edges, blocked, f"block {edges.name} in {_ranges(blocked)}"))
        self._blocked_cache = None
        return self

    @classmethod
    def from_mapping(
        cls, n_layers: int, mapping: Mapping[Edges, Iterable[int]], *, mode: str = "keep"
    ) -> "PathwaySpec":
        """A spec from ``{edges: layers}``, read as kept-open layers (``mode="keep"``) or as
        blocked layers (``mode="block"``)."""
        if mode not in ("keep", "block"):
            raise InputError(f"mode must be 'keep' or 'block', got {mode!r}")
        spec = cls(n_layers)
        for edges, layers in mapping.items():
            (spec.keep if mode == "keep" else spec.block)(edges, layers)
        return spec

    def blocked(self, layer: int) -> Edges:
        """The union of every edge set blocked in ``layer``."""
        check_layer(layer, self.n_layers)
        if self._blocked_cache is None:
            # Layers blocked by the same rules share one Edges object, hence one dense mask.
            by_rules: dict[tuple[int, ...], Edges] = {}
            cache = {}
            for each_layer in range(self.n_layers):
                active = tuple(i for i, rule in enumerate(self.rules) if each_layer in rule[1])
                if active not in by_rules:
                    by_rules[active] = Edges.union(self.rules[i][0] for i in active)
                cache[each_layer] = by_rules[active]
            self._blocked_cache = cache
        return self._blocked_cache[layer]

    def hooks(self) -> HookList:
        """Knockout hooks blocking, in each layer, that layer's blocked edges."""
        hooks: HookList = []
        shared: dict[int, KnockoutHook] = {}
        for layer in range(self.n_layers):
            edges = self.blocked(layer)
            if not edges.extent():
                continue
            hook = shared.setdefault(id(edges), KnockoutHook(edges))
            hooks.append((attn_scores_hook_name(layer), hook))
        for edges, open_layers, kept in self.head_rules:
            hook = _OtherHeadsKnockout(edges, kept)
            hooks += [(attn_scores_hook_name(layer), hook) for layer in sorted(open_layers)]
        return hooks

    def blocked_counts(self, n_positions: int) -> list[int]:
        """Number of causal edges blocked in each layer."""
        counts: dict[int, int] = {}
        return [counts.setdefault(id(e), e.count(n_positions))
                for e in (self.blocked(layer) for layer in range(self.n_layers))]

    def edge_accounting(self, n_positions: int) -> tuple[int, int]:
        """(kept, total) causal edges summed over all layers — the paper's "10.8M/25.7M"."""
        total = self.n_layers * causal_edge_count(n_positions)
        return total - sum(self.blocked_counts(n_positions)), total

    def retained_fraction(self, n_positions: int) -> float:
        """Kept edges over the full causal triangle summed over layers (Map the Flow Table 1)."""
        kept, total = self.edge_accounting(n_positions)
        return kept / total

    def random_like(self, region: Edges, n_positions: int, seed: int, *,
                    baseline: str = "official-uniform",
                    ratio: float | None = None, sample: str | None = None) -> "PathwaySpec":
        """The random-pruning baseline for this spec (Map the Flow, Finding 4), drawn by
        :func:`random_baseline_counts` and :func:`random_knockout`'s one sampler:

        - ``baseline="official-uniform"`` (official default): in **every** layer the same
          ``N = int(ratio × n(n+1)/2)`` causal edges are blocked, drawn fresh per layer from the
          causal edges of ``region`` (the paper: query and key both at or after the video
          start, last token included); ``ratio`` defaults to the fraction of edges this spec
          blocks, ``1 − retained_fraction``;
        - ``baseline="per-layer-matched"``: in each layer as many edges as this spec blocks
          *in that layer* (the total matches exactly, layer by layer).

        Each sample draws afresh, as the official code does (an unseeded ``torch.randperm`` per
        sample and layer, causal_intervention_tools.py:42), yet reproducibly: one generator
        seeded with :func:`random_draw_seed` of ``(seed, sample)`` draws the layers in order, so
        two samples of the same length get different edges and a (seed, sample) pair always the
        same ones. Without ``sample`` the generator is seeded with ``seed`` alone.
        """
        counts = random_baseline_counts(self, n_positions, baseline=baseline, ratio=ratio)
        baseline_spec = PathwaySpec(self.n_layers)
        for layer, edges in _random_edges_per_layer(region, n_positions, counts, seed,
                                                    sample).items():
            baseline_spec.block(edges, [layer])
        return baseline_spec

    def describe(self) -> str:
        """The rules, one a line, in 0-based blocks with the paper's 1-based range beside
        ("keep cross-frame in blocks 5–14 (paper L6–15)")."""
        return "\n".join(rule[2] for rule in self.rules)


def _ranges(layers: Iterable[int]) -> str:
    """0-based blocks with the paper's 1-based ranges beside: [5, 6, 7, 9] → "blocks 5–7, 9
    (paper L6–8, L10)"."""
    ordered = sorted(set(layers))
    if not ordered:
        return "no layer"
    runs, start, previous = [], ordered[0], ordered[0]
    for layer in ordered[1:] + [None]:
        if layer is None or layer != previous + 1:
            runs.append((start, previous))
            if layer is not None:
                start = layer
        if layer is not None:
            previous = layer
    blocks = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs)
    paper = ", ".join(f"L{a + 1}" if a == b else f"L{a + 1}–{b + 1}" for a, b in runs)
    return f"{'block' if len(ordered) == 1 else 'blocks'} {blocks} (paper {paper})"


#: The random-pruning baselines: the official one (the same number of edges in every layer) and
#: the per-layer-matched one (each layer as many edges as the pathway blocks there).
RANDOM_BASELINES = ("official-uniform", "per-layer-matched")


def random_baseline_counts(spec: PathwaySpec, n_positions: int, *,
                           baseline: str = "official-uniform",
                           ratio: float | None = None) -> dict[int, int]:
    """Edges to block per layer for the random baseline of ``spec`` (see
    :meth:`PathwaySpec.random_like`): ``{layer: count}``."""
    if baseline not in RANDOM_BASELINES:
        raise InputError(f"random baseline must be one of {RANDOM_BASELINES}, got {baseline!r}")
    if baseline == "per-layer-matched":
        if ratio is not None:
            raise InputError("ratio applies to the official-uniform baseline only; the "
                             "per-layer-matched one copies the pathway's counts")
        return dict(enumerate(spec.blocked_counts(n_positions)))
    if ratio is None:
        # The pathway's blocked fraction of the triangle, in whole numbers: int(ratio × n(n+1)/2)
        # with ratio = blocked / (layers × n(n+1)/2) is blocked // layers. Through a float ratio
        # (1 − kept/total) it can round one edge short (502 for an exact 503).
        count = sum(spec.blocked_counts(n_positions)) // spec.n_layers
    else:
        count = _official_count(ratio, n_positions)
    return {layer: count for layer in range(spec.n_layers)}


def _official_count(ratio: float, n_positions: int) -> int:
    """``int(ratio × n(n+1)/2)``: a fraction of the whole causal triangle (official)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) \
            or not 0.0 <= ratio <= 1.0:
        raise InputError(f"random pruning ratio must lie in [0, 1], got {ratio!r}")
    return int(ratio * causal_edge_count(n_positions))


def random_draw_seed(seed: int, sample: str | None = None) -> int:
    """The generator seed of one random-baseline draw: ``seed`` itself without a sample; with
    one, the first 63 bits of SHA-256 over ``"{seed}:{sample}"`` — stable across processes and
    Python versions (``hash()`` of a string is salted per process), and different for every
    sample, so each sample draws its own edges as the official code does."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"random seed must be an int, got {seed!r}")
    if sample is None:
        return seed
    digest = hashlib.sha256(f"{seed}:{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _random_edges_per_layer(region: Edges, n_positions: int, counts: Mapping[int, int],
                            seed: int, sample: str | None = None) -> dict[int, Edges]:
    """The one sampler of the random baseline: for each layer (in increasing order) ``count``
    distinct causal edges of ``region``, uniformly, from one generator seeded with
    :func:`random_draw_seed` of ``(seed, sample)``."""
    candidates = region.dense(n_positions).nonzero()
    generator = torch.Generator().manual_seed(random_draw_seed(seed, sample))
    drawn = {}
    for layer in sorted(counts):
        count = counts[layer]
        if count > candidates.shape[0]:
            # The official code silently blocks every candidate then; we refuse.
            raise InputError(
                f"cannot draw {count} random edges from region {region.name!r}, which has only "
                f"{candidates.shape[0]} causal edges; lower the ratio or widen the region")
        order = torch.randperm(candidates.shape[0], generator=generator)
        if count:
            chosen = candidates[order[:count]]
            drawn[layer] = Edges.from_pairs(
                chosen[:, 0], chosen[:, 1], n_positions,
                name=f"random {count} of {region.name} (seed {seed}"
                     + (f", sample {sample}" if sample is not None else "") + f", layer {layer})")
    return drawn


def random_knockout(
    ratio: float,
    seed: int,
    region: Edges,
    layers: Iterable[int],
    n_positions: int,
    sample: str | None = None,
) -> HookList:
    """The paper's random baseline as hooks: in each of ``layers``, block
    ``N = int(ratio × n(n+1)/2)`` causal edges (a fraction of the **whole** causal triangle, as
    the official code counts it) drawn uniformly from the causal edges of ``region`` (the paper:
    positions from the video start to the last token).

    Each layer draws its own edges; one generator seeded with :func:`random_draw_seed` of
    ``(seed, sample)`` draws the layers in order, so the same seed and sample always give the
    same edges and different samples different ones. :meth:`PathwaySpec.random_like` uses the
    same sampler.
    """
    layers = sorted(set(layers))
    if not layers:
        raise InputError("random_knockout needs at least one layer")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise InputError(f"layer must be a non-negative int, got {layer!r}")
    count = _official_count(ratio, n_positions)
    drawn = _random_edges_per_layer(region, n_positions, dict.fromkeys(layers, count), seed,
                                    sample)
    return [(attn_scores_hook_name(layer), KnockoutHook(edges))
            for layer, edges in drawn.items()]


def capture(
    names: str | Iterable[str], store: dict[str, torch.Tensor], *, positions=None
) -> HookList:
    """Hooks that copy activations into ``store[name]`` (detached), optionally only at
    ``positions`` along the sequence axis (axis 1 of residual-stream-shaped activations)."""
    names = [names] if isinstance(names, str) else list(names)
    index = None if positions is None else torch.as_tensor(positions, dtype=torch.long)

    def saver(name: str):
        # keyed by the name asked for: on a TransformerLens 4 bridge ``hook.name`` is the
        # canonical name (``blocks.1.hook_in``) of the HookedTransformer alias asked for
        def save(activation: torch.Tensor, hook) -> None:
            value = activation.detach()
            if index is not None:
                value = value[:, index.to(value.device)]
            store[name] = value
        return save

    return [(name, saver(name)) for name in names]


def check_hooks(model, hooks: HookList) -> None:
    """Raise ``ValueError`` naming any hook point the model does not have (for instance a layer
    beyond its depth) before a forward pass starts.

    A hook's name is a hook point name or, as in TransformerLens, a filter function
    ``name -> bool`` that attaches the hook to every hook point it accepts; a filter that accepts
    none is refused too (it would silently hook nothing)."""
    available = model.hook_dict
    n_layers = model.cfg.n_layers
    for name, fn in hooks:
        if not callable(fn):
            raise InputError(f"hook for {name!r} is not callable: {fn!r}")
        if callable(name):
            if not any(name(point) for point in available):
                label = getattr(name, "__name__", repr(name))
                raise InputError(
                    f"hook name filter {label} accepts none of this model's {len(available)} "
                    f"hook points (e.g. 'blocks.0.attn.hook_pattern'); check its condition")
            continue
        if not isinstance(name, str):
            raise InputError(f"hook name must be a hook point name or a filter function "
                             f"name -> bool, got {name!r}")
        if name not in available:
            from difflib import get_close_matches


            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() \
                    and int(parts[1]) >= n_layers:
                raise InputError(
                    f"hook {name!r}: layer {parts[1]} is outside [0, {n_layers}) of this "
                    f"{n_layers}-layer model"
                )
            # A layer in range (or no layer): the hook point's own name is wrong.
            close = get_close_matches(name, list(available), n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]!r}?" if close else (
                " (hook points are named like 'blocks.0.attn.hook_attn_scores'; list them with "
                "vlm.backbone.hook_dict)")
            raise InputError(f"hook {name!r} is not a hook point of this model{hint}")
