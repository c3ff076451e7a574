"""The lean suffix forward of knockout sweeps: the backbone's decoder block restated in plain torch.

A knockout sweep (:mod:`mapflow_tl.engine`) recomputes, per configuration, only the layers from
its first blocked layer s on and only the positions from its first blocked query p on. Through the
``HookedTransformer`` every such layer call pays for hook dispatch, weight re-layouts
(``W.T.contiguous()``), re-rotating *all* cached keys, a rebuilt causal mask and an ``isnan``
pass — a fixed cost per call that dominates once the recomputed cells are few. This module runs
the same arithmetic without any of that:

- :func:`backbone_weights` reads the backbone's weights once per model, device and dtype (the only
  place that knows where they live, so another backend — a TransformerLens-4 ``TransformerBridge``
  — can supply the same :class:`BackboneWeights`). Q, K and V are packed into one ``[d_model,
  (heads + 2·kv_heads)·d_head]`` matrix (one matmul instead of three) for small backbones; large
  ones (``PACKED_QKV_MAX_MB``: a 7B backbone would hold a quarter of its weights twice) project
  from the model's own weights; every other weight is a view of the model's own storage;
- :func:`clean_forward` runs the clean (unablated) sample once and keeps its *rotated* keys and
  values of every layer (``[kv_heads, pos, d_head]``) and the residual stream entering the layers a
  sweep starts from;
- :func:`suffix_logits` runs a batch of configurations from layer s, positions p … pos−1, with
  each configuration's knockout as a mask on its attention scores (Map the Flow §2: blocked
  (query, key) scores are −∞ in all heads) and returns the last-position logits.

Attention has two exact forms, picked by the number of recomputed queries Q:

- many queries (``Q ≥ SDPA_MIN_QUERIES``): the clean prefix keys/values are concatenated with the
  batch's own and ``torch.nn.functional.scaled_dot_product_attention`` runs with the knockout and
  causal mask as an additive ``[batch, 1, Q, pos]`` mask (faster than a boolean one on CPU); very
  many queries run in chunks, each over the keys up to its last query only (causality hides the
  rest);
- few queries (a "→ last" knockout recomputes one): the batch is folded into the query axis, so
  the clean prefix keys/values are read once for all configurations — no per-configuration copy of
  ``pos`` keys — and one softmax runs over the prefix scores and the batch's own scores side by
  side (``[batch, heads, Q, pos]``, the size the attention pattern has anyway).

The block restated (TransformerLens' ``HookedTransformer`` with the configs that
:func:`~mapflow_tl.models.backbone.hooked_config_from_hf` produces — Llama / Mistral / Qwen2 /
Qwen3 / Phi-3 and the Qwen2-VL M-RoPE text decoders): RMSNorm (``x / sqrt(mean(x²) + eps) · w``,
in fp32 for half types), Q/K/V projections with optional biases, optional per-head q/k RMSNorm
(Qwen3), rotary embedding of the first ``rotary_dim`` dimensions with the model's own (cos, sin)
tables (``x·cos + rotate_half(x)·sin``; per-sample M-RoPE tables and Phi-3 LongRoPE tables are
installed on the model by its adapter, so they are read, not recomputed), grouped-query attention
scaled by ``1/attn_scale``, output projection, gated MLP ``(act(x W_gate) ⊙ x W_in + b_in) W_out +
b_out``, the adapter's per-sample additions to a block's output at some positions (Qwen3-VL's
DeepStack visual features, read with :func:`residual_additions` as the tables are), final
RMSNorm, unembedding, optional logit soft cap. :func:`lean_unsupported` names what
it does not restate (any other normalisation, MLP or attention variant, a model split over
several devices): the engine then stays on the hooked path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from .errors import InputError

__all__ = [
    "SDPA_MIN_QUERIES",
    "BackboneWeights",
    "LayerWeights",
    "CleanRun",
    "backbone_weights",
    "rotary_tables",
    "residual_additions",
    "lean_unsupported",
    "clean_forward",
    "suffix_logits",
]

#: From this many recomputed queries on, attention runs through SDPA on concatenated keys/values;
#: below it, through the batch-folded form that reads the clean prefix once for the whole batch.
#: (CPU, d_model 128, 1257 keys: SDPA wins from ≈ 16 queries per configuration.)
SDPA_MIN_QUERIES = 16

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block's weights, laid out ``[in, out]`` for ``x @ W``."""

    ln_attn: Float[torch.Tensor, " d_model"]
    #: the packed Q/K/V projection ``[d_model, (heads + 2·kv_heads)·d_head]`` (columns: q heads,
    #: then k heads, then v heads), or None: projected with ``qkv_parts`` as they are
    W_qkv: Float[torch.Tensor, "d_model qkv"] | None
    #: the model's own W_Q, W_K, W_V ``[heads, d_model, d_head]`` (views, never copies)
    qkv_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    b_qkv: Float[torch.Tensor, " qkv"] | None
    q_norm: Float[torch.Tensor, " d_head"] | None
    k_norm: Float[torch.Tensor, " d_head"] | None
    W_O: Float[torch.Tensor, "heads_x_d_head d_model"]
    b_O: Float[torch.Tensor, " d_model"] | None
    ln_mlp: Float[torch.Tensor, " d_model"]
    W_gate: Float[torch.Tensor, "d_model d_mlp"]
    W_in: Float[torch.Tensor, "d_model d_mlp"]
    b_in: Float[torch.Tensor, " d_mlp"] | None
    W_out: Float[torch.Tensor, "d_mlp d_model"]
    b_out: Float[torch.Tensor, " d_model"] | None


@dataclass(frozen=True)
class BackboneWeights:
    """Everything the lean forward reads from a backbone: per-layer weights and the shape."""

    layers: tuple[LayerWeights, ...]
    ln_final: Float[torch.Tensor, " d_model"]
    W_U: Float[torch.Tensor, "d_model d_vocab"]
    b_U: Float[torch.Tensor, " d_vocab"] | None
    n_heads: int
    n_kv_heads: int
    d_head: int
    eps: float
    attn_scale: float
    activation: Callable[[torch.Tensor], torch.Tensor]
    logits_soft_cap: float
    dtype: torch.dtype
    device: torch.device
    #: per layer (cos, sin) ``[n_ctx, rotary_dim]``; read afresh by every sweep (per-sample M-RoPE)
    rotary: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def lean_unsupported(model) -> str | None:
    """Why the lean forward cannot restate this ``HookedTransformer`` exactly, or ``None``."""
    cfg = model.cfg
    checks = [
        (cfg.normalization_type == "RMS", f"normalization {cfg.normalization_type!r}"),
        (getattr(cfg, "final_rms", True), "a final LayerNorm"),
        (not getattr(cfg, "use_normalization_before_and_after", False),
         "norms after attention and MLP (GLM-4 sandwich norms)"),
        (cfg.positional_embedding_type == "rotary",
         f"positional embedding {cfg.positional_embedding_type!r}"),
        (not getattr(cfg, "rotary_adjacent_pairs", False), "rotary on adjacent pairs"),
        (cfg.gated_mlp, "a non-gated MLP"),
        (not getattr(cfg, "num_experts", None), "mixture-of-experts MLPs"),
        (cfg.act_fn in _ACTIVATIONS, f"activation {cfg.act_fn!r}"),
        (not cfg.parallel_attn_mlp, "parallel attention and MLP"),
        (cfg.n_devices == 1, f"a model split over {cfg.n_devices} devices"),
        ((cfg.attn_scores_soft_cap or -1) <= 0, "an attention-score soft cap"),
        (not cfg.use_local_attn, "local attention"),
        (not getattr(cfg, "use_attn_result", False), "use_attn_result"),
        (not getattr(cfg, "use_split_qkv_input", False), "use_split_qkv_input"),
        (not getattr(cfg, "use_hook_mlp_in", False), "use_hook_mlp_in"),
        (not getattr(cfg, "use_logn_attn", False), "log-n attention scaling"),
        (not getattr(cfg, "use_dynamic_ntk_rope", False), "dynamic NTK rotary"),
        (getattr(cfg, "clip_qkv", None) is None, "clipped q/k/v"),
        (not getattr(cfg, "use_attention_sinks", False), "attention sinks"),
        (not getattr(cfg, "load_in_4bit", False), "4-bit weights"),
        (cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM",
                                           "Olmo3ForCausalLM"), "OLMo q/k norms"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    return None


_WEIGHTS: "weakref.WeakKeyDictionary[object, tuple[tuple, BackboneWeights]]" = \
    weakref.WeakKeyDictionary()

#: The packed Q/K/V copy of every layer is kept when together they take at most this many MiB.
#: A larger backbone (a 7B one: 3.2 GB in bf16, a quarter of its weights) projects with one
#: batched matmul per projection straight from the model's own weights instead, so that a sweep
#: never holds a second copy of them (on CPU at width 4096 a sweep took as long either way).
PACKED_QKV_MAX_MB = 512


def _pack_qkv(parts: tuple[torch.Tensor, ...]) -> Float[torch.Tensor, "d_model qkv"]:
    """W_Q, W_K, W_V ``[heads, d_model, d_head]`` as one ``[d_model, Σ heads·d_head]`` matrix,
    head-major like HF's q_proj rows (one copy)."""
    d_model = parts[0].shape[1]
    widths = [part.shape[0] * part.shape[2] for part in parts]
    packed = parts[0].new_empty(d_model, sum(widths))
    column = 0
    for part, width in zip(parts, widths):
        packed[:, column:column + width].view(d_model, part.shape[0], part.shape[2]).copy_(
            part.permute(1, 0, 2))
        column += width
    return packed


def _stamp(parameters: dict[str, torch.Tensor]) -> tuple:
    """Changes whenever a weight is replaced, moved, cast or edited in place."""
    return tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in parameters.values())


def _parameters(model) -> dict[str, torch.Tensor]:
    """The backbone's weights under HookedTransformer's parameter names (``blocks.{l}.attn.W_Q
    [heads, d_model, d_head]``, ``blocks.{l}.attn._W_K`` under grouped-query attention, …).

    A ``HookedTransformer`` holds them as its parameters. A TransformerLens 4 bridge keeps the
    Hugging Face weights; it carries ``mapflow_parameters`` (set by
    :func:`~mapflow_tl.models.bridge.bridge_from_hf`), which lays them out under the same names
    (views of HF's tensors) — so the lean forward reads both backends through this one function.
    """
    source = getattr(model, "mapflow_parameters", None)
    return dict(model.named_parameters()) if source is None else source()


def rotary_tables(model) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Each layer's rotary (cos, sin) tables ``[n_ctx, rotary_dim]`` as the model holds them now
    (per-sample M-RoPE tables are installed there by the adapter). A bridge computes them with
    the HF decoder's own rotary module (``mapflow_rotary_tables``)."""
    source = getattr(model, "mapflow_rotary_tables", None)
    if source is not None:
        return source()
    return tuple((block.attn.rotary_cos, block.attn.rotary_sin) for block in model.blocks)


def residual_additions(model) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """What the model's adapter adds to the residual stream after some blocks for the sample
    whose forward last entered block 0 (Qwen3-VL's DeepStack features, installed by
    :class:`~mapflow_tl.models.backbone.RotaryPositions`): ``{layer: (positions [k], values
    [k, d_model])}``, empty for backbones without such additions."""
    source = getattr(model, "mapflow_residual_additions", None)
    return {} if source is None else dict(source())


def backbone_weights(model) -> BackboneWeights:
    """The backbone's weights as the lean forward reads them, prepared once and cached.

    Reads only a ``HookedTransformer``'s public parameters (``W_Q [heads, d_model, d_head]``, …;
    a TransformerLens 4 bridge's HF weights under the same names, :func:`_parameters`),
    its config, and the rotary (cos, sin) tables its attention layers hold (the adapters install
    per-sample M-RoPE or LongRoPE tables there; they are read on every call, never cached). Q/K/V
    are packed into one matrix (a copy, made once) if all layers' take at most
    ``PACKED_QKV_MAX_MB``, else read as they are; every other weight is a view. The cached
    weights are rebuilt when any parameter changes (moved, cast, replaced or edited in place).
    """
    rotary = rotary_tables(model)
    params = _parameters(model)
    stamp = (_stamp(params), PACKED_QKV_MAX_MB)
    cached = _WEIGHTS.get(model)
    if cached is not None and cached[0] == stamp:
        return replace(cached[1], rotary=rotary)
    cfg = model.cfg
    n_heads, d_head = cfg.n_heads, cfg.d_head
    n_kv = cfg.n_key_value_heads or n_heads
    gqa = cfg.n_key_value_heads is not None

    def qkv(prefix: str, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's own ``[heads, d_model, d_head]`` weight and its bias ``[heads·d_head]``."""
        underscore = "_" if gqa and name != "Q" else ""
        weight = params[f"{prefix}.attn.{underscore}W_{name}"]
        bias = params.get(f"{prefix}.attn.{underscore}b_{name}")
        return weight, None if bias is None else bias.reshape(-1)

    def nonzero(bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None or not bool(bias.any()) else bias

    itemsize = torch.empty(0, dtype=cfg.dtype).element_size()
    keep_packed = (cfg.n_layers * cfg.d_model * (n_heads + 2 * n_kv) * d_head * itemsize
                   <= PACKED_QKV_MAX_MB * 2**20)
    layers = []
    with torch.no_grad():
        for index in range(cfg.n_layers):
            prefix = f"blocks.{index}"
            parts = [qkv(prefix, name) for name in "QKV"]
            biases = [bias if bias is not None else torch.zeros(
                weight.shape[0] * weight.shape[2], dtype=weight.dtype, device=weight.device)
                for weight, bias in parts]
            b_qkv = nonzero(torch.cat(biases))
            raw = tuple(weight for weight, _ in parts)
            qk_norm = cfg.use_qk_norm
            layers.append(LayerWeights(
                ln_attn=params[f"{prefix}.ln1.w"],
                W_qkv=_pack_qkv(raw) if keep_packed else None,
                qkv_parts=raw,
                b_qkv=b_qkv,
                q_norm=params[f"{prefix}.attn.q_norm.w"] if qk_norm else None,
                k_norm=params[f"{prefix}.attn.k_norm.w"] if qk_norm else None,
                # a view where the layout allows
                W_O=params[f"{prefix}.attn.W_O"].reshape(n_heads * d_head, cfg.d_model),
                b_O=nonzero(params.get(f"{prefix}.attn.b_O")),
                ln_mlp=params[f"{prefix}.ln2.w"],
                W_gate=params[f"{prefix}.mlp.W_gate"], W_in=params[f"{prefix}.mlp.W_in"],
                b_in=nonzero(params.get(f"{prefix}.mlp.b_in")),
                W_out=params[f"{prefix}.mlp.W_out"],
                b_out=nonzero(params.get(f"{prefix}.mlp.b_out")),
            ))
    weights = BackboneWeights(
        layers=tuple(layers), ln_final=params["ln_final.w"], W_U=params["unembed.W_U"],
        b_U=nonzero(params.get("unembed.b_U")), n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head,
        eps=float(cfg.eps), attn_scale=float(cfg.attn_scale if cfg.use_attn_scale else 1.0),
        activation=_ACTIVATIONS[cfg.act_fn],
        logits_soft_cap=float(cfg.output_logits_soft_cap or -1.0),
        dtype=cfg.dtype, device=params["embed.W_E"].device,
    )
    _WEIGHTS[model] = (stamp, weights)
    return replace(weights, rotary=rotary)


# ---------------------------------------------------------------------- the block
def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """TransformerLens' RMSNorm ``x / sqrt(mean(x²) + eps) · w`` (one fused kernel), normalised
    in fp32 for half types."""
    if x.dtype in (torch.float32, torch.float64):
        return F.rms_norm(x, weight.shape, weight, eps)
    return F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding ``x·cos + rotate_half(x)·sin`` of the first ``rotary_dim`` dimensions.

    x ``[batch, pos, heads, d_head]``, cos/sin ``[pos, rotary_dim]`` (shared by the batch) or
    ``[batch, pos, rotary_dim]`` (each element its own positions)."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos[..., None, :], sin[..., None, :]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    flipped = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
    rotated = rotated * cos + flipped * sin
    return rotated if passed.shape[-1] == 0 else torch.cat([rotated, passed], dim=-1)


def _qkv(weights: BackboneWeights, index: int, x: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor):
    """Rotated q ``[batch, Q, heads, d_head]`` and k, v ``[batch, Q, kv_heads, d_head]`` of the
    positions whose residual stream is x ``[batch, Q, d_model]`` and whose rotary tables are
    cos/sin (``[Q, rotary_dim]`` or ``[batch, Q, rotary_dim]``)."""
    layer = weights.layers[index]
    h = _rms(x, layer.ln_attn, weights.eps)
    qkv = _project_qkv(layer, h)
    if layer.b_qkv is not None:
        qkv = qkv + layer.b_qkv
    d_head, n_q = weights.d_head, weights.n_heads * weights.d_head
    n_kv = weights.n_kv_heads * d_head
    # q and k heads rotate in one pass: they are adjacent columns of the packed projection
    qk = qkv[..., :n_q + n_kv].unflatten(-1, (weights.n_heads + weights.n_kv_heads, d_head))
    v = qkv[..., n_q + n_kv:].unflatten(-1, (weights.n_kv_heads, d_head))
    if layer.q_norm is not None:
        qk = torch.cat([_rms(qk[..., :weights.n_heads, :], layer.q_norm, weights.eps),
                        _rms(qk[..., weights.n_heads:, :], layer.k_norm, weights.eps)], dim=-2)
    qk = _rotate(qk, cos, sin)
    return qk[..., :weights.n_heads, :], qk[..., weights.n_heads:, :], v


def _project_qkv(layer: LayerWeights, h: torch.Tensor) -> torch.Tensor:
    """``h [..., d_model] → [..., (heads + 2·kv_heads)·d_head]``: one matmul with the packed
    weight, or, without one, a batched matmul per projection straight from the model's
    ``[heads, d_model, d_head]`` weight (the input broadcast over heads, no weight copied)."""
    if layer.W_qkv is not None:
        return h @ layer.W_qkv
    flat = h.reshape(-1, h.shape[-1])
    parts = [torch.bmm(flat.expand(weight.shape[0], -1, -1), weight).transpose(0, 1)
             .reshape(flat.shape[0], -1) for weight in layer.qkv_parts]
    return torch.cat(parts, dim=-1).reshape(*h.shape[:-1], -1)


def _finish_block(weights: BackboneWeights, layer: LayerWeights, x: torch.Tensor,
                  z: torch.Tensor) -> torch.Tensor:
    """Output projection of the attention result z ``[batch, Q, heads·d_head]`` and the MLP."""
    attn_out = z @ layer.W_O
    if layer.b_O is not None:
        attn_out = attn_out + layer.b_O
    x = x + attn_out
    h = _rms(x, layer.ln_mlp, weights.eps)
    hidden = weights.activation(h @ layer.W_gate) * (h @ layer.W_in)
    if layer.b_in is not None:
        hidden = hidden + layer.b_in
    mlp_out = hidden @ layer.W_out
    if layer.b_out is not None:
        mlp_out = mlp_out + layer.b_out
    return x + mlp_out


def _head(weights: BackboneWeights, x: torch.Tensor) -> Float[torch.Tensor, "batch d_vocab"]:
    """Final RMSNorm, unembedding and soft cap of x ``[batch, d_model]``."""
    logits = _rms(x, weights.ln_final, weights.eps) @ weights.W_U
    if weights.b_U is not None:
        logits = logits + weights.b_U
    cap = weights.logits_soft_cap
    return logits if cap <= 0 else cap * torch.tanh(logits / cap)


# ---------------------------------------------------------------------- the clean run
Tables = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class CleanRun:
    """What a sweep keeps of the clean forward of S samples (lengths n_s, padded at the end to
    N = max n_s): rotated keys and values of every layer ``[S, kv_heads, N, d_head]``, the
    residual stream entering the layers it starts from ``{layer: [S, N, d_model]}``, the clean
    last-position logits ``[S, d_vocab]`` and each layer's rotary tables — ``[n_ctx,
    rotary_dim]`` when the samples share them, ``[S, N, rotary_dim]`` when each has its own
    (M-RoPE) — and the additions to the output of some layers ``{layer: [S, N, d_model]}``
    (DeepStack; zero where a sample adds nothing). Entries past a sample's length are padding:
    no real position ever attends them."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    residual: dict[int, torch.Tensor]
    logits: torch.Tensor
    lengths: tuple[int, ...]
    rotary: Tables
    additions: dict[int, torch.Tensor] = field(default_factory=dict)


def _sample_tables(rotaries: Sequence[Tables], lengths: Sequence[int]) -> Tables:
    """Each layer's rotary tables for a group of samples: the model's own table when every
    sample's is the same tensor (sequential positions), else the samples' tables stacked and
    zero-padded to the longest (per-sample M-RoPE)."""
    n = max(lengths)
    tables = []
    for index, layer in enumerate(zip(*rotaries)):
        cos, sin = layer[0]
        for (sample_cos, _), length in zip(layer, lengths):
            if sample_cos.shape[0] < length:
                raise InputError(f"layer {index}'s rotary tables cover {sample_cos.shape[0]} "
                                 f"positions, the sequence has {length}; run the model on it "
                                 f"once to extend them")
        if all(c is cos and s is sin for c, s in layer):
            tables.append((cos, sin))
            continue
        stacked = []
        for part in (0, 1):
            table = torch.zeros(len(lengths), n, cos.shape[-1], dtype=cos.dtype,
                                device=cos.device)
            for row, (pair, length) in enumerate(zip(layer, lengths)):
                table[row, :length] = pair[part][:length]
            stacked.append(table)
        tables.append((stacked[0], stacked[1]))
    return tuple(tables)


@torch.inference_mode()
def clean_forward(
    weights: BackboneWeights,
    embeds: Float[torch.Tensor, "1 pos d_model"] | Sequence[Float[torch.Tensor, "1 _ d_model"]],
    keep_residual: set[int] | frozenset[int] = frozenset(),
    *,
    rotary: Sequence[Tables] | None = None,
    additions: Sequence[dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> CleanRun:
    """One unablated forward of one sample, or of several in one batch, keeping what their
    knockout configurations reuse.

    Several samples of different lengths run right-padded to the longest: under causal
    attention a real position never sees the padding after it, so each sample's keys, values
    and residual stream are its own forward's (up to batched-matmul rounding). ``rotary`` gives
    each sample's per-layer (cos, sin) tables as :func:`backbone_weights` read them when that
    sample's tables were installed (default: ``weights.rotary`` for every sample);
    ``additions`` each sample's :func:`residual_additions` (default: none), added to the output
    of their layers here and in every suffix forward from this run."""
    samples = [embeds] if isinstance(embeds, torch.Tensor) else list(embeds)
    for sample in samples:
        if sample.dim() != 3 or sample.shape[0] != 1:
            raise InputError(f"clean_forward takes [1, pos, d_model] embeddings per sample, got "
                             f"{tuple(sample.shape)}")
    lengths = tuple(int(sample.shape[1]) for sample in samples)
    n = max(lengths)
    rotary = [weights.rotary] * len(samples) if rotary is None else list(rotary)
    tables = _sample_tables(rotary, lengths)
    if len(samples) == 1:
        x = samples[0]
    else:
        x = samples[0].new_zeros(len(samples), n, samples[0].shape[-1])
        for row, sample in enumerate(samples):
            x[row, :sample.shape[1]] = sample[0]
    dense: dict[int, torch.Tensor] = {}
    for row, sample_additions in enumerate(additions or ()):
        for layer, (positions, added) in sample_additions.items():
            if layer not in dense:
                dense[layer] = x.new_zeros(len(samples), n, x.shape[-1])
            dense[layer][row, positions.to(x.device)] = added.to(x.device, x.dtype)
    rows = torch.arange(len(samples), device=x.device)
    ends = torch.tensor(lengths, device=x.device) - 1
    keys, values, residual = [], [], {}
    for index, layer in enumerate(weights.layers):
        if index in keep_residual:
            residual[index] = x
        cos, sin = tables[index]
        q, k, v = _qkv(weights, index, x, cos[..., :n, :], sin[..., :n, :])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        keys.append(k.contiguous())
        values.append(v.contiguous())
        gqa = weights.n_kv_heads != weights.n_heads
        if index == len(weights.layers) - 1:
            # Only the last position's output of the last layer is read (the logits): its
            # attention and MLP run for that query alone — every key, but a sample's padding.
            valid = None if len(samples) == 1 else \
                (torch.arange(n, device=x.device) <= ends[:, None])[:, None, None]
            z = F.scaled_dot_product_attention(
                q[rows, :, ends][:, :, None], k, v, attn_mask=valid,
                scale=1.0 / weights.attn_scale, enable_gqa=gqa)
            x = _finish_block(weights, layer, x[rows, ends][:, None],
                              z.transpose(1, 2).flatten(2))[:, 0]
            if index in dense:
                x = x + dense[index][rows, ends]
            break
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           scale=1.0 / weights.attn_scale, enable_gqa=gqa)
        x = _finish_block(weights, layer, x, z.transpose(1, 2).flatten(2))
        if index in dense:  # zero elsewhere, so x + 0 leaves the other positions exact
            x = x + dense[index]
    return CleanRun(keys, values, residual, _head(weights, x), lengths, tables, dense)


# ---------------------------------------------------------------------- the suffix
@dataclass(frozen=True)
class _Layout:
    """Where a batch's elements read the clean run. Element b recomputes the last Q positions of
    sample ``samples[b]`` (``first[b]`` … length − 1); its keys are laid out as ``P`` prefix slots
    (slot j = clean position j, valid for j < first[b]) followed by its Q own positions.

    The prefix is read per group of elements: ``groups`` clean-run rows with ``per_group``
    elements each (elements sorted by sample and every sample contributing the same number), or
    — when the counts differ — one group per element."""

    samples: torch.Tensor  # [B] long
    first: torch.Tensor  # [B] long
    n_prefix: int
    groups: torch.Tensor | slice  # clean-run rows the prefix is read from
    per_group: int
    shared_first: int | None  # every element's first recomputed position, when they agree


def _layout(clean: CleanRun, samples: Sequence[int], n_queries: int, device) -> _Layout:
    first = [clean.lengths[s] - n_queries for s in samples]
    if min(first) < 0:
        raise InputError(f"{n_queries} recomputed positions exceed a sample of "
                         f"{min(clean.lengths)} positions")
    counts: dict[int, int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    contiguous = list(samples) == sorted(samples)
    if contiguous and len(set(counts.values())) == 1:
        used = sorted(counts)
        groups: torch.Tensor | slice = (
            slice(used[0], used[-1] + 1) if used == list(range(used[0], used[-1] + 1))
            else torch.tensor(used, device=device))
        per_group = len(samples) // len(used)
    else:
        groups, per_group = torch.tensor(list(samples), device=device), 1
    return _Layout(torch.tensor(list(samples), device=device),
                   torch.tensor(first, device=device), max(first), groups, per_group,
                   first[0] if len(set(first)) == 1 else None)


def _slot_blocked(blocked: Sequence[torch.Tensor], layout: _Layout, n_queries: int) -> torch.Tensor:
    """Each element's blocked rows ``[R, length]`` (the last R ≤ Q recomputed queries) as
    ``[B, R, P + Q]`` in the slot layout."""
    if layout.shared_first is not None and all(b.shape[1] == layout.n_prefix + n_queries
                                               for b in blocked):
        return torch.stack(list(blocked))
    P = layout.n_prefix
    slots = torch.zeros(len(blocked), blocked[0].shape[0], P + n_queries, dtype=torch.bool,
                        device=blocked[0].device)
    for row, (rows, first) in enumerate(zip(blocked, layout.first.tolist())):
        slots[row, :, :first] = rows[:, :first]
        slots[row, :, P:] = rows[:, first:]
    return slots


def _allowed(layout: _Layout, n_queries: int, device) -> torch.Tensor:
    """``[B, Q, P + Q]``: valid prefix slots and causal own positions (before any knockout)."""
    P, Q = layout.n_prefix, n_queries
    own = torch.ones(Q, Q, dtype=torch.bool, device=device).tril()
    if layout.shared_first is not None:
        return torch.cat([torch.ones(Q, P, dtype=torch.bool, device=device), own], dim=1)[None]
    prefix = torch.arange(P, device=device)[None, :] < layout.first.to(device)[:, None]
    return torch.cat([prefix[:, None, :].expand(-1, Q, -1),
                      own[None].expand(len(layout.first), -1, -1)], dim=2)


def _additive_mask(weights: BackboneWeights, allowed: torch.Tensor, slot_blocked: torch.Tensor,
                   active: torch.Tensor, heads: torch.Tensor | None, sdpa: bool,
                   n_elements: int) -> torch.Tensor:
    """One layer's additive mask (0 or −∞) from the allowed slots ``[B | 1, R, P + Q]`` and the
    elements' blocked slots ``[B, R, P + Q]``, blocked where ``active`` ``[B]`` (and, with
    ``heads`` ``[B, heads]``, in the marked heads only): SDPA's ``[B, 1 | heads, R, P + Q]``
    or the folded form's ``[B, 1 | kv, R, 1 | g, P + Q]``."""
    device = allowed.device
    if heads is not None and bool(active.any()):
        # [B, heads, R, P+Q]: element b's pairs blocked in its marked heads only
        on = heads.to(device) & active.to(device)[:, None]
        allowed = allowed[:, None] & ~(slot_blocked[:, None] & on[:, :, None, None])
    elif bool(active.all()):
        allowed = allowed & ~slot_blocked
    elif bool(active.any()):
        allowed = allowed & ~(slot_blocked & active.to(device)[:, None, None])
    compute = weights.dtype if sdpa or weights.dtype not in (
        torch.float16, torch.bfloat16) else torch.float32
    additive = torch.zeros(allowed.shape, dtype=compute, device=device)
    additive.masked_fill_(~allowed, float("-inf"))
    if additive.dim() == 4:
        # per head, query head h = kv head h // g (GQA): SDPA [B, heads, R, P+Q];
        # folded [B, kv, R, g, P+Q]
        kv, g = weights.n_kv_heads, weights.n_heads // weights.n_kv_heads
        return additive if sdpa else \
            additive.expand(n_elements, -1, -1, -1).unflatten(1, (kv, g)).transpose(2, 3)
    # SDPA: [B, 1, R, P+Q]; folded: [B, 1, R, 1, P+Q] (kv heads, query heads per kv)
    return additive[:, None] if sdpa else additive[:, None, :, None]


def _prefix(cached: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """The prefix slots of one layer's clean keys or values ``[S, kv, N, d]`` per group:
    ``[groups, kv, P, d]`` (a view when the groups are consecutive clean-run rows)."""
    return cached[layout.groups, :, :layout.n_prefix]


def _folded_attention(weights: BackboneWeights, q, k, v, prefix_k, prefix_v,
                      mask: torch.Tensor) -> torch.Tensor:
    """Attention of few queries per configuration, exact, without copying the clean prefix.

    q ``[B, Q, heads, d]``, k/v ``[B, Q, kv, d]`` (the batch's own positions), prefix_k/v ``[G,
    kv, P, d]`` (the clean prefix of G groups of B/G consecutive elements each), mask ``[B, 1, Q,
    1, P + Q]`` additive (0 or −∞: padding, causal and knockout). The elements of a group and the
    query heads of each key/value head are folded into the query axis for the prefix, so its keys
    and values are read once per group. Returns ``[B, Q, heads·d]``.
    """
    B, Q, _, d = q.shape
    kv, g = weights.n_kv_heads, weights.n_heads // weights.n_kv_heads
    G, P = prefix_k.shape[0], prefix_k.shape[2]
    m = B // G
    q = q.unflatten(2, (kv, g)) * (1.0 / weights.attn_scale)  # [B, Q, kv, g, d]
    # the clean prefix: [G, kv, m·Q·g, P] in one batched matmul, read as [B, kv, Q, g, P]
    folded = q.unflatten(0, (G, m)).permute(0, 3, 1, 2, 4, 5).reshape(G, kv, m * Q * g, d)
    shared = (folded @ prefix_k.transpose(-1, -2)).unflatten(2, (m, Q, g)) \
        .permute(0, 2, 1, 3, 4, 5).reshape(B, kv, Q, g, P)
    # the batch's own keys: [B, kv, Q·g, Q'] read as [B, kv, Q, g, Q']
    own = (q.permute(0, 2, 1, 3, 4).reshape(B, kv, Q * g, d)
           @ k.permute(0, 2, 3, 1)).unflatten(2, (Q, g))
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = torch.cat([shared, own], dim=-1).to(compute) + mask
    probabilities = scores.softmax(-1).to(v.dtype)  # [B, kv, Q, g, P + Q]
    prefix_part = probabilities[..., :P].unflatten(0, (G, m)).permute(0, 2, 1, 3, 4, 5) \
        .reshape(G, kv, m * Q * g, P)
    out = (prefix_part @ prefix_v).unflatten(2, (m, Q, g)).permute(0, 2, 1, 3, 4, 5) \
        .reshape(B, kv, Q, g, d)
    out = out + (probabilities[..., P:].flatten(2, 3) @ v.permute(0, 2, 1, 3)).unflatten(2, (Q, g))
    return out.permute(0, 2, 1, 3, 4).reshape(B, Q, weights.n_heads * d)


#: Queries per SDPA call when many are recomputed (see :func:`_causal_chunked_sdpa`).
SDPA_QUERY_CHUNK = 128


def _causal_chunked_sdpa(weights: BackboneWeights, q, keys, values, mask: torch.Tensor,
                         n_prefix: int) -> torch.Tensor:
    """SDPA of q ``[B, heads, Q, d]`` over keys/values ``[B, kv, P + Q, d]`` with the additive
    mask ``[B | 1, 1, Q, P + Q]``, exact, skipping the keys that causality hides.

    The recomputed queries' own keys are causal: query i sees own keys 0 … i only, so a full
    mask spends about half of the own part of every attention row on −∞ entries. Cutting the
    queries into chunks of ``SDPA_QUERY_CHUNK`` and giving each chunk only the keys up to its
    last query leaves those out (at 1257 positions and 1078 recomputed queries, a third of the
    attention work); the masked-out keys contribute exactly 0 either way."""
    Q = q.shape[2]
    scale, gqa = 1.0 / weights.attn_scale, weights.n_kv_heads != weights.n_heads
    if Q < 2 * SDPA_QUERY_CHUNK:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                              enable_gqa=gqa)
    parts = []
    for first in range(0, Q, SDPA_QUERY_CHUNK):
        stop = min(Q, first + SDPA_QUERY_CHUNK)
        seen = n_prefix + stop
        parts.append(F.scaled_dot_product_attention(
            q[:, :, first:stop], keys[:, :, :seen], values[:, :, :seen],
            attn_mask=mask[:, :, first:stop, :seen], scale=scale, enable_gqa=gqa))
    return torch.cat(parts, dim=2)


# ---------------------------------------------------------------------- segmented attention
#: The CPU flash-attention kernel that also returns each query's log-sum-exp, so that attention
#: over disjoint key sets can be merged exactly (None where this torch lacks it).
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
#: Most query rows per run of the segmented attention (see :func:`_attention_plan`).
RUN_MAX_QUERIES = 512
#: Plain causal attention with a small clean prefix (P ≤ Q / 4) runs as one causal kernel over
#: padded queries rather than as prefix + own parts merged (the two measured within noise of
#: each other on CPU at 1257 positions; the single kernel was not slower).
PADDED_CAUSAL = True
#: A run whose keys before it split into more allowed ranges than this gathers them into one.
MAX_KEY_RANGES = 3


@dataclass(frozen=True)
class _Run:
    """Recomputed queries ``start … stop − 1`` (0-based among the Q recomputed) that share their
    allowed keys before ``P + start``: ``ranges`` of key slots (contiguous), or ``gather`` (the
    slot indices, when there are many ranges); ``diagonal`` is None when the run's own keys
    ``P + start … P + stop − 1`` are plainly causal, else the additive ``[R, R]`` mask of causal
    and knockout there; ``dead`` marks the run's rows that see none of their own keys (the
    flash kernel gives such a row a log-sum-exp of 0, not −∞)."""

    start: int
    stop: int
    ranges: tuple[tuple[int, int], ...]
    gather: torch.Tensor | None
    diagonal: torch.Tensor | None
    dead: torch.Tensor | None = None


def _attention_plan(blocked: torch.Tensor | None, n_prefix: int, n_queries: int, dtype,
                    device) -> list[_Run] | None:
    """How the segmented attention covers Q recomputed queries over P + Q key slots.

    ``blocked`` ``[Q, P + Q]`` (a knocked-out layer's blocked pairs; None: plain causal). Rows
    are cut into runs of consecutive queries whose blocked keys before the run agree (a frame's
    queries under a cross-frame knockout, a question's under a video → question one; at most
    ``RUN_MAX_QUERIES``); a run then attends the allowed key ranges before it without any mask
    and its own keys causally (a mask only where the knockout cuts inside the run), merged by
    their log-sum-exps. Keys a knockout blocks are never read. Returns None for plain causal
    attention whose prefix is small (P ≤ Q / 4): one causal kernel over padded queries costs
    less there (:func:`_segmented_attention`)."""
    P, Q = n_prefix, n_queries
    if blocked is None:
        return None
    starts = set(range(0, Q, RUN_MAX_QUERIES))
    if blocked is not None:
        # row i starts a run when it disagrees with row i − 1 on keys before P + i − 1 (the keys
        # both see outside their own diagonal block), checked in blocks of rows
        columns = torch.arange(P + Q, device=blocked.device)
        for first in range(1, Q, 1024):
            last = min(Q, first + 1024)
            rows = torch.arange(first, last, device=blocked.device)
            differ = (blocked[first:last] != blocked[first - 1:last - 1]) \
                & (columns[None, :] < (P + rows - 1)[:, None])
            starts.update((rows[differ.any(dim=1)]).tolist())
    bounds = sorted(starts) + [Q]
    causal = torch.ones(RUN_MAX_QUERIES, RUN_MAX_QUERIES, dtype=torch.bool,
                        device=device).tril()
    runs = []
    for start, stop in zip(bounds, bounds[1:]):
        length = stop - start
        dead = None
        if blocked is None:
            ranges, gather, diagonal = ((0, P + start),), None, None
        else:
            allowed = ~blocked[start, :P + start]
            edges = torch.diff(allowed.to(torch.int8), prepend=allowed.new_zeros(1, dtype=torch.int8),
                               append=allowed.new_zeros(1, dtype=torch.int8))
            opens = (edges == 1).nonzero().flatten().tolist()
            closes = (edges == -1).nonzero().flatten().tolist()
            ranges, gather = tuple(zip(opens, closes)), None
            if len(ranges) > MAX_KEY_RANGES:
                ranges, gather = (), allowed.nonzero().flatten().to(device)
            own = blocked[start:stop, P + start:P + stop]
            diagonal = None
            if bool(own.any()):
                keep = causal[:length, :length].to(own.device) & ~own
                diagonal = torch.zeros(length, length, dtype=dtype, device=device) \
                    .masked_fill_(~keep.to(device), float("-inf"))
                if not bool(keep.any(dim=1).all()):
                    dead = ~keep.any(dim=1).to(device)
        runs.append(_Run(start, stop, ranges, gather, diagonal, dead))
    return runs


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Attention over disjoint key sets ``(out [B, H, R, d], lse [B, H, R])`` → over their
    union: ``Σ exp(lse_i − lse) · out_i`` with ``lse = log Σ exp(lse_i)``. A part in which a
    query sees no key (lse −∞) weighs 0."""
    if len(parts) == 1:
        return parts[0][0]
    dtype = parts[0][0].dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    lse = torch.stack([part[1] for part in parts]).to(compute)
    top = lse.max(dim=0).values
    weights = torch.exp(lse - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    total = weights.sum(dim=0)
    out = None
    for weight, (part, part_lse) in zip(weights, parts):
        part = part.to(compute)
        if not bool(torch.isfinite(part_lse).all()):
            part = torch.where(torch.isfinite(part_lse)[..., None], part, torch.zeros_like(part))
        term = part * weight[..., None]
        out = term if out is None else out + term
    return (out / total[..., None]).to(dtype)


def _segmented_attention(weights: BackboneWeights, q, own_k, own_v, prefix_k, prefix_v,
                         plan: list[_Run] | None, n_prefix: int) -> torch.Tensor:
    """Exact attention of q ``[B, heads, Q, d]`` (no GQA) over the clean prefix ``prefix_k/v``
    ``[G, heads, P, d]`` (element b reads group b // (B / G)) and the batch's own keys/values
    ``own_k/v`` ``[B, heads, Q, d]``, by the runs of :func:`_attention_plan`: unmasked flash
    attention over each allowed key range, causal (or masked) over the run's own keys, merged
    by log-sum-exp. The elements of a group are folded into the query axis over the prefix, so
    the clean keys are read once per group and never copied per element. ``plan`` None: plain
    causal attention, the prefix for every query and the own keys causally."""
    scale = 1.0 / weights.attn_scale
    P = n_prefix
    B, H, _, d = q.shape
    G = prefix_k.shape[0]
    m = B // G

    def over_prefix(rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        R = rows.shape[2]
        folded = rows.unflatten(0, (G, m)).transpose(1, 2).reshape(G, H, m * R, d)
        out, lse = _FLASH_CPU(folded, keys, values, 0.0, False, scale=scale)
        return (out.reshape(G, H, m, R, d).transpose(1, 2).reshape(B, H, R, d),
                lse.reshape(G, H, m, R).transpose(1, 2).reshape(B, H, R))

    if plan is None and PADDED_CAUSAL and 4 * P <= q.shape[2] and G == B:
        # small prefix: one causal kernel over the prefix queries (zeros, output dropped) and
        # the recomputed ones costs less than two kernels and a merge
        keys = torch.cat([prefix_k, own_k], dim=2)
        values = torch.cat([prefix_v, own_v], dim=2)
        padded = torch.cat([q.new_zeros(B, H, P, d), q], dim=2)
        return _FLASH_CPU(padded, keys, values, 0.0, True, scale=scale)[0][:, :, P:]
    if plan is None:
        parts = [over_prefix(q, prefix_k, prefix_v)] if P else []
        parts.append(_FLASH_CPU(q, own_k, own_v, 0.0, True, scale=scale))
        return _merge(parts)
    outs = []
    for run in plan:
        rows = q[:, :, run.start:run.stop]
        parts = []
        for a, b in run.ranges:
            if a < min(b, P):
                parts.append(over_prefix(rows, prefix_k[:, :, a:min(b, P)],
                                         prefix_v[:, :, a:min(b, P)]))
            if b > max(a, P):
                own = slice(max(a, P) - P, b - P)
                parts.append(_FLASH_CPU(rows, own_k[:, :, own], own_v[:, :, own], 0.0, False,
                                        scale=scale))
        if run.gather is not None:
            early, late = run.gather[run.gather < P], run.gather[run.gather >= P] - P
            if early.numel():
                parts.append(over_prefix(rows, prefix_k[:, :, early], prefix_v[:, :, early]))
            if late.numel():
                parts.append(_FLASH_CPU(rows, own_k[:, :, late], own_v[:, :, late], 0.0, False,
                                        scale=scale))
        own = slice(run.start, run.stop)
        out, lse = _FLASH_CPU(rows, own_k[:, :, own], own_v[:, :, own], 0.0,
                              run.diagonal is None, attn_mask=run.diagonal, scale=scale)
        if run.dead is not None:
            lse = lse.masked_fill(run.dead, float("-inf"))
        parts.append((out, lse))
        outs.append(_merge(parts))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _segmented_ok(weights: BackboneWeights, layout: "_Layout", heads, use_sdpa: bool) -> bool:
    """Whether a batch's many-query attention runs segmented (:func:`_segmented_attention`):
    CPU, the flash kernel present, no GQA (the kernel takes as many key heads as query heads),
    every element's first recomputed position the same and no head-resolved knockout."""
    return (use_sdpa and _FLASH_CPU is not None and weights.device.type == "cpu"
            and weights.n_kv_heads == weights.n_heads and layout.shared_first is not None
            and heads is None and weights.dtype in (torch.float32, torch.float64,
                                                    torch.bfloat16))


@torch.inference_mode()
def suffix_logits(
    weights: BackboneWeights,
    clean: CleanRun,
    start_layer: int,
    blocked: Bool[torch.Tensor, "batch query key"] | Sequence[Bool[torch.Tensor, "query _"]],
    active: Bool[torch.Tensor, "layer batch"],
    samples: Sequence[int] | None = None,
    heads: Bool[torch.Tensor, "batch head"] | None = None,
    layer_blocked: Mapping[int, Sequence[Bool[torch.Tensor, "query _"]]] | None = None,
    plans: dict | None = None,
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Last-position logits of a batch of knockout configurations, possibly of several samples.

    Element b belongs to clean-run sample ``samples[b]`` (default: all to sample 0) and blocks
    the (query, key) pairs ``blocked[b]`` — the last Q rows of its edge set (queries length − Q …
    length − 1) over its ``length`` keys; Q is the same for the whole batch — in the layers l
    where ``active[l, b]``. Layers before ``start_layer`` and a sample's positions before its
    last Q are the clean run's (``clean.residual[start_layer]`` must be kept, and no element may
    block an earlier query or layer): the suffix forward restates the backbone block on the
    recomputed cells only (module docstring). Elements of different samples share every layer
    call; each reads its own sample's clean keys and values. ``heads[b]`` (default: all) marks
    the query heads element b blocks its pairs in; the mask is then per head (``heads`` times
    larger), so a batch without head-resolved elements passes ``None``. ``layer_blocked[l]``
    (effective pathways, whose blocked edges differ by layer): each element's rows in layer l,
    in place of ``blocked`` there. ``plans``: a dict the caller keeps for one sweep (and its
    ``blocked`` and ``layer_blocked`` tensors alive), in which the segmented attention's plans
    of each edge set are reused from batch to batch.
    """
    B, Q = len(blocked), blocked[0].shape[0]
    samples = [0] * B if samples is None else list(samples)
    if len(samples) != B or active.shape[1] != B:
        raise ValueError(f"{B} blocked row sets, {len(samples)} sample indices and "
                         f"{active.shape[1]} active columns must agree")
    for row, s in zip(blocked, samples):
        if row.shape != (Q, clean.lengths[s]):
            raise ValueError(f"blocked rows {tuple(row.shape)} of sample {s} must be [{Q}, "
                             f"{clean.lengths[s]}]: the last {Q} queries over every key")
    order = sorted(range(B), key=samples.__getitem__)
    if order != list(range(B)):  # group elements by sample; logits are put back in order
        logits = suffix_logits(weights, clean, start_layer, [blocked[i] for i in order],
                               active[:, order], [samples[i] for i in order],
                               None if heads is None else heads[order],
                               None if layer_blocked is None else
                               {layer: [rows[i] for i in order]
                                for layer, rows in layer_blocked.items()}, plans)
        return logits[torch.tensor(order, device=logits.device).argsort()]
    if heads is not None and heads.shape != (B, weights.n_heads):
        raise ValueError(f"heads must be [{B}, {weights.n_heads}], got {tuple(heads.shape)}")
    device = blocked[0].device
    layout = _layout(clean, samples, Q, device)
    P = layout.n_prefix
    use_sdpa = Q >= SDPA_MIN_QUERIES
    segmented = _segmented_ok(weights, layout, heads, use_sdpa)
    # the dense masks of the other forms (a float [B, Q, P + Q] per pattern): not built when
    # the attention runs segmented, which reads the blocked rows as they are
    slot_blocked_all = None if segmented else _slot_blocked(blocked, layout, Q)
    allowed_base = None if segmented else _allowed(layout, Q, device)
    plans = {} if plans is None else plans
    active_rows = active.tolist()

    def plan_for(layer: int) -> list[tuple[list[int], list[_Run] | None]]:
        """The segmented attention's element groups of a layer (elements with the same blocked
        rows, or not blocking this layer) and each group's plan."""
        own = blocked if layer_blocked is None else layer_blocked.get(layer, blocked)
        groups: dict[object, list[int]] = {}
        for b in range(B):
            key = None if not active_rows[layer][b] else (
                own[b].data_ptr(), tuple(own[b].shape), tuple(own[b].stride()))
            groups.setdefault(key, []).append(b)
        planned = []
        for key, members in groups.items():
            cache_key = (key, P, Q)
            if cache_key not in plans:
                plans[cache_key] = _attention_plan(
                    None if key is None else own[members[0]], P, Q, weights.dtype, device)
            planned.append((members, plans[cache_key]))
        return planned
    residual = clean.residual[start_layer]
    single = len(set(samples)) == 1
    positions = None if layout.shared_first is not None else \
        layout.first.to(residual.device)[:, None] + torch.arange(Q, device=residual.device)

    def cells(stream: torch.Tensor) -> torch.Tensor:
        """Each element's recomputed positions of a clean-run tensor ``[S, N, d_model]``."""
        if single and layout.shared_first is not None:
            return stream[samples[0]:samples[0] + 1, P:P + Q].expand(B, -1, -1)
        if layout.shared_first is not None:
            return stream[layout.samples.to(stream.device), P:P + Q]
        return stream[layout.samples.to(stream.device)[:, None], positions]

    x = cells(residual)
    masks: dict[tuple[bool, ...], torch.Tensor] = {}
    tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def mask_for(layer: int) -> torch.Tensor:
        """The additive mask of a layer (0 or −∞: padding, causal and each active element's
        knockout), one per pattern of active elements."""
        pattern = tuple(active[layer].tolist())
        own_rows = None if layer_blocked is None else layer_blocked.get(layer)
        if own_rows is not None:   # the layer's own rows: one mask per distinct row set
            pattern = pattern + tuple(id(rows) for rows in own_rows)
        if pattern not in masks:
            slot_blocked = slot_blocked_all if own_rows is None else \
                _slot_blocked(own_rows, layout, Q)
            masks[pattern] = _additive_mask(weights, allowed_base, slot_blocked, active[layer],
                                            heads, use_sdpa, B)
        return masks[pattern]

    def last_row_mask(layer: int) -> torch.Tensor:
        """The folded form's additive mask ``[B, 1 | kv, 1, 1 | g, P+Q]`` of the last query
        alone (padding and knockout; it sees every own position)."""
        own_rows = blocked if layer_blocked is None else layer_blocked.get(layer, blocked)
        return _additive_mask(weights, _allowed(layout, Q, device)[:, -1:],
                              _slot_blocked([rows[-1:] for rows in own_rows], layout, Q),
                              active[layer], heads, False, B)

    def rotary_for(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The recomputed positions' rotary tables: ``[Q, rot]`` or ``[B, Q, rot]``."""
        cos, sin = clean.rotary[index]
        key = id(cos)
        if key not in tables:
            if cos.dim() == 2 and layout.shared_first is not None:
                tables[key] = cos[P:P + Q], sin[P:P + Q]
            elif cos.dim() == 2:
                tables[key] = cos[positions], sin[positions]
            else:
                rows = layout.samples.to(cos.device)[:, None]
                at = positions if positions is not None else torch.arange(P, P + Q,
                                                                          device=cos.device)
                tables[key] = cos[rows, at], sin[rows, at]
        return tables[key]

    for index in range(start_layer, weights.n_layers):
        layer = weights.layers[index]
        q, k, v = _qkv(weights, index, x, *rotary_for(index))
        prefix_k, prefix_v = _prefix(clean.keys[index], layout), _prefix(clean.values[index],
                                                                          layout)
        if index == weights.n_layers - 1 and Q > 1:
            # Only the last position's output of the last layer is read: its keys and values
            # need every recomputed position, its attention and MLP the last query alone.
            z = _folded_attention(weights, q[:, -1:], k, v, prefix_k, prefix_v,
                                  last_row_mask(index))
            x = _finish_block(weights, layer, x[:, -1:], z)
            if index in clean.additions:
                x = x + cells(clean.additions[index])[:, -1:]
            break
        if segmented:
            q_heads, own_k, own_v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            groups = plan_for(index)
            if len(groups) == 1:
                z = _segmented_attention(weights, q_heads, own_k, own_v, prefix_k, prefix_v,
                                         groups[0][1], P)
            else:
                z = q_heads.new_empty(q_heads.shape)
                per_group = B // prefix_k.shape[0]
                for members, plan in groups:
                    rows = torch.tensor(members, device=q_heads.device)
                    # one clean prefix for all, or each member's own
                    shared = prefix_k.shape[0] == 1
                    z[rows] = _segmented_attention(
                        weights, q_heads[rows], own_k[rows], own_v[rows],
                        prefix_k if shared else prefix_k[rows // per_group],
                        prefix_v if shared else prefix_v[rows // per_group], plan, P)
            z = z.transpose(1, 2).flatten(2)
        elif use_sdpa:
            if layout.per_group > 1:
                prefix_k = prefix_k.repeat_interleave(layout.per_group, 0) \
                    if prefix_k.shape[0] > 1 else prefix_k.expand(B, -1, -1, -1)
                prefix_v = prefix_v.repeat_interleave(layout.per_group, 0) \
                    if prefix_v.shape[0] > 1 else prefix_v.expand(B, -1, -1, -1)
            keys = torch.cat([prefix_k, k.transpose(1, 2)], dim=2)
            values = torch.cat([prefix_v, v.transpose(1, 2)], dim=2)
            z = _causal_chunked_sdpa(weights, q.transpose(1, 2), keys, values, mask_for(index),
                                     P).transpose(1, 2).flatten(2)
        else:
            z = _folded_attention(weights, q, k, v, prefix_k, prefix_v, mask_for(index))
        x = _finish_block(weights, layer, x, z)
        if index in clean.additions:
            x = x + cells(clean.additions[index])
    return _head(weights, x[:, -1])
